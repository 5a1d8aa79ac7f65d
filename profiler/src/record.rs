//! `profiler record`: checks, attaches, streams and aggregates until the recording ends,
//! then reads the in-kernel tables, symbolizes, analyzes and writes every output.
//!
//! Every way a recording can end — its duration, Ctrl-C, SIGTERM, the targets exiting —
//! goes through the same finish, so whatever was gathered is always written out.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::OsString,
    io::Write as _,
    time::{Duration, Instant},
};

use profiler_common::{
    AllocCounter, DRAIN_INTERVAL_MS, EventHeader, LossCounter, StackEnd, Stacks,
};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{MissedTickBehavior, interval, sleep},
};

use crate::{
    aggregate::{
        Completeness, IoRow, IoTable, LeakOptions, LiveSummary, SlowCall, StackCounts, StackKey,
        SyscallLatencies, SyscallSummary, growth_per_second, summarize_live, summarize_syscalls,
    },
    allocators,
    analyze::{Analysis, AnalysisOptions, Check, FunctionShare, Observations, analyze},
    attach::{AllocTables, BpfCost, LossCounters, ProbeSettings, Probes, check_privileges},
    exit::{Failure, code},
    memory_map::MemoryMaps,
    python::{PythonFrames, PythonReport},
    render::{OutputFiles, OutputPaths, folded, json, summary, svg},
    stream::{Event, EventStream},
    symbolize::{Capture, Frame, Names, Profile, ProfileBuilder, Symbolizer},
    syscall_names::{syscall_name, syscall_number},
    target::{self, ExitStatus, HeldCommand},
    unwind::{TableStats, UnwindTables},
};

/// Slow calls kept with their stacks: the slowest this many. Every slow call's duration
/// counts in its syscall's distribution regardless.
pub const SLOW_CALLS_KEPT: usize = 1000;

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
    /// What the probes trace, how often they sample, and their thresholds.
    pub probes: ProbeSettings,
    /// Live blocks at least this old when the recording ends are leak candidates.
    pub leak_min_age: Duration,
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
            probes: ProbeSettings::default(),
            leak_min_age: Duration::from_secs(5),
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
    /// Time in the BPF programs, as the kernel counts it; not measured while syscalls
    /// are traced.
    pub bpf: Option<BpfCost>,
    /// The profiler process's user plus system CPU time.
    pub process_cpu: Duration,
}

/// A syscall slower than `--slow-ms`, named and with its stack symbolized.
#[derive(Clone, Debug)]
pub struct NamedSlowCall {
    /// The syscall's name.
    pub name: String,
    /// From entry to return.
    pub duration_ns: u64,
    /// The calling process.
    pub pid: u32,
    /// The calling thread.
    pub tid: u32,
    /// What the call returned.
    pub ret: i64,
    /// The caller's stack, root first.
    pub stack: Vec<Frame>,
}

/// Where the target threads waited off the CPU.
#[derive(Clone, Debug, Default)]
pub struct OffCpu {
    /// Stacks at switch-out, weighted by nanoseconds off the CPU.
    pub profile: Profile,
    /// Every function by inclusive off-CPU time, largest first (`*_samples` are ns).
    pub functions: Vec<FunctionShare>,
    /// Nanoseconds off the CPU per (pid, tid).
    pub threads: Vec<((u32, u32), u64)>,
}

/// Everything the BPF side had to drop, and records userspace could not read.
#[derive(Clone, Debug, Default)]
pub struct Losses {
    /// Per loss counter.
    pub counters: Vec<(LossCounter, u64)>,
    /// Records of an unknown kind or size.
    pub malformed: u64,
}

impl Losses {
    fn read(counters: &LossCounters, malformed: u64) -> Self {
        Losses {
            counters: LossCounter::ALL
                .into_iter()
                .map(|counter| (counter, counters.total(counter)))
                .collect(),
            malformed,
        }
    }

