//! Aggregating what the probes stream: stacks weighted by samples or blocked time,
//! latency distributions, and the per-syscall and per-device tables built on them.

pub mod block_io;
pub mod latency;
pub mod stacks;
pub mod syscalls;

pub use block_io::{IoOp, IoRow, IoTable};
pub use latency::Latency;
pub use stacks::{StackCounts, StackKey};
pub use syscalls::{SlowCall, SyscallLatencies, SyscallSummary, summarize_syscalls};
