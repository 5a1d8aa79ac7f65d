//! Types and constants shared by the profiler's BPF programs and its userspace.
//!
//! Everything that both sides must agree on lives here and only here: record layouts
//! streamed over the ring buffer, map sizes, map, program and global names, counter
//! indices and the latency bucket scheme. Every type is `#[repr(C)]` so that the BPF
//! object and the host read the same bytes.
#![no_std]

/// Deepest stack captured per record, in frames.
///
/// This is the kernel's default `kernel.perf_event_max_stack`; `bpf_get_stack` refuses
/// to walk further than that sysctl anyway.
pub const MAX_STACK_DEPTH: usize = 127;

/// How many processes one recording can target at once.
pub const MAX_TARGETS: u32 = 1024;

/// `TARGET_TGIDS` value of a process the user named (`--pid`, or the command).
pub const TARGET_NAMED: u8 = 1;

/// `TARGET_TGIDS` value of a process a target started, followed since its fork; its
/// entry goes when it exits.
pub const TARGET_FOLLOWED: u8 = 2;

/// Largest size of the ring buffer that carries every streamed record, in bytes; the
/// BPF object declares it, and userspace sizes the ring to the recording.
///
/// A record with stacks is about 5 KiB (native and Python frames), so this holds about
/// 3,200 of them: a second and a half of a 999 Hz recording on every CPU of this 2-CPU
/// class of machine, and a full drain interval (see [`DRAIN_INTERVAL_MS`]) on a 32-CPU
/// host at 999 Hz.
pub const MAX_EVENTS_RING_BYTES: u32 = 16 << 20;

/// The part of the ring buffer that, unread, has the BPF side wake the reader at once:
/// below it, records are submitted without a wake-up and userspace drains on a timer,
/// so a record costs no context switch.
pub const RING_WAKEUP_FRACTION: u32 = 4;

/// How often userspace drains the ring buffer when nothing woke it, in milliseconds.
pub const DRAIN_INTERVAL_MS: u64 = 100;

/// Allocations a recording tracks at once, across all targets. The table grows with
/// use (it is not preallocated), at about 100 bytes an entry.
pub const MAX_LIVE_ALLOCATIONS: u32 = 1 << 22;

/// Distinct allocating stacks a recording tells apart.
pub const MAX_ALLOC_STACKS: u32 = 1 << 16;

/// Exponential draws in [`map_names::SAMPLE_INTERVALS`], the table byte-based sampling
/// picks its next sampling point from.
pub const SAMPLE_INTERVAL_DRAWS: u32 = 1024;

/// Syscall numbers counted per syscall; x86_64 numbers them below 512.
pub const MAX_SYSCALLS: u32 = 512;

/// Latency buckets split every power of two into `2^LATENCY_SUB_BUCKET_BITS` linear
/// steps, so a bucket is at most 1/8 of its value wide: finer than log2, and small
/// enough for one array slot per syscall.
pub const LATENCY_SUB_BUCKET_BITS: u32 = 3;

/// Latencies of `2^LATENCY_MAX_EXPONENT` ns (18 minutes) or more share the last bucket.
pub const LATENCY_MAX_EXPONENT: u32 = 40;

const LATENCY_SUB_BUCKETS: u64 = 1 << LATENCY_SUB_BUCKET_BITS;

/// Number of latency buckets.
pub const LATENCY_BUCKETS: usize =
    ((LATENCY_MAX_EXPONENT - LATENCY_SUB_BUCKET_BITS + 1) as u64 * LATENCY_SUB_BUCKETS) as usize;

/// The bucket a latency in nanoseconds falls in; see [`latency_bucket_range`].
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    let ns = if ns >> LATENCY_MAX_EXPONENT != 0 {
        (1 << LATENCY_MAX_EXPONENT) - 1
    } else {
        ns
    };
    if ns < LATENCY_SUB_BUCKETS {
        return ns as usize;
    }
    let highest_bit = 63 - ns.leading_zeros();
    let shift = highest_bit - LATENCY_SUB_BUCKET_BITS;
    ((u64::from(shift) + 1) * LATENCY_SUB_BUCKETS + ((ns >> shift) - LATENCY_SUB_BUCKETS)) as usize
}

/// The latencies, in nanoseconds, that bucket `index` holds: `low..high`.
pub fn latency_bucket_range(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < LATENCY_SUB_BUCKETS {
        return (index, index + 1);
    }
    let shift = index / LATENCY_SUB_BUCKETS - 1;
    let mantissa = LATENCY_SUB_BUCKETS + index % LATENCY_SUB_BUCKETS;
    (mantissa << shift, (mantissa + 1) << shift)
}

