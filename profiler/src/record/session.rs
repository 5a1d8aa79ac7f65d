//! The session: checks, starts or finds the targets, attaches the probes, streams
//! their records into the [`Collector`] until the recording ends, detaches, and writes
//! the outputs of the finished [`Report`].

use std::time::{Duration, Instant};

use profiler_common::{AllocCounter, DRAIN_INTERVAL_MS};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc::UnboundedReceiver,
    time::{MissedTickBehavior, interval, interval_at, sleep},
};

use super::{
    RecordOptions, TargetSpec, View,
    collector::{Allocations, Collector, Finished},
    follow::{FollowedProcesses, WAITING_LOOK_INTERVAL},
    live::{Live, METRICS_WINDOW, MetricsEndpoint, Snapshots, Tables, leak_options},
    top::{self, Key, TopView},
};
use crate::{
    aggregate::{summarize_live, summarize_syscalls},
    allocators,
    analyze::Check,
    attach::{self, AllocTables, ProbeSettings, Probes, check_privileges},
    cgroup::{self, Cgroup},
    exit::Failure,
    render::{OutputFiles, summary},
    report::{Losses, Report, SelfCost, StopReason, TargetProcess},
    stream::EventStream,
    syscall_names::syscall_number,
    target::{self, ExitWatch, HeldCommand},
};

