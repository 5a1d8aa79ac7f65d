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

use crate::aggregate::StackCounts;

/// A named frame of a symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled function name, or `[unknown]`.
    pub name: String,
    /// Whether the frame is in the kernel.
    pub kernel: bool,
}

/// A symbolized stack and how many samples it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// Indices into [`Profile::frames`], root first.
    pub frames: Vec<usize>,
    /// Samples with exactly this stack.
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
    /// Total samples over all stacks.
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

    /// Names every sampled stack. Stacks come out root first, user frames below kernel
    /// frames, with inlined functions as frames of their own.
    pub fn resolve(&self, counts: &StackCounts) -> Profile {
        let mut user_addresses: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut kernel_addresses = Vec::new();
        for (key, _) in counts.stacks() {
            user_addresses
                .entry(key.tgid)
                .or_default()
                .extend(lookup_addresses(&key.user));
            kernel_addresses.extend(lookup_addresses(&key.kernel));
        }

        let mut user_names: HashMap<(u32, u64), Vec<String>> = HashMap::new();
        for (tgid, mut addresses) in user_addresses {
            addresses.sort_unstable();
            addresses.dedup();
            let source = Source::Process(self.process_source(tgid));
            for (address, names) in addresses.iter().zip(self.names(&source, &addresses)) {
                user_names.insert((tgid, *address), names);
            }
        }
        kernel_addresses.sort_unstable();
        kernel_addresses.dedup();
        let kernel = Kernel {
            // kallsyms has every function; a vmlinux search is slow and rarely succeeds.
            vmlinux: blazesym::MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        };
        let kernel_names: HashMap<u64, Vec<String>> = kernel_addresses
            .iter()
            .copied()
            .zip(self.names(&Source::Kernel(kernel), &kernel_addresses))
            .collect();

        let mut profile = ProfileBuilder::default();
        for (key, count) in counts.stacks() {
            let user = lookup_addresses(&key.user)
                .rev()
                .flat_map(|address| named_frames(user_names.get(&(key.tgid, address)), false));
            let kernel = lookup_addresses(&key.kernel)
                .rev()
                .flat_map(|address| named_frames(kernel_names.get(&address), true));
            profile.push(user.chain(kernel), count);
        }
        profile.build()
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
