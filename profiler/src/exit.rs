//! How a run ends: the failures a user can cause or meet, and the exit code of each.
//!
//! Every failure carries a one-line reason; [`Failure::exit_code`] maps it to the
//! documented code, so scripts and CI jobs can tell a fired rule from a broken setup.

use std::fmt;

/// Documented exit codes of `profiler`. docs/reference.md lists the same table.
pub mod code {
    /// The recording ran to its end and no rule fired.
    pub const SUCCESS: u8 = 0;
    /// An unexpected error, not one of the kinds below.
    pub const ERROR: u8 = 1;
    /// The command line was malformed (clap's own code).
    pub const USAGE: u8 = 2;
    /// A `--fail-on` rule fired. Every output was still written.
    pub const RULE_FIRED: u8 = 3;
    /// A target process does not exist, or the command could not be started.
    pub const NO_TARGET: u8 = 4;
    /// A capability the profiler needs is missing.
    pub const PRIVILEGES: u8 = 5;
    /// The kernel lacks a feature the profiler needs.
    pub const KERNEL_FEATURE: u8 = 6;
    /// An output file cannot be written, or the metrics address cannot be listened on.
    pub const OUTPUT: u8 = 7;
    /// A `--pid` target exited before the recording's end. Every output was still written.
    pub const TARGET_EXITED: u8 = 8;
    /// `profiler diff`: a report to compare cannot be read, or is not a JSON report.
    pub const INPUT: u8 = 9;
    /// The recording was interrupted by SIGINT (Ctrl-C). Every output was still written.
    pub const INTERRUPTED: u8 = 130;
    /// The recording was stopped by SIGTERM. Every output was still written.
    pub const TERMINATED: u8 = 143;
}

/// A failure that stops the profiler, with the reason shown to the user.
#[derive(Debug)]
pub enum Failure {
    /// The command line asks for something inconsistent.
    Usage(String),
    /// A target process does not exist, or the command could not be started.
    NoTarget(String),
    /// A capability is missing.
    Privileges(String),
    /// The kernel lacks a needed feature.
    KernelFeature(String),
    /// An output file cannot be written, or the metrics address cannot be listened on.
    Output(String),
    /// An input file cannot be read or parsed.
    Input(String),
    /// Anything else.
    Other(anyhow::Error),
}

impl Failure {
    /// The documented exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => code::USAGE,
            Failure::NoTarget(_) => code::NO_TARGET,
            Failure::Privileges(_) => code::PRIVILEGES,
            Failure::KernelFeature(_) => code::KERNEL_FEATURE,
            Failure::Output(_) => code::OUTPUT,
            Failure::Input(_) => code::INPUT,
            Failure::Other(_) => code::ERROR,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(reason)
            | Failure::NoTarget(reason)
            | Failure::Privileges(reason)
            | Failure::KernelFeature(reason)
            | Failure::Output(reason)
            | Failure::Input(reason) => f.write_str(reason),
            // One line: the outermost context, then its causes.
            Failure::Other(error) => write!(f, "{error:#}"),
        }
    }
}

impl std::error::Error for Failure {}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Other(error)
    }
}
