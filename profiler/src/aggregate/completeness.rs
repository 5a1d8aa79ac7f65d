//! How complete the unwound user stacks were: how many reached the process's root, why
//! the others stopped short, and how each was unwound.

use profiler_common::StackEnd;

/// How a user stack was unwound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindMethod {
    /// Every frame by its rows: call-frame information, or a Go binary's function table.
    Rows,
    /// By rows where there were some, by frame pointers across the frames without.
    Hybrid,
    /// By frame pointers alone (`--unwind fp`).
    FramePointers,
}

impl UnwindMethod {
    /// Every method, in the order reports list them.
    pub const ALL: [UnwindMethod; 3] = [
        UnwindMethod::Rows,
        UnwindMethod::Hybrid,
        UnwindMethod::FramePointers,
    ];

    /// The method of a stack that ended with `end` after stepping over
    /// `frame_pointer_frames` frames by their frame pointer for want of rows.
    pub fn of(end: StackEnd, frame_pointer_frames: u32) -> Self {
        match (end, frame_pointer_frames) {
            (StackEnd::FramePointers, _) => UnwindMethod::FramePointers,
            (_, 0) => UnwindMethod::Rows,
            _ => UnwindMethod::Hybrid,
        }
    }

    /// The method as the report names it.
    pub fn name(self) -> &'static str {
        match self {
            UnwindMethod::Rows => "dwarf",
            UnwindMethod::Hybrid => "hybrid",
            UnwindMethod::FramePointers => "frame_pointers",
        }
    }
}

/// Stacks counted by how their user part ended and how it was unwound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completeness {
    ends: [u64; StackEnd::COUNT],
    methods: [u64; UnwindMethod::ALL.len()],
}

impl Completeness {
    /// Counts one stack.
    pub fn add(&mut self, end: StackEnd, method: UnwindMethod) {
        self.ends[end as usize] += 1;
        self.methods[method as usize] += 1;
    }

    /// Stacks unwound by `method`.
    pub fn method_count(&self, method: UnwindMethod) -> u64 {
        self.methods[method as usize]
    }

    /// Stacks counted by how they were unwound, as the report names the methods.
    pub fn methods(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        UnwindMethod::ALL
            .into_iter()
            .map(|method| (method.name(), self.method_count(method)))
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
            completeness.add(StackEnd::Root, UnwindMethod::of(StackEnd::Root, 0));
        }
        completeness.add(
            StackEnd::NoUnwindInfo,
            UnwindMethod::of(StackEnd::NoUnwindInfo, 2),
        );
        assert_eq!(completeness.complete_share(), Some(0.75));
        let truncated: Vec<_> = completeness.truncated().filter(|(_, n)| *n > 0).collect();
        assert_eq!(truncated, vec![("no_unwind_info", 1)]);
        let methods: Vec<_> = completeness.methods().collect();
        assert_eq!(
            methods,
            vec![("dwarf", 3), ("hybrid", 1), ("frame_pointers", 0)]
        );
        assert_eq!(
            UnwindMethod::of(StackEnd::FramePointers, 0),
            UnwindMethod::FramePointers
        );
    }
}
