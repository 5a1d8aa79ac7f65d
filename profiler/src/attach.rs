//! Loading the BPF object and attaching its programs to the kernel.
//!
//! [`Probes`] owns everything that is attached; dropping it, or calling
//! [`Probes::detach`], takes every probe out of the kernel again.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fmt, fs,
    num::NonZeroU32,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
    str::FromStr,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader, include_bytes_aligned,
    maps::{
        Array, ArrayOfMaps, HashMap, IterableMap as _, MapData, MapError, PerCpuArray,
        PerCpuHashMap, ProgramArray, RingBuf,
    },
    programs::{
        BtfTracePoint, PerfEvent, ProgramError, RawTracePoint, TracePoint, UProbe,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
        uprobe::{UProbeLink, UProbeLinkId, UProbeScope},
    },
    sys::{Stats, SyscallError},
    util::online_cpus,
};
use profiler_common::{
    AllocCounter, CpuSample, LiveAllocation, LiveAllocationKey, LossCounter, MAX_EVENTS_RING_BYTES,
    MAX_LIVE_ALLOCATIONS, MAX_SYSCALLS, MAX_TARGETS, ProcessMappings, PythonProcess,
    RING_WAKEUP_FRACTION, SAMPLE_INTERVAL_DRAWS, StealClock, StealClockLayout, SyscallStats,
    TARGET_FOLLOWED, TARGET_NAMED, global_names, map_names, program_names,
};

use crate::{
    allocators::ProbePoint, cgroup::CgroupId, exit::Failure, kernel_btf, steal_clock, tracefs,
};

static BPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler"));

/// Capabilities from `linux/capability.h`.
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYSLOG: u32 = 34;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with the name of the first missing capability, before anything is loaded.
///
/// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as the kernel allows.
pub fn check_privileges(uses_uprobes: bool) -> Result<(), Failure> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|error| Failure::Other(anyhow::anyhow!("reading /proc/self/status: {error}")))?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    // CAP_SYS_ADMIN also grants what CAP_BPF and CAP_PERFMON do, as before kernel 5.8.
    let needed = [
        (CAP_BPF, "CAP_BPF", "to load the BPF programs"),
        (
            CAP_PERFMON,
            "CAP_PERFMON",
            "to attach them to perf events and probes",
        ),
        (
            CAP_SYS_PTRACE,
            "CAP_SYS_PTRACE",
            "to read other users' processes' maps and memory",
        ),
        (
            CAP_DAC_READ_SEARCH,
            "CAP_DAC_READ_SEARCH",
            "to read tracefs and other users' files",
        ),
        (
            CAP_SYSLOG,
            "CAP_SYSLOG",
            "to read the kernel's symbol addresses",
        ),
    ];
    let missing = needed.iter().find(|&&(cap, _, _)| {
        !has(cap) && !(has(CAP_SYS_ADMIN) && (cap == CAP_BPF || cap == CAP_PERFMON))
    });
    if let Some((_, name, why)) = missing {
        return Err(Failure::Privileges(format!(
            "missing capability {name} ({why}): run as root, or grant cap_bpf, cap_perfmon, \
             cap_sys_ptrace, cap_dac_read_search and cap_syslog"
        )));
    }
    // The uprobe PMU refuses CAP_PERFMON alone (seen on 6.18), though perf's docs say
    // otherwise.
    if uses_uprobes && !has(CAP_SYS_ADMIN) {
        return Err(Failure::Privileges(
            "missing capability CAP_SYS_ADMIN (the kernel places uprobes, for --events alloc \
             and to hold a started command at its entry, only for it): run as root, or grant \
             cap_sys_admin too, or profile a running --pid without --events alloc"
                .to_owned(),
        ));
    }
    Ok(())
}

/// What the kernel says about the profiler's own BPF cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct BpfCost {
    /// Total time spent in the profiler's BPF programs.
    pub run_time: Duration,
    /// How many times they ran.
    pub run_count: u64,
}

/// The kinds of event a recording can trace, as `--events` names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventSet {
    /// On-CPU stack samples.
    pub cpu: bool,
    /// Syscall counts, latencies and slow calls.
    pub syscalls: bool,
    /// Block IO requests.
    pub io: bool,
    /// Off-CPU time and the stacks behind it.
    pub offcpu: bool,
    /// Allocations and frees, for leak candidates.
    pub alloc: bool,
}

impl EventSet {
    /// Every kind, as `--events all` asks.
    pub const ALL: EventSet = EventSet {
        cpu: true,
        syscalls: true,
        io: true,
        offcpu: true,
        alloc: true,
    };

    /// Only on-CPU sampling, the default.
    pub const CPU: EventSet = EventSet {
        cpu: true,
        syscalls: false,
        io: false,
        offcpu: false,
        alloc: false,
    };

    /// The kinds in the set, as `--events` names them.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (self.cpu, "cpu"),
            (self.syscalls, "syscalls"),
            (self.io, "io"),
            (self.offcpu, "offcpu"),
            (self.alloc, "alloc"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
    }
}

impl FromStr for EventSet {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut events = EventSet::default();
        for name in list.split(',').map(str::trim) {
            match name {
                "all" => events = EventSet::ALL,
                "cpu" => events.cpu = true,
                "syscalls" => events.syscalls = true,
                "io" => events.io = true,
                "offcpu" => events.offcpu = true,
                "alloc" => events.alloc = true,
                other => {
                    return Err(format!(
                        "unknown event kind `{other}`: expected cpu, syscalls, io, offcpu, alloc or all"
                    ));
                }
            }
        }
        Ok(events)
    }
}

impl fmt::Display for EventSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().collect::<Vec<_>>().join(","))
    }
}

/// How user stacks are unwound, as `--unwind` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UnwindMethod {
    /// From the binaries' call-frame information, in the kernel.
    Dwarf,
    /// By walking frame pointers.
    Fp,
}

/// What the probes record, fixed when the BPF object is loaded.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSettings {
    /// The kinds of event to trace.
    pub events: EventSet,
    /// CPU samples per second of each thread's CPU time.
    pub frequency_hz: u32,
    /// Whether the processes the targets start become targets too (`-- CMD`,
    /// `--pid --children`).
    pub follow_children: bool,
    /// Syscalls at least this slow are streamed with their stacks.
    pub slow_syscall: Duration,
    /// Off-CPU spans shorter than this are dropped in the kernel.
    pub offcpu_min: Duration,
    /// Whether a blocking thread's kernel stack is taken as it blocks, with the
    /// scheduler's own functions on it, rather than read as its span ends.
    pub offcpu_scheduler_frames: bool,
    /// Mean bytes between sampled allocations; 0 tracks every allocation.
    pub alloc_sample_bytes: u64,
    /// How CPU, off-CPU and slow-syscall stacks are unwound.
    pub unwind: UnwindMethod,
    /// With `--cgroup`: the group whose processes, present and future, are targets.
    pub cgroup: Option<CgroupId>,
    /// With `--all`: every process on the machine is a target.
    pub all: bool,
}