    fn sum(&self, which: &[LossCounter]) -> u64 {
        self.counters
            .iter()
            .filter(|(counter, _)| which.contains(counter))
            .map(|(_, count)| count)
            .sum()
    }

    /// CPU samples lost, malformed records included.
    pub fn cpu(&self) -> u64 {
        self.sum(&[LossCounter::CpuSampleRingFull]) + self.malformed
    }

    /// Syscalls not counted, slow calls whose stacks were dropped, and failed calls
    /// whose errno was not recorded.
    pub fn syscalls(&self) -> u64 {
        self.sum(&[
            LossCounter::SyscallSlotTaken,
            LossCounter::SyscallNumberOutOfRange,
            LossCounter::SlowSyscallRingFull,
            LossCounter::SyscallErrnoTableFull,
        ])
    }

    /// Block requests not reported.
    pub fn io(&self) -> u64 {
        self.sum(&[LossCounter::BlockIoRingFull, LossCounter::BlockIoTableFull])
    }

    /// Off-CPU spans not reported.
    pub fn offcpu(&self) -> u64 {
        self.sum(&[
            LossCounter::OffCpuRingFull,
            LossCounter::OffCpuThreadTableFull,
        ])
    }

    /// Allocations not tracked, and allocating stacks not recorded.
    pub fn alloc(&self) -> u64 {
        self.sum(&[
            LossCounter::AllocSlotTaken,
            LossCounter::AllocTableFull,
            LossCounter::AllocStackTableFull,
            LossCounter::AllocStackRingFull,
        ])
    }
}

/// Blocks of one allocating stack still live at the end and older than the minimum age.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakCandidate {
    /// The allocating process.
    pub pid: u32,
    /// The first function on the stack outside the allocator.
    pub function: String,
    /// The allocating stack, root first.
    pub stack: Vec<Frame>,
    /// Bytes held (estimated when sampling).
    pub bytes: u64,
    /// Blocks held (estimated when sampling).
    pub count: u64,
    /// Age of the oldest block.
    pub oldest_age: Duration,
    /// How fast the held bytes grew, if the recording outlasted the minimum age.
    pub growth_per_s: Option<f64>,
}

/// What allocation tracking found.
#[derive(Clone, Debug, Default)]
pub struct Leaks {
    /// The minimum age of a candidate.
    pub min_age: Duration,
    /// Calls to allocating functions the probes saw.
    pub alloc_calls: u64,
    /// Calls to `free` and `munmap` the probes saw.
    pub free_calls: u64,
    /// Bytes of every block still live (estimated when sampling).
    pub outstanding_bytes: u64,
    /// Blocks still live (estimated when sampling).
    pub outstanding_count: u64,
    /// The candidates, most bytes first.
    pub candidates: Vec<LeakCandidate>,
    /// The candidates' stacks weighted by bytes, for the flame graph.
    pub profile: Profile,
}

impl Leaks {
    /// Bytes held by all candidates.
    pub fn candidate_bytes(&self) -> u64 {
        self.candidates
            .iter()
            .map(|candidate| candidate.bytes)
            .sum()
    }
}

