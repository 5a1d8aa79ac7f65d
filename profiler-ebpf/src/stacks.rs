//! Capturing a thread's stacks, the same way for every program kind.
//!
//! Kernel stacks come from `bpf_get_stack` (the kernel's own unwinder). User stacks are
//! unwound here from the binaries' call-frame information, which userspace compiled
//! into [`UNWIND_CHUNKS`]: frame pointers are absent from most binaries users run, and
//! walking them loses every caller of a frameless function. A frame that no row covers
//! (JIT code, a file without call-frame information) is stepped over by its frame
//! pointer, and the walk goes back to rows at the first caller that has them.
//!
//! Each step finds the mapping of the address, binary-searches its file's rows, and
//! computes the caller's registers. The steps run under `bpf_loop`, so that the verifier
//! checks one step, not [`MAX_STACK_DEPTH`] copies of it.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_F_USER_STACK, pt_regs, task_struct},
    btf_maps::{self, ArrayOfMaps},
    helpers::{
        bpf_get_stack, bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_send_signal, bpf_task_pt_regs},
    },
    macros::{btf_map, map, raw_tracepoint, uprobe},
    maps::{HashMap, PerCpuArray},
    programs::{ProbeContext, RawTracePointContext},
};
use profiler_common::{
    ExecutableMapping, MAPPING_SEARCH_STEPS, MAX_MAPPINGS, MAX_STACK_DEPTH, MAX_TARGETS,
    MAX_UNWIND_CHUNKS, ProcessMappings, StackEnd, Stacks, UNWIND_CHUNK_ROWS, UNWIND_SEARCH_STEPS,
    UnwindRow, cfa_rule,
};

use crate::{current_thread, is_target, python};

pub const STACK_BYTES: u32 = (MAX_STACK_DEPTH * size_of::<u64>()) as u32;

/// Every loaded file's rows, one after another, in chunks of [`UNWIND_CHUNK_ROWS`]:
/// userspace adds a chunk when the files met need one, so the kernel holds what the
/// targets need rather than a worst case, and writes the rows through a memory mapping.
#[btf_map]
static UNWIND_CHUNKS: ArrayOfMaps<
    btf_maps::Array<UnwindRow, { UNWIND_CHUNK_ROWS as usize }, { BPF_F_MMAPABLE as usize }>,
    { MAX_UNWIND_CHUNKS as usize },
> = ArrayOfMaps::new();

#[map]
static PROCESS_MAPPINGS: HashMap<u32, ProcessMappings> =
    HashMap::with_max_entries(MAX_TARGETS, BPF_F_NO_PREALLOC);

/// Which program kind unwinds. A program of one kind can interrupt one of another on
/// the same CPU (a CPU sample firing inside a syscall probe), so each kind has its own
/// per-CPU unwinding state.
#[derive(Clone, Copy)]
pub enum Unwinder {
    Cpu = 0,
    Syscall,
    OffCpu,
    Alloc,
}

pub const UNWINDERS: u32 = 4;

/// A user stack being unwound.
#[repr(C)]
pub struct UserStack {
    tgid: u32,
    /// Frames written so far.
    pub depth: u32,
    /// A [`StackEnd`], once the unwinding stopped.
    pub end: u32,
    /// Whether `pc` is a return address, which is looked up one byte back, in the call.
    after_call: u32,
    /// The generation of the process's mapping list when the unwinding started; 0 if
    /// it has none, and then no row is remembered.
    generation: u32,
    /// Frames stepped over by their frame pointer, for want of a row.
    pub frame_pointer_frames: u32,
    pc: u64,
    sp: u64,
    bp: u64,
    /// Innermost first.
    pub frames: [u64; MAX_STACK_DEPTH],
}

#[map]
static USER_STACKS: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(UNWINDERS, 0);

/// Set by userspace: 1 walks frame pointers for user stacks instead (`--unwind fp`).
#[unsafe(no_mangle)]
static WALK_FRAME_POINTERS: u64 = 0;

/// Fills `stacks` with the running thread's user, kernel and Python stacks.
///
/// SAFETY: `ctx` must be the running program's context and `stacks` writable.
#[inline(always)]
pub unsafe fn capture(ctx: *mut c_void, stacks: *mut Stacks, unwinder: Unwinder, tgid: u32) {
    // SAFETY: as this function's.
    unsafe {
        capture_kernel(ctx, stacks);
        capture_user(ctx, stacks, unwinder, tgid);
    }
}

