//! Off-CPU time of the target threads: from the switch that takes a thread off its CPU
//! to the switch that puts it back, with its stacks as it left.
//!
//! A loaded service is switched out thousands of times a second, nearly always
//! preempted while runnable and for far less than `--offcpu-min`; taking stacks at
//! each switch was most of the cost of `--events offcpu`. So stacks are taken for
//! spans that turned out long enough, at their end where the stacks cannot have
//! changed:
//! - the user and Python stacks cannot change before the thread runs user code again,
//!   and every thread of a process with rseq (glibc 2.35 and later) passes through
//!   `rseq_update` in its own context on the way there. A thread not seen there yet has
//!   them taken at the switch.
//! - the kernel stack is read from the task as it is switched back in. Unwinding it at
//!   the switch took 12 µs a time under a load test here, whatever its depth, and a
//!   loaded service blocks for a few microseconds hundreds of times a second. The
//!   kernel's task-stack reader leaves out the scheduler's own functions (`schedule`,
//!   `io_schedule`, `mutex_lock`'s slow path...), so the leaf is the function that
//!   waited; `--offcpu-scheduler-frames` takes a blocking thread's kernel stack at the
//!   switch instead, with them.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_NO_PREALLOC, task_struct},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        generated::bpf_get_task_stack,
    },
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use profiler_common::{EventKind, LossCounter, OffCpuSpan, Stacks};

use crate::{
    EVENTS, count_loss, header, is_known_non_target, is_target_thread, now_ns,
    stacks::{self, STACK_BYTES, Unwinder},
    wakeup_flag,
};

/// Target threads tracked at once.
const THREADS: u32 = 8192;

/// Where a tracked thread is in its off-CPU span.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Phase {
    /// On a CPU, or back from a span too short to report.
    Running = 0,
    /// Off the CPU since `start_ns`.
    Off,
    /// Back on a CPU after a long span and not yet in user code: the span is reported
    /// once its user stacks are taken.
    OwesUserStacks,
}

#[repr(C)]
struct SwitchOut {
    start_ns: u64,
    /// When the span ended; set with [`Phase::OwesUserStacks`].
    end_ns: u64,
    tgid: u32,
    /// A [`Phase`].
    phase: u32,
    /// 1 once the thread was seen in `rseq_update`: it will be again before its next
    /// user instruction, so its user stacks can wait for it.
    returns_through_rseq: u32,
    /// 1 if `stacks` holds the current span's user stacks.
    has_user_stacks: u32,
    /// 1 if `stacks` holds the current span's kernel stack.
    has_kernel_stack: u32,
    _padding: u32,
    /// The user registers the thread left the CPU with, read as a long span whose user
    /// stacks wait ends: if they differ where the stacks are taken, the thread ran user
    /// code in between.
    user_pc: u64,
    user_sp: u64,
    stacks: Stacks,
}

/// Entries are allocated as target threads first switch out, not up front: each holds
/// two full stacks.
#[map]
static OFFCPU_STARTS: HashMap<u32, SwitchOut> =
    HashMap::with_max_entries(THREADS, BPF_F_NO_PREALLOC);

/// Where a new entry is inserted from, since it is too large for the BPF stack: all
/// zeros, a running thread not yet seen in `rseq_update`.
#[map]
static OFFCPU_BLANK: PerCpuArray<SwitchOut> = PerCpuArray::with_max_entries(1, 0);

/// Set by userspace: shorter spans are dropped here.
#[unsafe(no_mangle)]
static OFFCPU_MIN_NS: u64 = 0;

/// Set by userspace: 1 to take a blocking thread's kernel stack as it blocks, with the
/// scheduler's functions on it.
#[unsafe(no_mangle)]
static OFFCPU_SCHEDULER_FRAMES: u64 = 0;

/// Set by userspace from the kernel's BTF: the offset of `pid` (the thread id) in
/// `task_struct`.
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: u64 = 0;

/// `prev_state` of a thread that leaves its CPU runnable: preempted, or yielding.
const TASK_RUNNING: u32 = 0;

/// `prev_state` bits of a thread stopped by a signal or held by a tracer
/// (`__TASK_STOPPED`, `__TASK_TRACED`): it waits in no code of its own, and a command
/// the profiler starts is stopped so at its entry point while its tables load.
const TASK_STOPPED_OR_TRACED: u32 = 0x4 | 0x8;