impl ProbeSettings {
    /// CPU time a sample stands for, in nanoseconds.
    pub fn sample_interval_ns(&self) -> u64 {
        1_000_000_000 / u64::from(self.frequency_hz.max(1))
    }

    /// Whether any stack is unwound from the unwind tables: allocation stacks always
    /// are, CPU, off-CPU and slow-syscall stacks unless frame pointers are walked.
    /// Block requests carry no stack.
    pub fn uses_unwind_tables(&self) -> bool {
        let events = self.events;
        events.alloc
            || (self.unwind == UnwindMethod::Dwarf
                && (events.cpu || events.syscalls || events.offcpu))
    }
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            events: EventSet::CPU,
            frequency_hz: 99,
            follow_children: false,
            slow_syscall: Duration::from_millis(10),
            offcpu_min: Duration::from_millis(1),
            offcpu_scheduler_frames: false,
            alloc_sample_bytes: 0,
            unwind: UnwindMethod::Dwarf,
            cgroup: None,
            all: false,
        }
    }
}

/// `kernel.perf_event_max_sample_rate`, which the kernel lowers when sampling
/// interrupts take too long.
fn max_sample_rate() -> Option<u32> {
    fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()
        .and_then(|rate| rate.trim().parse().ok())
}

/// Whether a recording with these settings uses a map.
type MapUse = fn(&ProbeSettings) -> bool;

/// Maps that only some recordings use; they shrink to one entry in the others, since a
/// per-CPU syscall table takes over a megabyte per CPU, the kernel builds the live
/// allocation table's 4 Mi buckets (64 MiB, 68 ms of the start here) even when no block
/// ever goes in, and preallocated maps cost their full size whether used or not.
const MAPS_BY_USE: [(&str, MapUse); 11] = [
    ("SYSCALL_STATS", |settings| settings.events.syscalls),
    ("SYSCALL_STARTS", |settings| settings.events.syscalls),
    (map_names::SYSCALL_ERRNOS, |settings| {
        settings.events.syscalls
    }),
    ("IO_STARTS", |settings| settings.events.io),
    ("OFFCPU_STARTS", |settings| settings.events.offcpu),
    ("THREAD_VERDICTS", |settings| {
        settings.events.syscalls || settings.events.offcpu
    }),
    ("ALLOC_CALLS", |settings| settings.events.alloc),
    (map_names::LIVE_ALLOCATIONS, |settings| {
        settings.events.alloc
    }),
    ("ALLOC_STACKS_SEEN", |settings| settings.events.alloc),
    // `--all` samples with the CPU timers only; no thread has a timer of its own.
    (map_names::THREAD_TIMER_FIRINGS, |settings| {
        settings.events.cpu && !settings.all
    }),
    ("ROW_CACHE", ProbeSettings::uses_unwind_tables),
];

/// The ring buffer's size for a recording. CPU samples come at most at the sampling rate
/// on every CPU, so they get room for a second of them, ten drain intervals. Off-CPU
/// spans, slow syscalls, block requests and new allocation stacks come at rates with no
/// bound; they get [`STREAMED_RING_BYTES`] more, and wake the reader when a quarter of
/// the ring is full. The ring's pages are mapped into this process twice (so that a
/// record can wrap around), and count twice in its resident memory.
fn events_ring_bytes(settings: &ProbeSettings) -> u32 {
    let EventSet {
        cpu,
        syscalls,
        io,
        offcpu,
        alloc,
    } = settings.events;
    let cpus = online_cpus().map_or(1, |cpus| cpus.len()) as u64;
    let samples = if cpu {
        u64::from(settings.frequency_hz) * cpus * size_of::<CpuSample>() as u64
    } else {
        0
    };
    let streamed = if syscalls || io || offcpu || alloc {
        STREAMED_RING_BYTES
    } else {
        0
    };
    let smallest = 256 << 10;
    (samples + streamed)
        .next_power_of_two()
        .clamp(smallest, u64::from(MAX_EVENTS_RING_BYTES)) as u32
}

/// Ring space for the records that come at no bounded rate: about 1,800 off-CPU spans
/// or slow calls with their stacks. A 16 MiB ring (32 MiB of resident memory) lost
/// nothing more in the tests or the load-test bench, where every span of a workload
/// (`--offcpu-min-us 0`) and a gunicorn service's slow calls and spans fit in this.
const STREAMED_RING_BYTES: u64 = 4 << 20;

/// The kernel's slots for the unwind row chunks, each an `Array<UnwindRow>`.
pub type UnwindChunkSlots = ArrayOfMaps<MapData, MapData>;

/// Each target's executable mappings, by tgid, as the kernel's unwinder reads them.
pub type ProcessMappingLists = HashMap<MapData, u32, ProcessMappings>;