/// Fills the kernel part of `stacks` with the running thread's kernel stack.
///
/// SAFETY: `ctx` must be the running program's context and `stacks` writable.
#[inline(always)]
pub unsafe fn capture_kernel(ctx: *mut c_void, stacks: *mut Stacks) {
    // SAFETY: bpf_get_stack writes at most STACK_BYTES into the array.
    unsafe {
        (*stacks).kernel_bytes = bpf_get_stack(
            ctx,
            (*stacks).kernel.as_mut_ptr().cast::<c_void>(),
            STACK_BYTES,
            0,
        ) as i32;
    }
}

/// Fills the user and Python parts of `stacks` with the running thread's. They depend
/// only on the thread's user registers and memory, so they may be taken at any moment
/// before the thread next runs user code.
///
/// SAFETY: `ctx` must be the running program's context and `stacks` writable.
#[inline(always)]
pub unsafe fn capture_user(ctx: *mut c_void, stacks: *mut Stacks, unwinder: Unwinder, tgid: u32) {
    // SAFETY: `stacks` is writable, so is its Python part.
    unsafe { python::capture(&raw mut (*stacks).python, unwinder, tgid) };
    // SAFETY: bpf_get_stack writes at most STACK_BYTES into the array; the user frames
    // are copied whole from the per-CPU state, of the same size.
    unsafe {
        if core::ptr::read_volatile(&raw const WALK_FRAME_POINTERS) != 0 {
            let bytes = bpf_get_stack(
                ctx,
                (*stacks).user.as_mut_ptr().cast::<c_void>(),
                STACK_BYTES,
                u64::from(BPF_F_USER_STACK),
            );
            (*stacks).user_depth = if bytes > 0 { bytes as u32 / 8 } else { 0 };
            (*stacks).user_end = StackEnd::FramePointers as u32;
            (*stacks).frame_pointer_frames = 0;
            return;
        }
        let Some(user) = unwind_user(unwinder, tgid) else {
            (*stacks).user_depth = 0;
            (*stacks).frame_pointer_frames = 0;
            (*stacks).user_end = StackEnd::NoUserStack as u32;
            return;
        };
        (*stacks).user_end = (*user).end;
        (*stacks).frame_pointer_frames = (*user).frame_pointer_frames;
        let frames = core::slice::from_raw_parts_mut(
            (*stacks).user.as_mut_ptr().cast::<u8>(),
            STACK_BYTES as usize,
        );
        if bpf_probe_read_kernel_buf((&raw const (*user).frames).cast::<u8>(), frames).is_ok() {
            (*stacks).user_depth = (*user).depth;
        } else {
            (*stacks).user_depth = 0;
            (*stacks).user_end = StackEnd::UnreadableMemory as u32;
        }
    }
}

/// The running thread's user instruction and stack pointers: what it will resume with.
#[inline(always)]
pub fn user_registers() -> Option<(u64, u64)> {
    // SAFETY: the helper returns the running task's BTF pointer.
    task_user_registers(unsafe { bpf_get_current_task_btf() })
}

/// The user instruction and stack pointers `task` entered the kernel with: what it will
/// resume with.
///
/// `task` must be a trusted BTF pointer, such as a BTF tracepoint's argument.
#[inline(always)]
pub fn task_user_registers(task: *mut task_struct) -> Option<(u64, u64)> {
    // SAFETY: the helpers check every kernel address they read.
    unsafe {
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        Some((
            bpf_probe_read_kernel(&raw const (*regs).rip).ok()?,
            bpf_probe_read_kernel(&raw const (*regs).rsp).ok()?,
        ))
    }
}

