//! Aggregating what the probes stream: stacks weighted by samples or blocked time,
//! latency distributions, the per-syscall and per-device tables built on them, and the
//! leak candidates among the blocks still live.

pub mod block_io;
pub mod completeness;
pub mod latency;
pub mod leaks;
pub mod stacks;
pub mod syscalls;

pub use block_io::{IoOp, IoRow, IoStats, IoTable};
pub use completeness::{Completeness, UnwindMethod, end_name};
pub use latency::Latency;
pub use leaks::{LeakGroup, LeakOptions, LiveSummary, growth_per_second, summarize_live};
pub use stacks::{StackCounts, StackKey};
pub use syscalls::{SlowCall, SyscallLatencies, SyscallSummary, summarize_syscalls};
