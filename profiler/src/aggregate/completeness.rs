//! How complete the unwound user stacks were: how many reached the process's root, and
//! why the others stopped short.

use profiler_common::StackEnd;

/// Stacks counted by how their user part ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completeness {
    ends: [u64; StackEnd::COUNT],
}

impl Completeness {
    /// Counts one stack.
    pub fn add(&mut self, end: StackEnd) {
        self.ends[end as usize] += 1;
    }

    /// Stacks counted.
    pub fn total(&self) -> u64 {
        self.ends.iter().sum()
    }

    /// Stacks that ended with `end`.
    pub fn count(&self, end: StackEnd) -> u64 {
        self.ends[end as usize]
    }

    /// The share of stacks that reached the process's root; `None` with no stacks.
    pub fn complete_share(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.count(StackEnd::Root) as f64 / total as f64)
    }

    /// The stacks that stopped short, by reason, as the report names them.
    pub fn truncated(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        StackEnd::ALL
            .into_iter()
            .filter(|end| *end != StackEnd::Root)
            .map(|end| (end_name(end), self.count(end)))
    }
}

/// A [`StackEnd`] as the report names it.
pub fn end_name(end: StackEnd) -> &'static str {
    match end {
        StackEnd::Root => "root",
        StackEnd::NoUnwindInfo => "no_unwind_info",
        StackEnd::UnknownMapping => "unknown_mapping",
        StackEnd::DepthLimit => "depth_limit",
        StackEnd::UnreadableMemory => "unreadable_memory",
        StackEnd::NoUserStack => "no_user_stack",
        StackEnd::FramePointers => "frame_pointer_walk",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_count_only_stacks_that_reached_the_root() {
        let mut completeness = Completeness::default();
        assert_eq!(completeness.complete_share(), None);
        for _ in 0..3 {
            completeness.add(StackEnd::Root);
        }
        completeness.add(StackEnd::NoUnwindInfo);
        assert_eq!(completeness.complete_share(), Some(0.75));
        let truncated: Vec<_> = completeness.truncated().filter(|(_, n)| *n > 0).collect();
        assert_eq!(truncated, vec![("no_unwind_info", 1)]);
    }
}