/// Unwinds the running thread's user stack from the registers it entered the kernel
/// with. Those are its user registers whether a sampling timer interrupted it, it is
/// inside a syscall or the scheduler, or it hit a uprobe.
#[inline(always)]
pub fn unwind_user(unwinder: Unwinder, tgid: u32) -> Option<*const UserStack> {
    let slot = unwinder as u32;
    let stack = USER_STACKS.get_ptr_mut(slot)?;
    // SAFETY: a per-CPU value owned by this program kind on this CPU; the helpers check
    // every kernel address they read.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        (*stack).tgid = tgid;
        (*stack).generation = PROCESS_MAPPINGS
            .get(&tgid)
            .map_or(0, |process| process.generation);
        (*stack).depth = 0;
        (*stack).frame_pointer_frames = 0;
        (*stack).after_call = 0;
        (*stack).pc = bpf_probe_read_kernel(&raw const (*regs).rip).ok()?;
        (*stack).sp = bpf_probe_read_kernel(&raw const (*regs).rsp).ok()?;
        (*stack).bp = bpf_probe_read_kernel(&raw const (*regs).rbp).ok()?;
        (*stack).end = StackEnd::DepthLimit as u32;
        let mut callback_slot = slot;
        bpf_loop(
            MAX_STACK_DEPTH as u32,
            step_callback as *mut c_void,
            (&raw mut callback_slot).cast::<c_void>(),
            0,
        );
    }
    Some(stack)
}

/// One `bpf_loop` iteration: 0 goes on, 1 stops. Private and not `#[no_mangle]`, so that
/// the linker gives it the static linkage the verifier wants of a callback.
extern "C" fn step_callback(_index: u64, slot: *mut c_void) -> i64 {
    // SAFETY: `slot` points at the u32 `unwind_user` passed.
    let slot = unsafe { *slot.cast::<u32>() };
    let Some(stack) = USER_STACKS.get_ptr_mut(slot) else {
        return 1;
    };
    // SAFETY: the per-CPU value `unwind_user` initialised.
    let stack = unsafe { &mut *stack };
    // Most frames' rows are remembered, and most of those are plain: such a frame is
    // stepped over in the same call, which saves a callback's call and return, each
    // return through a thunk here. The full step is not repeated: checking it twice
    // per call would double the verifier's time.
    match step(stack).and_then(|()| step_remembered(stack)) {
        Ok(()) => 0,
        Err(end) => {
            stack.end = end as u32;
            1
        }
    }
}

/// Records the current frame and moves to its caller, if its row is remembered and
/// its CFA is a register plus an offset; leaves every other frame to [`step`].
#[inline(always)]
fn step_remembered(stack: &mut UserStack) -> Result<(), StackEnd> {
    let (lookup, tag) = row_key(stack);
    match remembered_row(lookup, tag) {
        Some(row)
            if row.cfa_rule == cfa_rule::RSP
                || row.cfa_rule == cfa_rule::RBP
                || row.cfa_rule == cfa_rule::FRAME_POINTER =>
        {
            record_frame(stack)?;
            to_caller(stack, row)
        }
        _ => Ok(()),
    }
}

/// Records the current frame and moves to its caller.
#[inline(always)]
fn step(stack: &mut UserStack) -> Result<(), StackEnd> {
    record_frame(stack)?;
    let (lookup, tag) = row_key(stack);
    let row = match remembered_row(lookup, tag) {
        Some(row) => row,
        None => {
            let found = find_unwind_row(stack.tgid, lookup);
            if found == NO_MAPPING {
                return Err(StackEnd::UnknownMapping);
            }
            let mut row = row_from_bits(found);
            // Code without rows in a mapping the process has (a JIT's, V8's builtins,
            // a file without call-frame information) is walked by its frame pointer
            // until the walk lands in code that has rows again.
            if row.cfa_rule == cfa_rule::NONE {
                row = FRAME_POINTER_ROW;
            }
            remember_row(lookup, tag, row);
            row
        }
    };
    to_caller(stack, row)
}

#[inline(always)]
fn record_frame(stack: &mut UserStack) -> Result<(), StackEnd> {
    let Some(frame) = stack.frames.get_mut(stack.depth as usize) else {
        return Err(StackEnd::DepthLimit);
    };
    *frame = stack.pc;
    stack.depth += 1;
    Ok(())
}

/// The address whose row the current frame needs, and the process and generation of
/// its mappings the row is remembered under.
#[inline(always)]
fn row_key(stack: &UserStack) -> (u64, u64) {
    (
        stack.pc.wrapping_sub(u64::from(stack.after_call)),
        (u64::from(stack.tgid) << 32) | u64::from(stack.generation),
    )
}

