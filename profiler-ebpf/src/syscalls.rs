//! Syscall counts and latencies, aggregated in the kernel; slow calls are streamed.
//!
//! Raw tracepoints, not the `syscalls:*` ones: they skip building a trace record, which
//! is most of a tracepoint's cost on a path that may run millions of times a second.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use profiler_common::{
    EventKind, LossCounter, MAX_SYSCALLS, SlowSyscall, SyscallStats, errno_key, latency_bucket,
};

use crate::{
    EVENTS, THREAD_SLOTS, count_loss, header, is_target_thread, now_ns,
    stacks::{self, Unwinder},
    wakeup_flag,
};

/// Distinct (syscall, errno) pairs counted.
const ERRNO_KEYS: u32 = 4096;

/// A target thread's call in flight, in its thread's slot. Two target threads whose ids
/// share a slot and are in a syscall at once lose one call, counted as
/// [`LossCounter::SyscallSlotTaken`].
#[repr(C)]
struct CallStart {
    /// tgid << 32 | tid of the caller, so a stale slot never matches another process.
    pid_tgid: u64,
    /// 0 when no call is in flight.
    start_ns: u64,
    nr: u64,
}

#[map]
static SYSCALL_STARTS: Array<CallStart> = Array::with_max_entries(THREAD_SLOTS, 0);

#[map]
static SYSCALL_STATS: PerCpuArray<SyscallStats> = PerCpuArray::with_max_entries(MAX_SYSCALLS, 0);

#[map]
static SYSCALL_ERRNOS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(ERRNO_KEYS, 0);

/// Set by userspace: calls at least this slow are streamed with their stacks.
#[unsafe(no_mangle)]
static SLOW_SYSCALL_NS: u64 = u64::MAX;

/// The slot of the calling thread's call in flight.
#[inline(always)]
fn call_slot(pid_tgid: u64) -> Option<*mut CallStart> {
    SYSCALL_STARTS.get_ptr_mut(pid_tgid as u32 & (THREAD_SLOTS - 1))
}

/// Notes the start of every syscall of a target thread.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscall_enter(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target_thread(pid_tgid) {
        return 0;
    }
    let Some(slot) = call_slot(pid_tgid) else {
        return 0;
    };
    let nr: u64 = ctx.arg(1);
    // SAFETY: an array slot; only the thread(s) owning the slot write it.
    unsafe {
        if (*slot).start_ns != 0 && (*slot).pid_tgid != pid_tgid {
            count_loss(LossCounter::SyscallSlotTaken);
        }
        (*slot).pid_tgid = pid_tgid;
        (*slot).nr = nr;
        (*slot).start_ns = now_ns();
    }
    0
}

/// Frees the exiting thread `pid_tgid`'s slot, so that a call of a thread that gets the
/// same ids later is not timed from it.
#[inline(always)]
pub fn forget_thread(pid_tgid: u64) {
    if let Some(slot) = call_slot(pid_tgid) {
        // SAFETY: as in syscall_enter.
        unsafe {
            if (*slot).pid_tgid == pid_tgid {
                (*slot).pid_tgid = 0;
                (*slot).start_ns = 0;
            }
        }
    }
}

/// Counts a target's returning syscall: count, errors, time, and its latency bucket, or,
/// if it was slow, a record with its stacks.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscall_exit(ctx: RawTracePointContext) -> u32 {
    // The slot alone says whether the caller is a target: no map lookup by tgid here.
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = call_slot(pid_tgid) else {
        return 0;
    };
    // SAFETY: as in syscall_enter.
    let (start_ns, nr) = unsafe {
        if (*slot).pid_tgid != pid_tgid || (*slot).start_ns == 0 {
            return 0;
        }
        let start = ((*slot).start_ns, (*slot).nr);
        (*slot).start_ns = 0;
        start
    };
    let now = now_ns();
    let duration_ns = now.saturating_sub(start_ns);
    let ret: i64 = ctx.arg(1);
    if nr >= u64::from(MAX_SYSCALLS) {
        count_loss(LossCounter::SyscallNumberOutOfRange);
        return 0;
    }
    let nr = nr as u32;
    let Some(stats) = SYSCALL_STATS.get_ptr_mut(nr) else {
        return 0;
    };
    // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
    let stats = unsafe { &mut *stats };
    stats.count += 1;
    stats.total_ns += duration_ns;
    if duration_ns > stats.max_ns {
        stats.max_ns = duration_ns;
    }
    if (-4095..0).contains(&ret) {
        stats.errors += 1;
        count_errno(nr, (-ret) as u32);
    }
    // SAFETY: reading a global that userspace set before loading.
    let slow_ns = unsafe { core::ptr::read_volatile(&raw const SLOW_SYSCALL_NS) };
    if duration_ns >= slow_ns && stream_slow_call(&ctx, pid_tgid, nr, ret, duration_ns, now) {
        return 0;
    }
    if let Some(bucket) = stats.buckets.get_mut(latency_bucket(duration_ns)) {
        *bucket += 1;
    }
    0
}

#[inline(always)]
fn count_errno(nr: u32, errno: u32) {
    let key = errno_key(nr, errno);
    if let Some(count) = SYSCALL_ERRNOS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value.
        unsafe { *count += 1 };
        return;
    }
    if SYSCALL_ERRNOS
        .insert(&key, &1, u64::from(BPF_NOEXIST))
        .is_err()
    {
        count_loss(LossCounter::SyscallErrnoTableFull);
    }
}

/// Streams a slow call with its stacks; false if the ring is full.
#[inline(always)]
fn stream_slow_call(
    ctx: &RawTracePointContext,
    pid_tgid: u64,
    nr: u32,
    ret: i64,
    duration_ns: u64,
    now: u64,
) -> bool {
    let Some(mut entry) = EVENTS.reserve::<SlowSyscall>(0) else {
        count_loss(LossCounter::SlowSyscallRingFull);
        return false;
    };
    let call = entry.as_mut_ptr();
    // SAFETY: `call` points at a reserved, writable SlowSyscall in the ring buffer.
    unsafe {
        (*call).header = header(
            EventKind::SlowSyscall,
            (pid_tgid >> 32) as u32,
            pid_tgid as u32,
            now,
        );
        (*call).nr = nr;
        (*call)._padding = 0;
        (*call).ret = ret;
        (*call).duration_ns = duration_ns;
        stacks::capture(
            ctx.as_ptr(),
            &raw mut (*call).stacks,
            Unwinder::Syscall,
            (pid_tgid >> 32) as u32,
        );
    }
    entry.submit(wakeup_flag());
    true
}
