//! The profiler's BPF programs. Layouts, sizes and names come from `profiler-common`.
#![no_std]
#![no_main]

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns, generated::bpf_probe_read_user,
    },
    macros::{map, perf_event},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::PerfEventContext,
};
use profiler_common::{
    CPU_SAMPLES_RING_BYTES, CpuSample, LossCounter, MAX_STACK_DEPTH, MAX_TARGETS,
    RING_WAKEUP_BYTES, STACK_TOP_WORDS,
};

// Map names must match profiler_common::map_names.
#[map]
static TARGET_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
static CPU_SAMPLES: RingBuf = RingBuf::with_byte_size(CPU_SAMPLES_RING_BYTES, 0);

#[map]
static LOSS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LossCounter::COUNT, 0);

const STACK_BYTES: u32 = (MAX_STACK_DEPTH * size_of::<u64>()) as u32;

/// Samples the on-CPU stacks of the target processes.
///
/// Attached once per CPU to the `cpu-clock` software event for all processes, so that it
/// sees every thread of a target, including threads created after the attach; the tgid
/// filter keeps everything else out.
#[perf_event]
pub fn sample_cpu(ctx: PerfEventContext) -> u32 {
    let tgid = ctx.tgid();
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { TARGET_TGIDS.get(&tgid) }.is_none() {
        return 0;
    }
    let Some(mut entry) = CPU_SAMPLES.reserve::<CpuSample>(0) else {
        count_loss(LossCounter::CpuSampleRingFull);
        return 0;
    };
    let sample = entry.as_mut_ptr();
    // SAFETY: `sample` points at a reserved, writable CpuSample in the ring buffer, and
    // bpf_get_stack writes at most STACK_BYTES into each array.
    unsafe {
        (*sample).timestamp_ns = bpf_ktime_get_ns();
        (*sample).tgid = tgid;
        (*sample).tid = ctx.pid();
        (*sample).cpu = bpf_get_smp_processor_id();
        (*sample).stack_top_bytes = copy_user_stack_top(&ctx, &mut (*sample).stack_top);
        (*sample).user_stack_bytes = bpf_get_stack(
            ctx.as_ptr(),
            (*sample).user_stack.as_mut_ptr().cast::<c_void>(),
            STACK_BYTES,
            u64::from(BPF_F_USER_STACK),
        ) as i32;
        (*sample).kernel_stack_bytes = bpf_get_stack(
            ctx.as_ptr(),
            (*sample).kernel_stack.as_mut_ptr().cast::<c_void>(),
            STACK_BYTES,
            0,
        ) as i32;
    }
    entry.submit(wakeup_flag());
    0
}

/// Copies the user stack words from the stack pointer up, if the sample interrupted user
/// code; returns the bytes copied, 0 if it interrupted the kernel, or a negative errno.
///
/// SAFETY: `ctx` must be the perf_event context of the running program.
unsafe fn copy_user_stack_top(ctx: &PerfEventContext, words: &mut [u64; STACK_TOP_WORDS]) -> i32 {
    // SAFETY: a perf_event program may read the registers in its context.
    let regs = unsafe { &(*ctx.ctx).regs };
    if regs.cs & 3 != 3 {
        return 0;
    }
    let bytes = size_of::<[u64; STACK_TOP_WORDS]>() as u32;
    // SAFETY: the helper checks the user address and writes at most `bytes` into `words`.
    let result = unsafe {
        bpf_probe_read_user(
            words.as_mut_ptr().cast::<c_void>(),
            bytes,
            regs.rsp as *const c_void,
        )
    };
    if result == 0 {
        bytes as i32
    } else {
        result as i32
    }
}

/// Wakes the reader only when the ring is filling up; otherwise its timer drains it.
fn wakeup_flag() -> u64 {
    if CPU_SAMPLES.query(u64::from(BPF_RB_AVAIL_DATA)) >= RING_WAKEUP_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

fn count_loss(counter: LossCounter) {
    if let Some(count) = LOSS_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
        unsafe { *count += 1 };
    }
}

#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