/// Moves from the current frame to its caller by the frame's row.
#[inline(always)]
fn to_caller(stack: &mut UserStack, row: UnwindRow) -> Result<(), StackEnd> {
    let cfa = match row.cfa_rule {
        cfa_rule::RSP => stack.sp.wrapping_add(u64::from(row.cfa_offset)),
        cfa_rule::RBP => stack.bp.wrapping_add(u64::from(row.cfa_offset)),
        cfa_rule::PLT => {
            let pushed = if stack.pc & 15 >= u64::from(row.cfa_offset) {
                8
            } else {
                0
            };
            stack.sp.wrapping_add(8 + pushed)
        }
        cfa_rule::FRAME_POINTER => {
            // A frame pointer points into the stack above the frame, at a word
            // boundary; anything else is no frame pointer, and the walk ends there.
            let span = stack.bp.wrapping_sub(stack.sp);
            if span > MAX_FRAME_POINTER_SPAN || stack.bp & 7 != 0 {
                return Err(StackEnd::NoUnwindInfo);
            }
            stack.frame_pointer_frames += 1;
            stack.bp.wrapping_add(16)
        }
        cfa_rule::SIGNAL => return resume_interrupted(stack),
        cfa_rule::ROOT => return Err(StackEnd::Root),
        _ => return Err(StackEnd::NoUnwindInfo),
    };
    let return_address = match row.rbp_offset {
        0 => read_user(cfa.wrapping_sub(8))?,
        // `push rbp` right after the call, as every frame-pointer prologue does: the
        // saved rbp and the return address are read in one call to the helper, which
        // costs about as much as reading either.
        SAVED_RBP_BELOW_RETURN_ADDRESS => {
            let [saved_rbp, return_address] = read_user::<[u64; 2]>(cfa.wrapping_sub(16))?;
            stack.bp = saved_rbp;
            return_address
        }
        saved_at => {
            stack.bp = read_user(cfa.wrapping_add_signed(i64::from(saved_at) * 8))?;
            read_user(cfa.wrapping_sub(8))?
        }
    };
    if return_address == 0 {
        return Err(StackEnd::Root);
    }
    stack.pc = return_address;
    stack.sp = cfa;
    stack.after_call = 1;
    Ok(())
}

/// Offsets in a `ucontext_t` of the registers a signal interrupted: its
/// `uc_mcontext` starts 40 bytes in, and the kernel saves r8..r15, rdi, rsi, rbp, rbx,
/// rdx, rax, rcx, rsp, rip there in that order.
const UCONTEXT_RBP: u64 = 40 + 10 * 8;
const UCONTEXT_RSP: u64 = 40 + 15 * 8;
const UCONTEXT_RIP: u64 = 40 + 16 * 8;

/// Steps from a signal trampoline to the instruction the signal interrupted. When the
/// handler returns into the trampoline, the stack pointer is the `ucontext_t`.
#[inline(always)]
fn resume_interrupted(stack: &mut UserStack) -> Result<(), StackEnd> {
    let context = stack.sp;
    stack.pc = read_user(context + UCONTEXT_RIP)?;
    stack.bp = read_user(context + UCONTEXT_RBP)?;
    stack.sp = read_user(context + UCONTEXT_RSP)?;
    // The interrupted instruction had not run yet: it is no return address.
    stack.after_call = 0;
    Ok(())
}

/// Where a frame-pointer prologue saves rbp: the word below the return address, in
/// words from the CFA.
const SAVED_RBP_BELOW_RETURN_ADDRESS: i8 = -2;

/// The row a frame without one is stepped over with.
const FRAME_POINTER_ROW: UnwindRow = UnwindRow {
    address: 0,
    cfa_offset: 16,
    cfa_rule: cfa_rule::FRAME_POINTER,
    rbp_offset: SAVED_RBP_BELOW_RETURN_ADDRESS,
};

/// The farthest a frame pointer may point above the stack pointer: a thread's default
/// stack size. Farther, rbp holds something else than a frame pointer.
const MAX_FRAME_POINTER_SPAN: u64 = 8 << 20;