/// How complete the user stacks of each kind of record were, and what the unwind
/// tables cost.
#[derive(Clone, Debug, Default)]
pub struct StackQuality {
    /// CPU samples.
    pub cpu: Completeness,
    /// Off-CPU spans.
    pub offcpu: Completeness,
    /// Slow syscalls.
    pub slow_calls: Completeness,
    /// Distinct allocating stacks.
    pub alloc: Completeness,
    /// The unwind tables.
    pub tables: TableStats,
    /// Distinct user addresses that got no name, by reason.
    pub unnamed: BTreeMap<&'static str, u64>,
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
    /// What was traced, the sampling rate, and the thresholds.
    pub probes: ProbeSettings,
    /// Samples per (pid, tid).
    pub threads: Vec<((u32, u32), u64)>,
    /// Everything lost.
    pub losses: Losses,
    /// How complete the stacks were.
    pub stack_quality: StackQuality,
    /// The symbolized on-CPU stacks.
    pub profile: Profile,
    /// Shares, hotspots and rules.
    pub analysis: Analysis,
    /// Every syscall the targets made, largest total time first.
    pub syscalls: Vec<SyscallSummary>,
    /// The slowest calls above `--slow-ms`, slowest first, at most [`SLOW_CALLS_KEPT`].
    pub slow_calls: Vec<NamedSlowCall>,
    /// How many calls were above `--slow-ms` in all.
    pub slow_call_count: u64,
    /// Block requests per device and operation.
    pub io: Vec<IoRow>,
    /// Off-CPU time.
    pub offcpu: OffCpu,
    /// Allocations still live, and leak candidates.
    pub leaks: Leaks,
    /// Why the recording stopped.
    pub stop: StopReason,
    /// The profiler's own cost.
    pub cost: SelfCost,
    /// The Python interpreters walked, and how well.
    pub python: PythonReport,
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
            .map(|outcome| format!("{} ({})", outcome.rule, summary::observed(outcome)))
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
    check_rules(&options)?;
    if let TargetSpec::Pids(pids) = &options.target {
        pids.iter()
            .try_for_each(|&pid| target::ensure_exists(pid))?;
    }
    check_privileges()?;
    let mut command = match &options.target {
        TargetSpec::Command(argv) => Some(HeldCommand::spawn(argv)?),
        TargetSpec::Pids(_) => None,
    };
    let outputs = OutputFiles::create(&options.outputs, options.probes.events)?;
    let pids: Vec<u32> = match &options.target {
        TargetSpec::Pids(pids) => dedup(pids),
        TargetSpec::Command(_) => command.iter().map(HeldCommand::pid).collect(),
    };

    // The targets' tables are compiled before the BPF object is loaded, to size the
    // kernel's row array. A started command has not exec'd its program yet: its tables
    // are loaded when it reaches its entry point.
    let mut collector = Collector {
        unwind_tables: options
            .probes
            .uses_unwind_tables()
            .then(UnwindTables::default),
        ..Collector::default()
    };
    if let TargetSpec::Pids(_) = &options.target {
        for &pid in &pids {
            collector.read_map(pid);
        }
    }
    let unwind_rows = collector
        .unwind_tables
        .as_ref()
        .map_or(1, UnwindTables::capacity);
    let mut probes = Probes::load(&options.probes, unwind_rows)?;
    for &pid in &pids {
        probes.add_target(pid)?;
    }
    match probes.take_python_processes()? {
        Some(processes) => collector.python.connect(processes),
        None => collector.python.notice(
            "the kernel's BTF does not say where a thread's TLS base is; Python frames are not shown",
        ),
    }
    if let Some(tables) = &mut collector.unwind_tables {
        let (rows, processes) = probes.take_unwind_maps()?;
        tables
            .connect(rows, unwind_rows, processes)
            .map_err(|error| {
                Failure::Other(anyhow::anyhow!("mapping the unwind tables: {error}"))
            })?;
    }
    let mut stream = EventStream::new(probes.take_events()?)
        .map_err(|error| Failure::Other(anyhow::anyhow!("watching the ring buffer: {error}")))?;
    let losses = probes.take_loss_counters()?;
    let syscall_tables = probes.take_syscall_tables()?;
    let alloc_tables = probes.take_alloc_tables()?;
    probes.attach(&pids)?;
    if options.probes.events.alloc {
        for &pid in &pids {
            let program = command.as_ref().map(HeldCommand::program);
            probes.attach_allocator(pid, &allocators::probe_points(pid, program)?)?;
        }
    }
    let started = Instant::now();
    if let Some(command) = &mut command {
        start_command(command, &mut probes, &mut collector)?;
    }

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
    // Blocks are aged as of the stop, not of whenever the table is read: ending a
    // started command alone can take seconds.
    let stopped_ns = monotonic_now_ns();