/// Runs at every context switch, on the CPU of the task leaving it, with the arguments
/// `(preempt, prev, next, prev_state)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // The clock is read only for a switch that involves a target: most do not.
    let mut now = 0;
    if tid != 0 && is_target_thread(pid_tgid) {
        now = now_ns();
        let state = ctx.arg::<u32>(3);
        switch_out(ctx.as_ptr(), tgid, tid, now, state);
    }
    let next: *mut task_struct = ctx.arg(2);
    switch_in(next, now);
    0
}

/// Runs in a thread's own context on its way back to user space after a switch: the
/// last moment its user stacks are those it left the CPU with.
#[raw_tracepoint(tracepoint = "rseq_update")]
pub fn rseq_update(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_target_thread(pid_tgid) {
        return 0;
    }
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let Some(entry) = OFFCPU_STARTS.get_ptr_mut(&tid) else {
        return 0;
    };
    // SAFETY: a map value owned by this thread, which is on this CPU; the tgid check
    // keeps a stale entry of an exited thread from taking a reused id's stacks.
    unsafe {
        if (*entry).tgid != tgid {
            return 0;
        }
        (*entry).returns_through_rseq = 1;
        if (*entry).phase == Phase::OwesUserStacks as u32 {
            report_owed(ctx.as_ptr(), entry, tid);
        }
    }
    0
}

#[inline(always)]
fn switch_out(ctx: *mut c_void, tgid: u32, tid: u32, now: u64, state: u32) -> Option<()> {
    // SAFETY: reading a global that userspace set before loading.
    let take_kernel_stack = state != TASK_RUNNING
        && unsafe { core::ptr::read_volatile(&raw const OFFCPU_SCHEDULER_FRAMES) } != 0;
    let entry = match OFFCPU_STARTS.get_ptr_mut(&tid) {
        Some(entry) => entry,
        None => {
            let blank = OFFCPU_BLANK.get_ptr(0)?;
            // SAFETY: a map value, copied by the kernel.
            if OFFCPU_STARTS.insert(&tid, unsafe { &*blank }, 0).is_err() {
                count_loss(LossCounter::OffCpuThreadTableFull);
                return None;
            }
            OFFCPU_STARTS.get_ptr_mut(&tid)?
        }
    };
    // SAFETY: a map value owned by this thread, which is on this CPU.
    unsafe {
        // Off the CPU again before reaching user code: the user stacks, still those of
        // the span that ended, are owed to it and serve the new one too. They are taken
        // at one place in this program, since each place costs the verifier the whole
        // unwinder again.
        let owed = (*entry).phase == Phase::OwesUserStacks as u32 && user_registers_kept(entry);
        let take_user_stacks = owed || (*entry).returns_through_rseq == 0;
        if take_user_stacks {
            stacks::capture_user(ctx, &raw mut (*entry).stacks, Unwinder::OffCpu, tgid);
        }
        if owed {
            report(entry, tid);
        }
        (*entry).start_ns = now;
        (*entry).tgid = tgid;
        (*entry).phase = if state & TASK_STOPPED_OR_TRACED == 0 {
            Phase::Off
        } else {
            Phase::Running
        } as u32;
        if take_kernel_stack {
            stacks::capture_kernel(ctx, &raw mut (*entry).stacks);
        }
        (*entry).has_kernel_stack = u32::from(take_kernel_stack);
        (*entry).has_user_stacks = u32::from(take_user_stacks);
    }
    Some(())
}

