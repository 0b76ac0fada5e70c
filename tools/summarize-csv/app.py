"""summarize-csv: column statistics of a CSV file under the /data mount, using only Python's
standard library. A Guild tool built with componentize-py; see README.md in this directory."""

import csv
import json
import math
import statistics

from wit_world import exports
from componentize_py_types import Err
from wit_world.imports import log, types

# Bounds on what one run reads, so a huge file ends in a clear error, not an exhausted budget.
ROWS_MAX = 1_000_000
COLUMNS_MAX = 1_000
TOP_VALUES = 5

# Calls this instance has served, in the log line. Guild gives every call a fresh instance, so
# it always reads 1: a test holds the host to that.
calls = 0

INPUT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Input",
    "type": "object",
    "additionalProperties": False,
    "required": ["path"],
    "properties": {
        "path": {
            "type": "string",
            "description": "The CSV file to summarize, under the /data mount, e.g. /data/sales.csv.",
        },
        "delimiter": {
            "type": "string",
            "minLength": 1,
            "maxLength": 1,
            "default": ",",
            "description": "The field separator.",
        },
        "header": {
            "type": "boolean",
            "default": True,
            "description": "Whether the first row names the columns (else they are column_1, column_2, ...).",
        },
    },
}

OUTPUT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Output",
    "type": "object",
    "required": ["path", "rows", "columns"],
    "properties": {
        "path": {"type": "string"},
        "rows": {"type": "integer", "description": "Data rows read (the header is not counted)."},
        "columns": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "kind", "filled", "empty", "distinct"],
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"enum": ["number", "text", "empty"]},
                    "filled": {"type": "integer"},
                    "empty": {"type": "integer"},
                    "distinct": {"type": "integer"},
                    "min": {"type": "number"},
                    "max": {"type": "number"},
                    "mean": {"type": "number"},
                    "median": {"type": "number"},
                    "stdev": {"type": "number"},
                    "top": {"type": "array", "description": "Most frequent text values with their counts."},
                },
            },
        },
    },
}


def invalid(message):
    return Err(types.ToolError_InvalidInput(message))


def parse_input(text):
    try:
        request = json.loads(text)
    except json.JSONDecodeError as e:
        raise invalid(f"input is not JSON: {e}")
    if not isinstance(request, dict):
        raise invalid("input must be a JSON object")
    unknown = sorted(set(request) - set(INPUT_SCHEMA["properties"]))
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}")
    path = request.get("path")
    if not isinstance(path, str) or not path:
        raise invalid("path must be a non-empty string naming a CSV file under /data")
    delimiter = request.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise invalid("delimiter must be one character")
    header = request.get("header", True)
    if not isinstance(header, bool):
        raise invalid("header must be true or false")
    return path, delimiter, header


def read_rows(path, delimiter):
    """Every row of the file; a refusal by the sandbox is a denial, anything else a failure."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = []
            for row in csv.reader(f, delimiter=delimiter):
                if len(rows) >= ROWS_MAX:
                    raise Err(types.ToolError_Failed(f"{path}: more than {ROWS_MAX} rows; split the file"))
                rows.append(row)
            return rows
    except PermissionError as e:
        raise Err(types.ToolError_Denied(f"{path}: {e.strerror or e}"))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise Err(types.ToolError_Failed(f"{path}: {e}"))


def number(text):
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def summarize_column(name, values):
    filled = [v for v in values if v.strip() != ""]
    column = {
        "name": name,
        "filled": len(filled),
        "empty": len(values) - len(filled),
        "distinct": len(dict.fromkeys(filled)),
    }
    if not filled:
        column["kind"] = "empty"
        return column
    numbers = [number(v) for v in filled]
    if all(n is not None for n in numbers):
        column["kind"] = "number"
        column["min"] = min(numbers)
        column["max"] = max(numbers)
        column["mean"] = round(statistics.fmean(numbers), 6)
        column["median"] = statistics.median(numbers)
        column["stdev"] = round(statistics.stdev(numbers), 6) if len(numbers) > 1 else 0.0
        return column
    column["kind"] = "text"
    counts = {}
    for v in filled:
        counts[v] = counts.get(v, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    column["top"] = [[value, count] for value, count in ranked[:TOP_VALUES]]
    return column


class Tool(exports.Tool):
    def describe(self):
        return types.ToolInfo(
            name="summarize-csv",
            version="0.1.0",
            description="Column statistics of a CSV file under /data: kind, filled and empty cells, "
            "distinct values, min/max/mean/median/stdev of numeric columns, most frequent text values.",
            input_schema=json.dumps(INPUT_SCHEMA),
            output_schema=json.dumps(OUTPUT_SCHEMA),
            capabilities=types.Capabilities(
                dirs=[types.DirRequest("/data", types.Access.READ_ONLY, "the CSV files to summarize")],
                hosts=[],
                secrets=[],
                gpu=False,
            ),
        )

    def run(self, input):
        global calls
        calls += 1
        path, delimiter, header = parse_input(input)
        rows = read_rows(path, delimiter)
        if header:
            if not rows:
                raise Err(types.ToolError_Failed(f"{path}: the file is empty; expected a header row"))
            names, rows = rows[0], rows[1:]
        else:
            names = []
        width = max([len(names)] + [len(r) for r in rows])
        if width > COLUMNS_MAX:
            raise Err(types.ToolError_Failed(f"{path}: {width} columns, more than {COLUMNS_MAX}"))
        names = names + [f"column_{i + 1}" for i in range(len(names), width)]
        columns = []
        for i, name in enumerate(names):
            values = [row[i] if i < len(row) else "" for row in rows]
            columns.append(summarize_column(name, values))
        log.log(
            log.Level.INFO,
            f"summarized {path}: {len(rows)} rows, {len(columns)} columns (call {calls} of this instance)",
        )
        return json.dumps({"path": path, "rows": len(rows), "columns": columns})
