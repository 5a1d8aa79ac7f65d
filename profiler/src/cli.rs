//! The command line: `profiler record`, its options, and the exit codes.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::{
    analyze::Rule,
    attach::{EventSet, UnwindMethod},
    compare::GrowthRule,
    diff::{DiffOptions, diff},
    exit::{Failure, code},
    record::{RecordOptions, TargetSpec, View, record},
    render::{
        OutputPath, OutputPaths, folded::Folded, json::JsonReport, pprof, speedscope::Speedscope,
        summary, svg::FlameGraph,
    },
    report::ProfileKind,
};

const EXIT_CODES: &str = "\
Exit codes:
  0    recorded to the end, no rule fired
  1    unexpected error
  2    malformed command line, or options that contradict each other
  3    a --fail-on rule fired (every output was still written)
  4    a target process does not exist, or the command could not be started
  5    a needed capability is missing (the message names it)
  6    the kernel lacks a needed feature
  7    an output file cannot be written, or --metrics-addr can't be listened on
       (checked before recording)
  8    a --pid target exited before the end (every output was still written)
  9    diff: a report to compare cannot be read
  130  interrupted by Ctrl-C (every output was still written)
  143  stopped by SIGTERM (every output was still written)";

/// An eBPF profiler for running processes.
#[derive(Debug, Parser)]
#[command(name = "profiler", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Record where processes spend their time (on the CPU, in syscalls, in block IO,
    /// off the CPU) and which stacks hold memory they never free; write flame graphs
    /// and a hotspot, latency and leak report.
    ///
    /// Every thread of each target is traced, including threads started during the
    /// recording, in user and kernel space. The recording ends after --duration, on
    /// Ctrl-C or SIGTERM, or when every target has exited; all outputs are written in
    /// each case.
    #[command(
        after_help = EXIT_CODES,
        group(ArgGroup::new("target").required(true).args(["pids", "command", "cgroup", "all"])),
    )]
    Record(Box<RecordArgs>),

    /// Watch where processes spend their CPU time, live: a full-screen view refreshed
    /// every second of the functions by their own and inclusive share over the last 5
    /// seconds and since the start, the processes when there are several, the
    /// --fail-on rules' state and anything lost.
    ///
    /// Keys: q (or Esc, Ctrl-C) quits, p (or space) holds the screen while the
    /// recording goes on, 1 to 4 sort by that column. Nothing is written; the exit code
    /// is record's (0 on q, 3 if a rule fired).
    #[command(
        after_help = EXIT_CODES,
        group(ArgGroup::new("target").required(true).args(["pids", "command", "cgroup", "all"])),
    )]
    Top(Box<TopArgs>),

    /// Compare the on-CPU profiles of two recordings' JSON reports (`record --json`):
    /// write a differential flame graph (widths from NEW, red where stacks grew, blue
    /// where they shrank) and print the functions whose inclusive share moved most.
    ///
    /// A staging pipeline keeps the last good build's report and gates the next build
    /// on it with --fail-on.
    #[command(after_help = EXIT_CODES)]
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// The base recording's JSON report (the last good build).
    #[arg(value_name = "BASE.json")]
    base: PathBuf,

    /// The new recording's JSON report.
    #[arg(value_name = "NEW.json")]
    new: PathBuf,

    /// Write the differential flame graph SVG here.
    #[arg(short, long, value_name = "FILE.svg", default_value = "diff.svg")]
    output: PathBuf,

    /// Exit with code 3 if NAME's inclusive on-CPU share grew by more than N percentage
    /// points from BASE to NEW (NAME>+Npt, like predict>+5pt); repeatable. NAME matches
    /// as in `record --fail-on`.
    #[arg(long = "fail-on", value_name = "RULE")]
    fail_on: Vec<GrowthRule>,

    /// Rows in the table of moves.
    #[arg(long, value_name = "N", default_value_t = 20)]
    top: usize,
}

