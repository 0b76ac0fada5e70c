#!/usr/bin/env python3
"""Run the WASI test suite's prebuilt preview-1 programs through `guild run`, and beside it
through `wasmtime run` when a wasmtime binary is given, and compare.

Each test is `NAME.wasm` with an optional `NAME.json` beside it (doc/specification.md of the
suite): args, env, dirs to preopen, the expected exit code, stdout and stderr; both the legacy
form and the operation-based one (`run`/`wait`/`read`) are read. The mapping to Guild flags:

* each preopened dir `D` is copied into a fresh scratch directory (so the suite stays as it was
  and tests cannot see each other's leftovers) and mounted with `--dir COPY::/D:rw`; Guild's guest
  paths are absolute, so an argument naming `D` itself is passed as `/D` (wasmtime gets `D`, as
  the suite's own wasmtime adapter passes it);
* env entries become `--env NAME=VALUE` (the environment holds nothing else, in both);
* args go after `--`; stdin is empty (the suite's programs read none).

A test passes when its exit code is the expected one, and so are stdout and stderr when the spec
gives them.
Prints one line per test and a summary; `--json PATH` writes the results for tests/all.

    scripts/wasi-testsuite.py --guild target/debug/guild [--wasmtime PATH] [--suite DIR]

The suite's folder defaults to `../shared/wasi-testsuite` from the repository's root, found from
this script's own place (not the current directory).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TEST_TIMEOUT_S = 60
# The suite beside the checkout (`../shared/wasi-testsuite` from the repository's root), found
# from this script's own place, whatever the current directory is.
SUITE_DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared" / "wasi-testsuite"


def spec_of(wasm: Path) -> dict:
    """The test's expectations in one flat form, from either spec format."""
    # Streams are compared only when the spec names them, as the suite's own runner does in
    # effect (wasmtime passes tests that print diagnostics the spec does not list).
    spec = {"args": [], "env": {}, "dirs": [], "exit_code": 0, "stdout": None, "stderr": None}
    path = wasm.with_suffix(".json")
    if not path.exists():
        return spec
    raw = json.loads(path.read_text())
    if "operations" in raw:
        for op in raw["operations"]:
            kind = op.get("type")
            if kind == "run":
                for key in ("args", "env", "dirs"):
                    spec[key] = op.get(key, spec[key])
            elif kind == "wait":
                spec["exit_code"] = op.get("exit_code", 0)
            elif kind == "read":
                spec[op.get("id", "stdout")] = op.get("payload", "")
            else:
                spec["unsupported"] = f"operation {kind}"
        if raw.get("proposals"):
            spec["unsupported"] = f"proposals {raw['proposals']}"
        return spec
    for key in ("args", "env", "dirs", "exit_code", "stdout", "stderr"):
        if key in raw:
            spec[key] = raw[key]
    return spec


def scratch_dirs(wasm: Path, spec: dict, work: Path) -> None:
    for d in spec["dirs"]:
        source = wasm.parent / d
        if source.is_dir():
            shutil.copytree(source, work / d, symlinks=True)
        else:
            (work / d).mkdir(parents=True)


def run(cmd: list, cwd: Path) -> tuple:
    try:
        done = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=TEST_TIMEOUT_S)
        return done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired:
        return None, b"", b"timed out"


def guild_cmd(guild: str, home: Path, wasm: Path, spec: dict, work: Path) -> list:
    cmd = [guild, "--home", str(home), "run", str(wasm)]
    for d in spec["dirs"]:
        cmd += ["--dir", f"{work / d}::/{d}:rw"]
    for name, value in spec["env"].items():
        cmd += ["--env", f"{name}={value}"]
    return cmd + ["--"] + ["/" + a if a in spec["dirs"] else a for a in spec["args"]]