    let bpf = probes.detach();
    let duration = started.elapsed();
    // Records submitted before the detach are still in the ring.
    stream.drain(|event| collector.add(event));
    let losses = Losses::read(&losses, stream.malformed());
    if let Some(command) = &mut command {
        command.terminate();
    }
    let stop = match stop {
        StopReason::TargetsExited(_) => {
            StopReason::TargetsExited(command.as_mut().and_then(HeldCommand::poll_exit))
        }
        other => other,
    };

    let allocations = options
        .probes
        .events
        .alloc
        .then(|| read_allocations(&alloc_tables, &options, stopped_ns));
    let syscalls = summarize_syscalls(
        syscall_tables.stats(),
        syscall_tables.errnos(),
        std::mem::take(&mut collector.slow_latencies),
    );
    let recording = collector.finish(Finished {
        options: &options,
        targets,
        duration,
        losses,
        syscalls,
        allocations,
        stop,
        cost: SelfCost {
            bpf,
            process_cpu: own_cpu_time(),
        },
    });
    write_outputs(&recording, outputs, stopped, options.top)?;
    Ok(recording)
}

/// How long a started command may take from `exec` to its entry point before it is let
/// go without its tables loaded up front.
const ENTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Lets a held command `exec`, and stops it again at its program's entry point until the
/// tables of every library the dynamic loader mapped are loaded, so that its first
/// stacks (its first allocations above all) unwind whole.
fn start_command(
    command: &mut HeldCommand,
    probes: &mut Probes,
    collector: &mut Collector,
) -> Result<(), Failure> {
    let hold = match collector.unwind_tables {
        Some(_) => probes.hold_at_entry(command.pid(), command.program())?,
        None => None,
    };
    command.release();
    if let Some(hold) = hold {
        let stopped = command.wait_for_stop(ENTRY_TIMEOUT);
        probes.release_hold(hold)?;
        if stopped {
            collector.read_map(command.pid());
        }
        // Also after a time-out: the probe may have fired just before it went.
        if command.poll_exit().is_none() {
            command.resume();
        }
    }
    Ok(())
}

/// What the allocation probes left in the kernel when they were detached.
struct Allocations {
    live: LiveSummary,
    alloc_calls: u64,
    free_calls: u64,
}

/// Reads the allocation tables, with blocks aged as of `stopped_ns` (CLOCK_MONOTONIC).
fn read_allocations(tables: &AllocTables, options: &RecordOptions, stopped_ns: u64) -> Allocations {
    let leak_options = LeakOptions {
        min_age: options.leak_min_age,
        sample_bytes: options.probes.alloc_sample_bytes,
    };
    Allocations {
        live: summarize_live(&tables.live(), stopped_ns, leak_options),
        alloc_calls: tables.total(AllocCounter::Allocations),
        free_calls: tables.total(AllocCounter::Frees),
    }
}

/// CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads.
fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Latency rules need syscall tracing and a syscall that exists; leak rules need
/// allocation tracking.
fn check_rules(options: &RecordOptions) -> Result<(), Failure> {
    for rule in &options.analysis.rules {
        if matches!(rule.check, Check::Leak { .. }) && !options.probes.events.alloc {
            return Err(Failure::Usage(format!(
                "rule `{rule}` needs allocation tracking: add --events alloc"
            )));
        }
        if let Check::Latency { syscall, .. } = &rule.check {
            if !options.probes.events.syscalls {
                return Err(Failure::Usage(format!(
                    "rule `{rule}` needs syscall tracing: add --events syscalls"
                )));
            }
            if syscall_number(syscall).is_none() {
                return Err(Failure::Usage(format!(
                    "rule `{rule}`: there is no syscall named `{syscall}`"
                )));
            }
        }
    }
    Ok(())
}