/// Names of the BPF maps that userspace opens, as the loader looks them up.
///
/// The BPF crate names its `static` maps identically; a mismatch fails every
/// end-to-end test at load time.
pub mod map_names {
    /// `HashMap<u32, u8>`: the tgids being profiled.
    pub const TARGET_TGIDS: &str = "TARGET_TGIDS";
    /// `Array<u64>` of one entry: changed by userspace whenever the set of targets may
    /// have grown, so that the BPF side's cached verdicts about threads are reached
    /// again.
    pub const TARGETS_EPOCH: &str = "TARGETS_EPOCH";
    /// `RingBuf` of records, each starting with an [`crate::EventHeader`].
    pub const EVENTS: &str = "EVENTS";
    /// `LruHashMap<u32, u32>`: how often each thread's own CPU timer fired.
    pub const THREAD_TIMER_FIRINGS: &str = "THREAD_TIMER_FIRINGS";
    /// `PerCpuArray<u64>` indexed by [`crate::LossCounter`].
    pub const LOSS_COUNTERS: &str = "LOSS_COUNTERS";
    /// `PerCpuArray<StealClock>` of one entry: each CPU's steal clock, as the CPU
    /// samples read it.
    pub const STEAL_CLOCKS: &str = "STEAL_CLOCKS";
    /// `PerCpuArray<SyscallStats>` indexed by syscall number.
    pub const SYSCALL_STATS: &str = "SYSCALL_STATS";
    /// `PerCpuHashMap<u32, u64>`: failed calls per [`crate::errno_key`].
    pub const SYSCALL_ERRNOS: &str = "SYSCALL_ERRNOS";
    /// `HashMap<LiveAllocationKey, LiveAllocation>`: allocations not freed yet.
    pub const LIVE_ALLOCATIONS: &str = "LIVE_ALLOCATIONS";
    /// `ProgramArray` holding the CPU samples' stack capture, at index 0.
    pub const CPU_SAMPLE_CAPTURE: &str = "CPU_SAMPLE_CAPTURE";
    /// `Array<u32>` of one entry, set to 1 when the recording ends.
    pub const ALLOC_STOPPED: &str = "ALLOC_STOPPED";
    /// `ProgramArray` holding the allocation stack capture, at index 0.
    pub const ALLOC_STACK_CAPTURE: &str = "ALLOC_STACK_CAPTURE";
    /// `PerCpuArray<u64>` indexed by [`crate::AllocCounter`].
    pub const ALLOC_COUNTERS: &str = "ALLOC_COUNTERS";
    /// `ArrayOfMaps` of `Array<UnwindRow>` chunks of [`crate::UNWIND_CHUNK_ROWS`] rows,
    /// created and memory-mapped by userspace: every loaded file's unwind table, each
    /// sorted by address, one after another.
    pub const UNWIND_CHUNKS: &str = "UNWIND_CHUNKS";
    /// `HashMap<u32, ProcessMappings>`: each target's executable mappings, by tgid.
    pub const PROCESS_MAPPINGS: &str = "PROCESS_MAPPINGS";
    /// `HashMap<u32, PythonProcess>`: how to walk each Python target's frames, by tgid.
    pub const PYTHON_PROCESSES: &str = "PYTHON_PROCESSES";
    /// `Array<u64>` of [`crate::SAMPLE_INTERVAL_DRAWS`] exponentially distributed byte
    /// intervals with mean [`crate::global_names::ALLOC_SAMPLE_BYTES`], set by userspace.
    pub const SAMPLE_INTERVALS: &str = "SAMPLE_INTERVALS";
}

/// Names of the BPF programs in the object.
pub mod program_names {
    /// perf_event on each target thread's own `cpu-clock`: samples on-CPU stacks.
    pub const SAMPLE_CPU: &str = "sample_cpu";
    /// perf_event on each CPU's `cpu-clock`: samples the threads too young for
    /// [`SAMPLE_CPU`].
    pub const SAMPLE_CPU_FILL: &str = "sample_cpu_fill";
    /// perf_event program tail-called by [`SAMPLE_CPU`] and [`SAMPLE_CPU_FILL`]: streams
    /// the sampled thread's stacks.
    pub const SAMPLE_CPU_STACKS: &str = "sample_cpu_stacks";
    /// raw tracepoint `sys_enter`: notes when a target's syscall starts.
    pub const SYSCALL_ENTER: &str = "syscall_enter";
    /// raw tracepoint `sys_exit`: counts the call and streams it if slow.
    pub const SYSCALL_EXIT: &str = "syscall_exit";
    /// tracepoint `block:block_rq_insert`: a target queued a request.
    pub const BLOCK_RQ_INSERT: &str = "block_rq_insert";
    /// tracepoint `block:block_rq_issue`: a request went to the device.
    pub const BLOCK_RQ_ISSUE: &str = "block_rq_issue";
    /// tracepoint `block:block_rq_complete`: the device finished a request.
    pub const BLOCK_RQ_COMPLETE: &str = "block_rq_complete";
    /// tracepoint `sched:sched_switch`: a target thread leaves or regains a CPU.
    pub const SCHED_SWITCH: &str = "sched_switch";
    /// raw tracepoint `rseq_update`: a target thread on its way back to user space
    /// after a switch, where the user stacks of its long off-CPU spans are taken.
    pub const RSEQ_UPDATE: &str = "rseq_update";
    /// uprobe on `malloc`, `valloc` and `pvalloc`: the size is the first argument.
    pub const MALLOC_ENTER: &str = "malloc_enter";
    /// uprobe on `calloc`.
    pub const CALLOC_ENTER: &str = "calloc_enter";
    /// uprobe on `realloc`.
    pub const REALLOC_ENTER: &str = "realloc_enter";
    /// uprobe on `reallocarray`.
    pub const REALLOCARRAY_ENTER: &str = "reallocarray_enter";
    /// uprobe on `memalign` and `aligned_alloc`: the size is the second argument.
    pub const MEMALIGN_ENTER: &str = "memalign_enter";
    /// uprobe on `posix_memalign`.
    pub const POSIX_MEMALIGN_ENTER: &str = "posix_memalign_enter";
    /// uprobe on `mmap`: anonymous maps only.
    pub const MMAP_ENTER: &str = "mmap_enter";
    /// Tail-called by the allocating functions' entry programs: captures the stack.
    pub const CAPTURE_ALLOC_STACK: &str = "capture_alloc_stack";
    /// uretprobe on every allocating function: records the block it returned.
    pub const ALLOC_RETURN: &str = "alloc_return";
    /// uprobe on `free` and `munmap`: the block is the first argument.
    pub const FREE_ENTER: &str = "free_enter";
    /// raw tracepoint `sched_process_exec`: a target's mappings are gone.
    pub const PROCESS_EXEC: &str = "process_exec";
    /// raw tracepoint `sched_process_fork`: a target's new process becomes a target.
    pub const PROCESS_FORK: &str = "process_fork";
    /// raw tracepoint `sched_process_exit`: a thread frees its syscall slot, and a
    /// followed process leaves the targets.
    pub const PROCESS_EXIT: &str = "process_exit";
    /// uprobe on a started command's entry point: stops it until its tables are loaded.
    pub const HOLD_AT_ENTRY: &str = "hold_at_entry";
}

