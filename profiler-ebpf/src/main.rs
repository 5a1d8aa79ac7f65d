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
    maps::{HashMap, PerCpuArray, RingBuf},
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
