//! Allocation tracking through uprobes on the target's allocator: every block an
//! allocating function returns goes into a table of live blocks with its size, time and
//! stack, and every `free` takes it out again. Userspace reads what is left.
//!
//! The uprobes are attached to the target processes only, so these programs never run
//! for any other process and need no tgid filter.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_probe_read_kernel_buf,
        bpf_probe_read_user,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::{ProbeContext, RetProbeContext},
};
use profiler_common::{
    AllocCounter, AllocStack, EventKind, LiveAllocation, LiveAllocationKey, LossCounter,
    MAX_ALLOC_STACKS, MAX_LIVE_ALLOCATIONS, MAX_STACK_DEPTH, PythonStack, SAMPLE_INTERVAL_DRAWS,
};

use crate::{
    EVENTS, count_loss, header, now_ns, python,
    stacks::{self, Unwinder, UserStack},
    wakeup_flag,
};

/// Slots for allocating calls in flight, indexed by thread id modulo this power of two,
/// as for syscalls.
const CALL_SLOTS: u32 = 1 << 16;

/// `MAP_FIXED` and `MAP_ANONYMOUS` from `linux/mman.h`.
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;

/// How an allocating function hands back its block.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Returns {
    /// As its return value, `NULL` on failure.
    Pointer,
    /// As its return value, `MAP_FAILED` on failure.
    Mapping,
    /// Through the pointer it was given, returning 0 on success (`posix_memalign`).
    ThroughOutPointer,
}

/// A target thread's allocating call in flight.
#[repr(C)]
struct AllocCall {
    /// tgid << 32 | tid of the caller.
    pid_tgid: u64,
    size: u64,
    stack_id: u64,
    /// Where `posix_memalign` writes the block.
    out_pointer: u64,
    /// Allocating calls of this thread in flight: an allocator calling its own public
    /// entry points (realloc calling malloc, malloc calling mmap) nests calls, and only
    /// the outermost is the caller's allocation. 0 when the slot is free.
    depth: u32,
    returns: Returns,
    /// Whether the block is recorded when the call returns (it may not be sampled).
    tracked: bool,
}

#[map]
static ALLOC_CALLS: Array<AllocCall> = Array::with_max_entries(CALL_SLOTS, 0);

/// Holds [`capture_alloc_stack`] alone, set by userspace: every entry program hands the
/// stack capture to it by tail call, so that the verifier checks the unwinder once, not
/// once per entry program (100 ms each here, most of the start of `--events alloc`).
#[map]
static ALLOC_STACK_CAPTURE: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Entries are allocated as blocks are, not up front.
#[map]
static LIVE_ALLOCATIONS: HashMap<LiveAllocationKey, LiveAllocation> =
    HashMap::with_max_entries(MAX_LIVE_ALLOCATIONS, BPF_F_NO_PREALLOC);

/// Stack ids already streamed to userspace.
#[map]
static ALLOC_STACKS_SEEN: HashMap<u64, u8> =
    HashMap::with_max_entries(MAX_ALLOC_STACKS, BPF_F_NO_PREALLOC);

#[map]
static ALLOC_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(AllocCounter::COUNT, 0);

/// Set by userspace when the recording ends: the tables then stay as they were at the
/// moment the user asked for, while the kernel takes the probes out (about 90 ms each
/// here, one after another).
#[map]
static ALLOC_STOPPED: Array<u32> = Array::with_max_entries(1, 0);

/// Bytes left on this CPU until the next sampled allocation; 0 before the first.
#[map]
static SAMPLE_COUNTDOWN: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SAMPLE_INTERVALS: Array<u64> = Array::with_max_entries(SAMPLE_INTERVAL_DRAWS, 0);

/// Set by userspace: the mean bytes between sampled allocations, 0 to track every one.
#[unsafe(no_mangle)]
static ALLOC_SAMPLE_BYTES: u64 = 0;

#[uprobe(multi)]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    let size = ctx.arg::<u64>(0).unwrap_or(0);
    begin(&ctx, size, Returns::Pointer, 0, true);
    0
}

#[uprobe(multi)]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let count = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    // An overflowing product fails the call, and failed calls are not recorded.
    begin(&ctx, count.wrapping_mul(size), Returns::Pointer, 0, true);
    0
}

#[uprobe(multi)]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    let old = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    reallocate(&ctx, old, size);
    0
}

#[uprobe(multi)]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let count = ctx.arg::<u64>(1).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    let old = ctx.arg::<u64>(0).unwrap_or(0);
    reallocate(&ctx, old, count.wrapping_mul(size));
    0
}

#[uprobe(multi)]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    begin(&ctx, size, Returns::Pointer, 0, true);
    0
}

#[uprobe(multi)]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    let out_pointer = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    begin(&ctx, size, Returns::ThroughOutPointer, out_pointer, true);
    0
}

#[uprobe(multi)]
pub fn mmap_enter(ctx: ProbeContext) -> u32 {
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    let flags = ctx.arg::<u64>(3).unwrap_or(0);
    // File maps are not heap, and a fixed map replaces memory that was counted already.
    let anonymous = flags & MAP_ANONYMOUS != 0 && flags & MAP_FIXED == 0;
    begin(&ctx, size, Returns::Mapping, 0, anonymous);
    0
}

