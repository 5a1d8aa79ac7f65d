//! `profiler record`: checks, attaches, streams and aggregates until the recording ends,
//! then symbolizes, analyzes and writes every output.
//!
//! Every way a recording can end — its duration, Ctrl-C, SIGTERM, the targets exiting —
//! goes through the same finish, so whatever was gathered is always written out.

use std::{
    ffi::OsString,
    io::Write as _,
    time::{Duration, Instant},
};

use profiler_common::{CpuSample, DRAIN_INTERVAL_MS, LossCounter};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep},
};

use crate::{
    aggregate::StackCounts,
    analyze::{Analysis, AnalysisOptions, analyze},
    attach::{BpfCost, Probes, check_privileges},
    exit::{Failure, code},
    memory_map::MemoryMaps,
    render::{OutputFiles, OutputPaths, folded, json, summary, svg},
    stream::SampleStream,
    symbolize::{Profile, Symbolizer},
    target::{self, ExitStatus, HeldCommand},
    unwind::LeafUnwinder,
};

/// What to profile.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// Processes that already run.
    Pids(Vec<u32>),
    /// A command to start and profile until it exits.
    Command(Vec<OsString>),
}

/// Everything `profiler record` needs to know.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// What to profile.
    pub target: TargetSpec,
    /// How long to record; `None` records until Ctrl-C or until the targets exit.
    pub duration: Option<Duration>,
    /// CPU sampling rate per CPU, in Hz.
    pub frequency_hz: u32,
    /// Where to write the outputs.
    pub outputs: OutputPaths,
    /// Hotspot threshold and gates.
    pub analysis: AnalysisOptions,
    /// Rows in each table of the terminal summary.
    pub top: usize,
}

impl RecordOptions {
    /// Options with the defaults of the command line, for `target`.
    pub fn new(target: TargetSpec) -> Self {
        RecordOptions {
            target,
            duration: None,
            frequency_hz: 99,
            outputs: OutputPaths::default(),
            analysis: AnalysisOptions::default(),
            top: 10,
        }
    }
}

/// Why the recording stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `--duration` elapsed.
    Duration,
    /// Every target exited; for a started command, how it ended.
    TargetsExited(Option<ExitStatus>),
    /// SIGINT (Ctrl-C).
    Interrupted,
    /// SIGTERM.
    Terminated,
}

/// A process that was profiled.
#[derive(Clone, Debug)]
pub struct TargetProcess {
    /// Its pid.
    pub pid: u32,
    /// Its command name, read when the recording started.
    pub name: String,
}

/// What the profiler itself cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct SelfCost {
    /// Time in the BPF programs, as the kernel counts it.
    pub bpf: BpfCost,
    /// The profiler process's user plus system CPU time.
    pub process_cpu: Duration,
}

/// A finished recording: everything the outputs are made of.
#[derive(Clone, Debug)]
pub struct Recording {
    /// The processes profiled.
    pub targets: Vec<TargetProcess>,
    /// The command, when the profiler started it.
    pub command: Option<Vec<String>>,
    /// How long the probes were attached.
    pub duration: Duration,
    /// The sampling rate.
    pub frequency_hz: u32,
    /// Samples per (pid, tid).
    pub threads: Vec<((u32, u32), u64)>,
    /// Samples the BPF side could not hand over.
    pub lost: u64,
    /// The symbolized stacks.
    pub profile: Profile,
    /// Shares, hotspots and rules.
    pub analysis: Analysis,
    /// Why the recording stopped.
    pub stop: StopReason,
    /// The profiler's own cost.
    pub cost: SelfCost,
}

