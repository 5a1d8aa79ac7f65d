//! Python frames: the functions a CPython thread is running, read from the
//! interpreter's own frame chain.
//!
//! The thread state is the sampled thread's own, found through the interpreter's
//! thread-specific key (`_PyRuntime.autoTSSkey`) in glibc's thread control block, never
//! the thread holding the GIL: a thread that released the GIL inside `predict` (numpy,
//! hashlib, a socket read) is still running `predict`. Only code object addresses are
//! recorded; userspace names them.
//!
//! Whether the thread holds the GIL is read from the lock itself (`locked` and
//! `last_holder`), at the same moment: a thread on a CPU without it runs C code that
//! released it; a thread in a futex wait on the lock's own words waits to take it.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user,
        bpf_probe_read_user_buf,
        generated::{bpf_get_current_task, bpf_get_current_task_btf, bpf_loop, bpf_task_pt_regs},
    },
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use profiler_common::{
    FUTEX_COMMAND_MASK, FUTEX_WAITS, GilState, MAX_PYTHON_DEPTH, MAX_TARGETS,
    PTHREAD_KEY_FIRST_BLOCK, PTHREAD_SPECIFIC_OFFSET, PYTHON_CALL_END_WORDS, PYTHON_CODE_BYTES,
    PYTHON_EVERY_FRAME, PYTHON_FRAME_BYTES, PYTHON_GIL_BYTES, PYTHON_GIL_HOLDER, PYTHON_GIL_LOCKED,
    PYTHON_NO_FIELD, PYTHON_NO_INSTRUCTION, PYTHON_OWNER_CSTACK, PythonEnd, PythonFrame,
    PythonLayout, PythonProcess, PythonStack, SYSCALL_FUTEX,
};

use crate::stacks::{UNWINDERS, Unwinder};

#[map]
static PYTHON_PROCESSES: HashMap<u32, PythonProcess> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Set by userspace from the kernel's BTF; 0 leaves every Python stack empty.
#[unsafe(no_mangle)]
static TASK_FSBASE_OFFSET: u64 = 0;

/// Field offsets are masked with this before indexing a copy, so that the verifier
/// sees every read inside it.
const FIELD_MASK: u32 = 127;

/// A copy of an object's first bytes, with room for a field read at a masked offset.
type ObjectBytes = [u8; FIELD_MASK as usize + 1 + 8];

/// A Python stack being walked.
#[repr(C)]
struct PythonWalk {
    /// The next frame to record, 0 at the end.
    frame: u64,
    layout: PythonLayout,
    /// The current frame's first [`PYTHON_FRAME_BYTES`].
    frame_bytes: ObjectBytes,
    /// Its code object's [`PYTHON_CODE_BYTES`] from `co_firstlineno` on.
    code_bytes: ObjectBytes,
    stack: PythonStack,
}

#[map]
static PYTHON_WALKS: PerCpuArray<PythonWalk> = PerCpuArray::with_max_entries(UNWINDERS, 0);

/// Forgets how to walk a process that replaced its program (userspace looks for an
/// interpreter in the new one) or exited.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = PYTHON_PROCESSES.remove(&tgid);
}

/// Walks a forked process as its parent: the interpreter's memory is the same.
#[inline(always)]
pub fn inherit(parent: u32, child: u32) {
    // SAFETY: map values live while the program runs; the copy is made by the helper.
    if let Some(process) = unsafe { PYTHON_PROCESSES.get(&parent) } {
        let _ = PYTHON_PROCESSES.insert(&child, process, 0);
    }
}

/// Walks the running thread's Python frames into `out`; a process that is not a walked
/// Python interpreter gets an empty stack marked [`PythonEnd::NotPython`].
///
/// SAFETY: `out` must be writable.
#[inline(always)]
pub unsafe fn capture(out: *mut PythonStack, unwinder: Unwinder, tgid: u32) {
    // SAFETY: as the caller promised.
    unsafe { copy(walk(unwinder, tgid), out) }
}

/// Copies a stack [`walk`] returned into `out`.
///
/// SAFETY: `out` must be writable.
#[inline(always)]
pub unsafe fn copy(walked: Option<*const PythonStack>, out: *mut PythonStack) {
    // SAFETY: `out` is writable; the walked stack is a per-CPU value of the same type,
    // copied whole.
    unsafe {
        match walked {
            Some(walked) => {
                let bytes =
                    core::slice::from_raw_parts_mut(out.cast::<u8>(), size_of::<PythonStack>());
                if bpf_probe_read_kernel_buf(walked.cast::<u8>(), bytes).is_err() {
                    (*out).depth = 0;
                    (*out).end = PythonEnd::UnreadableMemory as u32;
                    (*out).gil = GilState::Unknown as u32;
                }
            }
            None => {
                (*out).depth = 0;
                (*out).end = PythonEnd::NotPython as u32;
                (*out).gil = GilState::Unknown as u32;
            }
        }
    }
}