/// Kernel memory of every BPF map this process holds, as the kernel charges it
/// (`memlock` in each map's fdinfo): the maps the object declared and the unwind row
/// chunks added since.
pub fn kernel_memory_bytes() -> u64 {
    let Ok(descriptors) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    descriptors
        .filter_map(Result::ok)
        .filter_map(|descriptor| std::fs::read_to_string(descriptor.path()).ok())
        .filter(|info| info.contains("map_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("memlock:"))?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The loaded BPF object and its attached programs.
pub struct Probes {
    ebpf: Ebpf,
    settings: ProbeSettings,
    targets: HashMap<MapData, u32, u8>,
    /// The BPF side's targets epoch, and the value it was last set to.
    targets_epoch: (Array<MapData, u64>, u64),
    /// Whether the kernel's type information told where a thread's TLS base is, which
    /// the Python walk needs.
    walks_python: bool,
    /// The threads with a CPU timer of their own, by tid: their process and the
    /// timer's link.
    thread_timers: StdHashMap<u32, (u32, PerfEventLinkId)>,
    /// How often each thread's own timer fired (the BPF side's handover count).
    thread_firings: HashMap<MapData, u32, u32>,
    /// When the timers of ended threads were last closed.
    timers_released_at: Instant,
    /// The allocation probes, by process.
    allocator_links: StdHashMap<u32, Vec<UProbeLink>>,
    /// Threads taking allocation probes out.
    closing_links: Vec<JoinHandle<()>>,
    /// Keeps the kernel's BPF run-time statistics on while the probes run.
    _stats: Option<OwnedFd>,
}

impl Probes {
    /// Loads the BPF object with `settings`. Nothing is attached yet.
    pub fn load(settings: &ProbeSettings) -> Result<Self, Failure> {
        raise_memlock_limit();
        let events = settings.events;
        // The kernel's run-time statistics read the clock twice around every program run:
        // nothing next to a CPU sample, but about 30 ns on every traced syscall, half of
        // what syscall tracing may cost. So they stay off when syscalls are traced.
        let stats = if events.syscalls {
            None
        } else {
            aya::sys::enable_stats(Stats::RunTime).ok()
        };
        let field_offsets = if events.io {
            tracefs::field_offsets(&tracefs::ensure_mounted()?)?
        } else {
            Default::default()
        };
        let slow_syscall_ns = settings.slow_syscall.as_nanos() as u64;
        let offcpu_min_ns = settings.offcpu_min.as_nanos() as u64;
        let offcpu_scheduler_frames = u64::from(settings.offcpu_scheduler_frames);
        let walk_frame_pointers = u64::from(settings.unwind == UnwindMethod::Fp);
        // Without it the kernel finds no Python thread state, and Python frames are off.
        let kernel_types = kernel_btf::Btf::read();
        let offset = |path: &[&str]| {
            kernel_types
                .as_ref()
                .and_then(|types| types.member_offset("task_struct", path))
                .unwrap_or(0)
        };
        let task_fsbase_offset = offset(&["thread", "fsbase"]);
        let steal_clock_layout = match &kernel_types {
            Some(types) if events.cpu => steal_clock::layout(types),
            _ => StealClockLayout::default(),
        };
        let task_tgid_offset = if settings.follow_children {
            offset(&["tgid"])
        } else {
            0
        };
        let task_pid_offset = if events.offcpu { offset(&["pid"]) } else { 0 };
        if events.offcpu && task_pid_offset == 0 {
            return Err(Failure::KernelFeature(
                "off-CPU spans need the kernel's BTF (/sys/kernel/btf/vmlinux) to find a \
                 task's thread id"
                    .to_owned(),
            ));
        }
        let (cgroup_id, cgroup_level) = settings
            .cgroup
            .map_or((0u64, 0u64), |cgroup| (cgroup.id, u64::from(cgroup.level)));
        let all_but = if settings.all {
            u64::from(std::process::id())
        } else {
            0
        };
        let ring_bytes = events_ring_bytes(settings);
        let ring_wakeup_bytes = u64::from(ring_bytes / RING_WAKEUP_FRACTION);
        let mut loader = EbpfLoader::new();
        // The programs use no CO-RE relocations, so the loader never parses the
        // kernel's BTF (tens of milliseconds).
        loader
            .override_global(global_names::SLOW_SYSCALL_NS, &slow_syscall_ns, true)
            .override_global(global_names::OFFCPU_MIN_NS, &offcpu_min_ns, true)
            .override_global(
                global_names::OFFCPU_SCHEDULER_FRAMES,
                &offcpu_scheduler_frames,
                true,
            )
            .override_global(global_names::TRACEPOINT_FIELDS, &field_offsets, true)
            .override_global(
                global_names::ALLOC_SAMPLE_BYTES,
                &settings.alloc_sample_bytes,
                true,
            )
            .override_global(
                global_names::WALK_FRAME_POINTERS,
                &walk_frame_pointers,
                true,
            )
            .override_global(global_names::TASK_FSBASE_OFFSET, &task_fsbase_offset, true)
            .override_global(global_names::TASK_TGID_OFFSET, &task_tgid_offset, true)
            .override_global(global_names::TASK_PID_OFFSET, &task_pid_offset, true)
            .override_global(global_names::STEAL_CLOCK_LAYOUT, &steal_clock_layout, true)
            .override_global(global_names::TARGET_CGROUP_ID, &cgroup_id, true)
            .override_global(global_names::TARGET_CGROUP_LEVEL, &cgroup_level, true)
            .override_global(global_names::TARGET_ALL_BUT, &all_but, true)
            .override_global(global_names::RING_WAKEUP_BYTES, &ring_wakeup_bytes, true);
        for (map, used) in MAPS_BY_USE {
            if !used(settings) {
                loader.map_max_entries(map, 1);
            }
        }
        loader.map_max_entries(map_names::EVENTS, ring_bytes);
        let mut ebpf = loader.load(BPF_OBJECT).map_err(load_failure)?;
        let targets = ebpf
            .take_map(map_names::TARGET_TGIDS)
            .ok_or_else(|| missing(map_names::TARGET_TGIDS))?;
        let targets = HashMap::try_from(targets).map_err(map_failure)?;
        let targets_epoch = ebpf
            .take_map(map_names::TARGETS_EPOCH)
            .ok_or_else(|| missing(map_names::TARGETS_EPOCH))?;
        let targets_epoch = Array::try_from(targets_epoch).map_err(map_failure)?;
        let thread_firings = ebpf
            .take_map(map_names::THREAD_TIMER_FIRINGS)
            .ok_or_else(|| missing(map_names::THREAD_TIMER_FIRINGS))?;
        let thread_firings = HashMap::try_from(thread_firings).map_err(map_failure)?;
        if settings.alloc_sample_bytes > 0 {
            set_sample_intervals(&mut ebpf, settings.alloc_sample_bytes)?;
        }
        Ok(Probes {
            ebpf,
            settings: *settings,
            targets,
            targets_epoch: (targets_epoch, 0),
            walks_python: task_fsbase_offset != 0,
            thread_timers: StdHashMap::new(),
            thread_firings,
            timers_released_at: Instant::now(),
            allocator_links: StdHashMap::new(),
            closing_links: Vec::new(),
            _stats: stats,
        })
    }

    /// Adds a process to the set that the programs record.
    pub fn add_target(&mut self, tgid: u32) -> Result<(), Failure> {
        self.targets
            .insert(&tgid, &TARGET_NAMED, 0)
            .map_err(|error| match error {
                MapError::SyscallError(SyscallError { io_error, .. })
                    if io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    Failure::Other(anyhow::anyhow!(
                        "more than {MAX_TARGETS} target processes are not supported"
                    ))
                }
                error => map_failure(error),
            })?;
        self.new_targets_epoch()
    }

    /// With `--cgroup`, has the programs look again at every thread's cgroup, so that
    /// a process moved into the group since is found; called every drain tick.
    pub fn look_for_cgroup_joiners(&mut self) -> Result<(), Failure> {
        if self.settings.cgroup.is_none() {
            return Ok(());
        }
        self.new_targets_epoch()
    }

    /// Has the programs find again, for every thread, whether it is a target's: the
    /// set of targets may have grown.
    fn new_targets_epoch(&mut self) -> Result<(), Failure> {
        let (map, epoch) = &mut self.targets_epoch;
        *epoch += 1;
        map.set(0, &*epoch, 0).map_err(map_failure)
    }

    /// Whether process `tgid` is a target already, named or followed since its fork.
    pub fn is_target(&self, tgid: u32) -> bool {
        self.targets.get(&tgid, 0).is_ok()
    }

    /// Attaches the programs of every kind of event the settings name; CPU samples of
    /// each thread of the processes `targets`.
    pub fn attach(&mut self, targets: &[u32]) -> Result<(), Failure> {
        let events = self.settings.events;
        if events.cpu {
            self.attach_cpu_sampler(targets)?;
        }
        // Before the syscall and off-CPU programs: the verdicts they cache about a
        // thread, and its syscall slot, must go when the thread exits.
        if events.syscalls || events.offcpu || self.settings.follow_children {
            self.attach_raw_tracepoint(program_names::PROCESS_EXIT, "sched_process_exit")?;
        }
        if events.syscalls {
            // Exit first: a call whose entry was not seen is ignored, never miscounted.
            self.attach_raw_tracepoint(program_names::SYSCALL_EXIT, "sys_exit")?;
            self.attach_raw_tracepoint(program_names::SYSCALL_ENTER, "sys_enter")?;
        }
        if events.io {
            self.attach_tracepoint(
                program_names::BLOCK_RQ_COMPLETE,
                "block",
                "block_rq_complete",
            )?;
            self.attach_tracepoint(program_names::BLOCK_RQ_ISSUE, "block", "block_rq_issue")?;
            self.attach_tracepoint(program_names::BLOCK_RQ_INSERT, "block", "block_rq_insert")?;
        }
        if events.offcpu {
            // Optional: without it (a kernel without the tracepoint, or a process without
            // rseq) the user stacks are taken at every switch, as exactly and at more cost.
            let _ = self.attach_raw_tracepoint(program_names::RSEQ_UPDATE, "rseq_update");
            self.attach_btf_tracepoint(program_names::SCHED_SWITCH, "sched_switch")?;
        }
        if events.alloc {
            self.load_alloc_stack_capture()?;
        }
        // An exec makes the process's unwind tables stale, and renames it.
        if self.settings.uses_unwind_tables() || self.settings.follow_children {
            self.attach_raw_tracepoint(program_names::PROCESS_EXEC, "sched_process_exec")?;
        }
        // After the exit program: a followed process is never left in the table for
        // want of it.
        if self.settings.follow_children {
            self.attach_raw_tracepoint(program_names::PROCESS_FORK, "sched_process_fork")?;
        }
        Ok(())
    }

    /// Attaches the allocation probes at `points` in process `pid` only: other processes
    /// that map the same allocator never hit them. They stay until
    /// [`Probes::detach_allocators`] or the end.
    ///
    /// Each program's points in one file go into one link (`uprobe_multi`): the kernel
    /// places and takes out a link's probes together, and a link's removal waits for a
    /// grace period once, where separate probes waited once each.
    ///
    /// Return probes go in first, so that no call is seen entering without being seen
    /// returning, which would leave its thread's slot busy.
    pub fn attach_allocator(&mut self, pid: u32, points: &[ProbePoint]) -> Result<(), Failure> {
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| Failure::NoTarget("pid 0".to_owned()))?,
        );
        let returning = points
            .iter()
            .filter(|point| point.function.returns_block)
            .map(|point| (program_names::ALLOC_RETURN, point));
        let entries = points
            .iter()
            .map(|point| (point.function.entry_program, point));
        let mut groups: Vec<(&str, &Path, Vec<&ProbePoint>)> = Vec::new();
        for (program, point) in returning.chain(entries) {
            match groups
                .iter_mut()
                .find(|(name, file, _)| *name == program && *file == point.file)
            {
                Some((_, _, members)) => members.push(point),
                None => groups.push((program, &point.file, vec![point])),
            }
        }
        for (program, file, members) in groups {
            let link = self.attach_uprobes(program, file, &members, scope)?;
            self.allocator_links.entry(pid).or_default().push(link);
        }
        Ok(())
    }

    /// Loads the program that captures allocating stacks into the array the entry
    /// programs tail-call.
    fn load_alloc_stack_capture(&mut self) -> Result<(), Failure> {
        let capture: &mut UProbe = self.program(program_names::CAPTURE_ALLOC_STACK)?;
        capture.load().map_err(program_failure)?;
        self.set_tail_call(
            map_names::ALLOC_STACK_CAPTURE,
            program_names::CAPTURE_ALLOC_STACK,
        )
    }

    /// Puts the loaded `program` alone into the program array `array`, which stays in
    /// the object: the kernel empties a program array when its last descriptor outside
    /// the kernel closes.
    fn set_tail_call(&mut self, array: &str, program: &str) -> Result<(), Failure> {
        let program = self
            .ebpf
            .program(program)
            .ok_or_else(|| missing(program))?
            .fd()
            .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
            .map_err(program_failure)?;
        let map = self.ebpf.map_mut(array).ok_or_else(|| missing(array))?;
        ProgramArray::try_from(map)
            .and_then(|mut array| array.set(0, &program, 0))
            .map_err(map_failure)
    }

    /// Takes out the allocation probes of process `pid` without waiting: each link's
    /// removal waits for a grace period (60 to 90 ms here), on a thread of its own.
    pub fn detach_allocators(&mut self, pid: u32) {
        if let Some(links) = self.allocator_links.remove(&pid) {
            self.closing_links.extend(close_apart(links));
        }
    }

    /// The processes the BPF side added to the targets when a target started them.
    pub fn followed_targets(&self) -> Vec<u32> {
        self.targets
            .iter()
            .filter_map(Result::ok)
            .filter(|&(_, kind)| kind == TARGET_FOLLOWED)
            .map(|(tgid, _)| tgid)
            .collect()
    }

    /// Places a probe that stops process `pid` when it reaches `program`'s entry point,
    /// and returns it, to be taken out with [`Probes::release_hold`]. `None` if the
    /// program is no ELF file (a script): its tables then load when its first stacks
    /// report unknown mappings.
    pub fn hold_at_entry(
        &mut self,
        pid: u32,
        program: &Path,
    ) -> Result<Option<UProbeLinkId>, Failure> {
        let Some(entry) = crate::elf::entry_file_offset(program) else {
            return Ok(None);
        };
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| Failure::NoTarget("pid 0".to_owned()))?,
        );
        let uprobe: &mut UProbe = self.program(program_names::HOLD_AT_ENTRY)?;
        uprobe.load().map_err(program_failure)?;
        let link = uprobe.attach([entry], program, scope).map_err(|error| {
            tracepoint_failure(
                error,
                &format!("uprobe on the entry of {}", program.display()),
            )
        })?;
        Ok(Some(link))
    }

    /// Takes out the probe [`Probes::hold_at_entry`] placed, so that an `exec` of the
    /// same program later does not stop the process again.
    pub fn release_hold(&mut self, link: UProbeLinkId) -> Result<(), Failure> {
        let uprobe: &mut UProbe = self.program(program_names::HOLD_AT_ENTRY)?;
        uprobe.detach(link).map_err(program_failure)
    }

    fn attach_uprobes(
        &mut self,
        program: &str,
        file: &Path,
        points: &[&ProbePoint],
        scope: UProbeScope,
    ) -> Result<UProbeLink, Failure> {
        let uprobe: &mut UProbe = self.program(program)?;
        if uprobe.fd().is_err() {
            uprobe.load().map_err(program_failure)?;
        }
        let link = uprobe
            .attach(points.iter().map(|point| point.file_offset), file, scope)
            .map_err(|error| {
                let functions: Vec<&str> = points.iter().map(|point| point.function.name).collect();
                tracepoint_failure(
                    error,
                    &format!(
                        "uprobes on {} in {}",
                        functions.join(", "),
                        // The file as it is named, not by the link that reaches it.
                        fs::read_link(file)
                            .unwrap_or_else(|_| file.to_owned())
                            .display()
                    ),
                )
            })?;
        uprobe.take_link(link).map_err(program_failure)
    }

    fn attach_raw_tracepoint(&mut self, program: &str, tracepoint: &str) -> Result<(), Failure> {
        let raw: &mut RawTracePoint = self.program(program)?;
        raw.load().map_err(program_failure)?;
        raw.attach(tracepoint)
            .map_err(|error| tracepoint_failure(error, &format!("raw tracepoint {tracepoint}")))?;
        Ok(())
    }

    fn attach_btf_tracepoint(&mut self, program: &str, tracepoint: &str) -> Result<(), Failure> {
        let btf = Btf::from_sys_fs().map_err(|error| {
            Failure::KernelFeature(format!("the kernel's BTF could not be read: {error}"))
        })?;
        let traced: &mut BtfTracePoint = self.program(program)?;
        traced.load(tracepoint, &btf).map_err(program_failure)?;
        traced
            .attach()
            .map_err(|error| tracepoint_failure(error, &format!("BTF tracepoint {tracepoint}")))?;
        Ok(())
    }

    fn attach_tracepoint(
        &mut self,
        program: &str,
        category: &str,
        name: &str,
    ) -> Result<(), Failure> {
        let tracepoint: &mut TracePoint = self.program(program)?;
        tracepoint.load().map_err(program_failure)?;
        tracepoint
            .attach(category, name)
            .map_err(|error| tracepoint_failure(error, &format!("tracepoint {category}:{name}")))?;
        Ok(())
    }

    fn program<'p, P>(&'p mut self, name: &str) -> Result<&'p mut P, Failure>
    where
        &'p mut P: TryFrom<&'p mut aya::programs::Program, Error = ProgramError>,
    {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| missing(name))?
            .try_into()
            .map_err(program_failure)
    }

    /// Attaches the CPU samplers (see the BPF side's `cpu` module): one perf event per
    /// CPU, for the threads too young for their own, and one per thread of the
    /// `targets` that exists now. Threads that start later get theirs from
    /// [`Probes::time_thread`] once they are sampled.
    ///
    /// A per-thread event samples that thread's own CPU time. Events per CPU for all
    /// processes also see every thread, but on a VM whose idle CPUs take no timer ticks
    /// they miss ticks around each idle period (several points of a share on a service
    /// that keeps waking up, such as redis), and more next to another sampler; they only
    /// sample each thread's first periods.
    ///
    /// The per-thread events are not inherited, as `perf record -p` does: the kernel
    /// swaps the inherited events of two threads of a process when one follows the
    /// other on a CPU, so a thread that hands its CPU to the threads it starts gives its
    /// timer's progress away with it. Such a thread (a server's accept loop) was sampled
    /// for a fifth of the CPU time it used.
    fn attach_cpu_sampler(&mut self, targets: &[u32]) -> Result<(), Failure> {
        let frequency_hz = self.settings.frequency_hz;
        if let Some(max_rate) = max_sample_rate().filter(|&max_rate| frequency_hz > max_rate) {
            return Err(Failure::KernelFeature(format!(
                "{frequency_hz} Hz is above the kernel's limit, kernel.perf_event_max_sample_rate = {max_rate}"
            )));
        }
        raise_open_file_limit();
        let capture: &mut PerfEvent = self.program(program_names::SAMPLE_CPU_STACKS)?;
        capture.load().map_err(program_failure)?;
        self.set_tail_call(
            map_names::CPU_SAMPLE_CAPTURE,
            program_names::SAMPLE_CPU_STACKS,
        )?;
        let fill: &mut PerfEvent = self.program(program_names::SAMPLE_CPU_FILL)?;
        fill.load().map_err(program_failure)?;
        let cpus = online_cpus().map_err(|(_, error)| {
            Failure::KernelFeature(format!("the online CPUs are unknown: {error}"))
        })?;
        for cpu in cpus {
            let (config, scope, policy) =
                cpu_timer(PerfEventScope::AllProcessesOneCpu { cpu }, frequency_hz);
            fill.attach(config, scope, policy, false)
                .map_err(|error| perf_attach_failure(error, &format!("CPU {cpu}")))?;
        }
        let program: &mut PerfEvent = self.program(program_names::SAMPLE_CPU)?;
        program.load().map_err(program_failure)?;
        for &pid in targets {
            // A thread created while the list is read was created by a thread without
            // its event yet: read the list again until it holds no new thread.
            let mut listed = HashSet::new();
            loop {
                let threads: Vec<u32> = threads_of(pid)
                    .into_iter()
                    .filter(|&tid| listed.insert(tid))
                    .collect();
                if threads.is_empty() {
                    break;
                }
                for tid in threads {
                    self.time_thread(pid, tid)?;
                }
            }
        }
        Ok(())
    }

    /// Gives thread `tid` of process `tgid` a CPU timer of its own if it has none; the
    /// per-CPU timers sample it until then. A thread that has ended needs none. Under
    /// `--all` the per-CPU timers sample every thread: a timer for each thread of the
    /// machine would cost more than it corrects.
    pub fn time_thread(&mut self, tgid: u32, tid: u32) -> Result<(), Failure> {
        if self.settings.all || !self.settings.events.cpu || self.thread_timers.contains_key(&tid) {
            return Ok(());
        }
        let (config, scope, policy) = cpu_timer(
            PerfEventScope::OneProcess {
                pid: tid,
                cpu: None,
            },
            self.settings.frequency_hz,
        );
        let program: &mut PerfEvent = self.program(program_names::SAMPLE_CPU)?;
        match program.attach(config, scope, policy, false) {
            Ok(link) => {
                self.thread_timers.insert(tid, (tgid, link));
                Ok(())
            }
            Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ESRCH) =>
            {
                Ok(())
            }
            Err(error) => Err(perf_attach_failure(error, &format!("thread {tid}"))),
        }
    }

    /// Closes the timers of the threads that ended, at most once a second, and forgets
    /// how often they fired, so that a new thread given the same id starts young.
    pub fn release_ended_thread_timers(&mut self) {
        if self.timers_released_at.elapsed() < TIMER_RELEASE_INTERVAL {
            return;
        }
        self.timers_released_at = Instant::now();
        let ended: Vec<u32> = self
            .thread_timers
            .iter()
            .filter(|(tid, (tgid, _))| !Path::new(&format!("/proc/{tgid}/task/{tid}")).exists())
            .map(|(&tid, _)| tid)
            .collect();
        for tid in ended {
            let Some((_, link)) = self.thread_timers.remove(&tid) else {
                continue;
            };
            if let Ok(program) = self.program::<PerfEvent>(program_names::SAMPLE_CPU) {
                let _ = program.detach(link);
            }
            let _ = self.thread_firings.remove(&tid);
        }
    }

    /// Takes the ring buffer of streamed records, to be read by [`crate::stream`].
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, Failure> {
        RingBuf::try_from(self.take_map(map_names::EVENTS)?).map_err(map_failure)
    }

    /// Takes the slots of the unwind row chunks and the processes' mapping lists, for
    /// [`crate::unwind::UnwindTables::connect`].
    pub fn take_unwind_maps(&mut self) -> Result<(UnwindChunkSlots, ProcessMappingLists), Failure> {
        let chunks =
            ArrayOfMaps::try_from(self.take_map(map_names::UNWIND_CHUNKS)?).map_err(map_failure)?;
        let processes =
            HashMap::try_from(self.take_map(map_names::PROCESS_MAPPINGS)?).map_err(map_failure)?;
        Ok((chunks, processes))
    }

    /// Takes the table of Python processes to walk, for
    /// [`crate::runtime::python::PythonFrames::connect`]; `None` when the kernel's type
    /// information does not say where threads keep their TLS base.
    pub fn take_python_processes(
        &mut self,
    ) -> Result<Option<HashMap<MapData, u32, PythonProcess>>, Failure> {
        // Left in place when unused: a map taken and dropped closes the descriptor the
        // programs, not loaded yet, were relocated against.
        if !self.walks_python {
            return Ok(None);
        }
        let map = self.take_map(map_names::PYTHON_PROCESSES)?;
        HashMap::try_from(map).map(Some).map_err(map_failure)
    }

    /// Takes the per-CPU loss counters, readable after [`Probes::detach`].
    pub fn take_loss_counters(&mut self) -> Result<LossCounters, Failure> {
        let map = self.take_map(map_names::LOSS_COUNTERS)?;
        Ok(LossCounters(
            PerCpuArray::try_from(map).map_err(map_failure)?,
        ))
    }

    /// Takes the CPUs' steal clocks, readable after [`Probes::detach`].
    pub fn take_steal_clocks(&mut self) -> Result<StealClocks, Failure> {
        let map = self.take_map(map_names::STEAL_CLOCKS)?;
        Ok(StealClocks(
            PerCpuArray::try_from(map).map_err(map_failure)?,
        ))
    }

    /// Takes the in-kernel syscall tables, readable after [`Probes::detach`].
    pub fn take_syscall_tables(&mut self) -> Result<SyscallTables, Failure> {
        Ok(SyscallTables {
            stats: PerCpuArray::try_from(self.take_map(map_names::SYSCALL_STATS)?)
                .map_err(map_failure)?,
            errnos: PerCpuHashMap::try_from(self.take_map(map_names::SYSCALL_ERRNOS)?)
                .map_err(map_failure)?,
        })
    }

    /// Takes the live allocation table and the allocation counters, readable after
    /// [`Probes::detach`].
    pub fn take_alloc_tables(&mut self) -> Result<AllocTables, Failure> {
        Ok(AllocTables {
            live: HashMap::try_from(self.take_map(map_names::LIVE_ALLOCATIONS)?)
                .map_err(map_failure)?,
            counters: PerCpuArray::try_from(self.take_map(map_names::ALLOC_COUNTERS)?)
                .map_err(map_failure)?,
        })
    }

    fn take_map(&mut self, name: &str) -> Result<aya::maps::Map, Failure> {
        self.ebpf.take_map(name).ok_or_else(|| missing(name))
    }

    /// Ends the recording: the allocation tables stop changing at once, and every
    /// program is detached and unloaded but the allocation links, whose removal waits
    /// for a grace period. They come out on threads of their own while the outputs are
    /// written: wait for [`ClosingProbes`] before exiting. Returns
    /// what the programs cost while attached, if the kernel measured it.
    pub fn detach(mut self) -> (Option<BpfCost>, ClosingProbes) {
        if let Some(map) = self.ebpf.map_mut(map_names::ALLOC_STOPPED)
            && let Ok(mut stopped) = Array::<_, u32>::try_from(map)
        {
            let _ = stopped.set(0, &1, 0);
        }
        // Statistics someone else turned on (`kernel.bpf_stats_enabled`) count too.
        let measured = self._stats.is_some()
            || std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
                .is_ok_and(|enabled| enabled.trim() == "1");
        let cost = self
            .ebpf
            .programs()
            .filter_map(|(_, program)| program.info().ok())
            .fold(BpfCost::default(), |total, info| BpfCost {
                run_time: total.run_time + info.run_time(),
                run_count: total.run_count + info.run_count(),
            });
        let links: Vec<UProbeLink> = self
            .allocator_links
            .drain()
            .flat_map(|(_, links)| links)
            .collect();
        self.closing_links.extend(close_apart(links));
        let closing = ClosingProbes(std::mem::take(&mut self.closing_links));
        // Dropping the object drops every program with its links, which closes the perf
        // events and detaches the programs.
        drop(self);
        (measured.then_some(cost), closing)
    }
}