#[inline(always)]
fn read_user<T>(address: u64) -> Result<T, StackEnd> {
    // SAFETY: the helper checks the user address.
    unsafe { bpf_probe_read_user(address as *const T) }.map_err(|_| StackEnd::UnreadableMemory)
}

/// Rows remembered on each CPU: most frames of a sample are return addresses that
/// earlier samples of the same process unwound through (an interpreter's call sites, a
/// server's loop), and the two binary searches for them, mostly cache misses in a row
/// array of megabytes, were most of a deep stack's unwinding time.
const ROW_CACHE_SLOTS: u32 = 4096;

/// A remembered row: the address it was found for, in which process and generation of
/// its mappings, and a check over the three, since a program of another kind can
/// interrupt one writing the entry on the same CPU.
#[repr(C)]
#[derive(Clone, Copy)]
struct RememberedRow {
    address: u64,
    tag: u64,
    row: UnwindRow,
    check: u64,
}

#[map]
static ROW_CACHE: PerCpuArray<RememberedRow> = PerCpuArray::with_max_entries(ROW_CACHE_SLOTS, 0);

#[inline(always)]
fn row_slot(address: u64, tag: u64) -> u32 {
    let hash = (address ^ tag).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (hash >> 40) as u32 & (ROW_CACHE_SLOTS - 1)
}

#[inline(always)]
fn row_check(address: u64, tag: u64, row: UnwindRow) -> u64 {
    (address ^ tag.rotate_left(29) ^ row_bits(row)).wrapping_mul(0xff51_afd7_ed55_8ccd) | 1
}

/// The row found earlier for `address` in the process and generation `tag`.
#[inline(always)]
fn remembered_row(address: u64, tag: u64) -> Option<UnwindRow> {
    if tag as u32 == 0 {
        return None;
    }
    let entry = ROW_CACHE.get(row_slot(address, tag))?;
    (entry.address == address
        && entry.tag == tag
        && entry.check == row_check(address, tag, entry.row))
    .then_some(entry.row)
}

#[inline(always)]
fn remember_row(address: u64, tag: u64, row: UnwindRow) {
    if tag as u32 == 0 {
        return;
    }
    if let Some(entry) = ROW_CACHE.get_ptr_mut(row_slot(address, tag)) {
        // SAFETY: a per-CPU slot; a torn write fails the check when read.
        unsafe {
            *entry = RememberedRow {
                address,
                tag,
                row,
                check: row_check(address, tag, row),
            };
        }
    }
}

/// What [`find_unwind_row`] returns when `address` is in no mapping of the process; any
/// other value without a CFA rule means its mapping has no row for it.
const NO_MAPPING: u64 = 0;
const NO_ROW: u64 = 1;

/// The unwind row for `address` in process `tgid`, as [`row_bits`], or [`NO_MAPPING`]
/// or [`NO_ROW`].
///
/// A global function, which the verifier checks once by itself: inlined into the
/// unwinding loop's step, its two searches were checked at every state the loop
/// reached them in, most of the time each unwinding program took to load.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn find_unwind_row(tgid: u32, address: u64) -> u64 {
    let Ok(mapping) = find_mapping(tgid, address) else {
        return NO_MAPPING;
    };
    let offset = address.wrapping_sub(mapping.bias);
    if offset > u64::from(u32::MAX) {
        return NO_ROW;
    }
    find_row(mapping, offset as u32).map_or(NO_ROW, row_bits)
}

/// A row in one word: its fields side by side, the CFA rule (never 0) in bits 48..56.
#[inline(always)]
fn row_bits(row: UnwindRow) -> u64 {
    u64::from(row.address)
        | u64::from(row.cfa_offset) << 32
        | u64::from(row.cfa_rule) << 48
        | u64::from(row.rbp_offset as u8) << 56
}

#[inline(always)]
fn row_from_bits(bits: u64) -> UnwindRow {
    UnwindRow {
        address: bits as u32,
        cfa_offset: (bits >> 32) as u16,
        cfa_rule: (bits >> 48) as u8,
        rbp_offset: (bits >> 56) as u8 as i8,
    }
}

