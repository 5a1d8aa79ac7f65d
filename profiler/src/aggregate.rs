//! Counting what the probes stream: how often each distinct stack was sampled, and in
//! which threads.

use std::collections::{BTreeMap, HashMap, hash_map::Entry};

use profiler_common::CpuSample;

/// A distinct raw stack: instruction pointers, innermost first, as the kernel gave them.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct StackKey {
    /// The process the stack belongs to, which decides how user addresses symbolize.
    pub tgid: u32,
    /// User-space instruction pointers, innermost first.
    pub user: Box<[u64]>,
    /// Kernel instruction pointers, innermost first.
    pub kernel: Box<[u64]>,
}

/// Sample counts per distinct stack and per thread.
#[derive(Debug, Default)]
pub struct StackCounts {
    stacks: HashMap<StackKey, u64>,
    threads: BTreeMap<(u32, u32), u64>,
    samples: u64,
}

impl StackCounts {
    /// Counts one sample whose user stack is `user` (as completed by the unwinder).
    /// Returns true when the stack was seen for the first time, so that the caller can
    /// look at addresses it has not seen before.
    pub fn add(&mut self, sample: &CpuSample, user: &[u64]) -> bool {
        self.samples += 1;
        *self.threads.entry((sample.tgid, sample.tid)).or_default() += 1;
        let key = StackKey {
            tgid: sample.tgid,
            user: user.into(),
            kernel: sample.kernel_frames().into(),
        };
        match self.stacks.entry(key) {
            Entry::Occupied(mut seen) => {
                *seen.get_mut() += 1;
                false
            }
            Entry::Vacant(new) => {
                new.insert(1);
                true
            }
        }
    }

    /// Every distinct stack with its sample count.
    pub fn stacks(&self) -> impl Iterator<Item = (&StackKey, u64)> {
        self.stacks.iter().map(|(key, count)| (key, *count))
    }

    /// Samples per (tgid, tid), in ascending order.
    pub fn threads(&self) -> impl Iterator<Item = ((u32, u32), u64)> + '_ {
        self.threads.iter().map(|(thread, count)| (*thread, *count))
    }

    /// All samples counted.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::{MAX_STACK_DEPTH, STACK_TOP_WORDS};

    use super::*;

    fn sample(tid: u32, user: &[u64]) -> CpuSample {
        let mut sample = CpuSample {
            timestamp_ns: 0,
            tgid: 7,
            tid,
            cpu: 0,
            user_stack_bytes: (user.len() * 8) as i32,
            kernel_stack_bytes: -14,
            stack_top_bytes: 0,
            user_stack: [0; MAX_STACK_DEPTH],
            kernel_stack: [0; MAX_STACK_DEPTH],
            stack_top: [0; STACK_TOP_WORDS],
        };
        sample.user_stack[..user.len()].copy_from_slice(user);
        sample
    }

    #[test]
    fn counts_distinct_stacks_and_threads_and_flags_first_sightings() {
        let mut counts = StackCounts::default();
        let mut add = |tid, user: &[u64]| counts.add(&sample(tid, user), user);
        assert!(add(7, &[1, 2]));
        assert!(!add(8, &[1, 2]));
        assert!(add(8, &[3]));
        assert_eq!(counts.samples(), 3);
        let mut stacks: Vec<_> = counts.stacks().map(|(k, c)| (k.user.to_vec(), c)).collect();
        stacks.sort();
        assert_eq!(stacks, vec![(vec![1, 2], 2), (vec![3], 1)]);
        assert!(counts.stacks().all(|(key, _)| key.kernel.is_empty()));
        assert_eq!(
            counts.threads().collect::<Vec<_>>(),
            vec![((7, 7), 1), ((7, 8), 2)]
        );
    }
}