/// Names of the BPF globals that userspace sets at load time.
pub mod global_names {
    /// `u64`: syscalls at least this slow, in ns, are streamed with their stacks.
    pub const SLOW_SYSCALL_NS: &str = "SLOW_SYSCALL_NS";
    /// `u64`: off-CPU spans shorter than this, in ns, are dropped in the kernel.
    pub const OFFCPU_MIN_NS: &str = "OFFCPU_MIN_NS";
    /// `u64`: 1 to take a blocking thread's kernel stack as it blocks, with the
    /// scheduler's own functions; 0 to read it from the task as its span ends.
    pub const OFFCPU_SCHEDULER_FRAMES: &str = "OFFCPU_SCHEDULER_FRAMES";
    /// `[u32; TracepointField::COUNT]`: where each tracepoint field sits in its record.
    pub const TRACEPOINT_FIELDS: &str = "TRACEPOINT_FIELDS";
    /// `u64`: the mean bytes between sampled allocations; 0 tracks every allocation.
    pub const ALLOC_SAMPLE_BYTES: &str = "ALLOC_SAMPLE_BYTES";
    /// `u64`: 1 walks frame pointers for user stacks (`--unwind fp`), 0 unwinds them
    /// from the unwind tables.
    pub const WALK_FRAME_POINTERS: &str = "WALK_FRAME_POINTERS";
    /// `u64`: offset in the kernel's `task_struct` of `thread.fsbase`, a thread's TLS
    /// base, from the kernel's BTF; 0 when unknown, which turns the Python walk off.
    pub const TASK_FSBASE_OFFSET: &str = "TASK_FSBASE_OFFSET";
    /// `u64`: offset in the kernel's `task_struct` of `tgid`, from the kernel's BTF; 0
    /// when unknown, which leaves a command's new processes unfollowed.
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// `u64`: offset in the kernel's `task_struct` of `pid` (the thread id), from the
    /// kernel's BTF, which off-CPU spans are matched by as threads are switched in.
    pub const TASK_PID_OFFSET: &str = "TASK_PID_OFFSET";
    /// [`crate::StealClockLayout`]: where a CPU's steal clock is, from the kernel's BTF.
    pub const STEAL_CLOCK_LAYOUT: &str = "STEAL_CLOCK_LAYOUT";
    /// `u64`: for `--cgroup`, the id of the target cgroup on the v2 hierarchy (its
    /// directory's inode); 0 when processes are chosen otherwise.
    pub const TARGET_CGROUP_ID: &str = "TARGET_CGROUP_ID";
    /// `u64`: the target cgroup's level below the v2 root (the root is 0).
    pub const TARGET_CGROUP_LEVEL: &str = "TARGET_CGROUP_LEVEL";
    /// `u64`: for `--all`, the profiler's own pid: every task is a target but the idle
    /// ones and the profiler's own; 0 when processes are chosen otherwise.
    pub const TARGET_ALL_BUT: &str = "TARGET_ALL_BUT";
    /// `u64`: unread bytes in the ring buffer above which the BPF side wakes the reader
    /// at once: the ring's size over [`crate::RING_WAKEUP_FRACTION`].
    pub const RING_WAKEUP_BYTES: &str = "RING_WAKEUP_BYTES";
}

/// Tracepoint fields the BPF programs read. Their offsets differ between kernels, so
/// userspace reads them from tracefs and hands them over in
/// [`global_names::TRACEPOINT_FIELDS`], indexed by this enum.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracepointField {
    /// `block_rq_issue` / `block_rq_insert`: `dev_t dev`.
    BlockRqDev = 0,
    /// `block_rq_issue` / `block_rq_insert`: `sector_t sector`.
    BlockRqSector,
    /// `block_rq_issue` / `block_rq_insert`: `unsigned int bytes`.
    BlockRqBytes,
    /// `block_rq_issue` / `block_rq_insert`: `char rwbs[]`.
    BlockRqRwbs,
    /// `block_rq_complete`: `dev_t dev`.
    BlockCompleteDev,
    /// `block_rq_complete`: `sector_t sector`.
    BlockCompleteSector,
    /// `block_rq_complete`: `int error`.
    BlockCompleteError,
}

impl TracepointField {
    /// Number of fields, the length of the offsets array.
    pub const COUNT: usize = 7;
}

/// Indices into the per-CPU loss counters: everything the BPF side had to drop.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCounter {
    /// A CPU sample found the ring buffer full.
    CpuSampleRingFull = 0,
    /// A slow syscall's record (with its stacks) found the ring buffer full; the call is
    /// still counted, in the in-kernel histogram.
    SlowSyscallRingFull,
    /// A syscall's start was overwritten by another thread's (their thread ids share a
    /// slot), so that call was not counted.
    SyscallSlotTaken,
    /// The per-errno table was full; the failed call is still counted as an error.
    SyscallErrnoTableFull,
    /// An off-CPU span found the ring buffer full.
    OffCpuRingFull,
    /// More target threads than the off-CPU table holds; that thread's span was dropped.
    OffCpuThreadTableFull,
    /// A syscall numbered at or above [`MAX_SYSCALLS`] (the x32 ABI) was not counted.
    SyscallNumberOutOfRange,
    /// A completed block request found the ring buffer full.
    BlockIoRingFull,
    /// More requests in flight than the block request table holds.
    BlockIoTableFull,
    /// An allocation's start was overwritten by another thread's (their thread ids share
    /// a slot), so that allocation was not tracked.
    AllocSlotTaken,
    /// The live allocation table was full; the allocation was not tracked.
    AllocTableFull,
    /// The table of allocating stacks was full; the allocation is tracked, its stack
    /// unknown.
    AllocStackTableFull,
    /// A new allocating stack found the ring buffer full; allocations from it are
    /// tracked, the stack unknown until it is seen again.
    AllocStackRingFull,
    /// A followed process's start found the ring buffer full; it is named when its map
    /// is read, if it is still running then.
    ProcessStartRingFull,
    /// A long off-CPU span whose user stacks were to be taken on the thread's way back
    /// to user space found the thread had run user code since; the span was dropped.
    OffCpuUserStackMoved,
}

