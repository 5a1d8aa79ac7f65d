//! Stacks weighted by what they stand for, per thread: CPU samples, or nanoseconds off
//! the CPU.

use std::collections::{BTreeMap, hash_map::Entry};

use crate::{profile::LockState, runtime::python::PythonFrameRef};

/// A distinct raw stack: instruction pointers, innermost first, as the kernel gave them.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct StackKey {
    /// The process the stack belongs to, which decides how user addresses symbolize.
    pub tgid: u32,
    /// The thread that ran it; 0 where a stack stands for several threads.
    pub tid: u32,
    /// User-space instruction pointers, innermost first.
    pub user: Box<[u64]>,
    /// Kernel instruction pointers, innermost first.
    pub kernel: Box<[u64]>,
    /// Python frames, innermost first.
    pub python: Box<[PythonFrameRef]>,
    /// Whether the user stack reached its root, which decides how Python frames are put
    /// among its native frames.
    pub native_complete: bool,
    /// What the thread was doing about its runtime's global lock, where it was read.
    pub lock: Option<LockState>,
}

impl StackKey {
    /// The key of a stack of thread `tid` of process `tgid`.
    pub fn new(tgid: u32, tid: u32, user: &[u64], kernel: &[u64]) -> Self {
        StackKey {
            tgid,
            tid,
            user: user.into(),
            kernel: kernel.into(),
            python: Box::new([]),
            native_complete: true,
            lock: None,
        }
    }

    /// The key with the Python frames that were running, whether the native user stack
    /// reached its root, and what the thread was doing about the GIL.
    pub fn with_python(
        self,
        python: Box<[PythonFrameRef]>,
        native_complete: bool,
        lock: Option<LockState>,
    ) -> Self {
        StackKey {
            python,
            native_complete,
            lock,
            ..self
        }
    }
}

/// Weights per distinct stack and per thread.
#[derive(Debug, Default)]
pub struct StackCounts {
    stacks: foldhash::HashMap<StackKey, u64>,
    threads: BTreeMap<(u32, u32), u64>,
    total: u64,
}

impl StackCounts {
    /// Adds `weight` to `stack` and to its thread. Returns true when the stack was seen
    /// for the first time, so that the caller can look at addresses it has not seen
    /// before.
    pub fn add(&mut self, stack: StackKey, weight: u64) -> bool {
        self.total += weight;
        *self.threads.entry((stack.tgid, stack.tid)).or_default() += weight;
        match self.stacks.entry(stack) {
            Entry::Occupied(mut seen) => {
                *seen.get_mut() += weight;
                false
            }
            Entry::Vacant(new) => {
                new.insert(weight);
                true
            }
        }
    }

    /// An empty count with room for `stacks` distinct stacks: a window that starts over
    /// expects about as many as the last one had, and growing a table of large keys
    /// rehashes every key (4 % of the profiler's steady CPU in a load test).
    pub fn with_capacity(stacks: usize) -> Self {
        StackCounts {
            stacks: foldhash::HashMap::with_capacity_and_hasher(stacks, Default::default()),
            ..StackCounts::default()
        }
    }

    /// Distinct stacks.
    pub fn distinct_stacks(&self) -> usize {
        self.stacks.len()
    }

    /// Every distinct stack with its weight.
    pub fn stacks(&self) -> impl Iterator<Item = (&StackKey, u64)> {
        self.stacks.iter().map(|(key, weight)| (key, *weight))
    }

    /// Weight per (tgid, tid), in ascending order.
    pub fn threads(&self) -> impl Iterator<Item = ((u32, u32), u64)> + '_ {
        self.threads
            .iter()
            .map(|(thread, weight)| (*thread, *weight))
    }

    /// All weight added.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(tid: u32, user: &[u64]) -> StackKey {
        StackKey::new(7, tid, user, &[])
    }

    #[test]
    fn weighs_distinct_stacks_and_threads_and_flags_first_sightings() {
        let mut counts = StackCounts::default();
        assert!(counts.add(stack(7, &[1, 2]), 1));
        assert!(!counts.add(stack(7, &[1, 2]), 5));
        assert!(counts.add(stack(8, &[1, 2]), 1));
        assert!(counts.add(stack(8, &[3]), 1));
        assert_eq!(counts.total(), 8);
        let mut stacks: Vec<_> = counts
            .stacks()
            .map(|(k, c)| (k.tid, k.user.to_vec(), c))
            .collect();
        stacks.sort();
        assert_eq!(
            stacks,
            vec![(7, vec![1, 2], 6), (8, vec![1, 2], 1), (8, vec![3], 1)]
        );
        assert_eq!(
            counts.threads().collect::<Vec<_>>(),
            vec![((7, 7), 6), ((7, 8), 2)]
        );
    }
}