#[derive(Debug, Args)]
struct RecordArgs {
    #[command(flatten)]
    targets: TargetArgs,

    #[command(flatten)]
    sampling: SamplingArgs,

    #[command(flatten)]
    view: ViewArgs,

    #[command(flatten)]
    gates: GateArgs,

    /// What to record, a comma list: cpu (on-CPU samples), syscalls (counts, errors,
    /// latency, slow calls with stacks), io (block requests), offcpu (blocked time by
    /// stack), alloc (allocations still live: leak candidates by stack), or all.
    #[arg(short, long, value_name = "LIST", default_value = "cpu")]
    events: EventSet,

    /// Stream syscalls at least this slow with their stacks, and time them exactly.
    #[arg(long, value_name = "MS", default_value_t = 10.0, value_parser = parse_non_negative)]
    slow_ms: f64,

    /// Leave out off-CPU waits shorter than this.
    #[arg(long, value_name = "US", default_value_t = 1000.0, value_parser = parse_non_negative)]
    offcpu_min_us: f64,

    /// Take a blocking thread's kernel stack as it blocks, so that off-CPU stacks keep
    /// the scheduler's own functions (schedule, io_schedule, mutex_lock's slow path).
    /// By default it is read as the wait ends, without them, which costs far less:
    /// a loaded service blocks briefly thousands of times a second.
    #[arg(long)]
    offcpu_scheduler_frames: bool,

    /// Write the off-CPU flame graph SVG here (with --events offcpu).
    #[arg(long, value_name = "FILE.svg", default_value = "offcpu.svg")]
    offcpu_output: PathBuf,

    /// With --events alloc: blocks still live this long when the recording ends are
    /// leak candidates.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_non_negative)]
    leak_min_age: f64,

    /// With --events alloc: sample about one allocation per N bytes allocated instead
    /// of tracking each, and weigh the samples back up (cheaper on allocation-heavy
    /// targets). 0 tracks every allocation.
    #[arg(long, value_name = "N", default_value_t = 0)]
    alloc_sample_bytes: u64,

    /// Write the flame graph of leaked bytes here (with --events alloc).
    #[arg(long, value_name = "FILE.svg", default_value = "leaks.svg")]
    leaks_output: PathBuf,

    /// Write the flame graph SVG here.
    #[arg(short, long, value_name = "FILE.svg", default_value = "flamegraph.svg")]
    output: PathBuf,

    /// Also write collapsed stacks here (flamegraph.pl and inferno read them).
    #[arg(long, value_name = "FILE")]
    folded: Option<PathBuf>,

    /// Also write the JSON report here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Also write gzipped pprof profiles (`go tool pprof`, Pyroscope, Parca): the
    /// on-CPU one (samples and CPU time) here, and with --events offcpu or alloc,
    /// off-CPU time and leak candidates' bytes and blocks to FILE-offcpu and
    /// FILE-leaks (`-offcpu` and `-leaks` go after the file's stem).
    #[arg(long, value_name = "FILE")]
    pprof: Option<PathBuf>,

    /// Also write the on-CPU samples as a speedscope file (https://www.speedscope.app,
    /// `npx speedscope FILE`): a sampled profile per thread, frames with their files
    /// and, for Python, lines.
    #[arg(long, value_name = "FILE")]
    speedscope: Option<PathBuf>,

    /// Flag every function holding at least PCT % of on-CPU time (process roots excepted).
    #[arg(long, value_name = "PCT", default_value_t = 60.0, value_parser = parse_percent)]
    hotspot_threshold: f64,

    /// Rows in each table of the terminal summary, and functions with a series in the
    /// metrics.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,