impl LossCounter {
    /// Number of counters, the size of the counter array.
    pub const COUNT: u32 = 15;

    /// Every counter, in index order.
    pub const ALL: [LossCounter; Self::COUNT as usize] = [
        LossCounter::CpuSampleRingFull,
        LossCounter::SlowSyscallRingFull,
        LossCounter::SyscallSlotTaken,
        LossCounter::SyscallErrnoTableFull,
        LossCounter::OffCpuRingFull,
        LossCounter::OffCpuThreadTableFull,
        LossCounter::SyscallNumberOutOfRange,
        LossCounter::BlockIoRingFull,
        LossCounter::BlockIoTableFull,
        LossCounter::AllocSlotTaken,
        LossCounter::AllocTableFull,
        LossCounter::AllocStackTableFull,
        LossCounter::AllocStackRingFull,
        LossCounter::ProcessStartRingFull,
        LossCounter::OffCpuUserStackMoved,
    ];
}

/// The kinds of record in the ring buffer, in [`EventHeader::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`CpuSample`].
    CpuSample = 1,
    /// A [`SlowSyscall`].
    SlowSyscall = 2,
    /// An [`OffCpuSpan`].
    OffCpuSpan = 3,
    /// A [`BlockIo`].
    BlockIo = 4,
    /// An [`AllocStack`].
    AllocStack = 5,
    /// A [`ProcessStart`].
    ProcessStart = 6,
}

/// Indices into the per-CPU allocation call counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocCounter {
    /// Calls to an allocating function, sampled or not, failed or not.
    Allocations = 0,
    /// Calls to `free` and `munmap`, `NULL` included.
    Frees,
}

impl AllocCounter {
    /// Number of counters, the size of the counter array.
    pub const COUNT: u32 = 2;
}

impl EventKind {
    /// The kind a header's `kind` field names, if any.
    pub fn from_raw(kind: u32) -> Option<Self> {
        Some(match kind {
            1 => EventKind::CpuSample,
            2 => EventKind::SlowSyscall,
            3 => EventKind::OffCpuSpan,
            4 => EventKind::BlockIo,
            5 => EventKind::AllocStack,
            6 => EventKind::ProcessStart,
            _ => return None,
        })
    }
}

/// The start of every record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`], which decides the record's type.
    pub kind: u32,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// CPU the program ran on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` when the record was made (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
}

/// The user and kernel stacks of a thread, as the BPF side captured them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Stacks {
    /// Frames filled in `user`.
    pub user_depth: u32,
    /// A [`StackEnd`]: why the user stack ends where it does.
    pub user_end: u32,
    /// Bytes of `kernel` written by `bpf_get_stack`, or a negative errno.
    pub kernel_bytes: i32,
    /// Frames of `user` stepped over by their frame pointer because no row covered
    /// them (JIT code, a file without call-frame information); 0 for a stack unwound by
    /// rows alone, and for `--unwind fp`.
    pub frame_pointer_frames: u32,
    /// User-space instruction pointers, innermost first, unwound in the kernel from the
    /// binaries' call-frame information.
    pub user: [u64; MAX_STACK_DEPTH],
    /// Kernel instruction pointers, innermost first.
    pub kernel: [u64; MAX_STACK_DEPTH],
    /// The Python functions the thread was running, when its process is a Python
    /// interpreter the profiler walks.
    pub python: PythonStack,
}

impl Stacks {
    /// The filled part of the user stack.
    pub fn user_frames(&self) -> &[u64] {
        &self.user[..(self.user_depth as usize).min(MAX_STACK_DEPTH)]
    }

    /// The filled part of the kernel stack.
    pub fn kernel_frames(&self) -> &[u64] {
        let count = if self.kernel_bytes > 0 {
            self.kernel_bytes as usize / 8
        } else {
            0
        };
        &self.kernel[..count.min(MAX_STACK_DEPTH)]
    }
}

/// One on-CPU sample of a target thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// Kind [`EventKind::CpuSample`].
    pub header: EventHeader,
    /// The thread's stacks when the sample fired.
    pub stacks: Stacks,
}

/// Offsets in kernel structures, from the kernel's BTF, through which the CPU samples
/// find the ones a hypervisor's steal delayed. All 0 when the kernel keeps no steal
/// clock, as without `CONFIG_PARAVIRT_TIME_ACCOUNTING`, whose threads' CPU time counts
/// stolen time as the timers do.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StealClockLayout {
    /// `task_struct.se.cfs_rq`: the run queue of the running task's group on its CPU.
    pub task_cfs_rq: u64,
    /// `cfs_rq.rq`: the CPU's run queue that group run queue belongs to.
    pub cfs_rq_rq: u64,
    /// `rq.cpu`: the run queue's CPU, which proves the offsets right.
    pub rq_cpu: u64,
    /// From the run queue to the nanoseconds stolen from its CPU, wrapping: KVM's
    /// per-CPU `steal_time.steal`, which the host brings up to date each time it gives
    /// the CPU back, or else `rq.prev_steal_time_rq`, which the run queue's clock brings
    /// up to date at its next tick or switch.
    pub steal_ns_from_rq: u64,
    /// `bpf_perf_event_data_kern.event`: the perf event behind a perf event program's
    /// context.
    pub context_event: u64,
    /// `perf_event.hw.hrtimer._softexpires`: when a `cpu-clock` event's timer was due.
    pub event_timer_due: u64,
}

impl StealClockLayout {
    /// Whether every offset is known.
    pub fn is_known(&self) -> bool {
        self.task_cfs_rq != 0
            && self.cfs_rq_rq != 0
            && self.rq_cpu != 0
            && self.steal_ns_from_rq != 0
            && self.context_event != 0
            && self.event_timer_due != 0
    }
}