/// Streams samples until the recording should stop, and says why it stopped.
async fn watch(
    options: &RecordOptions,
    signals: &mut Signals,
    pids: &[u32],
    mut command: Option<&mut HeldCommand>,
    stream: &mut EventStream,
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
        stream.drain(|event| collector.add(event));
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

/// Takes each streamed record through unwinding and aggregation, and keeps the memory
/// maps that both those and symbolization need current while the targets run.
#[derive(Default)]
struct Collector {
    maps: MemoryMaps,
    /// `None` when no stack is unwound from tables (`--unwind fp`, block IO alone).
    unwind_tables: Option<UnwindTables>,
    symbolizer: Symbolizer,
    python: PythonFrames,
    stack_quality: StackQuality,
    cpu: StackCounts,
    offcpu: StackCounts,
    slow_calls: Vec<SlowCall>,
    slow_call_count: u64,
    slow_latencies: SyscallLatencies,
    io: IoTable,
    /// Allocating stacks by id.
    alloc_stacks: HashMap<u64, StackKey>,
}

/// Adds a record's stack to `counts` with `weight`; a stack not seen before may hold
/// addresses outside the known mappings, so those are checked then, and only then.
fn weigh(
    maps: &mut MemoryMaps,
    counts: &mut StackCounts,
    header: &EventHeader,
    stacks: &Stacks,
    key: StackKey,
    weight: u64,
) {
    if counts.add(header.tid, key, weight) {
        maps.observe(header.tgid, stacks.user_frames());
    }
}

/// What the recording adds to the collector's aggregates at the end.
struct Finished<'o> {
    options: &'o RecordOptions,
    targets: Vec<TargetProcess>,
    duration: Duration,
    losses: Losses,
    syscalls: Vec<SyscallSummary>,
    allocations: Option<Allocations>,
    stop: StopReason,
    cost: SelfCost,
}

impl Collector {
    fn add(&mut self, event: Event) {
        match event {
            Event::Cpu(sample) => {
                self.note_end(sample.header.tgid, sample.stacks.user_end, |q| &mut q.cpu);
                let key = self.stack_key(&sample.header, &sample.stacks, true);
                weigh(
                    &mut self.maps,
                    &mut self.cpu,
                    &sample.header,
                    &sample.stacks,
                    key,
                    1,
                );
            }
            Event::OffCpu(span) => {
                self.note_end(span.header.tgid, span.stacks.user_end, |q| &mut q.offcpu);
                let key = self.stack_key(&span.header, &span.stacks, false);
                weigh(
                    &mut self.maps,
                    &mut self.offcpu,
                    &span.header,
                    &span.stacks,
                    key,
                    span.duration_ns,
                );
            }
            Event::SlowSyscall(call) => {
                self.note_end(call.header.tgid, call.stacks.user_end, |q| {
                    &mut q.slow_calls
                });
                self.slow_latencies.record(call.nr, call.duration_ns);
                self.slow_call_count += 1;
                let stack = self.stack_key(&call.header, &call.stacks, false);
                self.maps.observe(call.header.tgid, &stack.user);
                self.keep_slow_call(SlowCall {
                    tid: call.header.tid,
                    nr: call.nr,
                    ret: call.ret,
                    duration_ns: call.duration_ns,
                    stack,
                });
            }
            Event::BlockIo(io) => self.io.add(&io),
            Event::AllocStack(stack) => {
                let tgid = stack.header.tgid;
                self.note_end(tgid, stack.end, |q| &mut q.alloc);
                self.maps.observe(tgid, stack.frames());
                let python = self.python.resolve(tgid, &stack.python, false);
                let complete = StackEnd::from_raw(stack.end) == StackEnd::Root;
                self.alloc_stacks.insert(
                    stack.id,
                    StackKey::new(tgid, stack.frames(), &[]).with_python(python, complete),
                );
            }
        }
        self.follow_maps();
    }

    /// The aggregation key of a record's stacks, with its Python frames named; `counted`
    /// counts how the Python stack ended (once per CPU sample).
    fn stack_key(&mut self, header: &EventHeader, stacks: &Stacks, counted: bool) -> StackKey {
        let python = self.python.resolve(header.tgid, &stacks.python, counted);
        let complete = StackEnd::from_raw(stacks.user_end) == StackEnd::Root;
        StackKey::new(header.tgid, stacks.user_frames(), stacks.kernel_frames())
            .with_python(python, complete)
    }

