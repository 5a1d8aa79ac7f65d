//! `profiler record`: checks, attaches, streams and aggregates until the recording ends,
//! then reads the in-kernel tables, symbolizes, analyzes and writes every output.
//!
//! Every way a recording can end — its duration, Ctrl-C, SIGTERM, the targets exiting —
//! goes through the same finish, so whatever was gathered is always written out.

mod collector;
mod follow;
mod live;
mod session;
mod top;

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use crate::{analyze::AnalysisOptions, attach::ProbeSettings, render::OutputPaths};

pub use session::record;

/// What to profile.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// Processes that already run.
    Pids(Vec<u32>),
    /// A command to start and profile until it exits.
    Command(Vec<OsString>),
    /// The processes of a cgroup (a container, a pod, a systemd unit) and of the
    /// groups below it, those that join it while recording included.
    Cgroup(PathBuf),
    /// Every process on the machine, kernel threads included.
    All,
}

/// How a recording is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// The summary on stdout once it ends (`profiler record`).
    #[default]
    Summary,
    /// The full-screen live view while it runs, and nothing after (`profiler top`).
    Top,
}

/// Everything `profiler record` needs to know.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// What to profile.
    pub target: TargetSpec,
    /// How long to record; `None` records until Ctrl-C or until the targets exit.
    pub duration: Option<Duration>,
    /// What the probes trace, how often they sample, and their thresholds.
    pub probes: ProbeSettings,
    /// Live blocks at least this old when the recording ends are leak candidates.
    pub leak_min_age: Duration,
    /// Where to write the outputs.
    pub outputs: OutputPaths,
    /// Hotspot threshold and gates.
    pub analysis: AnalysisOptions,
    /// Rows in each table of the terminal summary, and functions in the metrics.
    pub top: usize,
    /// Write a snapshot of the CPU samples of each such interval.
    pub interval: Option<Duration>,
    /// Serve Prometheus metrics here while recording.
    pub metrics_addr: Option<SocketAddr>,
    /// How the recording is shown.
    pub view: View,
    /// Show every native frame of stacks with Python frames, the interpreter's own
    /// included, instead of folding the interpreter's work into the Python frames.
    pub python_internals: bool,
    /// Split each Python function of the flame graphs and collapsed stacks by the line
    /// it was running.
    pub lines: bool,
}

impl RecordOptions {
    /// Options with the defaults of the command line, for `target`.
    pub fn new(target: TargetSpec) -> Self {
        RecordOptions {
            target,
            duration: None,
            probes: ProbeSettings::default(),
            leak_min_age: Duration::from_secs(5),
            outputs: OutputPaths::default(),
            analysis: AnalysisOptions::default(),
            top: 10,
            interval: None,
            metrics_addr: None,
            view: View::Summary,
            python_internals: false,
            lines: false,
        }
    }
}