/// Ends the off-CPU span of `next`, if it is a target's, at `now`, or at the clock
/// read here if `now` is 0.
#[inline(always)]
fn switch_in(next: *mut task_struct, now: u64) -> Option<()> {
    // SAFETY: `next` is the tracepoint's task; the helper checks the address.
    let tid: u32 = unsafe {
        let offset = core::ptr::read_volatile(&raw const TASK_PID_OFFSET);
        bpf_probe_read_kernel(next.cast::<u8>().add(offset as usize).cast::<u32>()).ok()?
    };
    if is_known_non_target(tid) {
        return None;
    }
    let entry = OFFCPU_STARTS.get_ptr_mut(&tid)?;
    // SAFETY: a map value of the thread being switched in, which runs nowhere: the
    // helper reads its kernel stack where it stopped.
    unsafe {
        if (*entry).phase != Phase::Off as u32 {
            return None;
        }
        let now = if now == 0 { now_ns() } else { now };
        // SAFETY: reading a global that userspace set before loading.
        if now.saturating_sub((*entry).start_ns)
            < core::ptr::read_volatile(&raw const OFFCPU_MIN_NS)
        {
            (*entry).phase = Phase::Running as u32;
            return None;
        }
        (*entry).end_ns = now;
        if (*entry).has_kernel_stack == 0 {
            (*entry).stacks.kernel_bytes = bpf_get_task_stack(
                next,
                (*entry).stacks.kernel.as_mut_ptr().cast::<c_void>(),
                STACK_BYTES,
                0,
            ) as i32;
        }
        if (*entry).has_user_stacks == 0 {
            // Read here, for the few long spans, not at every switch out: the thread has
            // not run since, so they are still those it left the CPU with. Unread, they
            // match nothing, and the span is counted as lost where its stacks are taken.
            let (pc, sp) = stacks::task_user_registers(next).unwrap_or((0, 0));
            (*entry).user_pc = pc;
            (*entry).user_sp = sp;
            (*entry).phase = Phase::OwesUserStacks as u32;
            return None;
        }
        (*entry).phase = Phase::Running as u32;
        report(entry, tid)
    }
}

/// Takes the user stacks a long span still owes, in the thread's own context, and
/// reports the span.
///
/// SAFETY: `ctx` must be the running program's context, `entry` the running thread's.
#[inline(always)]
unsafe fn report_owed(ctx: *mut c_void, entry: *mut SwitchOut, tid: u32) -> Option<()> {
    // SAFETY: as this function's.
    unsafe {
        (*entry).phase = Phase::Running as u32;
        if !user_registers_kept(entry) {
            return None;
        }
        stacks::capture_user(
            ctx,
            &raw mut (*entry).stacks,
            Unwinder::OffCpu,
            (*entry).tgid,
        );
        report(entry, tid)
    }
}

/// Whether the running thread's user registers are still those it left the CPU with,
/// so that the user stacks taken now are those of the span `entry` holds. If not, the
/// span is dropped and counted: a kernel whose rseq path does not run after every
/// switch, whose threads have their user stacks taken at the switch from then on.
///
/// SAFETY: `entry` must be the running thread's.
#[inline(always)]
unsafe fn user_registers_kept(entry: *mut SwitchOut) -> bool {
    // SAFETY: as this function's.
    unsafe {
        let kept = stacks::user_registers() == Some(((*entry).user_pc, (*entry).user_sp));
        if !kept {
            (*entry).returns_through_rseq = 0;
            count_loss(LossCounter::OffCpuUserStackMoved);
        }
        kept
    }
}

/// Streams the span `entry` holds, which ended at its `end_ns`.
///
/// SAFETY: `entry` must be a map value whose stacks are whole.
#[inline(always)]
unsafe fn report(entry: *const SwitchOut, tid: u32) -> Option<()> {
    let Some(mut record) = EVENTS.reserve::<OffCpuSpan>(0) else {
        count_loss(LossCounter::OffCpuRingFull);
        return None;
    };
    let span = record.as_mut_ptr();
    // SAFETY: `span` points at a reserved, writable OffCpuSpan; the stacks are copied
    // from the map value whole.
    unsafe {
        let end_ns = (*entry).end_ns;
        (*span).header = header(EventKind::OffCpuSpan, (*entry).tgid, tid, end_ns);
        (*span).duration_ns = end_ns.saturating_sub((*entry).start_ns);
        let stacks = core::slice::from_raw_parts_mut(
            (&raw mut (*span).stacks).cast::<u8>(),
            core::mem::size_of::<Stacks>(),
        );
        if bpf_probe_read_kernel_buf((&raw const (*entry).stacks).cast::<u8>(), stacks).is_err() {
            record.discard(0);
            return None;
        }
    }
    record.submit(wakeup_flag());
    Some(())
}