def wasmtime_cmd(wasmtime: str, wasm: Path, spec: dict) -> list:
    cmd = [wasmtime, "run"]
    for d in spec["dirs"]:
        cmd += ["--dir", f"{d}::{d}"]
    for name, value in spec["env"].items():
        cmd += ["--env", f"{name}={value}"]
    return cmd + [str(wasm)] + list(spec["args"])


def verdict(spec: dict, result: tuple) -> str:
    """`pass`, or why not."""
    code, stdout, stderr = result
    if code is None:
        return "timeout"
    if code != spec["exit_code"]:
        return f"exit {code}, expected {spec['exit_code']}: {stderr.decode(errors='replace').strip()[-300:]}"
    if spec["stdout"] is not None and stdout.decode(errors="replace") != spec["stdout"]:
        return f"stdout {stdout[:200]!r}, expected {spec['stdout'][:200]!r}"
    if spec["stderr"] is not None and stderr.decode(errors="replace") != spec["stderr"]:
        return f"stderr {stderr[:200]!r}, expected {spec['stderr'][:200]!r}"
    return "pass"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guild", required=True, help="the guild binary")
    parser.add_argument("--wasmtime", default=os.environ.get("WASMTIME"), help="a wasmtime binary (or $WASMTIME)")
    parser.add_argument(
        "--suite",
        default=os.environ.get("WASI_TESTSUITE", str(SUITE_DEFAULT)),
        help=f"the suite's folder (default: $WASI_TESTSUITE, else {SUITE_DEFAULT})",
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--filter", default="", help="only tests whose path contains this")
    args = parser.parse_args()

    suite = Path(args.suite)
    tests = sorted(p for p in (suite / "tests").rglob("*.wasm") if args.filter in str(p))
    if not tests:
        print(f"no tests under {suite}/tests", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="guild-wasi-testsuite-") as tmp:
        home = Path(tmp) / "home"
        for n, wasm in enumerate(tests):
            name = str(wasm.relative_to(suite / "tests").with_suffix(""))
            spec = spec_of(wasm)
            row = {"test": name}
            if "unsupported" in spec:
                row["guild"] = row["wasmtime"] = f"skipped: {spec['unsupported']}"
                results.append(row)
                continue
            work = Path(tmp) / f"g{n}"
            work.mkdir()
            scratch_dirs(wasm, spec, work)
            row["guild"] = verdict(spec, run(guild_cmd(args.guild, home, wasm.resolve(), spec, work), work))
            if args.wasmtime:
                work = Path(tmp) / f"w{n}"
                work.mkdir()
                scratch_dirs(wasm, spec, work)
                row["wasmtime"] = verdict(spec, run(wasmtime_cmd(args.wasmtime, wasm.resolve(), spec), work))
            results.append(row)
            mark = lambda v: "PASS" if v == "pass" else "FAIL"  # noqa: E731
            line = f"{mark(row['guild'])} guild"
            if args.wasmtime:
                line += f"  {mark(row['wasmtime'])} wasmtime"
            print(f"{line}  {name}", flush=True)
            for who in ("guild", "wasmtime"):
                if row.get(who, "pass") != "pass":
                    print(f"      {who}: {row[who]}", flush=True)

    guild_passed = sorted(r["test"] for r in results if r.get("guild") == "pass")
    summary = {"tests": len(results), "guild_passed": len(guild_passed), "results": results}
    print(f"\nguild passed {len(guild_passed)} of {len(results)}")
    worse = []
    if args.wasmtime:
        wasmtime_passed = {r["test"] for r in results if r.get("wasmtime") == "pass"}
        summary["wasmtime_passed"] = len(wasmtime_passed)
        worse = sorted(wasmtime_passed - set(guild_passed))
        better = sorted(set(guild_passed) - wasmtime_passed)
        summary["wasmtime_only"], summary["guild_only"] = worse, better
        print(f"wasmtime passed {len(wasmtime_passed)} of {len(results)}")
        print(f"passed by wasmtime only: {worse}")
        print(f"passed by guild only: {better}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