impl Recording {
    /// The exit code this recording ends with: a fired rule first, since gates depend on
    /// it, then an interruption, then a `--pid` target that went away early.
    pub fn exit_code(&self) -> u8 {
        if self.analysis.any_rule_fired() {
            return code::RULE_FIRED;
        }
        match self.stop {
            StopReason::Interrupted => code::INTERRUPTED,
            StopReason::Terminated => code::TERMINATED,
            StopReason::TargetsExited(None) => code::TARGET_EXITED,
            StopReason::TargetsExited(Some(_)) | StopReason::Duration => code::SUCCESS,
        }
    }
}

impl Recording {
    /// The one-line reason for a non-zero exit code, if there is one.
    pub fn exit_reason(&self) -> Option<String> {
        let fired: Vec<String> = self
            .analysis
            .rules
            .iter()
            .filter(|outcome| outcome.fired)
            .map(|outcome| format!("{} ({:.1}%)", outcome.rule, outcome.share * 100.0))
            .collect();
        if !fired.is_empty() {
            return Some(format!("rule fired: {}", fired.join(", ")));
        }
        match self.stop {
            StopReason::Interrupted => Some("interrupted by SIGINT; outputs written".to_owned()),
            StopReason::Terminated => Some("stopped by SIGTERM; outputs written".to_owned()),
            StopReason::TargetsExited(None) => {
                Some("the target exited before the recording's end; outputs written".to_owned())
            }
            StopReason::TargetsExited(Some(_)) | StopReason::Duration => None,
        }
    }
}

/// Records, writes every output, and returns the recording.
pub async fn record(options: RecordOptions) -> Result<Recording, Failure> {
    // From here on Ctrl-C and SIGTERM end the recording instead of the process, so that
    // whatever was gathered is written out.
    let mut signals = Signals::new().map_err(|error| Failure::Other(error.into()))?;
    // Everything that can be checked is checked before anything is loaded or started.
    if let TargetSpec::Pids(pids) = &options.target {
        pids.iter()
            .try_for_each(|&pid| target::ensure_exists(pid))?;
    }
    check_privileges()?;
    let mut command = match &options.target {
        TargetSpec::Command(argv) => Some(HeldCommand::spawn(argv)?),
        TargetSpec::Pids(_) => None,
    };
    let outputs = OutputFiles::create(&options.outputs)?;
    let pids: Vec<u32> = match &options.target {
        TargetSpec::Pids(pids) => dedup(pids),
        TargetSpec::Command(_) => command.iter().map(HeldCommand::pid).collect(),
    };

    let mut probes = Probes::load()?;
    for &pid in &pids {
        probes.add_target(pid)?;
    }
    let mut stream = SampleStream::new(probes.take_cpu_samples()?)
        .map_err(|error| Failure::Other(anyhow::anyhow!("watching the ring buffer: {error}")))?;
    let losses = probes.take_loss_counters()?;
    probes.attach_cpu_sampler(options.frequency_hz)?;
    let started = Instant::now();
    if let Some(command) = &mut command {
        command.release();
    }

    let mut collector = Collector::default();
    let targets: Vec<TargetProcess> = pids
        .iter()
        .map(|&pid| {
            let name = match &options.target {
                // The child may not have exec'd yet, so its comm is still ours.
                TargetSpec::Command(argv) => std::path::Path::new(&argv[0])
                    .file_name()
                    .map_or_else(|| argv[0].to_string_lossy(), |name| name.to_string_lossy())
                    .into_owned(),
                TargetSpec::Pids(_) => target::process_name(pid),
            };
            TargetProcess { pid, name }
        })
        .collect();
    let stop = watch(
        &options,
        &mut signals,
        &pids,
        command.as_mut(),
        &mut stream,
        &mut collector,
    )
    .await;
    let stopped = Instant::now();

    let bpf = probes.detach();
    let duration = started.elapsed();
    // Samples submitted before the detach are still in the ring.
    stream.drain(|sample| collector.add(sample));
    let lost = losses.total(LossCounter::CpuSampleRingFull) + stream.malformed();
    if let Some(command) = &mut command {
        command.terminate();
    }
    let stop = match stop {
        StopReason::TargetsExited(_) => {
            StopReason::TargetsExited(command.as_mut().and_then(HeldCommand::poll_exit))
        }
        other => other,
    };

    let profile = collector.symbolizer.resolve(&collector.counts);
    let analysis = analyze(&profile, &options.analysis);
    let recording = Recording {
        targets,
        command: match &options.target {
            TargetSpec::Command(argv) => Some(
                argv.iter()
                    .map(|arg| arg.to_string_lossy().into_owned())
                    .collect(),
            ),
            TargetSpec::Pids(_) => None,
        },
        duration,
        frequency_hz: options.frequency_hz,
        threads: collector.counts.threads().collect(),
        lost,
        profile,
        analysis,
        stop,
        cost: SelfCost {
            bpf,
            process_cpu: own_cpu_time(),
        },
    };
    write_outputs(&recording, outputs, stopped, options.top)?;
    Ok(recording)
}