    /// Also write, every SECS, the on-CPU flame graph and (with --json) the JSON report
    /// of that interval, numbered before the extension (flame.001.svg, report.001.json);
    /// the last interval ends with the recording.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    interval: Option<Duration>,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics while recording: samples,
    /// losses, the top functions' shares over the last 5 s, each --fail-on rule's state,
    /// syscall latency histograms, off-CPU seconds, bytes held by leak candidates, and
    /// the profiler's own CPU.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct TopArgs {
    #[command(flatten)]
    targets: TargetArgs,

    #[command(flatten)]
    sampling: SamplingArgs,

    #[command(flatten)]
    view: ViewArgs,

    #[command(flatten)]
    gates: GateArgs,
}

impl TopArgs {
    fn into_options(self) -> RecordOptions {
        let mut options = base_options(self.targets, self.sampling, self.view, self.gates);
        options.view = View::Top;
        options.outputs = OutputPaths(Vec::new());
        options
    }
}

/// What to profile, and for how long: `record` and `top` take the same.
#[derive(Debug, Args)]
struct TargetArgs {
    /// Profile this running process; repeat for several.
    #[arg(short, long = "pid", value_name = "PID")]
    pids: Vec<u32>,

    /// With --pid: also profile the processes each PID started, theirs in turn, and
    /// those they start while recording (a gunicorn master and its workers).
    #[arg(long, requires = "pids", conflicts_with = "command")]
    children: bool,

    /// Profile every process on the machine, kernel threads included, each stack under
    /// its process's root frame. Records until --duration or Ctrl-C.
    #[arg(short, long, conflicts_with = "children")]
    all: bool,

    /// Profile every process of this cgroup (v2) and of the groups below it, those that
    /// join while recording included: a container, a Kubernetes pod, a systemd unit.
    /// PATH is a directory under the v2 mount, or a path from its root as
    /// /proc/PID/cgroup gives it. Records until --duration or Ctrl-C.
    #[arg(long, value_name = "PATH", conflicts_with = "children")]
    cgroup: Option<PathBuf>,

    /// Stop after this many seconds (default: when stopped or when the targets exit).
    #[arg(short, long, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Start this command and profile it until it exits.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

impl TargetArgs {
    fn target(self) -> TargetSpec {
        match (self.all, self.cgroup, self.command.is_empty()) {
            (true, _, _) => TargetSpec::All,
            (false, Some(cgroup), _) => TargetSpec::Cgroup(cgroup),
            (false, None, true) => TargetSpec::Pids(self.pids),
            (false, None, false) => TargetSpec::Command(self.command),
        }
    }
}

/// How stacks are sampled.
#[derive(Debug, Args)]
struct SamplingArgs {
    /// CPU samples per second of each thread's CPU time: a thread that runs for 2 s
    /// takes about 2 × HZ samples.
    #[arg(short = 'F', long, value_name = "HZ", default_value_t = 99,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    frequency: u32,

    /// How user stacks are unwound: `dwarf` follows the binaries' call-frame
    /// information in the kernel, and is complete on binaries without frame pointers
    /// (most distribution packages, Rust release builds); `fp` walks frame pointers,
    /// which is cheaper and complete only on binaries built with them. Allocation
    /// stacks are always unwound with `dwarf`.
    #[arg(long, value_name = "METHOD", value_enum, default_value_t = UnwindMethod::Dwarf)]
    unwind: UnwindMethod,
}

/// How stacks are shown: `record` and `top` take the same.
#[derive(Debug, Args)]
struct ViewArgs {
    /// Show every native frame of Python stacks, the interpreter's own included
    /// (`_PyEval_EvalFrameDefault`'s callees, iterators, reference counting, pymalloc).
    /// By default that work folds into the Python frame that ran it, the collector's
    /// into a `[gc]` frame, and extension modules and other libraries (numpy, libc)
    /// stay.
    #[arg(long)]
    python_internals: bool,

