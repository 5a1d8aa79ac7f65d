//! Turning raw instruction pointers into function names, with blazesym.
//!
//! User addresses are only meaningful against the process's memory map at the time of
//! the sample, and the process may have exited by the time the recording ends. So while
//! recording, [`Symbolizer::refresh`] keeps blazesym's copy of each target's map current
//! (whenever [`crate::memory_map`] reads it again). Names are looked up once, at the end,
//! for every distinct address.

use std::{collections::HashMap, path::Path};

use blazesym::symbolize::{
    self as blaze, Input, Symbolized,
    cache::{self, Cache},
    source::{Kernel, Process, Source},
};

use crate::aggregate::{StackCounts, StackKey};

/// A named frame of a symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled function name, or `[unknown]`.
    pub name: String,
    /// Whether the frame is in the kernel.
    pub kernel: bool,
}

/// A symbolized stack and its weight: samples, or nanoseconds off the CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// Indices into [`Profile::frames`], root first.
    pub frames: Vec<usize>,
    /// Weight of exactly this stack.
    pub count: u64,
}

/// Symbolized, counted stacks, with every distinct frame stored once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Distinct frames; stacks refer to them by index.
    pub frames: Vec<Frame>,
    /// Distinct stacks.
    pub stacks: Vec<Stack>,
}

impl Profile {
    /// Total weight over all stacks.
    pub fn samples(&self) -> u64 {
        self.stacks.iter().map(|stack| stack.count).sum()
    }
}

/// Builds a [`Profile`], storing each distinct frame once.
#[derive(Debug, Default)]
pub struct ProfileBuilder {
    profile: Profile,
    frame_ids: HashMap<Frame, usize>,
}

impl ProfileBuilder {
    /// Adds a stack given as frames, root first.
    pub fn push(&mut self, frames: impl IntoIterator<Item = Frame>, count: u64) {
        let frames = frames
            .into_iter()
            .map(|frame| {
                let next = self.frame_ids.len();
                *self.frame_ids.entry(frame.clone()).or_insert_with(|| {
                    self.profile.frames.push(frame);
                    next
                })
            })
            .collect();
        self.profile.stacks.push(Stack { frames, count });
    }

    /// The finished profile.
    pub fn build(self) -> Profile {
        self.profile
    }
}

const UNKNOWN: &str = "[unknown]";

/// The names of the addresses of a set of stacks, from [`Symbolizer::resolve`].
#[derive(Debug, Default)]
pub struct Names {
    user: HashMap<(u32, u64), Vec<String>>,
    kernel: HashMap<u64, Vec<String>>,
}

impl Names {
    /// The named frames of a stack, root first, user frames below kernel frames, with
    /// inlined functions as frames of their own.
    pub fn frames(&self, key: &StackKey) -> Vec<Frame> {
        let user = lookup_addresses(&key.user)
            .rev()
            .flat_map(|address| named_frames(self.user.get(&(key.tgid, address)), false));
        let kernel = lookup_addresses(&key.kernel)
            .rev()
            .flat_map(|address| named_frames(self.kernel.get(&address), true));
        user.chain(kernel).collect()
    }

    /// The named frames of a stack captured by a tracepoint program, without the
    /// kernel's tracing frames (and the program itself) at its inner end: they are the
    /// profiler looking, not the thread's work.
    pub fn frames_below_tracepoint(&self, key: &StackKey) -> Vec<Frame> {
        let mut frames = self.frames(key);
        if let Some(hook) = frames
            .iter()
            .position(|frame| frame.kernel && is_tracing_frame(&frame.name))
        {
            frames.truncate(hook);
        }
        frames
    }

    /// The named, weighted stacks of `counts`, as [`Names::frames`] or, for stacks
    /// captured by a tracepoint program, [`Names::frames_below_tracepoint`] names them.
    pub fn profile(&self, counts: &StackCounts, captured: Capture) -> Profile {
        let mut profile = ProfileBuilder::default();
        for (key, weight) in counts.stacks() {
            let frames = match captured {
                Capture::Sampled => self.frames(key),
                Capture::AtTracepoint => self.frames_below_tracepoint(key),
            };
            profile.push(frames, weight);
        }
        profile.build()
    }
}

/// Where stacks were captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// By a sampling interrupt: every frame is the thread's.
    Sampled,
    /// In a tracepoint program, which sits on top of the kernel's tracing frames.
    AtTracepoint,
}