/// Takes out each link on a thread of its own: each waits for a grace period, and
/// waits that overlap share one.
fn close_apart(links: Vec<UProbeLink>) -> impl Iterator<Item = JoinHandle<()>> {
    links
        .into_iter()
        .map(|link| std::thread::spawn(move || drop(link)))
}

/// The allocation probes still being taken out after [`Probes::detach`].
pub struct ClosingProbes(Vec<JoinHandle<()>>);

impl ClosingProbes {
    /// Waits until every probe is out.
    pub fn wait(self) {
        for thread in self.0 {
            let _ = thread.join();
        }
    }
}

/// Records the BPF programs had to drop, summed over CPUs.
pub struct LossCounters(PerCpuArray<MapData, u64>);

impl LossCounters {
    /// The total of one counter.
    pub fn total(&self, counter: LossCounter) -> u64 {
        sum_over_cpus(&self.0, counter as u32)
    }
}

/// Slot `index` of a per-CPU counter array, summed over CPUs; 0 if it can't be read.
fn sum_over_cpus(counters: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    counters
        .get(&index, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

/// Each CPU's steal clock, as the CPU samples followed it.
pub struct StealClocks(PerCpuArray<MapData, StealClock>);

impl StealClocks {
    /// CPU samples left out, over all CPUs, for time the hypervisor stole.
    pub fn samples_left_out(&self) -> u64 {
        self.0
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().map(|clock| clock.samples_left_out).sum())
            .unwrap_or(0)
    }
}

/// The syscall counters the BPF side keeps, summed over CPUs.
pub struct SyscallTables {
    stats: PerCpuArray<MapData, SyscallStats>,
    errnos: PerCpuHashMap<MapData, u32, u64>,
}

impl SyscallTables {
    /// Counters of every syscall that was called at least once, by number.
    pub fn stats(&self) -> Vec<(u32, SyscallStats)> {
        (0..MAX_SYSCALLS.min(self.stats.len()))
            .filter_map(|nr| {
                let per_cpu = self.stats.get(&nr, 0).ok()?;
                let mut per_cpu = per_cpu.iter();
                let mut total = *per_cpu.next()?;
                for cpu in per_cpu {
                    total.count += cpu.count;
                    total.errors += cpu.errors;
                    total.total_ns += cpu.total_ns;
                    total.max_ns = total.max_ns.max(cpu.max_ns);
                    for (sum, count) in total.buckets.iter_mut().zip(cpu.buckets) {
                        *sum += count;
                    }
                }
                (total.count > 0).then_some((nr, total))
            })
            .collect()
    }

    /// Failed calls per [`profiler_common::errno_key`].
    pub fn errnos(&self) -> Vec<(u32, u64)> {
        self.errnos
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect()
    }
}

/// What the allocation probes leave behind.
pub struct AllocTables {
    live: HashMap<MapData, LiveAllocationKey, LiveAllocation>,
    counters: PerCpuArray<MapData, u64>,
}

impl AllocTables {
    /// Every allocation not freed yet, read in batches, a few syscalls for the whole
    /// table, on one thread per CPU (up to [`BATCH_READERS`]), each from its own range
    /// of buckets: the kernel's walk costs about 600 ns a block here, a cache miss for
    /// each, so a million blocks took 0.6 s on one thread. A kernel that refuses
    /// batches has the table read an entry at a time.
    pub fn live(&self) -> Vec<(LiveAllocationKey, LiveAllocation)> {
        let readers = online_cpus()
            .map_or(1, |cpus| cpus.len())
            .clamp(1, BATCH_READERS);
        let map = self.live.map();
        let max_entries = map
            .info()
            .map_or(MAX_LIVE_ALLOCATIONS, |info| info.max_entries());
        lookup_batch_in_parallel(map, max_entries, readers)
            .unwrap_or_else(|_| self.live.iter().filter_map(Result::ok).collect())
    }

    /// The total of one counter.
    pub fn total(&self, counter: AllocCounter) -> u64 {
        sum_over_cpus(&self.counters, counter as u32)
    }
}

/// The most threads a table is read with at once.
const BATCH_READERS: usize = 8;

/// Every entry of hash map `map` of `max_entries`, read by `readers` threads, each from
/// its own range of buckets.
///
/// A batch ends between buckets, not at a given one, so a reader's last batch may run
/// into the next readers' ranges: the entries it read there are dropped from theirs.
fn lookup_batch_in_parallel<K, V>(
    map: &MapData,
    max_entries: u32,
    readers: usize,
) -> std::io::Result<Vec<(K, V)>>
where
    K: aya::Pod + Eq + std::hash::Hash + Send,
    V: aya::Pod + Send,
{
    // The kernel rounds a hash map's buckets up to a power of two; the batch token is
    // a bucket index.
    let buckets = u64::from(max_entries).next_power_of_two();
    let range = buckets.div_ceil(readers as u64);
    let ranges = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..readers as u64)
            .map(|reader| {
                let start = reader * range;
                scope.spawn(move || lookup_batch(map, start, (start + range).min(buckets)))
            })
            .collect();
        readers
            .into_iter()
            .map(|reader| reader.join().expect("a batch reader panicked"))
            .collect::<std::io::Result<Vec<_>>>()
    })?;
    let mut entries = Vec::with_capacity(ranges.iter().map(|read| read.entries.len()).sum());
    let mut read_past_their_range: HashSet<K, foldhash::fast::RandomState> = HashSet::default();
    for read in ranges {
        let last_batch = read.entries[read.last_batch_from..]
            .iter()
            .map(|(key, _)| *key)
            .collect::<Vec<_>>();
        entries.extend(
            read.entries
                .into_iter()
                .filter(|(key, _)| !read_past_their_range.contains(key)),
        );
        read_past_their_range.extend(last_batch);
    }
    Ok(entries)
}