/// Walks the running thread's Python frames, if its process is a Python target.
#[inline(always)]
pub fn walk(unwinder: Unwinder, tgid: u32) -> Option<*const PythonStack> {
    // SAFETY: map values live while the program runs; userspace writes a process's
    // entry once, before its stacks matter.
    let process = unsafe { PYTHON_PROCESSES.get(&tgid) }?;
    let slot = unwinder as u32;
    let state = PYTHON_WALKS.get_ptr_mut(slot)?;
    // SAFETY: a per-CPU value owned by this program kind on this CPU.
    unsafe {
        (*state).stack.depth = 0;
        (*state).stack.call_ends = [0; PYTHON_CALL_END_WORDS];
        (*state).stack.gil = GilState::Unknown as u32;
        (*state).layout = process.layout;
        let thread_state = current_thread_state(process);
        if let Ok(thread_state) = thread_state {
            (*state).stack.gil = gil_state(process, thread_state) as u32;
        }
        match thread_state.and_then(|thread_state| current_frame(process, thread_state)) {
            Ok(frame) => {
                (*state).frame = frame;
                (*state).stack.end = PythonEnd::DepthLimit as u32;
                let mut callback_slot = slot;
                bpf_loop(
                    (MAX_PYTHON_DEPTH + MAX_PYTHON_DEPTH / 4) as u32,
                    step_callback as *mut c_void,
                    (&raw mut callback_slot).cast::<c_void>(),
                    0,
                );
            }
            Err(end) => (*state).stack.end = end as u32,
        }
        Some(&raw const (*state).stack)
    }
}

/// The running thread's own thread state.
#[inline(always)]
fn current_thread_state(process: &PythonProcess) -> Result<u64, PythonEnd> {
    // SAFETY: reading globals userspace set before loading, and kernel memory through
    // the checking helper.
    let fsbase = unsafe {
        let offset = core::ptr::read_volatile(&raw const TASK_FSBASE_OFFSET);
        if offset == 0 {
            return Err(PythonEnd::NotPython);
        }
        let task = bpf_get_current_task() as *const u8;
        bpf_probe_read_kernel(task.add(offset as usize).cast::<u64>())
            .map_err(|_| PythonEnd::UnreadableMemory)?
    };
    // `Py_tss_t` is `{ int _is_initialized; pthread_key_t _key; }`.
    let key = read_user::<[u32; 2]>(process.thread_state_key)?;
    if key[0] == 0 || key[1] >= PTHREAD_KEY_FIRST_BLOCK {
        return Err(PythonEnd::NoThreadState);
    }
    let slot_data = fsbase + PTHREAD_SPECIFIC_OFFSET + u64::from(key[1]) * 16 + 8;
    let thread_state = read_user::<u64>(slot_data)?;
    if thread_state == 0 {
        return Err(PythonEnd::NoThreadState);
    }
    let layout = &process.layout;
    // glibc's pthread_self() is the thread's TLS base.
    if read_user::<u64>(thread_state + u64::from(layout.thread_id))? != fsbase {
        return Err(PythonEnd::OtherThread);
    }
    Ok(thread_state)
}

/// The innermost frame of thread state `thread_state`.
#[inline(always)]
fn current_frame(process: &PythonProcess, thread_state: u64) -> Result<u64, PythonEnd> {
    let layout = &process.layout;
    let holder = if layout.thread_frame_holder == PYTHON_NO_FIELD {
        thread_state
    } else {
        read_user::<u64>(thread_state + u64::from(layout.thread_frame_holder))?
    };
    if holder == 0 {
        return Err(PythonEnd::NoThreadState);
    }
    read_user::<u64>(holder + u64::from(layout.holder_current_frame))
}

/// What the running thread, whose thread state is `thread_state`, is doing about the GIL.
#[inline(always)]
fn gil_state(process: &PythonProcess, thread_state: u64) -> GilState {
    let gil = process.gil;
    if gil == 0 {
        return GilState::Unknown;
    }
    if futex_wait_address().is_some_and(|address| address.wrapping_sub(gil) < PYTHON_GIL_BYTES) {
        return GilState::Waiting;
    }
    let (Ok(holder), Ok(locked)) = (
        read_user::<u64>(gil + PYTHON_GIL_HOLDER),
        read_user::<i32>(gil + PYTHON_GIL_LOCKED),
    ) else {
        return GilState::Unknown;
    };
    if locked > 0 && holder == thread_state {
        GilState::Held
    } else {
        GilState::Released
    }
}

/// The futex word the running thread waits on, if it is in a `futex` call that sleeps:
/// its first argument, as it entered the kernel. A sampled thread interrupted in user
/// code has an interrupt's number there, not a syscall's.
#[inline(always)]
fn futex_wait_address() -> Option<u64> {
    // SAFETY: the helpers return the running task's registers; every read is checked.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        let syscall = bpf_probe_read_kernel(&raw const (*regs).orig_rax).ok()?;
        if syscall != SYSCALL_FUTEX {
            return None;
        }
        let command = bpf_probe_read_kernel(&raw const (*regs).rsi).ok()? & FUTEX_COMMAND_MASK;
        if command != FUTEX_WAITS[0] && command != FUTEX_WAITS[1] {
            return None;
        }
        bpf_probe_read_kernel(&raw const (*regs).rdi).ok()
    }
}