    /// Reads the process's memory map now, and has everything that follows it follow.
    fn read_map(&mut self, tgid: u32) {
        self.maps.read(tgid);
        self.follow_maps();
    }

    /// Hands each memory map read since the last call to the symbolizer, which opens
    /// the mapped files while the process lives, and to the unwind tables.
    fn follow_maps(&mut self) {
        for tgid in self.maps.take_updated() {
            let mappings = self.maps.mappings(tgid);
            self.symbolizer.keep_files(tgid, mappings);
            self.python.observe(tgid, mappings);
            if let Some(tables) = &mut self.unwind_tables {
                tables.load_mappings(tgid, mappings);
            }
        }
    }

    /// Counts how a stack ended; one that reached an address the kernel has no mapping
    /// for makes the process's map read again, and so its new tables load.
    fn note_end(
        &mut self,
        tgid: u32,
        end: u32,
        kind: impl FnOnce(&mut StackQuality) -> &mut Completeness,
    ) {
        let end = StackEnd::from_raw(end);
        kind(&mut self.stack_quality).add(end);
        if end == StackEnd::UnknownMapping {
            self.maps.refresh(tgid);
        }
    }

    /// Names each leak candidate's stack and the function that allocated.
    fn name_leaks(
        &self,
        allocations: Allocations,
        names: &Names,
        min_age: Duration,
        recorded: Duration,
    ) -> Leaks {
        let mut profile = ProfileBuilder::default();
        let candidates: Vec<LeakCandidate> = allocations
            .live
            .candidates
            .iter()
            .map(|group| {
                let stack = match self.alloc_stacks.get(&group.stack_id) {
                    Some(key) => names.frames(key),
                    None => vec![Frame::native("[stack not recorded]", false)],
                };
                // Python code allocates through the interpreter: its innermost Python
                // frame is what allocated.
                let function = stack
                    .iter()
                    .rev()
                    .find(|frame| frame.python.is_some())
                    .or_else(|| {
                        stack
                            .iter()
                            .rev()
                            .find(|frame| !allocators::is_allocator_frame(&frame.name))
                    })
                    .map_or_else(|| "[unknown]".to_owned(), |frame| frame.name.clone());
                let bytes = group.bytes.round() as u64;
                profile.push(stack.iter().cloned(), bytes);
                LeakCandidate {
                    pid: group.tgid,
                    function,
                    stack,
                    bytes,
                    count: group.count.round() as u64,
                    oldest_age: group.oldest_age,
                    growth_per_s: growth_per_second(group.bytes, recorded, min_age),
                }
            })
            .collect();
        Leaks {
            min_age,
            alloc_calls: allocations.alloc_calls,
            free_calls: allocations.free_calls,
            outstanding_bytes: allocations.live.outstanding_bytes.round() as u64,
            outstanding_count: allocations.live.outstanding_count.round() as u64,
            candidates,
            profile: profile.build(),
        }
    }

    /// Keeps the slowest [`SLOW_CALLS_KEPT`] calls, trimming in batches.
    fn keep_slow_call(&mut self, call: SlowCall) {
        self.slow_calls.push(call);
        if self.slow_calls.len() >= 2 * SLOW_CALLS_KEPT {
            self.trim_slow_calls();
        }
    }

    fn trim_slow_calls(&mut self) {
        self.slow_calls
            .sort_by_key(|call| std::cmp::Reverse(call.duration_ns));
        self.slow_calls.truncate(SLOW_CALLS_KEPT);
    }