/// The entries one reader got from its range of buckets.
struct RangeRead<K, V> {
    entries: Vec<(K, V)>,
    /// Where its last batch starts in `entries`: that batch may hold buckets past the
    /// range.
    last_batch_from: usize,
}

/// The entries of buckets `start..end` of hash map `map`, and maybe some after, read
/// with `BPF_MAP_LOOKUP_BATCH`, which aya does not wrap.
fn lookup_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    start: u64,
    end: u64,
) -> std::io::Result<RangeRead<K, V>> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    let mut chunk = 4096usize;
    let mut read = RangeRead {
        entries: Vec::new(),
        last_batch_from: 0,
    };
    // u64 leaves room to spare for the kernel's u32 bucket index.
    let (mut token, mut next_token) = (start, 0u64);
    while token < end {
        let mut keys: Vec<K> = Vec::with_capacity(chunk);
        let mut values: Vec<V> = Vec::with_capacity(chunk);
        let mut attr = BatchAttr {
            in_batch: &raw const token as u64,
            out_batch: &raw mut next_token as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers of `count` keys and values, and at
        // the tokens, all alive for the call; the kernel writes at most `count` of each.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let error = (result < 0).then(std::io::Error::last_os_error);
        let filled = (attr.count as usize).min(chunk);
        // SAFETY: the kernel filled the first `filled` keys and values.
        unsafe {
            keys.set_len(filled);
            values.set_len(filled);
        }
        read.last_batch_from = read.entries.len();
        match error.as_ref().and_then(std::io::Error::raw_os_error) {
            // A bucket holds more entries than a batch: retry it with room for them.
            Some(libc::ENOSPC) => {
                chunk *= 2;
                continue;
            }
            // The end of the table.
            Some(libc::ENOENT) => {
                read.entries.extend(keys.into_iter().zip(values));
                return Ok(read);
            }
            Some(_) => return Err(error.unwrap_or_else(std::io::Error::last_os_error)),
            None => read.entries.extend(keys.into_iter().zip(values)),
        }
        token = next_token;
    }
    Ok(read)
}

