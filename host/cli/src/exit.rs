//! Exit codes of `guild`, shared by every subcommand and documented in `guild run --help` and the
//! README.

use guild_runtime::Outcome;

/// What the process exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The tool produced output.
    Success = 0,
    /// The tool returned an error, or crashed (trapped).
    ToolError = 1,
    /// Usage error or bad input (also the tool's own `invalid-input`).
    Usage = 2,
    /// A limit was hit: fuel, time, memory, stack, output or log bytes, a GPU quota.
    Limit = 3,
    /// A capability was denied: a mount the tool did not ask for, or the tool was refused a file.
    Denied = 4,
    /// The component is invalid, or the host failed.
    Host = 5,
    /// `verify`/`replay`: the bundle is malformed, incomplete or altered.
    InvalidBundle = 10,
    /// `verify`/`replay`: the signature is wrong, or not the required key's.
    Signature = 11,
    /// `replay`: recorded by another engine configuration.
    EngineMismatch = 12,
    /// `replay`: the guest observed or did something else (first diverging event reported).
    Nondeterminism = 13,
    /// `replay`: same kind of ending, different output.
    OutputMismatch = 14,
    /// `replay`: a different kind of ending (output, error, limit, trap).
    TrapMismatch = 15,
    /// `replay --recompute-gpu`: a recomputed GPU dispatch differs beyond its kernel's tolerance.
    GpuMismatch = 16,
    /// `replay`: this machine could not finish the replay within its wall-clock backstop (says
    /// nothing about the bundle).
    ReplayTooSlow = 17,
    /// `bundle cost --check`: the cost re-derived at the given table is not the one the bundle
    /// records (another table, or an altered figure).
    CostMismatch = 18,
    /// `run` of a WASI command: it trapped (128 + SIGABRT, what `wasmtime run` exits with), so
    /// a crash is told apart from the program's own `exit(1)`.
    CommandTrap = 134,
}

impl Exit {
    /// How `guild run` ends for a run that ended in `outcome` ([`Outcome::exit_code`]).
    pub(crate) fn for_outcome(outcome: &Outcome) -> Self {
        match outcome.exit_code() {
            0 => Self::Success,
            2 => Self::Usage,
            3 => Self::Limit,
            4 => Self::Denied,
            _ => Self::ToolError,
        }
    }

    /// How `guild run` ends for a WASI command that did not exit on its own (an exit is the
    /// program's own code): a trap is [`Exit::CommandTrap`], as under `wasmtime run`; a limit,
    /// a denial or a refused input keep Guild's codes.
    pub(crate) fn for_command_outcome(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Trap { .. } => Self::CommandTrap,
            other => Self::for_outcome(other),
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// An error that ends the command, with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: Exit,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: Exit, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub(crate) fn host(message: impl Into<String>) -> Self {
        Self::new(Exit::Host, message)
    }
}

/// The text `guild run --help` ends with.
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success: the tool's output JSON is on stdout
  1  the tool returned an error, or crashed (trapped)
  2  usage error or bad input (including the tool's own invalid-input), or a run refused before it
     started (a mount too large to record, limits above this host's ceilings)
  3  a limit ended the run: fuel, time, memory, stack, output, log or recording bytes, WASI
     resources, a mount's write quota, a GPU quota
  4  a capability was denied (a mount the tool did not ask for, a refused file or request)
  5  the component is invalid, or the host failed

A WASI command (a wasi:cli/command component or a preview-1 module, run with --env and arguments
after --) exits as under `wasmtime run`:
  N    the program's own exit code (exit(N), proc_exit(N), 0 on returning from main)
  134  it trapped (a panic, an abort, unreachable code): told apart from exit(1)
  2-5  as above when Guild ended or refused the run (a limit is 3); a `guild:` line on stderr says
       which, and --summary-json's `status` tells them apart from the program's own code for sure

guild bundle verify / guild replay have their own codes (see their --help).";

/// The text `guild bundle verify --help` and `guild replay --help` end with.
pub(crate) const BUNDLE_EXIT_CODES_HELP: &str = "\
Exit codes:
  0  valid / replayed identically
  2  usage error (no such file, or an id prefix shorter than 6 hex digits)
  5  the host failed
  10 invalid bundle (malformed, incomplete, altered)      11 bad signature or not the required key
  12 engine mismatch (--allow-engine-mismatch)            13 nondeterminism (first diverging seq shown)
  14 output mismatch                                      15 trap mismatch (a different kind of ending)
  16 gpu mismatch (--recompute-gpu: a dispatch differs beyond its kernel's tolerance)
  17 replay too slow: this machine did not finish within the backstop (--backstop); not a divergence
  18 cost mismatch (bundle cost --check: the re-derived cost is not the one the bundle records)";

#[cfg(test)]
mod tests {
    use super::*;
    use guild_runtime::{LimitHit, ToolErrorKind};

    #[test]
    fn the_process_ends_with_the_outcomes_own_exit_code() {
        let outcomes = [
            Outcome::Output { output: "{}".into() },
            Outcome::ToolError { kind: ToolErrorKind::InvalidInput, message: String::new() },
            Outcome::ToolError { kind: ToolErrorKind::Failed, message: String::new() },
            Outcome::ToolError { kind: ToolErrorKind::Denied, message: String::new() },
            Outcome::Limit(LimitHit::Timeout { limit_ms: 1 }),
            Outcome::Trap { message: String::new() },
            Outcome::Cancelled { after_ms: 1 },
        ];
        for outcome in outcomes {
            assert_eq!(Exit::for_outcome(&outcome) as u8, outcome.exit_code(), "{outcome:?}");
        }
    }

    #[test]
    fn a_trapping_command_exits_as_under_wasmtime_run() {
        assert_eq!(Exit::for_command_outcome(&Outcome::Trap { message: String::new() }) as u8, 134);
        let limit = Outcome::Limit(LimitHit::Timeout { limit_ms: 1 });
        assert_eq!(Exit::for_command_outcome(&limit), Exit::Limit);
    }
}