/// Records, writes every output, and returns the report.
pub async fn record(options: RecordOptions) -> Result<Report, Failure> {
    let began = Instant::now();
    // From here on Ctrl-C and SIGTERM end the recording instead of the process, so that
    // whatever was gathered is written out.
    let mut signals = Signals::new().map_err(|error| Failure::Other(error.into()))?;
    // Everything that can be checked is checked before anything is loaded or started.
    check_options(&options)?;
    if let TargetSpec::Pids(pids) = &options.target {
        pids.iter()
            .try_for_each(|&pid| target::ensure_exists(pid))?;
    }
    let cgroup = match &options.target {
        TargetSpec::Cgroup(path) => Some(Cgroup::find(path)?),
        _ => None,
    };
    let is_command = matches!(options.target, TargetSpec::Command(_));
    check_privileges(
        options.probes.events.alloc || (is_command && options.probes.uses_unwind_tables()),
    )?;
    let mut command = match &options.target {
        TargetSpec::Command(argv) => Some(HeldCommand::spawn(argv)?),
        TargetSpec::Pids(_) | TargetSpec::Cgroup(_) | TargetSpec::All => None,
    };
    let outputs = OutputFiles::create(&options.outputs, options.probes.events)?;
    let mut live = Live {
        snapshots: Snapshots::new(&options),
        metrics: match options.metrics_addr {
            Some(address) => Some(MetricsEndpoint::serve(address).await?),
            None => None,
        },
        top: None,
    };
    let mut pids: Vec<u32> = match &options.target {
        TargetSpec::Pids(pids) if options.probes.follow_children => trees_of(pids),
        TargetSpec::Pids(pids) => dedup(pids),
        TargetSpec::Command(_) => command.iter().map(HeldCommand::pid).collect(),
        TargetSpec::Cgroup(_) => cgroup.iter().flat_map(Cgroup::processes).collect(),
        // Processes come as they are sampled: their maps are read then.
        TargetSpec::All => Vec::new(),
    };

    // The targets' tables are compiled before the BPF object is loaded, and handed to
    // the kernel as soon as it is. A started command has not exec'd its program yet:
    // its tables are loaded when it reaches its entry point.
    let mut collector = Collector::new(
        options.probes.uses_unwind_tables(),
        &Live::windows(&options),
        options.python_internals,
    );
    collector.cgroup = cgroup.as_ref().map(|cgroup| cgroup.path.clone());
    match &options.target {
        TargetSpec::Command(_) => {}
        // Every running process's tables load before the first samples, as a named
        // target's do.
        TargetSpec::All => target::all_processes()
            .into_iter()
            .for_each(|pid| collector.read_map(pid)),
        _ => pids.iter().for_each(|&pid| collector.read_map(pid)),
    }
    let settings = ProbeSettings {
        cgroup: cgroup.as_ref().map(|cgroup| cgroup.id),
        ..options.probes
    };
    let mut probes = Probes::load(&settings)?;
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
        let (chunks, processes) = probes.take_unwind_maps()?;
        tables.connect(chunks, processes);
    }
    let mut stream = EventStream::new(probes.take_events()?)
        .map_err(|error| Failure::Other(anyhow::anyhow!("watching the ring buffer: {error}")))?;
    let losses = probes.take_loss_counters()?;
    let steal_clocks = probes.take_steal_clocks()?;
    let syscall_tables = probes.take_syscall_tables()?;
    let alloc_tables = probes.take_alloc_tables()?;
    probes.attach(&pids)?;
    // The probe that follows forks is in now; the processes the tree started since it
    // was first listed, while the programs loaded, are not followed by it.
    if let TargetSpec::Pids(named) = &options.target
        && options.probes.follow_children
    {
        let late: Vec<u32> = trees_of(named)
            .into_iter()
            .filter(|&pid| !probes.is_target(pid))
            .collect();
        for pid in late {
            collector.read_map(pid);
            probes.add_target(pid)?;
            pids.push(pid);
        }
    }
    if options.probes.events.alloc {
        for &pid in &pids {
            let program = command.as_ref().map(HeldCommand::program);
            probes.attach_allocator(pid, &allocators::probe_points(pid, program)?)?;
        }
    }
    let started = Instant::now();
    let start_cpu = own_cpu_time();
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
                TargetSpec::Pids(_) | TargetSpec::Cgroup(_) | TargetSpec::All => {
                    target::process_name(pid)
                }
            };
            TargetProcess {
                pid,
                name,
                namespace_pid: target::namespace_pid(pid),
                cgroup: cgroup::of_process(pid),
            }
        })
        .collect();
    let tables = Tables {
        losses: &losses,
        syscalls: &syscall_tables,
        allocations: &alloc_tables,
    };
    let exits = match (&options.target, &command) {
        (TargetSpec::Pids(_), None) => Some(ExitWatch::new(&pids).map_err(|error| {
            Failure::Other(anyhow::anyhow!(
                "watching the targets for their exit: {error}"
            ))
        })?),
        _ => None,
    };
    let watched = Watched {
        exits: exits.as_ref(),
        targets: &targets,
        tables: &tables,
        started,
    };
    let mut followed_processes = options
        .probes
        .follow_children
        .then(|| FollowedProcesses::new(options.probes.events.alloc));
    if options.view == View::Top {
        let cgroup = cgroup.as_ref().map(|cgroup| cgroup.path.as_str());
        let label = summary::targets_label(options.probes.all, cgroup, &targets);
        live.top = Some(TopView::start(label, options.probes.frequency_hz)?);
    }
    let stop = watch(
        &options,
        &mut signals,
        &watched,
        command.as_mut(),
        &mut stream,
        &mut collector,
        &mut live,
        Following {
            probes: &mut probes,
            processes: followed_processes.as_mut(),
        },
    )
    .await;
    // The terminal is given back before anything else is printed.
    live.top = None;
    for failure in followed_processes
        .iter()
        .flat_map(|followed| &followed.failures)
    {
        eprintln!("profiler: warning: no allocation probes in a followed process, {failure}");
    }
    let stopped = Instant::now();
    // Blocks are aged as of the stop, not of whenever the table is read: ending a
    // started command alone can take seconds.
    let stopped_ns = monotonic_now_ns();

    let kernel_memory_bytes = attach::kernel_memory_bytes();
    let (bpf, closing_probes) = probes.detach();
    let duration = stopped.duration_since(started);
    // Records submitted before the detach are still in the ring.
    stream.drain(|event| collector.add(event));
    // The last interval ends here, however short, so that the snapshots add up to
    // the whole recording.
    if let Some(snapshots) = &mut live.snapshots {
        snapshots.write(&mut collector, &options, &targets, duration);
    }
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
        .then(|| read_allocations(&alloc_tables, &collector, &options, stopped_ns));
    let syscalls = summarize_syscalls(
        syscall_tables.stats(),
        syscall_tables.errnos(),
        std::mem::take(&mut collector.slow_latencies),
    );
    let report = collector.finish(Finished {
        options: &options,
        targets,
        duration,
        losses,
        steal_samples_left_out: steal_clocks.samples_left_out(),
        syscalls,
        allocations,
        stop,
        cost: SelfCost {
            bpf,
            process_cpu: own_cpu_time(),
            start_cpu,
            start_wall: started - began,
            kernel_memory_bytes,
            ..SelfCost::default()
        },
    });
    write_outputs(&report, outputs, stopped, options.top, options.view)?;
    closing_probes.wait();
    Ok(report)
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