/// Fills the table that byte-based sampling draws its intervals from: the quantiles of
/// an exponential distribution with mean `mean_bytes`, one per slot.
fn set_sample_intervals(ebpf: &mut Ebpf, mean_bytes: u64) -> Result<(), Failure> {
    let map = ebpf
        .map_mut(map_names::SAMPLE_INTERVALS)
        .ok_or_else(|| missing(map_names::SAMPLE_INTERVALS))?;
    let mut intervals: Array<&mut MapData, u64> = Array::try_from(map).map_err(map_failure)?;
    for slot in 0..SAMPLE_INTERVAL_DRAWS {
        let quantile = (f64::from(slot) + 0.5) / f64::from(SAMPLE_INTERVAL_DRAWS);
        let bytes = -quantile.ln() * mean_bytes as f64;
        intervals
            .set(slot, &(bytes.round().max(1.0) as u64), 0)
            .map_err(map_failure)?;
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK. Newer ones charge the memory
/// cgroup, and raising the limit may be refused (no CAP_SYS_RESOURCE), which is harmless.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}

fn missing(name: &str) -> Failure {
    Failure::Other(anyhow::anyhow!("the BPF object has no `{name}`"))
}

fn load_failure(error: EbpfError) -> Failure {
    match &error {
        EbpfError::MapError(map_error) => map_failure_ref(map_error)
            .unwrap_or_else(|| Failure::Other(anyhow::Error::new(error).context("loading BPF"))),
        _ => Failure::Other(anyhow::Error::new(error).context("loading the BPF object")),
    }
}

fn map_failure(error: MapError) -> Failure {
    map_failure_ref(&error).unwrap_or_else(|| Failure::Other(anyhow::Error::new(error)))
}

fn map_failure_ref(error: &MapError) -> Option<Failure> {
    let MapError::CreateError { name, io_error } = error else {
        return None;
    };
    Some(match io_error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => Failure::Privileges(format!(
            "the kernel refused to create BPF map {name} ({io_error}): run as root with CAP_BPF"
        )),
        Some(libc::EINVAL) if name == map_names::EVENTS => Failure::KernelFeature(format!(
            "the kernel has no BPF ring buffers (needs Linux 5.8 or later): creating {name}: {io_error}"
        )),
        _ => Failure::Other(anyhow::anyhow!("creating BPF map {name}: {io_error}")),
    })
}

fn program_failure(error: ProgramError) -> Failure {
    match &error {
        // The verifier also rejects a program with EACCES, and then says why in its log.
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } if matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            && format!("{verifier_log:?}").trim().is_empty() =>
        {
            Failure::Privileges(format!(
                "the kernel refused to load the BPF program ({io_error}): run as root with CAP_BPF and CAP_PERFMON"
            ))
        }
        ProgramError::LoadError { verifier_log, .. } => {
            missing_helper(&format!("{verifier_log:?}")).unwrap_or_else(|| {
                Failure::Other(anyhow::Error::new(error).context("loading the BPF program"))
            })
        }
        _ => Failure::Other(anyhow::Error::new(error).context("loading the BPF program")),
    }
}