/// One `bpf_loop` iteration: 0 goes on, 1 stops. Private and not `#[no_mangle]`, so that
/// the linker gives it the static linkage the verifier wants of a callback.
extern "C" fn step_callback(_index: u64, slot: *mut c_void) -> i64 {
    // SAFETY: `slot` points at the u32 `walk` passed.
    let slot = unsafe { *slot.cast::<u32>() };
    let Some(state) = PYTHON_WALKS.get_ptr_mut(slot) else {
        return 1;
    };
    // SAFETY: the per-CPU value `walk` initialised.
    match step(unsafe { &mut *state }) {
        Ok(()) => 0,
        Err(end) => {
            // SAFETY: as above.
            unsafe { (*state).stack.end = end as u32 };
            1
        }
    }
}

/// Records the current frame, unless it only marks a C call's entry, and moves to the
/// previous one.
#[inline(always)]
fn step(state: &mut PythonWalk) -> Result<(), PythonEnd> {
    if state.frame == 0 {
        return Err(PythonEnd::Root);
    }
    copy_user(
        state.frame,
        &mut state.frame_bytes,
        PYTHON_FRAME_BYTES as usize,
    )?;
    let layout = state.layout;
    let previous = field::<u64>(&state.frame_bytes, layout.frame_previous);
    let depth = state.stack.depth as usize;
    if layout.frame_owner != PYTHON_NO_FIELD
        && field::<u8>(&state.frame_bytes, layout.frame_owner) == PYTHON_OWNER_CSTACK
    {
        // The frames since the last such marker ran in the C call it marks.
        if depth > 0 {
            mark_call_end(&mut state.stack, depth - 1);
        }
        state.frame = previous;
        return Ok(());
    }
    if depth >= MAX_PYTHON_DEPTH {
        return Err(PythonEnd::DepthLimit);
    }
    let code = field::<u64>(&state.frame_bytes, layout.frame_code);
    copy_user(
        code + u64::from(layout.code_first_line),
        &mut state.code_bytes,
        PYTHON_CODE_BYTES as usize,
    )?;
    let first_line = field::<u32>(&state.code_bytes, 0);
    let qualname = field::<u64>(
        &state.code_bytes,
        layout.code_qualname.wrapping_sub(layout.code_first_line),
    );
    let instruction = instruction(&state.frame_bytes, &layout, code);
    if let Some(frame) = state.stack.frames.get_mut(depth) {
        *frame = PythonFrame {
            code,
            first_line,
            name_stamp: qualname as u32,
            instruction,
            _padding: 0,
        };
    }
    let is_entry = match layout.frame_is_entry {
        PYTHON_NO_FIELD => false,
        PYTHON_EVERY_FRAME => true,
        offset => field::<u8>(&state.frame_bytes, offset) != 0,
    };
    if is_entry {
        mark_call_end(&mut state.stack, depth);
    }
    state.stack.depth += 1;
    state.frame = previous;
    Ok(())
}

/// The index of the instruction a frame runs, in code units, from its copy.
#[inline(always)]
fn instruction(frame: &ObjectBytes, layout: &PythonLayout, code: u64) -> u32 {
    if layout.code_instructions == PYTHON_NO_FIELD {
        return match field::<i32>(frame, layout.frame_instruction) {
            index if index >= 0 => index as u32,
            _ => PYTHON_NO_INSTRUCTION,
        };
    }
    let pointer = field::<u64>(frame, layout.frame_instruction);
    let first = code + u64::from(layout.code_instructions);
    match pointer.checked_sub(first) {
        Some(bytes) => u32::try_from(bytes / 2).unwrap_or(PYTHON_NO_INSTRUCTION),
        // A frame that has begun no instruction points one unit before its first.
        None => PYTHON_NO_INSTRUCTION,
    }
}

#[inline(always)]
fn mark_call_end(stack: &mut PythonStack, index: usize) {
    stack.call_ends[(index / 64) & (PYTHON_CALL_END_WORDS - 1)] |= 1 << (index % 64);
}

/// Copies `length` bytes of user memory at `address` into `copy`.
#[inline(always)]
fn copy_user(address: u64, copy: &mut ObjectBytes, length: usize) -> Result<(), PythonEnd> {
    let length = length & FIELD_MASK as usize;
    // SAFETY: the helper checks the user address; the masked length fits the copy.
    unsafe { bpf_probe_read_user_buf(address as *const u8, &mut copy[..length]) }
        .map_err(|_| PythonEnd::UnreadableMemory)
}

/// A field of an object's copy.
#[inline(always)]
fn field<T: Copy>(copy: &ObjectBytes, offset: u32) -> T {
    let offset = (offset & FIELD_MASK) as usize;
    // SAFETY: the masked offset plus at most 8 bytes stays inside the copy.
    unsafe { copy.as_ptr().add(offset).cast::<T>().read_unaligned() }
}

#[inline(always)]
fn read_user<T>(address: u64) -> Result<T, PythonEnd> {
    // SAFETY: the helper checks the user address.
    unsafe { bpf_probe_read_user(address as *const T) }.map_err(|_| PythonEnd::UnreadableMemory)
}
