//! The time a hypervisor stole from a virtual CPU, left out of the CPU samples.
//!
//! A `cpu-clock` timer counts the wall time a thread is current, so on a virtual CPU it
//! also counts the time the host ran something else, which the kernel leaves out of
//! the threads' CPU time (`CONFIG_PARAVIRT_TIME_ACCOUNTING`). A timer that comes due
//! while the host holds the vCPU fires when the host gives it back, on whatever the
//! thread runs then: mostly where the host took the vCPU away (a wake-up, a thread's
//! start or exit), whose share that sample would inflate. So a sample whose timer fired
//! more than [`LATE_NS`] after it was due, with the CPU's steal clock moving in between,
//! is left out, and counted; every other sample came due in the thread's own CPU time
//! and stands for a period of it.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_smp_processor_id, helpers::bpf_probe_read_kernel,
    helpers::generated::bpf_get_current_task, macros::map, maps::PerCpuArray,
    programs::PerfEventContext,
};
use profiler_common::{StealClock, StealClockLayout};

use crate::now_ns;

/// Set by userspace from the kernel's BTF; all 0 turns the correction off.
#[unsafe(no_mangle)]
static STEAL_CLOCK_LAYOUT: StealClockLayout = StealClockLayout {
    task_cfs_rq: 0,
    cfs_rq_rq: 0,
    rq_cpu: 0,
    steal_ns_from_rq: 0,
    context_event: 0,
    event_timer_due: 0,
};

/// How late a timer fires, at the most, when no steal delays it: on this nested VM the
/// timer interrupt comes 8 to 64 µs after it is due, and seldom over 100 µs.
const LATE_NS: u64 = 100_000;

/// Each CPU's steal clock, read by userspace for the samples left out.
#[map]
static STEAL_CLOCKS: PerCpuArray<StealClock> = PerCpuArray::with_max_entries(1, 0);

/// Called before a target thread is sampled: whether the sample's timer came due in
/// time stolen from the CPU, which the sample would then stand for. Such a sample is
/// left out and counted.
#[inline(always)]
pub fn came_due_in_stolen_time(ctx: &PerfEventContext) -> bool {
    // SAFETY: a global written once by userspace before the programs load.
    let layout = unsafe { core::ptr::read_volatile(&raw const STEAL_CLOCK_LAYOUT) };
    if layout.event_timer_due == 0 {
        return false;
    }
    let now = now_ns();
    let Some(due) = timer_due(ctx, &layout) else {
        return false;
    };
    let Some(clock) = STEAL_CLOCKS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; the CPU's timers do not run at once on it.
    let clock = unsafe { &mut *clock };
    if clock.run_queue == 0 {
        match run_queue(&layout) {
            Some(run_queue) => clock.run_queue = run_queue,
            None => return false,
        }
    }
    // SAFETY: the run queue was checked to be this CPU's; the helper checks the read.
    let Ok(steal_ns) = (unsafe {
        bpf_probe_read_kernel(clock.run_queue.wrapping_add(layout.steal_ns_from_rq) as *const u64)
    }) else {
        return false;
    };
    // Read at every sample, so that a move is seen by the first sample after it.
    if clock.last_steal_ns != 0 && steal_ns != clock.last_steal_ns {
        clock.steal_seen_ns = now;
    }
    clock.last_steal_ns = steal_ns;
    let left_out = now.saturating_sub(due) > LATE_NS && clock.steal_seen_ns >= due;
    clock.samples_left_out += u64::from(left_out);
    left_out
}

/// When the timer that fired this program was due, in `bpf_ktime_get_ns` time (both
/// are `CLOCK_MONOTONIC`); the program runs before the timer is moved on.
#[inline(always)]
fn timer_due(ctx: &PerfEventContext, layout: &StealClockLayout) -> Option<u64> {
    // The context is the kernel's `bpf_perf_event_data_kern`, three pointers, of which
    // the verifier lets a program read only the user-facing view: copied whole.
    // SAFETY: the helper checks the read.
    let pointers: [u64; 3] =
        unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const [u64; 3]) }.ok()?;
    let event = *pointers.get((layout.context_event / 8) as usize)?;
    // SAFETY: the helper checks the read.
    unsafe { bpf_probe_read_kernel(event.wrapping_add(layout.event_timer_due) as *const u64) }.ok()
}

/// This CPU's run queue, through the running task's group run queue, or `None` if the
/// offsets do not lead to a run queue of this CPU.
#[inline(always)]
fn run_queue(layout: &StealClockLayout) -> Option<u64> {
    // SAFETY: every read goes through the checking helper.
    unsafe {
        let task = bpf_get_current_task();
        let group = bpf_probe_read_kernel((task + layout.task_cfs_rq) as *const u64).ok()?;
        let run_queue = bpf_probe_read_kernel((group + layout.cfs_rq_rq) as *const u64).ok()?;
        let cpu = bpf_probe_read_kernel((run_queue + layout.rq_cpu) as *const u32).ok()?;
        (cpu == bpf_get_smp_processor_id()).then_some(run_queue)
    }
}
