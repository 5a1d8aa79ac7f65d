//! The time a hypervisor stole from a virtual CPU, left out of the CPU samples.
//!
//! A `cpu-clock` timer counts the wall time a thread is current, so on a virtual CPU it
//! also counts the time the host ran something else. The kernel leaves that time out of
//! the threads' CPU time (`CONFIG_PARAVIRT_TIME_ACCOUNTING`): without this module a
//! thread on a busy host holds more samples than its CPU time, and the code it ran
//! when the host took the CPU away holds a share it never ran.
//!
//! Each CPU's timer fires every period whatever runs there, and reads the CPU's
//! steal clock: the time stolen in a period that ends on a target thread belongs to that
//! thread, as the period itself does. When this timer samples the thread (a young one),
//! the sample is left out with the odds of the stolen share of its period, so that the
//! stolen time comes out of the period it inflated. Otherwise the thread's own timer
//! samples it, and the time is owed: the CPU's next target samples pay it a period at a
//! time by being left out. Both are counted.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_perf_event_data,
    helpers::{
        bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_probe_read_kernel,
        generated::bpf_get_current_task,
    },
    macros::map,
    maps::PerCpuArray,
    programs::PerfEventContext,
};
use profiler_common::{StealClock, StealClockLayout};

/// Set by userspace from the kernel's BTF; all 0 turns the correction off.
#[unsafe(no_mangle)]
static STEAL_CLOCK_LAYOUT: StealClockLayout = StealClockLayout {
    task_cfs_rq: 0,
    cfs_rq_rq: 0,
    rq_cpu: 0,
    steal_ns_from_rq: 0,
};

/// Each CPU's steal clock, read by userspace for the samples left out.
#[map]
static STEAL_CLOCKS: PerCpuArray<StealClock> = PerCpuArray::with_max_entries(1, 0);

/// The timer's period in nanoseconds: one sample stands for this much time.
#[inline(always)]
pub fn period_ns(ctx: &PerfEventContext) -> u64 {
    // SAFETY: a perf event program's context is a `bpf_perf_event_data`, whose
    // `sample_period` the verifier lets it read.
    unsafe { (*ctx.as_ptr().cast::<bpf_perf_event_data>()).sample_period }
}

/// Called by a CPU's timer at every firing. The time stolen since its last firing is
/// owed if the period ended on a target thread; if `samples` (the timer samples that
/// thread), the sample pays it at once: it is left out with the odds of the share of
/// its own period that was stolen, the sample that the stolen time made.
/// Returns whether the sample is left out.
#[inline(always)]
pub fn period_ended(period_ns: u64, on_target: bool, samples: bool) -> bool {
    // SAFETY: a global written once by userspace before the programs load.
    let layout = unsafe { core::ptr::read_volatile(&raw const STEAL_CLOCK_LAYOUT) };
    if layout.steal_ns_from_rq == 0 {
        return false;
    }
    let Some(clock) = STEAL_CLOCKS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; the CPU's timers do not run at once on it.
    let clock = unsafe { &mut *clock };
    let first = clock.run_queue == 0;
    if first {
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
    // A timer delayed by a long steal fires once, for one period: no more than a
    // period was sampled, so no more is owed.
    let stolen_ns = steal_ns.saturating_sub(clock.last_steal_ns).min(period_ns);
    clock.last_steal_ns = steal_ns;
    if !on_target || first {
        return false;
    }
    if !samples {
        clock.owed_ns += stolen_ns;
        return false;
    }
    // SAFETY: a helper without arguments.
    let draw = u64::from(unsafe { bpf_get_prandom_u32() });
    let left_out = draw * period_ns < stolen_ns << 32;
    clock.samples_left_out += u64::from(left_out);
    left_out
}

/// Whether a target sample on this CPU is left out, paying one period of stolen time.
#[inline(always)]
pub fn pays_stolen_period(period_ns: u64) -> bool {
    let Some(clock) = STEAL_CLOCKS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; the CPU's timers do not run at once on it.
    let clock = unsafe { &mut *clock };
    if clock.owed_ns < period_ns {
        return false;
    }
    clock.owed_ns -= period_ns;
    clock.samples_left_out += 1;
    true
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