#[uprobe(multi)]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    if stopped() {
        return 0;
    }
    count(AllocCounter::Frees);
    let address = ctx.arg::<u64>(0).unwrap_or(0);
    release((bpf_get_current_pid_tgid() >> 32) as u32, address);
    0
}

/// Records the block the outermost allocating call returned, unless the call failed.
#[uretprobe(multi)]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    if stopped() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = call_slot(pid_tgid) else {
        return 0;
    };
    // SAFETY: an array slot; only the thread owning it writes it.
    let call = unsafe {
        if (*slot).pid_tgid != pid_tgid || (*slot).depth == 0 {
            return 0;
        }
        (*slot).depth -= 1;
        if (*slot).depth != 0 || !(*slot).tracked {
            return 0;
        }
        &*slot
    };
    let returned: u64 = ctx.ret();
    let address = match call.returns {
        Returns::Pointer => returned,
        Returns::Mapping if returned == u64::MAX => 0,
        Returns::Mapping => returned,
        // SAFETY: the helper checks the user address.
        Returns::ThroughOutPointer if returned as i32 == 0 => unsafe {
            bpf_probe_read_user(call.out_pointer as *const u64).unwrap_or(0)
        },
        Returns::ThroughOutPointer => 0,
    };
    if address == 0 {
        return 0;
    }
    let key = LiveAllocationKey {
        address,
        tgid: (pid_tgid >> 32) as u32,
        _padding: 0,
    };
    let block = LiveAllocation {
        size: call.size,
        allocated_ns: now_ns(),
        stack_id: call.stack_id,
    };
    if LIVE_ALLOCATIONS.insert(&key, &block, 0).is_err() {
        count_loss(LossCounter::AllocTableFull);
    }
    0
}

/// `realloc` is a free of the old block and an allocation of the new one. The old block
/// is released on entry: once realloc has freed it, another thread may be handed the
/// same address before this thread's return probe runs.
#[inline(always)]
fn reallocate(ctx: &ProbeContext, old: u64, size: u64) {
    if stopped() {
        return;
    }
    release((bpf_get_current_pid_tgid() >> 32) as u32, old);
    begin(ctx, size, Returns::Pointer, 0, true);
}

#[inline(always)]
fn release(tgid: u32, address: u64) {
    if address == 0 {
        return;
    }
    let key = LiveAllocationKey {
        address,
        tgid,
        _padding: 0,
    };
    // A block allocated before the recording, or not sampled, is simply not there.
    let _ = LIVE_ALLOCATIONS.remove(&key);
}

/// Whether the recording has ended.
#[inline(always)]
fn stopped() -> bool {
    ALLOC_STOPPED.get(0).is_some_and(|&stopped| stopped != 0)
}

/// The slot of the calling thread's allocating call in flight.
#[inline(always)]
fn call_slot(pid_tgid: u64) -> Option<*mut AllocCall> {
    ALLOC_CALLS.get_ptr_mut(pid_tgid as u32 & (CALL_SLOTS - 1))
}

