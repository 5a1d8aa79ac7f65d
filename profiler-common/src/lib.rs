//! Types and constants shared by the profiler's BPF programs and its userspace.
//!
//! Everything that both sides must agree on lives here and only here: record layouts
//! streamed over ring buffers, map sizes, map and program names, and counter indices.
//! Every type is `#[repr(C)]` so that the BPF object and the host read the same bytes.
#![no_std]

/// Deepest stack captured per sample, in frames.
///
/// This is the kernel's default `kernel.perf_event_max_stack`; `bpf_get_stack` refuses
/// to walk further than that sysctl anyway.
pub const MAX_STACK_DEPTH: usize = 127;

/// Stack words copied from the user stack pointer up, per sample. The unwinder reads a
/// frameless function's return address among them; 32 words cover the saved registers
/// and locals of all but unusually large leaf functions.
pub const STACK_TOP_WORDS: usize = 32;

/// How many processes one recording can target at once.
pub const MAX_TARGETS: u32 = 1024;

/// Size of the ring buffer that carries CPU samples, in bytes.
///
/// One sample is about 2 KiB, so this holds about 4,000 samples: four seconds of a
/// 999 Hz recording on every CPU of this 2-CPU class of machine, and a full drain
/// interval (see [`DRAIN_INTERVAL_MS`]) on a 64-CPU host at 999 Hz.
pub const CPU_SAMPLES_RING_BYTES: u32 = 8 << 20;

/// Unread bytes in a ring buffer above which the BPF side wakes the reader at once.
///
/// Below it, records are submitted without a wake-up and userspace drains on a timer,
/// so a sample costs no context switch.
pub const RING_WAKEUP_BYTES: u64 = CPU_SAMPLES_RING_BYTES as u64 / 4;

/// How often userspace drains the ring buffers when nothing woke it, in milliseconds.
pub const DRAIN_INTERVAL_MS: u64 = 100;

/// Names of the BPF maps, as the loader looks them up in the object.
///
/// The BPF crate names its `static` maps identically; a mismatch fails every
/// end-to-end test at load time.
pub mod map_names {
    /// `HashMap<u32, u8>`: the tgids being profiled.
    pub const TARGET_TGIDS: &str = "TARGET_TGIDS";
    /// `RingBuf` of [`crate::CpuSample`].
    pub const CPU_SAMPLES: &str = "CPU_SAMPLES";
    /// `PerCpuArray<u64>` indexed by [`crate::LossCounter`].
    pub const LOSS_COUNTERS: &str = "LOSS_COUNTERS";
}

/// Names of the BPF programs in the object.
pub mod program_names {
    /// The perf_event program that samples on-CPU stacks.
    pub const SAMPLE_CPU: &str = "sample_cpu";
}

/// Indices into the per-CPU loss counters: every record the BPF side had to drop.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCounter {
    /// A CPU sample could not be reserved in [`map_names::CPU_SAMPLES`] (ring full).
    CpuSampleRingFull = 0,
}

impl LossCounter {
    /// Number of counters, the size of the counter array.
    pub const COUNT: u32 = 1;
}

/// One on-CPU sample of a target thread, as streamed over [`map_names::CPU_SAMPLES`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// `bpf_ktime_get_ns()` at the sample (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// CPU the thread ran on.
    pub cpu: u32,
    /// Bytes of `user_stack` written by `bpf_get_stack`, or a negative errno.
    pub user_stack_bytes: i32,
    /// Bytes of `kernel_stack` written by `bpf_get_stack`, or a negative errno.
    pub kernel_stack_bytes: i32,
    /// Bytes of `stack_top` copied, or a negative errno; 0 when the sample interrupted
    /// the kernel, where the user registers are not at hand.
    pub stack_top_bytes: i32,
    /// User-space instruction pointers, innermost first.
    pub user_stack: [u64; MAX_STACK_DEPTH],
    /// Kernel instruction pointers, innermost first.
    pub kernel_stack: [u64; MAX_STACK_DEPTH],
    /// The user stack from the stack pointer up, when the sample interrupted user code.
    pub stack_top: [u64; STACK_TOP_WORDS],
}

impl CpuSample {
    /// The filled part of the user stack.
    pub fn user_frames(&self) -> &[u64] {
        filled(&self.user_stack, self.user_stack_bytes)
    }

    /// The filled part of the kernel stack.
    pub fn kernel_frames(&self) -> &[u64] {
        filled(&self.kernel_stack, self.kernel_stack_bytes)
    }

    /// The copied words of the user stack, from the stack pointer up.
    pub fn stack_top(&self) -> &[u64] {
        filled(&self.stack_top, self.stack_top_bytes)
    }
}

fn filled(words: &[u64], bytes: i32) -> &[u64] {
    let count = if bytes > 0 { bytes as usize / 8 } else { 0 };
    &words[..count.min(words.len())]
}