    /// Names every stack at once and builds the recording.
    fn finish(mut self, finished: Finished<'_>) -> Recording {
        self.trim_slow_calls();
        let options = finished.options;
        let candidate_stacks: Vec<&StackKey> = finished
            .allocations
            .iter()
            .flat_map(|allocations| &allocations.live.candidates)
            .filter_map(|group| self.alloc_stacks.get(&group.stack_id))
            .collect();
        let names: Names = self
            .symbolizer
            .resolve(
                &self.maps,
                self.cpu
                    .stacks()
                    .chain(self.offcpu.stacks())
                    .map(|(key, _)| key)
                    .chain(self.slow_calls.iter().map(|call| &call.stack))
                    .chain(candidate_stacks),
            )
            .with_python(self.python.functions().to_vec());
        let leaks = finished.allocations.map_or_else(
            || Leaks {
                min_age: options.leak_min_age,
                ..Leaks::default()
            },
            |allocations| {
                self.name_leaks(allocations, &names, options.leak_min_age, finished.duration)
            },
        );
        let profile = names.profile(&self.cpu, Capture::Sampled);
        let observations = Observations {
            syscalls: &finished.syscalls,
            leaked_bytes: leaks.candidate_bytes(),
        };
        let analysis = analyze(&profile, &observations, &options.analysis);
        let offcpu_profile = names.profile(&self.offcpu, Capture::AtTracepoint);
        let offcpu = OffCpu {
            functions: analyze(
                &offcpu_profile,
                &Observations::default(),
                &AnalysisOptions::default(),
            )
            .functions,
            profile: offcpu_profile,
            threads: self.offcpu.threads().collect(),
        };
        let slow_calls = self
            .slow_calls
            .iter()
            .map(|call| NamedSlowCall {
                name: syscall_name(call.nr),
                duration_ns: call.duration_ns,
                pid: call.stack.tgid,
                tid: call.tid,
                ret: call.ret,
                stack: names.frames_below_tracepoint(&call.stack),
            })
            .collect();
        Recording {
            targets: finished.targets,
            command: match &options.target {
                TargetSpec::Command(argv) => Some(
                    argv.iter()
                        .map(|arg| arg.to_string_lossy().into_owned())
                        .collect(),
                ),
                TargetSpec::Pids(_) => None,
            },
            duration: finished.duration,
            probes: options.probes,
            threads: self.cpu.threads().collect(),
            losses: finished.losses,
            stack_quality: StackQuality {
                tables: self
                    .unwind_tables
                    .as_ref()
                    .map(UnwindTables::stats)
                    .unwrap_or_default(),
                unnamed: names
                    .unnamed
                    .iter()
                    .map(|(reason, count)| (reason.name(), *count))
                    .collect(),
                ..self.stack_quality
            },
            profile,
            analysis,
            syscalls: finished.syscalls,
            slow_calls,
            slow_call_count: self.slow_call_count,
            io: self.io.rows(),
            offcpu,
            leaks,
            stop: finished.stop,
            cost: finished.cost,
            python: self.python.report(),
        }
    }
}

/// Writes the flame graphs, the collapsed stacks, the JSON report and the summary, in
/// that order, so the report can say how long it took from the stop to a written SVG.
fn write_outputs(
    recording: &Recording,
    outputs: OutputFiles,
    stopped: Instant,
    top: usize,
) -> Result<(), Failure> {
    let mut written = Vec::new();
    let folded_lines = folded::lines(&recording.profile, 1);
    if let Some(file) = outputs.svg {
        let labels = summary::flame_graph_labels(recording);
        written.push(file.write_with(|writer| svg::write(&folded_lines, &labels, writer))?);
    }
    if let Some(file) = outputs.offcpu_svg {
        // Blocked time is drawn in microseconds: nanoseconds would make every width a
        // ten-digit number.
        let lines = folded::lines(&recording.offcpu.profile, 1000);
        let labels = summary::offcpu_flame_graph_labels(recording);
        written.push(file.write_with(|writer| svg::write(&lines, &labels, writer))?);
    }
    if let Some(file) = outputs.leaks_svg {
        let lines = folded::lines(&recording.leaks.profile, 1);
        let labels = summary::leaks_flame_graph_labels(recording);
        written.push(file.write_with(|writer| svg::write(&lines, &labels, writer))?);
    }
    let stop_to_svg = stopped.elapsed();
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