/// Reads the allocation tables, with blocks aged as of `stopped_ns` (CLOCK_MONOTONIC).
fn read_allocations(
    tables: &AllocTables,
    collector: &Collector,
    options: &RecordOptions,
    stopped_ns: u64,
) -> Allocations {
    Allocations {
        live: summarize_live(
            &tables.live(),
            collector.program_starts(),
            stopped_ns,
            leak_options(options),
        ),
        alloc_calls: tables.total(AllocCounter::Allocations),
        free_calls: tables.total(AllocCounter::Frees),
    }
}

/// CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads.
pub(super) fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Latency rules need syscall tracing and a syscall that exists; IO rules, block IO
/// tracing; leak rules, allocation tracking; interval snapshots, CPU samples; `--all`, no allocation probes.
fn check_options(options: &RecordOptions) -> Result<(), Failure> {
    if options.probes.all && options.probes.events.alloc {
        return Err(Failure::Usage(
            "--all does not go with --events alloc: allocation probes go into chosen processes (--pid, --cgroup)".to_owned(),
        ));
    }
    if options.interval.is_some() && !options.probes.events.cpu {
        return Err(Failure::Usage(
            "--interval snapshots the on-CPU samples: add cpu to --events".to_owned(),
        ));
    }
    for rule in &options.analysis.rules {
        if matches!(rule.check, Check::Leak { .. }) && !options.probes.events.alloc {
            return Err(Failure::Usage(format!(
                "rule `{rule}` needs allocation tracking: add --events alloc"
            )));
        }
        if matches!(rule.check, Check::BlockIo { .. }) && !options.probes.events.io {
            return Err(Failure::Usage(format!(
                "rule `{rule}` needs block IO tracing: add --events io"
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

/// The next key typed into `profiler top`; never without its view.
async fn next_key(keys: Option<&mut UnboundedReceiver<Key>>) -> Option<Key> {
    match keys {
        Some(keys) => keys.recv().await,
        None => std::future::pending().await,
    }
}

/// Returns once every process `exits` watches has exited; never without a watch.
async fn exited(exits: Option<&ExitWatch>) {
    match exits {
        Some(exits) => exits.all_exited().await,
        None => std::future::pending().await,
    }
}

/// What the watch loop looks at besides the stream.
struct Watched<'w> {
    /// The named processes, whose exits end the recording; a started command is waited
    /// for as a child instead, and a cgroup or the machine is recorded until stopped.
    exits: Option<&'w ExitWatch>,
    targets: &'w [TargetProcess],
    tables: &'w Tables<'w>,
    started: Instant,
}

/// The probes that new processes need from userspace.
struct Following<'p> {
    probes: &'p mut Probes,
    /// When processes are followed.
    processes: Option<&'p mut FollowedProcesses>,
}

/// Streams samples until the recording should stop, keeps the live views current,
/// probes the new processes, and says why it stopped.
#[allow(clippy::too_many_arguments)]
async fn watch(
    options: &RecordOptions,
    signals: &mut Signals,
    watched: &Watched<'_>,
    mut command: Option<&mut HeldCommand>,
    stream: &mut EventStream,
    collector: &mut Collector,
    live: &mut Live,
    following: Following<'_>,
) -> StopReason {
    let Following {
        probes,
        processes: mut followed_processes,
    } = following;
    let mut tick = interval(Duration::from_millis(DRAIN_INTERVAL_MS));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let every = |period: Option<Duration>| {
        // A view not asked for gets a period that never comes.
        let period = period.unwrap_or(Duration::from_secs(86_400 * 365));
        let mut ticks = interval_at((watched.started + period).into(), period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    };
    let mut snapshot_tick = every(options.interval);
    let mut metrics_tick = every(options.metrics_addr.map(|_| METRICS_WINDOW));
    let mut top_tick = every(live.top.as_ref().map(|_| top::REFRESH));
    let mut keys = live.top.as_mut().and_then(TopView::take_keys);
    let mut timer_failed = false;
    let mut cgroup_failed = false;
    let deadline = sleep(options.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        let stop = tokio::select! {
            () = stream.wakeup() => None,
            () = sleep(WAITING_LOOK_INTERVAL),
                if followed_processes.as_deref().is_some_and(FollowedProcesses::waiting) => None,
            _ = tick.tick() => {
                let exited = command
                    .as_deref_mut()
                    .is_some_and(|command| command.poll_exit().is_some());
                exited.then_some(StopReason::TargetsExited(None))
            }
            () = exited(watched.exits) => Some(StopReason::TargetsExited(None)),
            _ = snapshot_tick.tick(), if live.snapshots.is_some() => {
                stream.drain(|event| collector.add(event));
                if let Some(snapshots) = &mut live.snapshots {
                    snapshots.write(collector, options, watched.targets, watched.started.elapsed());
                }
                None
            }
            _ = metrics_tick.tick(), if live.metrics.is_some() => {
                stream.drain(|event| collector.add(event));
                if let Some(metrics) = &live.metrics {
                    metrics.refresh(collector, options, watched.tables, stream.malformed());
                }
                None
            }
            _ = top_tick.tick(), if live.top.is_some() => {
                stream.drain(|event| collector.add(event));
                if let Some(top) = &mut live.top {
                    let elapsed = watched.started.elapsed();
                    top.refresh(collector, options, watched.tables, stream.malformed(), elapsed);
                }
                None
            }
            Some(key) = next_key(keys.as_mut()) => {
                let quit = live.top.as_mut().is_some_and(|top| top.press(key));
                quit.then_some(StopReason::Quit)
            }
            () = &mut deadline, if options.duration.is_some() => Some(StopReason::Duration),
            _ = signals.interrupt.recv() => Some(StopReason::Interrupted),
            _ = signals.terminate.recv() => Some(StopReason::Terminated),
        };
        stream.drain(|event| collector.add(event));
        // A thread sampled for the first time runs on the per-CPU timers until it has
        // its own; without one it stays on them, sampled all the same.
        for (tgid, tid) in collector.take_threads_sampled() {
            if let Err(error) = probes.time_thread(tgid, tid)
                && !timer_failed
            {
                timer_failed = true;
                eprintln!("profiler: warning: threads keep the per-CPU timers only: {error}");
            }
        }
        probes.release_ended_thread_timers();
        if let Err(error) = probes.look_for_cgroup_joiners()
            && !cgroup_failed
        {
            cgroup_failed = true;
            eprintln!(
                "profiler: warning: processes moved into the cgroup from now on are not found: {error}"
            );
        }
        // Every tick, for libraries mapped since; and at once when a process started,
        // so that a forked child gets the probes before it execs and they stay.
        let started = collector.take_processes_started();
        if let Some(followed) = followed_processes.as_deref_mut() {
            started.iter().for_each(|&pid| followed.started(pid));
            if !started.is_empty() || followed.due() {
                for pid in followed.update(probes) {
                    collector.read_map(pid);
                }
            }
        }
        if let Some(stop) = stop {
            return stop;
        }
    }
}

/// The signals that end a report.
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

/// Writes every output, then the summary that lists them.
fn write_outputs(
    report: &Report,
    outputs: OutputFiles,
    stopped: Instant,
    top: usize,
    view: View,
) -> Result<(), Failure> {
    let written = outputs.write(report, stopped)?;
    if view == View::Summary {
        summary::print(report, &written, top);
    }
    Ok(())
}

/// The processes `pids` name and every process they started that still runs.
fn trees_of(pids: &[u32]) -> Vec<u32> {
    dedup(
        &pids
            .iter()
            .flat_map(|&pid| target::with_descendants(pid))
            .collect::<Vec<_>>(),
    )
}

fn dedup(pids: &[u32]) -> Vec<u32> {
    let mut unique = pids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    unique
}

/// The profiler process's user plus system CPU time.
pub(super) fn own_cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}
