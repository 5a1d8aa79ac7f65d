//! The profiler's BPF programs, one module per kind of event. Layouts, sizes and names
//! come from `profiler-common`.
#![no_std]
#![no_main]

mod alloc;
mod block_io;
mod cpu;
mod follow;
mod offcpu;
mod python;
mod stacks;
mod steal;
mod syscalls;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::bpf_get_current_ancestor_cgroup_id,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use profiler_common::{
    EventHeader, EventKind, LossCounter, MAX_EVENTS_RING_BYTES, MAX_TARGETS, RING_WAKEUP_FRACTION,
    TARGET_FOLLOWED, TracepointField,
};

// Map names must match profiler_common::map_names.
#[map]
static TARGET_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(MAX_EVENTS_RING_BYTES, 0);

#[map]
static LOSS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LossCounter::COUNT, 0);

/// The running thread, as (tgid, tid).
#[inline(always)]
fn current_thread() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// CLOCK_MONOTONIC in nanoseconds.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Set by userspace for `--cgroup`: the target cgroup's id on the v2 hierarchy, 0 if
/// none.
#[unsafe(no_mangle)]
static TARGET_CGROUP_ID: u64 = 0;

/// Set by userspace for `--cgroup`: the target cgroup's level below the v2 root.
#[unsafe(no_mangle)]
static TARGET_CGROUP_LEVEL: u64 = 0;

/// Set by userspace for `--all` to its own pid: every task is a target but the CPUs'
/// idle tasks and the profiler's, whose work is to look at the others.
#[unsafe(no_mangle)]
static TARGET_ALL_BUT: u64 = 0;

/// Whether the current task's process `tgid` is profiled. A process found in the
/// target cgroup, or a group below it, becomes a target the first time it is seen,
/// as a followed one, whether it was there at the start or joined since.
#[inline(always)]
fn is_target(tgid: u32) -> bool {
    // SAFETY: a global written once by userspace before the programs load.
    let profiler = unsafe { core::ptr::read_volatile(&raw const TARGET_ALL_BUT) };
    if profiler != 0 {
        return tgid != 0 && u64::from(tgid) != profiler;
    }
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { TARGET_TGIDS.get(&tgid) }.is_some() {
        return true;
    }
    // SAFETY: globals written once by userspace before the programs load.
    let (cgroup, level) = unsafe {
        (
            core::ptr::read_volatile(&raw const TARGET_CGROUP_ID),
            core::ptr::read_volatile(&raw const TARGET_CGROUP_LEVEL),
        )
    };
    // SAFETY: a helper on the current task.
    if cgroup == 0 || unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) } != cgroup {
        return false;
    }
    let _ = TARGET_TGIDS.insert(&tgid, &TARGET_FOLLOWED, u64::from(BPF_NOEXIST));
    true
}

/// Set by userspace to a new value whenever the set of targets may have grown: a
/// verdict in [`THREAD_VERDICTS`] holds for the epoch it was reached in only. Targets
/// the programs add (a target's fork, a process found in the target cgroup) need no new
/// epoch: no verdict about their threads can exist yet, or it was reached by the same
/// cgroup test.
#[map]
static TARGETS_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Slots of the tables kept per thread ([`THREAD_VERDICTS`], the syscalls in flight),
/// indexed by thread id modulo this power of two: with the default pid_max of 32768 no
/// two threads share one.
const THREAD_SLOTS: u32 = 1 << 16;

/// Whether a thread is a target's, as last found.
#[repr(C)]
struct ThreadVerdict {
    /// tgid << 32 | tid of the thread the verdict is about.
    pid_tgid: u64,
    /// The epoch the verdict was reached in, shifted left by one, with 1 in the low bit
    /// for a target's thread.
    stamp: u64,
}

/// Verdicts by thread id modulo [`THREAD_SLOTS`]. Every syscall and context switch of
/// every thread on the machine asks whether it is a target's; most are not (a load
/// generator beside the service makes more syscalls than the service), and a hash
/// lookup by tgid is most of what such a thread pays. A slot is cleared as its thread
/// exits, before its ids can be another's.
#[map]
static THREAD_VERDICTS: Array<ThreadVerdict> = Array::with_max_entries(THREAD_SLOTS, 0);

