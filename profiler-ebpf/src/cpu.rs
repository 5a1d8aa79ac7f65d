//! On-CPU sampling.
//!
//! Two timers sample a target thread, each over its own part of the thread's CPU time,
//! so that every part is sampled once at the asked rate:
//! - a `cpu-clock` timer of the thread itself ([`sample_cpu`]), opened by userspace for
//!   each thread (not inherited), which samples the thread's own CPU time wherever it
//!   runs;
//! - a `cpu-clock` timer of each CPU ([`sample_cpu_fill`]), which covers each thread's
//!   first [`YOUNG_THREAD_PERIODS`] periods.
//!
//! A thread's own timer starts from zero in every new thread, so alone it would never
//! sample a thread that runs for less than one period (every request thread of a
//! thread-per-request server that answers in under 10 ms of CPU, at 99 Hz), and would
//! miss the last part of a period of every thread. A CPU's timer fires at a moment that
//! has nothing to do with when the thread started. Its own timer stays the main one:
//! a VM's idle CPUs take late ticks, which biases the CPU timers near each wake-up.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_perf_event_data,
    macros::{map, perf_event},
    maps::{LruHashMap, ProgramArray},
    programs::PerfEventContext,
};
use profiler_common::{CpuSample, EventKind, LossCounter};

use crate::{
    EVENTS, count_loss, current_thread, header, is_target, now_ns,
    stacks::{self, Unwinder},
    steal, wakeup_flag,
};

/// How many periods of a thread's CPU time the CPU timers cover before its own timer
/// takes over. The part after a thread's last own-timer firing goes unsampled: at most
/// one period in 2 × 16 on average, for a thread that runs just over 16 periods, and
/// nothing of note for one that runs long.
const YOUNG_THREAD_PERIODS: u32 = 16;

/// Threads whose firings are remembered. The least recently fired is forgotten first,
/// and a forgotten thread counts as young again, which still samples it once.
const MAX_TRACKED_THREADS: u32 = 8192;

/// How many times each thread's own timer has fired: its CPU time in periods.
#[map]
static THREAD_TIMER_FIRINGS: LruHashMap<u32, u32> =
    LruHashMap::with_max_entries(MAX_TRACKED_THREADS, 0);

/// Holds [`sample_cpu_stacks`] alone, set by userspace: both timers' programs hand the
/// sample to it by tail call, so that the verifier checks the stack capture once, not
/// twice (100 ms of the start each here).
#[map]
static CPU_SAMPLE_CAPTURE: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Fires on a target thread's own CPU timer; samples once the thread has run
/// [`YOUNG_THREAD_PERIODS`] periods, the CPU timers having sampled those.
#[perf_event]
pub fn sample_cpu(ctx: PerfEventContext) -> u32 {
    let (tgid, tid) = current_thread();
    if !is_target(tgid) {
        return 0;
    }
    // SAFETY: the value is a u32 of this map, changed only by this thread's own timer,
    // which does not run twice at once.
    let firings = match THREAD_TIMER_FIRINGS.get_ptr_mut(&tid) {
        Some(firings) => unsafe {
            *firings = (*firings).saturating_add(1);
            *firings
        },
        None => {
            let _ = THREAD_TIMER_FIRINGS.insert(&tid, &1, 0);
            1
        }
    };
    if firings > YOUNG_THREAD_PERIODS && !steal::came_due_in_stolen_time(&ctx) {
        sample(&ctx);
    }
    0
}

/// Fires on each CPU's timer for whatever runs there; samples target threads that have
/// not yet run [`YOUNG_THREAD_PERIODS`] periods.
#[perf_event]
pub fn sample_cpu_fill(ctx: PerfEventContext) -> u32 {
    let (tgid, tid) = current_thread();
    if !is_target(tgid) {
        return 0;
    }
    // SAFETY: read only.
    let young = unsafe { THREAD_TIMER_FIRINGS.get(&tid) }
        .copied()
        .unwrap_or(0)
        < YOUNG_THREAD_PERIODS;
    if young && !steal::came_due_in_stolen_time(&ctx) {
        sample(&ctx);
    }
    0
}

/// Streams the running thread's stacks, through [`sample_cpu_stacks`].
#[inline(always)]
fn sample(ctx: &PerfEventContext) {
    // SAFETY: the program in the array takes the same context; it does not return here
    // unless the array is empty, which userspace fills before attaching the timers.
    unsafe { CPU_SAMPLE_CAPTURE.tail_call(ctx, 0) };
}

/// Tail-called by both timers' programs for a thread they sample: streams its stacks.
#[perf_event]
pub fn sample_cpu_stacks(ctx: PerfEventContext) -> u32 {
    let (tgid, tid) = current_thread();
    let Some(mut entry) = EVENTS.reserve::<CpuSample>(0) else {
        count_loss(LossCounter::CpuSampleRingFull);
        return 0;
    };
    let sample = entry.as_mut_ptr();
    // SAFETY: `sample` points at a reserved, writable CpuSample in the ring buffer.
    unsafe {
        (*sample).header = header(EventKind::CpuSample, tgid, tid, now_ns());
        // A sample taken in user mode has no kernel stack; the helper would still set
        // up a call chain to find that out.
        let regs = &(*ctx.as_ptr().cast::<bpf_perf_event_data>()).regs;
        if regs.cs & 3 == 3 {
            (*sample).stacks.kernel_bytes = 0;
        } else {
            stacks::capture_kernel(ctx.as_ptr(), &raw mut (*sample).stacks);
        }
        stacks::capture_user(ctx.as_ptr(), &raw mut (*sample).stacks, Unwinder::Cpu, tgid);
    }
    entry.submit(wakeup_flag());
    0
}
