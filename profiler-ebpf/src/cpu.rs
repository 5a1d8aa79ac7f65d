//! On-CPU sampling.

use aya_ebpf::{EbpfContext as _, macros::perf_event, programs::PerfEventContext};
use profiler_common::{CpuSample, EventKind, LossCounter};

use crate::{
    EVENTS, count_loss, current_thread, header, is_target, now_ns,
    stacks::{self, Unwinder},
    wakeup_flag,
};

/// Samples the on-CPU stacks of the target processes.
///
/// Attached once per CPU to the `cpu-clock` software event for all processes, so that it
/// sees every thread of a target, including threads created after the attach; the tgid
/// filter keeps everything else out.
#[perf_event]
pub fn sample_cpu(ctx: PerfEventContext) -> u32 {
    let (tgid, tid) = current_thread();
    if !is_target(tgid) {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<CpuSample>(0) else {
        count_loss(LossCounter::CpuSampleRingFull);
        return 0;
    };
    let sample = entry.as_mut_ptr();
    // SAFETY: `sample` points at a reserved, writable CpuSample in the ring buffer.
    unsafe {
        (*sample).header = header(EventKind::CpuSample, tgid, tid, now_ns());
        stacks::capture(ctx.as_ptr(), &raw mut (*sample).stacks, Unwinder::Cpu, tgid);
    }
    entry.submit(wakeup_flag());
    0
}