/// One CPU's steal clock as the CPU samples follow it, in
/// [`map_names::STEAL_CLOCKS`]. A virtual CPU's timers count the time its host ran
/// something else, which the kernel leaves out of the threads' CPU time; the samples
/// whose timers came due in stolen time are left out (see the BPF side's `steal`
/// module).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StealClock {
    /// The CPU's run queue, once found; 0 until then.
    pub run_queue: u64,
    /// The steal clock when a sample last read it on this CPU.
    pub last_steal_ns: u64,
    /// When a sample last saw the steal clock move (`bpf_ktime_get_ns`).
    pub steal_seen_ns: u64,
    /// Samples left out for stolen time.
    pub samples_left_out: u64,
}

/// A target's syscall that took at least [`global_names::SLOW_SYSCALL_NS`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SlowSyscall {
    /// Kind [`EventKind::SlowSyscall`]; the timestamp is the call's return.
    pub header: EventHeader,
    /// The syscall number.
    pub nr: u32,
    /// Keeps the next field 8-byte aligned on both sides.
    pub _padding: u32,
    /// What the call returned; -4095..=-1 is a negated errno.
    pub ret: i64,
    /// From entry to return.
    pub duration_ns: u64,
    /// The calling thread's stacks at return. The user stack is the one at entry: the
    /// thread runs no user code while it is in the call.
    pub stacks: Stacks,
}

/// A span in which a target thread was off the CPU, at least [`global_names::OFFCPU_MIN_NS`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffCpuSpan {
    /// Kind [`EventKind::OffCpuSpan`]; the timestamp is when the thread ran again.
    pub header: EventHeader,
    /// From switch-out to switch-in.
    pub duration_ns: u64,
    /// The thread's stacks at switch-out.
    pub stacks: Stacks,
}

/// A block request issued by a target, and completed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIo {
    /// Kind [`EventKind::BlockIo`]; tgid and tid are the issuer's, the timestamp the
    /// completion's.
    pub header: EventHeader,
    /// From issue (or insert, if the issue was not seen) to completion.
    pub duration_ns: u64,
    /// First sector.
    pub sector: u64,
    /// The device, as the kernel's `dev_t`: major << 20 | minor.
    pub dev: u32,
    /// Bytes requested.
    pub bytes: u32,
    /// 0, or the negated errno the request completed with.
    pub error: i32,
    /// The operation as blktrace spells it (`W`, `R`, `FWS`, `D`, ...), NUL-padded.
    pub rwbs: [u8; 8],
    /// Keeps the record's size a multiple of 8 on both sides.
    pub _padding: u32,
}

/// Bytes of a task's command name, `TASK_COMM_LEN`.
pub const COMM_BYTES: usize = 16;

/// A target process that started another program (`exec`), or a process a target
/// forked: the header's tgid is the process, `comm` its command name as of then, so
/// that processes that end before userspace looks at them still have a name.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessStart {
    /// Kind [`EventKind::ProcessStart`].
    pub header: EventHeader,
    /// The command name, NUL-padded.
    pub comm: [u8; COMM_BYTES],
}

/// An allocating stack seen for the first time. Allocations refer to it by `id`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AllocStack {
    /// Kind [`EventKind::AllocStack`]; the thread is the first that allocated from it.
    pub header: EventHeader,
    /// The stack's id, a hash of the process and its frames; never 0.
    pub id: u64,
    /// Frames filled in `frames`.
    pub depth: u32,
    /// A [`StackEnd`]: why the stack ends where it does.
    pub end: u32,
    /// Frames stepped over by their frame pointer, as in [`Stacks::frame_pointer_frames`].
    pub frame_pointer_frames: u32,
    /// Keeps the frames 8-byte aligned on both sides.
    pub _padding: u32,
    /// Instruction pointers, innermost first, from the allocating function's entry out.
    pub frames: [u64; MAX_STACK_DEPTH],
    /// The Python functions that were running, when the process is a Python interpreter
    /// the profiler walks.
    pub python: PythonStack,
}

impl AllocStack {
    /// The filled frames.
    pub fn frames(&self) -> &[u64] {
        &self.frames[..(self.depth as usize).min(MAX_STACK_DEPTH)]
    }
}

/// Why an unwound user stack ends where it does, in [`Stacks::user_end`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StackEnd {
    /// At the process's root: a function whose call-frame information says it has no
    /// caller (`_start`, `clone3`), or a zero return address.
    Root = 0,
    /// The next address lies in a mapping without unwind information (JIT code,
    /// anonymous memory, a file whose table could not be built or did not fit), or
    /// outside every row of its file's table.
    NoUnwindInfo,
    /// The next address lies outside every mapping the kernel was told about: a library
    /// loaded since, or a process not loaded yet. Userspace loads its tables then.
    UnknownMapping,
    /// [`MAX_STACK_DEPTH`] frames were unwound.
    DepthLimit,
    /// A saved return address or frame pointer could not be read (the stack page was
    /// not resident, or the rule pointed outside the stack).
    UnreadableMemory,
    /// The thread had no user registers to start from (a kernel thread).
    NoUserStack,
    /// Walked by frame pointers (`--unwind fp`), which cannot tell whether the walk
    /// reached the root or a function without a frame pointer.
    FramePointers,
}

impl StackEnd {
    /// Number of ends.
    pub const COUNT: usize = 7;

    /// Every end, in value order.
    pub const ALL: [StackEnd; Self::COUNT] = [
        StackEnd::Root,
        StackEnd::NoUnwindInfo,
        StackEnd::UnknownMapping,
        StackEnd::DepthLimit,
        StackEnd::UnreadableMemory,
        StackEnd::NoUserStack,
        StackEnd::FramePointers,
    ];

    /// The end a raw value names; an unknown value reads as [`StackEnd::NoUnwindInfo`].
    pub fn from_raw(end: u32) -> Self {
        Self::ALL
            .get(end as usize)
            .copied()
            .unwrap_or(StackEnd::NoUnwindInfo)
    }
}

/// Deepest Python stack captured per record, in frames: recursion 128 deep plus the
/// frames around it.
pub const MAX_PYTHON_DEPTH: usize = 192;

/// Words of [`PythonStack::call_ends`]: a power of two, so that the BPF side can mask a
/// word index into range where the verifier cannot follow a bounds check.
pub const PYTHON_CALL_END_WORDS: usize = MAX_PYTHON_DEPTH.div_ceil(64).next_power_of_two();