/// The failure to report when the verifier's log says a helper is unknown: older
/// kernels lack helpers the programs call, bpf_loop (5.17) for the unwinder and
/// bpf_task_pt_regs (5.15) for the user registers.
fn missing_helper(verifier_log: &str) -> Option<Failure> {
    let helper = verifier_log
        .lines()
        .find(|line| line.contains("unknown func"))?;
    Some(Failure::KernelFeature(format!(
        "the kernel lacks a BPF helper the profiler needs ({}): Linux 5.17 or later is required",
        helper.trim()
    )))
}

fn tracepoint_failure(error: ProgramError, what: &str) -> Failure {
    let os_error = match &error {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        ProgramError::TracePointError(aya::programs::trace_point::TracePointError::FileError {
            io_error,
            ..
        }) => io_error.raw_os_error(),
        _ => None,
    };
    match os_error {
        Some(libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV | libc::EINVAL) => {
            Failure::KernelFeature(format!("the kernel has no {what}: {error}"))
        }
        Some(libc::EPERM | libc::EACCES) => Failure::Privileges(format!(
            "attaching to {what} was refused: missing CAP_BPF or CAP_PERFMON"
        )),
        _ => Failure::Other(anyhow::Error::new(error).context(format!("attaching to {what}"))),
    }
}

