//! Off-CPU time of the target threads: from the switch that takes a thread off its CPU,
//! with its stacks at that moment, to the switch that puts it back.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_probe_read_kernel_buf,
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::TracePointContext,
};
use profiler_common::{EventKind, LossCounter, OffCpuSpan, Stacks, TracepointField};

use crate::{
    EVENTS, count_loss, current_thread, header, is_target, now_ns,
    stacks::{self, Unwinder},
    tracepoint_field, wakeup_flag,
};

/// Target threads tracked at once.
const THREADS: u32 = 8192;

#[repr(C)]
struct SwitchOut {
    /// 0 while the thread runs.
    start_ns: u64,
    tgid: u32,
    _padding: u32,
    stacks: Stacks,
}

/// Entries are allocated as target threads first switch out, not up front: each holds
/// two full stacks.
#[map]
static OFFCPU_STARTS: HashMap<u32, SwitchOut> =
    HashMap::with_max_entries(THREADS, BPF_F_NO_PREALLOC);

/// Where a new entry is inserted from, since it is too large for the BPF stack; its
/// contents do not matter, they are overwritten at once.
#[map]
static OFFCPU_BLANK: PerCpuArray<SwitchOut> = PerCpuArray::with_max_entries(1, 0);

/// Set by userspace: shorter spans are dropped here.
#[unsafe(no_mangle)]
static OFFCPU_MIN_NS: u64 = 0;

/// Runs at every context switch: the previous task is the one on the CPU now.
#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let now = now_ns();
    let (tgid, tid) = current_thread();
    if tid != 0 && is_target(tgid) {
        switch_out(&ctx, tgid, tid, now);
    }
    if let Some(next) = tracepoint_field::<u32>(&ctx, TracepointField::SchedSwitchNextPid) {
        switch_in(next, now);
    }
    0
}

#[inline(always)]
fn switch_out(ctx: &TracePointContext, tgid: u32, tid: u32, now: u64) -> Option<()> {
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
        (*entry).start_ns = now;
        (*entry).tgid = tgid;
        stacks::capture(
            ctx.as_ptr(),
            &raw mut (*entry).stacks,
            Unwinder::OffCpu,
            tgid,
        );
    }
    Some(())
}

#[inline(always)]
fn switch_in(tid: u32, now: u64) -> Option<()> {
    let entry = OFFCPU_STARTS.get_ptr_mut(&tid)?;
    // SAFETY: a map value owned by the thread being switched in.
    let (start_ns, tgid) = unsafe {
        let start = ((*entry).start_ns, (*entry).tgid);
        (*entry).start_ns = 0;
        start
    };
    let duration_ns = now.saturating_sub(start_ns);
    // SAFETY: reading a global that userspace set before loading.
    if start_ns == 0 || duration_ns < unsafe { core::ptr::read_volatile(&raw const OFFCPU_MIN_NS) }
    {
        return None;
    }
    let Some(mut record) = EVENTS.reserve::<OffCpuSpan>(0) else {
        count_loss(LossCounter::OffCpuRingFull);
        return None;
    };
    let span = record.as_mut_ptr();
    // SAFETY: `span` points at a reserved, writable OffCpuSpan; the stacks are copied
    // from the map value whole.
    unsafe {
        (*span).header = header(EventKind::OffCpuSpan, tgid, tid, now);
        (*span).duration_ns = duration_ns;
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
