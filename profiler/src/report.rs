//! What a finished recording found: the report that the analysis fills in and every
//! renderer reads. [`crate::record`] makes it; nothing here knows how.

use std::{borrow::Cow, collections::BTreeMap, time::Duration};

use profiler_common::LossCounter;

use crate::{
    aggregate::{Completeness, IoRow, SyscallSummary},
    analyze::{Analysis, FunctionShare, LockTimes},
    attach::{BpfCost, EventSet, LossCounters, ProbeSettings},
    exit::code,
    profile::{Frame, Profile},
    runtime::python::PythonReport,
    target::ExitStatus,
    unwind::TableStats,
};

/// Slow calls kept with their stacks: the slowest this many. Every slow call's duration
/// counts in its syscall's distribution regardless.
pub const SLOW_CALLS_KEPT: usize = 1000;

/// One of a recording's profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileKind {
    /// On-CPU samples.
    Cpu,
    /// Time off the CPU, in nanoseconds.
    OffCpu,
    /// Bytes held by leak candidates.
    Leaks,
}

impl ProfileKind {
    /// Whether a recording of `events` makes this profile.
    pub fn recorded_in(self, events: EventSet) -> bool {
        match self {
            ProfileKind::Cpu => events.cpu,
            ProfileKind::OffCpu => events.offcpu,
            ProfileKind::Leaks => events.alloc,
        }
    }
}

/// One process's part of the CPU samples.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessShare {
    /// Its pid.
    pub pid: u32,
    /// Its command name.
    pub name: String,
    /// Its CPU samples.
    pub samples: u64,
    /// Its threads that were sampled.
    pub threads: usize,
}

impl Report {
    /// Each sampled process's part of the CPU samples, most samples first.
    pub fn processes(&self) -> Vec<ProcessShare> {
        process_shares(self.threads.iter().copied(), |pid| {
            self.process_names
                .get(&pid)
                .cloned()
                .unwrap_or_else(|| "?".to_owned())
        })
    }
}

/// Each process's part of `threads`' CPU samples (by `(pid, tid)`), most samples first,
/// named by `name`.
pub fn process_shares(
    threads: impl IntoIterator<Item = ((u32, u32), u64)>,
    mut name: impl FnMut(u32) -> String,
) -> Vec<ProcessShare> {
    let mut processes: Vec<ProcessShare> = Vec::new();
    for ((pid, _), samples) in threads {
        match processes.iter_mut().find(|process| process.pid == pid) {
            Some(process) => {
                process.samples += samples;
                process.threads += 1;
            }
            None => processes.push(ProcessShare {
                pid,
                name: name(pid),
                samples,
                threads: 1,
            }),
        }
    }
    processes.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.pid.cmp(&b.pid)));
    processes
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
    /// The user quit `profiler top`.
    Quit,
}

/// A process that was profiled.
#[derive(Clone, Debug)]
pub struct TargetProcess {
    /// Its pid, as the host sees it.
    pub pid: u32,
    /// Its command name, read when the recording started.
    pub name: String,
    /// Its pid in its own pid namespace, where that is not the host's (a container).
    pub namespace_pid: Option<u32>,
    /// Its cgroup on the v2 hierarchy.
    pub cgroup: Option<String>,
}

/// What the profiler itself cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct SelfCost {
    /// Time in the BPF programs, as the kernel counts it; not measured while syscalls
    /// are traced.
    pub bpf: Option<BpfCost>,
    /// The profiler process's user plus system CPU time, up to the end of the recording.
    pub process_cpu: Duration,
    /// Its CPU time until the recording started: loading and verifying the programs,
    /// reading the targets' maps and building their unwind tables, placing the probes.
    pub start_cpu: Duration,
    /// The wall time from the profiler's start to the recording's.
    pub start_wall: Duration,
    /// How long naming every stack took once the recording ended.
    pub naming: Duration,
    /// How many processes' stacks were named.
    pub named_processes: usize,
    /// Kernel memory of the BPF maps as the recording ended, as the kernel charges it.
    pub kernel_memory_bytes: u64,
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
    pub(crate) fn read(counters: &LossCounters, malformed: u64) -> Self {
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
            LossCounter::OffCpuUserStackMoved,
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
    /// One line per process whose JIT code went unnamed, with what its runtime needs
    /// to name it.
    pub jit_hints: Vec<String>,
}

/// A finished recording: everything the outputs are made of.
#[derive(Clone, Debug)]
pub struct Report {
    /// The processes profiled.
    pub targets: Vec<TargetProcess>,
    /// The command, when the profiler started it.
    pub command: Option<Vec<String>>,
    /// The cgroup, when its processes were the targets (`--cgroup`).
    pub cgroup: Option<String>,
    /// How long the probes were attached.
    pub duration: Duration,
    /// What was traced, the sampling rate, and the thresholds.
    pub probes: ProbeSettings,
    /// Samples per (pid, tid).
    pub threads: Vec<((u32, u32), u64)>,
    /// Every process sampled, with its command name, by pid.
    pub process_names: BTreeMap<u32, String>,
    /// Everything lost.
    pub losses: Losses,
    /// CPU samples left out for time a hypervisor stole from the CPUs, which the
    /// kernel leaves out of the threads' CPU time too.
    pub steal_samples_left_out: u64,
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
    /// Time with respect to the runtimes' global locks (CPython's GIL).
    pub lock_times: LockTimes,
    /// `--lines`: flame graphs and collapsed stacks split each Python function by the
    /// line it was running.
    pub split_by_line: bool,
}

impl Report {
    /// The `kind` profile as flame graphs and collapsed stacks draw it: split by line
    /// with `--lines`.
    pub fn drawn_profile(&self, kind: ProfileKind) -> Cow<'_, Profile> {
        let profile = self.profile_of(kind);
        if self.split_by_line {
            Cow::Owned(profile.by_line())
        } else {
            Cow::Borrowed(profile)
        }
    }

    /// The `kind` profile.
    pub fn profile_of(&self, kind: ProfileKind) -> &Profile {
        match kind {
            ProfileKind::Cpu => &self.profile,
            ProfileKind::OffCpu => &self.offcpu.profile,
            ProfileKind::Leaks => &self.leaks.profile,
        }
    }

    /// The exit code the recording ends with: a fired rule first, since gates depend on
    /// it, then an interruption, then a `--pid` target that went away early.
    pub fn exit_code(&self) -> u8 {
        if self.analysis.any_rule_fired() {
            return code::RULE_FIRED;
        }
        match self.stop {
            StopReason::Interrupted => code::INTERRUPTED,
            StopReason::Terminated => code::TERMINATED,
            StopReason::TargetsExited(None) => code::TARGET_EXITED,
            StopReason::TargetsExited(Some(_)) | StopReason::Duration | StopReason::Quit => {
                code::SUCCESS
            }
        }
    }
}
