//! Capturing a thread's stacks, the same way for every program kind.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, pt_regs},
    helpers::{
        bpf_get_stack, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs},
    },
};
use profiler_common::{MAX_STACK_DEPTH, STACK_TOP_WORDS, Stacks};

const STACK_BYTES: u32 = (MAX_STACK_DEPTH * size_of::<u64>()) as u32;

/// Fills `stacks` with the running thread's user and kernel stacks and the words at the
/// top of its user stack.
///
/// SAFETY: `ctx` must be the running program's context and `stacks` writable.
#[inline(always)]
pub unsafe fn capture(ctx: *mut c_void, stacks: *mut Stacks) {
    // SAFETY: bpf_get_stack writes at most STACK_BYTES into each array.
    unsafe {
        (*stacks).stack_top_bytes = copy_user_stack_top(&mut (*stacks).stack_top);
        (*stacks).user_bytes = bpf_get_stack(
            ctx,
            (*stacks).user.as_mut_ptr().cast::<c_void>(),
            STACK_BYTES,
            u64::from(BPF_F_USER_STACK),
        ) as i32;
        (*stacks).kernel_bytes = bpf_get_stack(
            ctx,
            (*stacks).kernel.as_mut_ptr().cast::<c_void>(),
            STACK_BYTES,
            0,
        ) as i32;
    }
}

/// Copies the user stack words from the thread's user stack pointer up, and returns the
/// bytes copied or a negative errno.
///
/// The registers saved when the thread last entered the kernel are its user registers,
/// whether it was interrupted by the sampling timer or is inside a syscall or the
/// scheduler, so this works in every program kind.
#[inline(always)]
fn copy_user_stack_top(words: &mut [u64; STACK_TOP_WORDS]) -> i32 {
    // SAFETY: the helpers check every address they read; `words` takes `bytes`.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        let stack_pointer = match bpf_probe_read_kernel(&raw const (*regs).rsp) {
            Ok(stack_pointer) => stack_pointer,
            Err(errno) => return errno,
        };
        let bytes = size_of::<[u64; STACK_TOP_WORDS]>() as u32;
        let result = bpf_probe_read_user(
            words.as_mut_ptr().cast::<c_void>(),
            bytes,
            stack_pointer as *const c_void,
        );
        if result == 0 {
            bytes as i32
        } else {
            result as i32
        }
    }
}