/// [`is_target`] for the thread `pid_tgid`, from its cached verdict while the set of
/// targets has not grown since.
#[inline(always)]
fn is_target_thread(pid_tgid: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    let epoch = TARGETS_EPOCH.get(0).copied().unwrap_or(0);
    let Some(verdict) = THREAD_VERDICTS.get_ptr_mut(pid_tgid as u32 & (THREAD_SLOTS - 1)) else {
        return is_target(tgid);
    };
    // SAFETY: an array slot written by its own thread only, but for two live threads
    // whose ids share it (possible when pid_max exceeds THREAD_SLOTS), which then take
    // it in turns: a torn read matches neither one's ids.
    unsafe {
        if (*verdict).pid_tgid == pid_tgid && (*verdict).stamp >> 1 == epoch {
            return (*verdict).stamp & 1 == 1;
        }
        let target = is_target(tgid);
        (*verdict).pid_tgid = pid_tgid;
        (*verdict).stamp = epoch << 1 | u64::from(target);
        target
    }
}

/// Whether the thread `tid`, not running here, is known not to be a target's: a
/// verdict of this epoch says so. A thread with no verdict yet is not known.
#[inline(always)]
fn is_known_non_target(tid: u32) -> bool {
    let epoch = TARGETS_EPOCH.get(0).copied().unwrap_or(0);
    THREAD_VERDICTS
        .get(tid & (THREAD_SLOTS - 1))
        .is_some_and(|verdict| verdict.pid_tgid as u32 == tid && verdict.stamp == epoch << 1)
}

/// Forgets the verdict about the exiting thread `pid_tgid`.
#[inline(always)]
fn forget_verdict(pid_tgid: u64) {
    if let Some(verdict) = THREAD_VERDICTS.get_ptr_mut(pid_tgid as u32 & (THREAD_SLOTS - 1)) {
        // SAFETY: as in is_target_thread.
        unsafe {
            if (*verdict).pid_tgid == pid_tgid {
                (*verdict).pid_tgid = 0;
            }
        }
    }
}

#[inline(always)]
fn header(kind: EventKind, tgid: u32, tid: u32, timestamp_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        tgid,
        tid,
        // SAFETY: a helper without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        timestamp_ns,
    }
}

/// Set by userspace to the size it gave the ring over [`RING_WAKEUP_FRACTION`].
#[unsafe(no_mangle)]
static RING_WAKEUP_BYTES: u64 = (MAX_EVENTS_RING_BYTES / RING_WAKEUP_FRACTION) as u64;

/// Wakes the reader only when the ring is filling up; otherwise its timer drains it.
#[inline(always)]
fn wakeup_flag() -> u64 {
    // SAFETY: a global that userspace sets before loading and nothing writes after.
    let wakeup_bytes = unsafe { core::ptr::read_volatile(&raw const RING_WAKEUP_BYTES) };
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= wakeup_bytes {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

#[inline(always)]
fn count_loss(counter: LossCounter) {
    if let Some(count) = LOSS_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        unsafe { *count += 1 };
    }
}

/// Set by userspace from tracefs: where each field sits in its tracepoint's record.
#[unsafe(no_mangle)]
static TRACEPOINT_FIELDS: [u32; TracepointField::COUNT] = [0; TracepointField::COUNT];

/// Reads a field of the tracepoint record at the offset userspace found for it.
#[inline(always)]
fn tracepoint_field<T>(ctx: &TracePointContext, field: TracepointField) -> Option<T> {
    // SAFETY: the offset comes from the tracepoint's own format file; the helper checks
    // the read anyway.
    unsafe {
        let offset = core::ptr::read_volatile(&raw const TRACEPOINT_FIELDS[field as usize]);
        ctx.read_at::<T>(offset as usize).ok()
    }
}

#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
