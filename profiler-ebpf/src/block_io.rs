//! Block requests of the target processes, timed from issue to completion.
//!
//! Completion runs in interrupt context, in whatever process was on the CPU, so the
//! issuing process is noted when the request is inserted or issued, keyed by device and
//! sector, and looked up again at completion.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use profiler_common::{BlockIo, EventKind, LossCounter, TracepointField};

use crate::{
    EVENTS, count_loss, current_thread, header, is_target, now_ns, tracepoint_field, wakeup_flag,
};

/// Target requests in flight at once.
const REQUESTS_IN_FLIGHT: u32 = 8192;

#[repr(C)]
struct RequestKey {
    dev: u32,
    _padding: u32,
    sector: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RequestStart {
    start_ns: u64,
    tgid: u32,
    tid: u32,
    bytes: u32,
    _padding: u32,
    rwbs: [u8; 8],
}

#[map]
static IO_STARTS: HashMap<RequestKey, RequestStart> =
    HashMap::with_max_entries(REQUESTS_IN_FLIGHT, 0);

#[inline(always)]
fn request_key(
    ctx: &TracePointContext,
    dev: TracepointField,
    sector: TracepointField,
) -> Option<RequestKey> {
    Some(RequestKey {
        dev: tracepoint_field(ctx, dev)?,
        _padding: 0,
        sector: tracepoint_field(ctx, sector)?,
    })
}

/// A request entering the IO scheduler: noted if a target queued it.
#[tracepoint(category = "block", name = "block_rq_insert")]
pub fn block_rq_insert(ctx: TracePointContext) -> u32 {
    note_request(&ctx, false);
    0
}

/// A request going to the device: restarts the clock of a noted request, or notes it if
/// a target issued it directly.
#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn block_rq_issue(ctx: TracePointContext) -> u32 {
    note_request(&ctx, true);
    0
}

#[inline(always)]
fn note_request(ctx: &TracePointContext, issued: bool) -> Option<()> {
    let key = request_key(
        ctx,
        TracepointField::BlockRqDev,
        TracepointField::BlockRqSector,
    )?;
    let now = now_ns();
    if issued && let Some(start) = IO_STARTS.get_ptr_mut(&key) {
        // SAFETY: a map value; the block layer issues one request per key at a time.
        unsafe { (*start).start_ns = now };
        return Some(());
    }
    let (tgid, tid) = current_thread();
    if !is_target(tgid) {
        return None;
    }
    let start = RequestStart {
        start_ns: now,
        tgid,
        tid,
        bytes: tracepoint_field(ctx, TracepointField::BlockRqBytes)?,
        _padding: 0,
        rwbs: tracepoint_field(ctx, TracepointField::BlockRqRwbs)?,
    };
    if IO_STARTS.insert(&key, &start, 0).is_err() {
        count_loss(LossCounter::BlockIoTableFull);
    }
    Some(())
}

/// A request finished: streams it if a target issued it.
#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    complete_request(&ctx);
    0
}

#[inline(always)]
fn complete_request(ctx: &TracePointContext) -> Option<()> {
    let key = request_key(
        ctx,
        TracepointField::BlockCompleteDev,
        TracepointField::BlockCompleteSector,
    )?;
    // SAFETY: copied out before the entry is removed.
    let start = unsafe { *IO_STARTS.get(&key)? };
    let _ = IO_STARTS.remove(&key);
    let now = now_ns();
    let Some(mut entry) = EVENTS.reserve::<BlockIo>(0) else {
        count_loss(LossCounter::BlockIoRingFull);
        return None;
    };
    let io = entry.as_mut_ptr();
    // SAFETY: `io` points at a reserved, writable BlockIo in the ring buffer.
    unsafe {
        (*io).header = header(EventKind::BlockIo, start.tgid, start.tid, now);
        (*io).duration_ns = now.saturating_sub(start.start_ns);
        (*io).sector = key.sector;
        (*io).dev = key.dev;
        (*io).bytes = start.bytes;
        (*io).error = tracepoint_field(ctx, TracepointField::BlockCompleteError).unwrap_or(0);
        (*io).rwbs = start.rwbs;
        (*io)._padding = 0;
    }
    entry.submit(wakeup_flag());
    Some(())
}