/// Notes an allocating call at its entry, and has its stack captured if it is to be
/// tracked.
#[inline(always)]
fn begin(ctx: &ProbeContext, size: u64, returns: Returns, out_pointer: u64, wanted: bool) {
    if stopped() {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = call_slot(pid_tgid) else {
        return;
    };
    // SAFETY: an array slot; only the thread(s) owning the slot write it.
    unsafe {
        if (*slot).depth != 0 {
            if (*slot).pid_tgid == pid_tgid {
                (*slot).depth += 1;
                return;
            }
            count_loss(LossCounter::AllocSlotTaken);
        }
        (*slot).pid_tgid = pid_tgid;
        (*slot).depth = 1;
        (*slot).returns = returns;
        (*slot).out_pointer = out_pointer;
        (*slot).size = size;
        (*slot).tracked = false;
    }
    if !wanted {
        return;
    }
    count(AllocCounter::Allocations);
    if !sampled(size) {
        return;
    }
    // SAFETY: the program in the array takes the same context; it does not return here
    // unless the array is empty, and then the call is not tracked.
    unsafe { ALLOC_STACK_CAPTURE.tail_call(ctx, 0) };
}

/// Tail-called by the entry programs: captures the allocating call's stack into its
/// slot and marks the call tracked.
#[uprobe(multi)]
pub fn capture_alloc_stack(_ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = call_slot(pid_tgid) else {
        return 0;
    };
    let stack_id = capture_stack(pid_tgid);
    // SAFETY: an array slot; only the thread owning it writes it.
    unsafe {
        (*slot).stack_id = stack_id;
        (*slot).tracked = true;
    }
    0
}

/// Whether this allocation is sampled: the per-CPU countdown of bytes to the next
/// sampling point ran out within it. With exponentially distributed intervals, a block
/// of `size` bytes is sampled with probability `1 - exp(-size / mean)` whatever came
/// before it, which is what userspace reweights by.
#[inline(always)]
fn sampled(size: u64) -> bool {
    // SAFETY: reading a global that userspace set before loading.
    let mean = unsafe { core::ptr::read_volatile(&raw const ALLOC_SAMPLE_BYTES) };
    if mean == 0 {
        return true;
    }
    let Some(countdown) = SAMPLE_COUNTDOWN.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU value, no other writer on this CPU while the program runs.
    unsafe {
        let mut left = *countdown;
        if left == 0 {
            left = next_interval();
        }
        left -= size as i64;
        if left > 0 {
            *countdown = left;
            return false;
        }
        *countdown = next_interval();
    }
    true
}

#[inline(always)]
fn next_interval() -> i64 {
    // SAFETY: a helper without arguments.
    let draw = unsafe { bpf_get_prandom_u32() } % SAMPLE_INTERVAL_DRAWS;
    SAMPLE_INTERVALS
        .get(draw)
        .map_or(1, |&bytes| bytes.max(1) as i64)
}

/// Captures the allocating stack, streams it if it is new, and returns its id (0 if it
/// could not be captured).
///
/// At the allocating function's first instruction its return address is the word at
/// the stack pointer; the call-frame information says so, and the unwinder steps from
/// there to the caller like from any other frame.
#[inline(always)]
fn capture_stack(pid_tgid: u64) -> u64 {
    let tgid = (pid_tgid >> 32) as u32;
    let Some(stack) = stacks::unwind_user(Unwinder::Alloc, tgid) else {
        return 0;
    };
    // Python code allocates through the same few native call sites: the Python frames
    // are what tell its allocating stacks apart.
    let python = python::walk(Unwinder::Alloc, tgid);
    // SAFETY: the per-CPU stacks the unwinder and the Python walk just filled.
    let id = unsafe {
        let native = stack_id(&(*stack).frames, (*stack).depth as usize, pid_tgid >> 32);
        match python {
            Some(python) => python_stack_id(native, &*python),
            None => native,
        }
    };
    // SAFETY: the value is only tested for presence.
    if unsafe { ALLOC_STACKS_SEEN.get(&id) }.is_some() {
        return id;
    }
    match ALLOC_STACKS_SEEN.insert(&id, &1, u64::from(BPF_NOEXIST)) {
        Ok(()) => stream_stack(stack, python, id, pid_tgid),
        // -EEXIST: another CPU saw it first and streams it.
        Err(-17) => {}
        Err(_) => count_loss(LossCounter::AllocStackTableFull),
    }
    id
}

/// A hash of the process and the frames, never 0.
#[inline(always)]
fn stack_id(frames: &[u64; MAX_STACK_DEPTH], depth: usize, tgid: u64) -> u64 {
    let mut hash = 0x243f_6a88_85a3_08d3 ^ tgid;
    for (index, &frame) in frames.iter().enumerate() {
        if index >= depth {
            break;
        }
        hash = (hash ^ frame).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        hash ^= hash >> 29;
    }
    hash | 1
}

/// Mixes a Python stack's code objects into a native stack's id; never 0.
#[inline(always)]
fn python_stack_id(native: u64, python: &PythonStack) -> u64 {
    let mut hash = native;
    for (index, frame) in python.frames.iter().enumerate() {
        if index >= python.depth as usize {
            break;
        }
        hash =
            (hash ^ frame.code ^ u64::from(frame.first_line)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        hash ^= hash >> 29;
    }
    hash | 1
}

#[inline(always)]
fn stream_stack(
    stack: *const UserStack,
    python: Option<*const PythonStack>,
    id: u64,
    pid_tgid: u64,
) {
    let Some(mut record) = EVENTS.reserve::<AllocStack>(0) else {
        // Forget it, so that the next allocation from this stack tries again.
        let _ = ALLOC_STACKS_SEEN.remove(&id);
        count_loss(LossCounter::AllocStackRingFull);
        return;
    };
    let out = record.as_mut_ptr();
    // SAFETY: `out` points at a reserved, writable AllocStack; the frames are copied
    // whole from the per-CPU stack, of the same size.
    unsafe {
        let frames = core::slice::from_raw_parts_mut(
            (*out).frames.as_mut_ptr().cast::<u8>(),
            core::mem::size_of::<[u64; MAX_STACK_DEPTH]>(),
        );
        if bpf_probe_read_kernel_buf((&raw const (*stack).frames).cast::<u8>(), frames).is_err() {
            record.discard(0);
            let _ = ALLOC_STACKS_SEEN.remove(&id);
            return;
        }
        (*out).header = header(
            EventKind::AllocStack,
            (pid_tgid >> 32) as u32,
            pid_tgid as u32,
            now_ns(),
        );
        (*out).id = id;
        (*out).depth = (*stack).depth;
        (*out).end = (*stack).end;
        (*out).frame_pointer_frames = (*stack).frame_pointer_frames;
        (*out)._padding = 0;
        python::copy(python, &raw mut (*out).python);
    }
    record.submit(wakeup_flag());
}

#[inline(always)]
fn count(counter: AllocCounter) {
    if let Some(count) = ALLOC_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        unsafe { *count += 1 };
    }
}
