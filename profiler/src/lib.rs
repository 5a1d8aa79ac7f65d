//! An eBPF profiler for running processes.
//!
//! The modules follow the data flow of a recording:
//!
//! 1. [`target`]: the processes to profile, existing or started by us, or those of a
//!    [`cgroup`];
//! 2. [`attach`]: loading the BPF programs and attaching them to the kernel, with the
//!    tracepoint layouts from [`tracefs`] and the CPUs' [`steal_clock`];
//! 3. [`stream`]: draining the ring buffer the programs write to;
//! 4. [`unwind`]: compiling the targets' call-frame information into the tables the
//!    kernel unwinds user stacks with, from the targets' [`memory_map`]s;
//! 5. [`aggregate`]: weighing distinct stacks, latency distributions, syscall and IO
//!    tables;
//! 6. [`symbolize`]: naming frames, and syscalls and errnos ([`syscall_names`]), into
//!    the [`profile`] every later step reads; each language [`runtime`] names the
//!    frames the kernel walked of its code and puts them in place (Python finds each
//!    thread's state through [`kernel_btf`]);
//! 7. [`analyze`]: shares, hotspots and `--fail-on` rules;
//! 8. [`render`]: flame graphs, collapsed stacks, JSON report, pprof profiles, Prometheus
//!    metrics and terminal summary, from the finished [`report`] (or, for the live views,
//!    from a snapshot of the recording so far).
//!
//! [`compare`] sets two finished profiles side by side, and [`diff`] drives it from
//! two JSON reports for `profiler diff`.
//!
//! [`record`] drives them in that order: its session attaches and streams, its
//! collector aggregates. [`cli`] is the command line over it, and [`exit`] documents
//! how a run ends.

pub mod aggregate;
pub mod allocators;
pub mod analyze;
pub mod attach;
pub mod cgroup;
pub mod cli;
pub mod compare;
pub mod diff;
pub mod elf;
pub mod exit;
pub mod kernel_btf;
pub mod memory_map;
pub mod profile;
pub mod record;
pub mod render;
pub mod report;
pub mod runtime;
pub mod steal_clock;
pub mod stream;
pub mod symbolize;
pub mod syscall_names;
pub mod target;
pub mod tracefs;
pub mod unwind;