/// The mapping of process `tgid` holding `address`.
#[inline(always)]
fn find_mapping(tgid: u32, address: u64) -> Result<&'static ExecutableMapping, StackEnd> {
    // SAFETY: map values live as long as the program runs; userspace replaces a
    // process's entry whole.
    let process = unsafe { PROCESS_MAPPINGS.get(&tgid) }.ok_or(StackEnd::UnknownMapping)?;
    let count = (process.count as usize).min(MAX_MAPPINGS) as u64;
    if count == 0 {
        return Err(StackEnd::UnknownMapping);
    }
    let (mut base, mut length) = (0u64, count);
    for _ in 0..MAPPING_SEARCH_STEPS {
        let half = length / 2;
        let probe = process
            .mappings
            .get((base + half) as usize)
            .ok_or(StackEnd::UnknownMapping)?;
        base += half * at_most(probe.start, address);
        length -= half;
    }
    let mapping = process
        .mappings
        .get(base as usize)
        .ok_or(StackEnd::UnknownMapping)?;
    if mapping.start <= address && address < mapping.end {
        Ok(mapping)
    } else {
        Err(StackEnd::UnknownMapping)
    }
}

/// The last row of the mapping's table that starts at or below `address`.
#[inline(always)]
fn find_row(mapping: &ExecutableMapping, address: u32) -> Option<UnwindRow> {
    if mapping.rows == 0 {
        return None;
    }
    let (mut base, mut length) = (u64::from(mapping.first_row), u64::from(mapping.rows));
    for _ in 0..UNWIND_SEARCH_STEPS {
        let half = length / 2;
        let probe = unwind_row(base + half)?;
        base += half * at_most(u64::from(probe.address), u64::from(address));
        length -= half;
    }
    let row = unwind_row(base)?;
    (row.address <= address).then_some(*row)
}

/// Row `index` of all the rows, in its chunk.
#[inline(always)]
fn unwind_row(index: u64) -> Option<&'static UnwindRow> {
    let chunk = (index / u64::from(UNWIND_CHUNK_ROWS)) as u32;
    let slot = (index % u64::from(UNWIND_CHUNK_ROWS)) as u32;
    UNWIND_CHUNKS.get_value(chunk, &slot)
}

/// 1 if `a <= b`, else 0, for values below 2^63, computed without a branch.
///
/// Both searches step by halves a fixed number of times, moving on by this much: with
/// no branch in a step the verifier follows one path through the search, not one per
/// outcome of every comparison, which made loading each program take half a second.
#[inline(always)]
fn at_most(a: u64, b: u64) -> u64 {
    1 - (b.wrapping_sub(a) >> 63)
}

/// Forgets a target's mappings and Python layout when it execs: they are gone, and the
/// new program's addresses must not be unwound with the old tables. Userspace hears of
/// the exec at once and reads the new map; until then stacks report
/// [`StackEnd::UnknownMapping`].
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> u32 {
    let (tgid, _) = current_thread();
    if is_target(tgid) {
        forget(tgid);
        crate::follow::report_start(tgid);
    }
    0
}

/// Forgets a process's mappings and Python layout: it exec'd or exited.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = PROCESS_MAPPINGS.remove(&tgid);
    python::forget(tgid);
}

/// Gives a forked process its parent's mappings and Python layout: until it execs it
/// maps the same files at the same addresses, so its first stacks unwind whole before
/// userspace has read its map.
#[inline(always)]
pub fn inherit(parent: u32, child: u32) {
    // SAFETY: map values live while the program runs; the copy is made by the helper.
    if let Some(mappings) = unsafe { PROCESS_MAPPINGS.get(&parent) } {
        let _ = PROCESS_MAPPINGS.insert(&child, mappings, 0);
    }
    python::inherit(parent, child);
}

/// `SIGSTOP` from `asm-generic/signal.h`.
const SIGSTOP: u32 = 19;

/// Stops a command the profiler started when it reaches its program's entry point: the
/// dynamic loader has mapped its libraries by then, and the program's own code has not
/// run. Userspace loads the tables of those libraries, detaches this probe and lets the
/// command continue, so that its first stacks unwind whole.
#[uprobe]
pub fn hold_at_entry(_ctx: ProbeContext) -> u32 {
    // SAFETY: a helper that signals the current process.
    unsafe { bpf_send_signal(SIGSTOP) };
    0
}