    /// Split each Python function's box in the flame graphs and collapsed stacks by the
    /// line it was running (`predict (model.py:25)`), as py-spy draws them; in `top`,
    /// its rows. Hotspots and rules still judge whole functions.
    #[arg(long)]
    lines: bool,
}

/// The load-test gates.
#[derive(Debug, Args)]
struct GateArgs {
    /// Exit with code 3 if NAME holds more than PCT % of on-CPU time (NAME>PCT%), if a
    /// syscall's latency quantile is above a duration (SYSCALL.p50|p90|p99|p999|max>DURATION,
    /// like read.p99>50ms; needs --events syscalls), if block requests' latency is
    /// (io.p99>50ms for every device, io:DEVICE.p99>50ms for one; needs --events io), or
    /// if leak candidates hold more than a size (leak>SIZE, like leak>10MiB; needs
    /// --events alloc); repeatable. NAME matches a function exactly or as its last path
    /// segment; a < or > in it that pairs with nothing is written \< or \>. A rule whose
    /// subject matched nothing recorded is reported unmatched.
    #[arg(long = "fail-on", value_name = "RULE")]
    fail_on: Vec<Rule>,

    /// Count a --fail-on rule that matched nothing recorded (a misspelt function or
    /// syscall, a device without requests) as fired, so that a gate fails closed.
    #[arg(long)]
    strict_rules: bool,
}

impl RecordArgs {
    /// The outputs asked for, flame graphs first, each where its option says.
    fn outputs(&self) -> OutputPaths {
        let mut outputs = vec![
            OutputPath::new(FlameGraph(ProfileKind::Cpu), &self.output),
            OutputPath::new(FlameGraph(ProfileKind::OffCpu), &self.offcpu_output),
            OutputPath::new(FlameGraph(ProfileKind::Leaks), &self.leaks_output),
        ];
        let optional = [
            self.folded
                .as_ref()
                .map(|path| OutputPath::new(Folded, path)),
            self.json
                .as_ref()
                .map(|path| OutputPath::new(JsonReport, path)),
            self.speedscope
                .as_ref()
                .map(|path| OutputPath::new(Speedscope, path)),
        ];
        outputs.extend(optional.into_iter().flatten());
        outputs.extend(self.pprof.iter().flat_map(|path| pprof::outputs_at(path)));
        OutputPaths(outputs)
    }

    fn into_options(self) -> RecordOptions {
        let outputs = self.outputs();
        let mut options = base_options(self.targets, self.sampling, self.view, self.gates);
        let probes = &mut options.probes;
        probes.events = self.events;
        probes.slow_syscall = Duration::from_secs_f64(self.slow_ms / 1e3);
        probes.offcpu_min = Duration::from_secs_f64(self.offcpu_min_us / 1e6);
        probes.offcpu_scheduler_frames = self.offcpu_scheduler_frames;
        probes.alloc_sample_bytes = self.alloc_sample_bytes;
        options.leak_min_age = Duration::from_secs_f64(self.leak_min_age);
        options.outputs = outputs;
        options.analysis.hotspot_threshold = self.hotspot_threshold / 100.0;
        options.top = self.top;
        options.interval = self.interval;
        options.metrics_addr = self.metrics_addr;
        options
    }
}

/// What `record` and `top` share: the targets, the sampling, the gates; every other
/// option at its default.
fn base_options(
    targets: TargetArgs,
    sampling: SamplingArgs,
    view: ViewArgs,
    gates: GateArgs,
) -> RecordOptions {
    let (children, duration) = (targets.children, targets.duration);
    let mut options = RecordOptions::new(targets.target());
    let target = &options.target;
    options.probes.follow_children =
        children || matches!(target, TargetSpec::Command(_) | TargetSpec::Cgroup(_));
    options.probes.all = matches!(target, TargetSpec::All);
    options.probes.frequency_hz = sampling.frequency;
    options.probes.unwind = sampling.unwind;
    options.duration = duration;
    options.python_internals = view.python_internals;
    options.lines = view.lines;
    options.analysis.rules = gates.fail_on;
    options.analysis.strict_rules = gates.strict_rules;
    options
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("not a number of seconds: {text}"))?;
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("the duration must be positive: {text}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value >= 0.0 && value.is_finite() => Ok(value),
        _ => Err(format!("expected a number of 0 or more: {text}")),
    }
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let percent: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("not a percentage: {text}"))?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("a percentage must be between 0 and 100: {text}"));
    }
    Ok(percent)
}