/// One Python frame: the code object it runs, two of that object's fields read at the
/// same moment, which tell a code object from another one allocated later at the same
/// address, and the instruction it was at.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PythonFrame {
    /// Address of the frame's code object (`PyCodeObject *`).
    pub code: u64,
    /// The code object's `co_firstlineno`.
    pub first_line: u32,
    /// The low 32 bits of the code object's `co_qualname` pointer.
    pub name_stamp: u32,
    /// The index, in 2-byte code units, of the instruction the frame was running, or
    /// [`PYTHON_NO_INSTRUCTION`].
    pub instruction: u32,
    /// Zero, so that equal frames have equal bytes.
    pub _padding: u32,
}

/// [`PythonFrame::instruction`] of a frame that had not started its first instruction,
/// or whose instruction could not be told.
pub const PYTHON_NO_INSTRUCTION: u32 = u32::MAX;

/// The Python frames of a thread, innermost first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PythonStack {
    /// Frames filled in `frames`.
    pub depth: u32,
    /// A [`PythonEnd`]: why the walk stopped where it did.
    pub end: u32,
    /// A [`GilState`]: what the thread was doing about the GIL.
    pub gil: u32,
    /// Zero, so that equal stacks have equal bytes.
    pub _padding: u32,
    /// Bit `i` (word `i / 64`, bit `i % 64`) is set when frame `i` is the outermost frame
    /// of one call of the interpreter's C function `_PyEval_EvalFrameDefault`: the frames
    /// from just after the previous set bit up to it replace that native frame.
    pub call_ends: [u64; PYTHON_CALL_END_WORDS],
    /// The frames, innermost first.
    pub frames: [PythonFrame; MAX_PYTHON_DEPTH],
}

impl PythonStack {
    /// The filled frames.
    pub fn frames(&self) -> &[PythonFrame] {
        &self.frames[..(self.depth as usize).min(MAX_PYTHON_DEPTH)]
    }

    /// Whether frame `index` ends one interpreter call.
    pub fn ends_call(&self, index: usize) -> bool {
        self.call_ends
            .get(index / 64)
            .is_some_and(|word| word >> (index % 64) & 1 != 0)
    }
}

/// Why a Python stack ends where it does, in [`PythonStack::end`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PythonEnd {
    /// The process is not a Python interpreter the profiler walks.
    NotPython = 0,
    /// The walk reached the thread's first frame.
    Root,
    /// The thread has no Python thread state: a thread that never ran Python code, or
    /// an interpreter not initialised yet.
    NoThreadState,
    /// The thread state found belongs to another thread: the layout does not fit.
    OtherThread,
    /// [`MAX_PYTHON_DEPTH`] frames were walked.
    DepthLimit,
    /// A frame or code object could not be read.
    UnreadableMemory,
}

impl PythonEnd {
    /// Number of ends.
    pub const COUNT: usize = 6;

    /// Every end, in value order.
    pub const ALL: [PythonEnd; Self::COUNT] = [
        PythonEnd::NotPython,
        PythonEnd::Root,
        PythonEnd::NoThreadState,
        PythonEnd::OtherThread,
        PythonEnd::DepthLimit,
        PythonEnd::UnreadableMemory,
    ];

    /// The end a raw value names; an unknown value reads as [`PythonEnd::NotPython`].
    pub fn from_raw(end: u32) -> Self {
        Self::ALL
            .get(end as usize)
            .copied()
            .unwrap_or(PythonEnd::NotPython)
    }
}

/// What a thread with Python frames was doing about its interpreter's global lock (the
/// GIL) when its stacks were taken, in [`PythonStack::gil`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GilState {
    /// Not told: no thread state, or the lock could not be read.
    Unknown = 0,
    /// The thread held it.
    Held,
    /// Another thread held it or nobody did: on a CPU, the thread ran C code that
    /// released it (numpy, BLAS, a compression or hashing library).
    Released,
    /// The thread was in a futex wait on the lock's own condition variable or mutex:
    /// taking it, or handing it over (`take_gil`, `drop_gil`).
    Waiting,
}

impl GilState {
    /// The state a raw value names; an unknown value reads as [`GilState::Unknown`].
    pub fn from_raw(state: u32) -> Self {
        match state {
            1 => GilState::Held,
            2 => GilState::Released,
            3 => GilState::Waiting,
            _ => GilState::Unknown,
        }
    }
}

/// Offset of `last_holder`, the `PyThreadState` that holds or last held the lock, in
/// CPython's `struct _gil_runtime_state`, 3.10 to 3.13.
pub const PYTHON_GIL_HOLDER: u64 = 8;

/// Offset of `locked` (an `int`, 1 while someone holds the lock) in the same.
pub const PYTHON_GIL_LOCKED: u64 = 16;

/// Bytes of the same, through the condition variables and mutexes (`cond`, `mutex`,
/// `switch_cond`, `switch_mutex`) whose futex words a thread sleeps on to take the lock
/// or to hand it over.
pub const PYTHON_GIL_BYTES: u64 = 208;

/// The x86_64 syscall number of `futex`, which `pthread_cond_timedwait` and
/// `pthread_mutex_lock` sleep in.
pub const SYSCALL_FUTEX: u64 = 202;

/// The bits of a `futex` call's operation that name the command, without
/// `FUTEX_PRIVATE_FLAG` and `FUTEX_CLOCK_REALTIME`.
pub const FUTEX_COMMAND_MASK: u64 = 0x7f;

/// The `futex` commands that sleep, as glibc's mutexes (`FUTEX_WAIT`) and condition
/// variables (`FUTEX_WAIT_BITSET`) use them; a wake (`FUTEX_WAKE`, by the thread that
/// dropped the lock) is no wait.
pub const FUTEX_WAITS: [u64; 2] = [0, 9];

/// Offsets in a `_PyInterpreterFrame` or a structure around it meaning "absent".
pub const PYTHON_NO_FIELD: u32 = u32::MAX;