/// Streams samples until the recording should stop, and says why it stopped.
async fn watch(
    options: &RecordOptions,
    signals: &mut Signals,
    pids: &[u32],
    mut command: Option<&mut HeldCommand>,
    stream: &mut SampleStream,
    collector: &mut Collector,
) -> StopReason {
    let mut tick = interval(Duration::from_millis(DRAIN_INTERVAL_MS));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = sleep(options.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        let stop = tokio::select! {
            () = stream.wakeup() => None,
            _ = tick.tick() => {
                let exited = match command.as_deref_mut() {
                    Some(command) => command.poll_exit().is_some(),
                    None => !pids.iter().any(|&pid| target::is_alive(pid)),
                };
                exited.then_some(StopReason::TargetsExited(None))
            }
            () = &mut deadline, if options.duration.is_some() => Some(StopReason::Duration),
            _ = signals.interrupt.recv() => Some(StopReason::Interrupted),
            _ = signals.terminate.recv() => Some(StopReason::Terminated),
        };
        stream.drain(|sample| collector.add(sample));
        if let Some(stop) = stop {
            return stop;
        }
    }
}

/// The signals that end a recording.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }
}

/// Takes each streamed sample through unwinding and counting, and keeps the memory maps
/// that both those and symbolization need current while the targets run.
#[derive(Default)]
struct Collector {
    maps: MemoryMaps,
    unwinder: LeafUnwinder,
    counts: StackCounts,
    symbolizer: Symbolizer,
}

impl Collector {
    fn add(&mut self, sample: &CpuSample) {
        let user = self.unwinder.complete(&mut self.maps, sample);
        if self.counts.add(sample, &user) {
            self.maps.observe(sample.tgid, &user);
        }
        for tgid in self.maps.take_updated() {
            self.symbolizer.refresh(tgid);
        }
    }
}

/// Writes the SVG, the collapsed stacks, the JSON report and the summary, in that order,
/// so the report can say how long it took from the stop to a written SVG.
fn write_outputs(
    recording: &Recording,
    outputs: OutputFiles,
    stopped: Instant,
    top: usize,
) -> Result<(), Failure> {
    let folded_lines = folded::lines(&recording.profile);
    let labels = summary::flame_graph_labels(recording);
    let svg_path = outputs
        .svg
        .write_with(|writer| svg::write(&folded_lines, &labels, writer))?;
    let stop_to_svg = stopped.elapsed();
    let mut written = vec![svg_path];
    if let Some(file) = outputs.folded {
        written.push(file.write_with(|writer| folded::write(&folded_lines, writer))?);
    }
    if let Some(file) = outputs.json {
        let report = json::report(recording, stop_to_svg);
        written.push(file.write_with(|writer| {
            serde_json::to_writer_pretty(&mut *writer, &report)?;
            writeln!(writer)
        })?);
    }
    summary::print(recording, &written, top);
    Ok(())
}

fn dedup(pids: &[u32]) -> Vec<u32> {
    let mut unique = pids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    unique
}

fn own_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}