/// The kernel functions between a tracepoint and the BPF program run from it.
fn is_tracing_frame(name: &str) -> bool {
    const PREFIXES: [&str; 6] = [
        "__traceiter_",
        "__bpf_trace_",
        "perf_trace_",
        "bpf_trace_run",
        "trace_call_bpf",
        "bpf_prog_",
    ];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// Resolves the addresses of the target processes and the kernel.
pub struct Symbolizer {
    blazesym: blaze::Symbolizer,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A symbolizer that demangles names and reports inlined functions.
    pub fn new() -> Self {
        Symbolizer {
            blazesym: blaze::Symbolizer::builder()
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
        }
    }

    /// Keeps a copy of the process's memory map now, so that its addresses can be named
    /// even after it exits. A process that is gone keeps its last copy.
    pub fn refresh(&mut self, tgid: u32) {
        let mut process = cache::Process::new(tgid.into());
        process.cache_perf_map = false;
        let _ = self.blazesym.cache(&Cache::Process(process));
    }

    /// Looks up the names of every address in `stacks`, all at once, so that each
    /// source (a binary, kallsyms) is read once.
    pub fn resolve<'k>(&self, stacks: impl IntoIterator<Item = &'k StackKey>) -> Names {
        let mut user_addresses: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut kernel_addresses = Vec::new();
        for key in stacks {
            user_addresses
                .entry(key.tgid)
                .or_default()
                .extend(lookup_addresses(&key.user));
            kernel_addresses.extend(lookup_addresses(&key.kernel));
        }

        let mut user = HashMap::new();
        for (tgid, mut addresses) in user_addresses {
            addresses.sort_unstable();
            addresses.dedup();
            let source = Source::Process(self.process_source(tgid));
            for (address, names) in addresses.iter().zip(self.names(&source, &addresses)) {
                user.insert((tgid, *address), names);
            }
        }
        kernel_addresses.sort_unstable();
        kernel_addresses.dedup();
        let kernel_source = Kernel {
            // kallsyms has every function; a vmlinux search is slow and rarely succeeds.
            vmlinux: blazesym::MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        };
        let kernel = kernel_addresses
            .iter()
            .copied()
            .zip(self.names(&Source::Kernel(kernel_source), &kernel_addresses))
            .collect();
        Names { user, kernel }
    }

    /// A live process is read through `/proc/PID/map_files`, which works across mount
    /// namespaces; an exited one through the paths of its cached memory map.
    fn process_source(&self, tgid: u32) -> Process {
        let mut process = Process::new(tgid.into());
        process.map_files = crate::target::is_alive(tgid);
        process.perf_map = Path::new(&format!("/tmp/perf-{tgid}.map")).exists();
        process
    }

    /// Names for each address, outermost inlined function first.
    fn names(&self, source: &Source<'_>, addresses: &[u64]) -> Vec<Vec<String>> {
        if addresses.is_empty() {
            // Loading a source, kallsyms above all, costs tens of milliseconds.
            return Vec::new();
        }
        match self.blazesym.symbolize(source, Input::AbsAddr(addresses)) {
            Ok(symbols) => symbols
                .into_iter()
                .map(|symbolized| match symbolized {
                    Symbolized::Sym(symbol) => std::iter::once(symbol.name.into_owned())
                        .chain(
                            symbol
                                .inlined
                                .iter()
                                .map(|inlined| inlined.name.to_string()),
                        )
                        .collect(),
                    Symbolized::Unknown(_) => vec![UNKNOWN.to_owned()],
                })
                .collect(),
            Err(_) => vec![vec![UNKNOWN.to_owned()]; addresses.len()],
        }
    }
}

/// The addresses to look up for a raw stack, innermost first: every frame but the
/// innermost holds a return address, which points after the call, so step back into it.
fn lookup_addresses(stack: &[u64]) -> impl DoubleEndedIterator<Item = u64> + '_ {
    stack.iter().enumerate().map(|(depth, &address)| {
        if depth == 0 {
            address
        } else {
            address.saturating_sub(1)
        }
    })
}

fn named_frames(names: Option<&Vec<String>>, kernel: bool) -> Vec<Frame> {
    match names {
        Some(names) => names
            .iter()
            .map(|name| Frame {
                name: name.clone(),
                kernel,
            })
            .collect(),
        None => vec![Frame {
            name: UNKNOWN.to_owned(),
            kernel,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn return_addresses_step_back_but_the_innermost_frame_does_not() {
        assert_eq!(
            lookup_addresses(&[10, 20, 30]).collect::<Vec<_>>(),
            vec![10, 19, 29]
        );
    }

    #[test]
    fn own_functions_get_names() {
        let address = a_function_to_find as *const () as u64;
        let pid = std::process::id();
        let mut symbolizer = Symbolizer::new();
        symbolizer.refresh(pid);
        let names = symbolizer.names(&Source::Process(symbolizer.process_source(pid)), &[address]);
        assert!(names[0][0].ends_with("a_function_to_find"), "{names:?}");
    }

    #[test]
    fn tracing_frames_and_what_they_ran_are_cut_off() {
        let names = Names {
            user: HashMap::from([((1, 10), vec!["main".to_owned()])]),
            kernel: HashMap::from([
                (100, vec!["bpf_prog_1234_sched_switch".to_owned()]),
                (199, vec!["perf_trace_sched_switch".to_owned()]),
                (299, vec!["__traceiter_sched_switch".to_owned()]),
                (399, vec!["__schedule".to_owned()]),
            ]),
        };
        let key = StackKey {
            tgid: 1,
            user: Box::new([10]),
            kernel: Box::new([100, 200, 300, 400]),
        };
        let frames: Vec<String> = names
            .frames_below_tracepoint(&key)
            .into_iter()
            .map(|frame| frame.name)
            .collect();
        assert_eq!(frames, vec!["main", "__schedule"]);
        assert_eq!(names.frames(&key).len(), 5);
    }

    #[test]
    fn profile_builder_stores_each_frame_once() {
        let frame = |name: &str| Frame {
            name: name.to_owned(),
            kernel: false,
        };
        let mut builder = ProfileBuilder::default();
        builder.push([frame("main"), frame("work")], 3);
        builder.push([frame("main"), frame("idle")], 1);
        let profile = builder.build();
        assert_eq!(profile.frames.len(), 3);
        assert_eq!(profile.stacks[1].frames, vec![0, 2]);
        assert_eq!(profile.samples(), 4);
    }
}