/// [`PythonLayout::frame_is_entry`] of a version in which every frame is an
/// interpreter call of its own: before 3.11, each Python call recursed through the C
/// eval loop.
pub const PYTHON_EVERY_FRAME: u32 = u32::MAX - 1;

/// Bytes of a frame (`_PyInterpreterFrame`, `PyFrameObject` before 3.11) the walker
/// copies at once: every frame field of [`PythonLayout`] must lie inside them.
pub const PYTHON_FRAME_BYTES: u32 = 104;

/// Bytes of a `PyCodeObject` the walker copies at once, from `co_firstlineno` on: the
/// name it stamps must end inside them. One copy instead of two saves a helper call per
/// frame.
pub const PYTHON_CODE_BYTES: u32 = 80;

/// Where the fields a Python frame walker reads sit, for one CPython version.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PythonLayout {
    /// Offset in `PyThreadState` of the pointer to the structure holding the current
    /// frame (`cframe` before 3.13), or [`PYTHON_NO_FIELD`] when the thread state holds
    /// it itself.
    pub thread_frame_holder: u32,
    /// Offset of the current frame pointer in that holder.
    pub holder_current_frame: u32,
    /// Offset in `PyThreadState` of `thread_id`, the thread's `pthread_self()`, which
    /// glibc makes its TLS base. Unlike `native_thread_id`, a pid namespace (a
    /// container) does not renumber it.
    pub thread_id: u32,
    /// Offset in the frame of its code object (`f_code`, `f_executable`).
    pub frame_code: u32,
    /// Offset of the calling frame (`previous`, `f_back`).
    pub frame_previous: u32,
    /// Offset of the `owner` byte (3.12 on), or [`PYTHON_NO_FIELD`].
    pub frame_owner: u32,
    /// Offset of the `is_entry` byte (3.11), [`PYTHON_EVERY_FRAME`] (3.10), or
    /// [`PYTHON_NO_FIELD`].
    pub frame_is_entry: u32,
    /// Offset in `PyCodeObject` of `co_firstlineno`.
    pub code_first_line: u32,
    /// Offset of `co_qualname` (`co_name` before 3.11, which had no qualified name).
    pub code_qualname: u32,
    /// Offset in the frame of what says which instruction runs: `f_lasti`, an index in
    /// code units, before 3.11; a pointer to it (`prev_instr` in 3.11 and 3.12,
    /// `instr_ptr` in 3.13), one unit before the first before the frame began.
    pub frame_instruction: u32,
    /// Offset in `PyCodeObject` of its instructions (`co_code_adaptive`, 3.11 on), which
    /// that pointer points into, or [`PYTHON_NO_FIELD`] when the frame holds an index.
    pub code_instructions: u32,
    /// Keeps the size a multiple of 8 on both sides.
    pub _padding: u32,
}

/// `owner` of a frame that only marks where a C call entered the interpreter
/// (`FRAME_OWNED_BY_CSTACK`, 3.12 on); it runs no code.
pub const PYTHON_OWNER_CSTACK: u8 = 3;

/// What the kernel needs to walk one process's Python frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PythonProcess {
    /// Address of the interpreter's `Py_tss_t` whose thread-specific value is each
    /// thread's own `PyThreadState` (`_PyRuntime.autoTSSkey`).
    pub thread_state_key: u64,
    /// Address of the main interpreter's GIL (`struct _gil_runtime_state`), 0 when not
    /// known, which leaves every stack's [`GilState::Unknown`].
    pub gil: u64,
    /// The version's layout.
    pub layout: PythonLayout,
}

/// Offset in glibc's `struct pthread` (at the thread pointer, `fsbase`) of
/// `specific_1stblock`, the first [`PTHREAD_KEY_FIRST_BLOCK`] thread-specific values,
/// each `{ seq, data }`. Unchanged on x86_64 since glibc 2.x's NPTL; checked by the end
/// to end tests through the thread id each found thread state carries.
pub const PTHREAD_SPECIFIC_OFFSET: u64 = 0x310;

/// Keys whose values live in `specific_1stblock`.
pub const PTHREAD_KEY_FIRST_BLOCK: u32 = 32;

/// How a row of an unwind table finds the canonical frame address (CFA): the caller's
/// stack pointer, below which the return address sits.
pub mod cfa_rule {
    /// No unwind information covers the address.
    pub const NONE: u8 = 0;
    /// CFA = rsp + offset.
    pub const RSP: u8 = 1;
    /// CFA = rbp + offset.
    pub const RBP: u8 = 2;
    /// A PLT stub: CFA = rsp + 8, plus 8 more once `rip & 15` reaches the offset (the
    /// stub's second half has pushed the relocation index).
    pub const PLT: u8 = 3;
    /// A signal trampoline (`__restore_rt`): the interrupted registers are in the
    /// `ucontext` at rsp.
    pub const SIGNAL: u8 = 4;
    /// The function has no caller: the stack's root.
    pub const ROOT: u8 = 5;
    /// No row covers the address: the frame is stepped over by its frame pointer
    /// (CFA = rbp + 16, the caller's rbp saved below the return address). Only the
    /// kernel's unwinder uses it, for the rows it remembers.
    pub const FRAME_POINTER: u8 = 6;
}

/// One row of an unwind table: from `address` up to the next row's, how to find the
/// caller. The return address is always at CFA - 8 on x86_64.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UnwindRow {
    /// First address the row covers, as an ELF virtual address of its file.
    pub address: u32,
    /// Added to the rule's register, in bytes.
    pub cfa_offset: u16,
    /// A [`cfa_rule`] constant.
    pub cfa_rule: u8,
    /// Where the caller's rbp was saved, in 8-byte words from the CFA; 0 when rbp still
    /// holds the caller's value.
    pub rbp_offset: i8,
}

/// Mapped files one process can have unwind tables for; the rest unwind as
/// [`StackEnd::NoUnwindInfo`].
pub const MAX_MAPPINGS: usize = 512;