/// Why a CPU timer could not be opened on `target` ("thread 12", "CPU 1").
fn perf_attach_failure(error: ProgramError, target: &str) -> Failure {
    let os_error = match &error {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    };
    match os_error {
        Some(libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV) => Failure::KernelFeature(format!(
            "the kernel has no software cpu-clock perf event: {error}"
        )),
        Some(libc::EPERM | libc::EACCES) => Failure::Privileges(format!(
            "perf_event_open was refused for {target}: missing CAP_PERFMON, or kernel.perf_event_paranoid forbids it"
        )),
        Some(libc::EMFILE) => Failure::Other(anyhow::anyhow!(
            "too many threads to sample: no file descriptor left for {target} (raise `ulimit -n`)"
        )),
        _ => Failure::Other(
            anyhow::Error::new(error).context(format!("attaching the CPU sampler to {target}")),
        ),
    }
}

/// How often the timers of ended threads are looked for.
const TIMER_RELEASE_INTERVAL: Duration = Duration::from_secs(1);

/// A `cpu-clock` timer in `scope` at `frequency_hz`.
fn cpu_timer(
    scope: PerfEventScope,
    frequency_hz: u32,
) -> (PerfEventConfig, PerfEventScope, SamplePolicy) {
    (
        PerfEventConfig::Software(SoftwareEvent::CpuClock),
        scope,
        SamplePolicy::Frequency(u64::from(frequency_hz)),
    )
}

/// The threads of process `pid` now; none once it is gone.
fn threads_of(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Each thread of a target takes a perf event's file descriptor: raise the soft limit
/// to the hard one, as perf does. Failing leaves the limit as it was.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn syscall_error(errno: i32) -> ProgramError {
        ProgramError::SyscallError(SyscallError {
            call: "perf_event_open",
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn a_missing_perf_event_is_a_missing_kernel_feature() {
        let failure = perf_attach_failure(syscall_error(libc::ENOENT), "thread 1");
        assert!(
            matches!(failure, Failure::KernelFeature(ref reason) if reason.contains("cpu-clock"))
        );
        assert!(matches!(
            perf_attach_failure(syscall_error(libc::EMFILE), "thread 7"),
            Failure::Other(ref reason) if reason.to_string().contains("ulimit -n")
        ));
    }

    #[test]
    fn a_refused_perf_event_names_the_capability() {
        let failure = perf_attach_failure(syscall_error(libc::EACCES), "CPU 1");
        assert!(
            matches!(failure, Failure::Privileges(ref reason) if reason.contains("CAP_PERFMON"))
        );
    }

    #[test]
    fn a_ring_buffer_the_kernel_does_not_know_is_a_missing_kernel_feature() {
        let error = MapError::CreateError {
            name: map_names::EVENTS.to_owned(),
            io_error: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert!(
            matches!(map_failure(error), Failure::KernelFeature(ref reason) if reason.contains("ring buffers"))
        );
    }

    #[test]
    fn unwind_tables_are_used_by_dwarf_stacks_and_allocations_only() {
        let settings = |events: &str, unwind| ProbeSettings {
            events: events.parse().unwrap(),
            unwind,
            ..ProbeSettings::default()
        };
        assert!(settings("cpu", UnwindMethod::Dwarf).uses_unwind_tables());
        assert!(settings("offcpu,io", UnwindMethod::Dwarf).uses_unwind_tables());
        assert!(!settings("io", UnwindMethod::Dwarf).uses_unwind_tables());
        assert!(!settings("cpu,syscalls", UnwindMethod::Fp).uses_unwind_tables());
        assert!(settings("cpu,alloc", UnwindMethod::Fp).uses_unwind_tables());
    }

    #[test]
    fn a_helper_the_kernel_lacks_is_a_missing_kernel_feature() {
        let failure = missing_helper("0: (85) call bpf_loop#181\nunknown func bpf_loop#181\n");
        assert!(matches!(failure, Some(Failure::KernelFeature(ref reason))
                if reason.contains("bpf_loop") && reason.contains("5.17")));
        assert!(missing_helper("R1 invalid mem access 'scalar'").is_none());
    }

    #[test]
    fn this_process_has_the_privileges_it_runs_the_tests_with() {
        // The suite runs as root; anything else fails here first, with the reason.
        check_privileges(true).unwrap();
    }
}