/// Runs the command line and returns the process's exit code.
pub fn run() -> u8 {
    match Cli::parse().command {
        Command::Record(args) => run_record(args.into_options()),
        Command::Top(args) => run_record(args.into_options()),
        Command::Diff(args) => run_diff(args),
    }
}

fn run_diff(args: DiffArgs) -> u8 {
    let options = DiffOptions {
        base: args.base,
        new: args.new,
        svg: args.output,
        rules: args.fail_on,
        top: args.top,
    };
    match diff(&options) {
        Ok(comparison) => {
            let fired: Vec<String> = comparison
                .rules
                .iter()
                .filter(|outcome| outcome.fired)
                .map(|outcome| outcome.rule.text.clone())
                .collect();
            if fired.is_empty() {
                code::SUCCESS
            } else {
                eprintln!("profiler: rule fired: {}", fired.join(", "));
                code::RULE_FIRED
            }
        }
        Err(failure) => {
            eprintln!("profiler: error: {failure}");
            failure.exit_code()
        }
    }
}

fn run_record(options: RecordOptions) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("profiler: error: starting the runtime: {error}");
            return code::ERROR;
        }
    };
    match runtime.block_on(record(options)) {
        Ok(report) => {
            if let Some(reason) = summary::exit_reason(&report) {
                eprintln!("profiler: {reason}");
            }
            report.exit_code()
        }
        Err(failure) => {
            eprintln!("profiler: error: {failure}");
            Failure::exit_code(&failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pids_and_command_are_exclusive_and_one_is_required() {
        assert!(Cli::try_parse_from(["profiler", "record"]).is_err());
        assert!(Cli::try_parse_from(["profiler", "record", "-p", "1", "--", "true"]).is_err());
        let cli = Cli::try_parse_from([
            "profiler",
            "record",
            "--fail-on",
            "predict>60%",
            "--",
            "sleep",
            "1",
        ])
        .unwrap();
        let Command::Record(args) = cli.command else {
            panic!("not a record command")
        };
        let options = args.into_options();
        assert!(matches!(options.target, TargetSpec::Command(ref argv) if argv.len() == 2));
        assert_eq!(options.analysis.rules[0].text, "predict>60%");
        assert_eq!(options.probes.frequency_hz, 99);
        assert_eq!(options.probes.events, EventSet::CPU);
    }

    #[test]
    fn event_lists_parse_and_unknown_kinds_are_refused() {
        let parse = |list: &str| {
            let cli = Cli::try_parse_from([
                "profiler",
                "record",
                "-p",
                "1",
                "--events",
                list,
                "--slow-ms",
                "20",
            ])?;
            let Command::Record(args) = cli.command else {
                panic!("not a record command")
            };
            Ok::<_, clap::Error>(args.into_options().probes)
        };
        let probes = parse("syscalls,offcpu").unwrap();
        assert!(probes.events.syscalls && probes.events.offcpu);
        assert!(!probes.events.cpu && !probes.events.io);
        assert_eq!(probes.slow_syscall, Duration::from_millis(20));
        assert_eq!(parse("all").unwrap().events, EventSet::ALL);
        assert_eq!(EventSet::ALL.to_string(), "cpu,syscalls,io,offcpu,alloc");
        assert!(parse("cpu,disk").is_err());
    }

    #[test]
    fn durations_and_percentages_are_validated() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_percent("60%"), Ok(60.0));
        assert!(parse_percent("101").is_err());
    }
}