/// Rows of one chunk of the kernel's unwind rows (512 KiB): the granularity in which
/// the kernel's memory for them grows as files are met.
pub const UNWIND_CHUNK_ROWS: u32 = 1 << 16;

/// Chunks of unwind rows the kernel can hold: 2^25 rows, 256 MiB, far more than any
/// process tree's files have.
pub const MAX_UNWIND_CHUNKS: u32 = 512;

/// Rows of one file's table the kernel's binary search covers: `2^UNWIND_SEARCH_STEPS`.
pub const UNWIND_SEARCH_STEPS: u32 = 24;

/// Binary search steps over one process's mappings: covers [`MAX_MAPPINGS`].
pub const MAPPING_SEARCH_STEPS: u32 = 10;

// The kernel's binary searches must cover the tables they search.
const _: () = assert!(1usize << MAPPING_SEARCH_STEPS >= MAX_MAPPINGS);
const _: () = assert!(UNWIND_CHUNK_ROWS.is_power_of_two());

/// One executable mapping of a target process, as the kernel's unwinder sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ExecutableMapping {
    /// First address of the mapping.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// Subtracted from an address in the mapping to give its file's virtual address.
    pub bias: u64,
    /// Index of the file's first row in all the rows, which the kernel holds in chunks of [`UNWIND_CHUNK_ROWS`] in [`map_names::UNWIND_CHUNKS`].
    pub first_row: u32,
    /// Rows of the file's table; 0 when there is none.
    pub rows: u32,
}

/// The executable mappings of one process, sorted by address.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessMappings {
    /// Mappings filled in `mappings`.
    pub count: u32,
    /// Changes, never to 0, every time userspace writes the list: rows the kernel
    /// remembers having found for the process's addresses are good for this generation
    /// only.
    pub generation: u32,
    /// The mappings, by ascending `start`.
    pub mappings: [ExecutableMapping; MAX_MAPPINGS],
}

/// Key of [`map_names::LIVE_ALLOCATIONS`]: a block is its process and its address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LiveAllocationKey {
    /// The block's address.
    pub address: u64,
    /// The owning process.
    pub tgid: u32,
    /// Zero, so that equal keys have equal bytes.
    pub _padding: u32,
}

/// An allocation not freed yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAllocation {
    /// Bytes requested.
    pub size: u64,
    /// `bpf_ktime_get_ns()` when the allocating function returned it.
    pub allocated_ns: u64,
    /// The [`AllocStack::id`] of its stack, or 0 if that could not be recorded.
    pub stack_id: u64,
}

/// Per-syscall counters, summed per CPU in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallStats {
    /// Calls that returned.
    pub count: u64,
    /// Calls that returned an error (-4095..=-1).
    pub errors: u64,
    /// Time from entry to return, summed.
    pub total_ns: u64,
    /// The longest call.
    pub max_ns: u64,
    /// Calls per latency bucket ([`latency_bucket`]), except those streamed as
    /// [`SlowSyscall`] records, whose exact durations userspace has.
    pub buckets: [u64; LATENCY_BUCKETS],
}

/// The [`map_names::SYSCALL_ERRNOS`] key of a syscall that failed with `errno`.
#[inline(always)]
pub fn errno_key(nr: u32, errno: u32) -> u32 {
    nr << 16 | (errno & 0xffff)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and integer arrays; every bit pattern is valid.
    unsafe impl aya::Pod for super::SyscallStats {}
    // SAFETY: as above; the key's padding is a named field, always written as zero.
    unsafe impl aya::Pod for super::LiveAllocationKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LiveAllocation {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnwindRow {}
    // SAFETY: as above; the padding is a named field, always written as zero.
    unsafe impl aya::Pod for super::ExecutableMapping {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessMappings {}
    // SAFETY: as above; the padding is a named field, always written as zero.
    unsafe impl aya::Pod for super::PythonProcess {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StealClock {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StealClockLayout {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_falls_in_the_bucket_whose_range_holds_it() {
        for ns in (0..5000).chain((1..40).map(|bit| (1u64 << bit) + 12_345 % (1u64 << bit))) {
            let bucket = latency_bucket(ns);
            let (low, high) = latency_bucket_range(bucket);
            assert!(low <= ns && ns < high, "{ns} in {bucket}: {low}..{high}");
        }
        assert!((1..5000).all(|ns| latency_bucket(ns) >= latency_bucket(ns - 1)));
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn stack_ends_are_listed_in_value_order() {
        for (index, end) in StackEnd::ALL.iter().enumerate() {
            assert_eq!(*end as usize, index);
            assert_eq!(StackEnd::from_raw(index as u32), *end);
        }
    }

    #[test]
    fn python_ends_are_listed_in_value_order() {
        for (index, end) in PythonEnd::ALL.iter().enumerate() {
            assert_eq!(*end as usize, index);
            assert_eq!(PythonEnd::from_raw(index as u32), *end);
        }
    }

    #[test]
    fn call_ends_are_read_bit_by_bit() {
        let mut stack = PythonStack {
            depth: 3,
            end: 0,
            gil: 0,
            _padding: 0,
            call_ends: [0; PYTHON_CALL_END_WORDS],
            frames: [PythonFrame::default(); MAX_PYTHON_DEPTH],
        };
        stack.call_ends[1] = 1 << 2;
        assert!(stack.ends_call(66));
        assert!(!stack.ends_call(2));
        assert!(!stack.ends_call(MAX_PYTHON_DEPTH + 64));
    }

    #[test]
    fn an_unwind_row_takes_eight_bytes_as_mapped_arrays_lay_them_out() {
        assert_eq!(core::mem::size_of::<UnwindRow>(), 8);
    }

    #[test]
    fn loss_counters_are_listed_in_index_order() {
        for (index, counter) in LossCounter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
    }

    #[test]
    fn buckets_are_at_most_an_eighth_of_their_value_wide() {
        for bucket in LATENCY_SUB_BUCKETS as usize..LATENCY_BUCKETS {
            let (low, high) = latency_bucket_range(bucket);
            assert!((high - low) * 8 <= low, "{bucket}: {low}..{high}");
        }
    }
}
