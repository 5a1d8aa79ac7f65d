//! Collapsed stacks: one line per distinct stack, `root;...;leaf count`, the format that
//! `flamegraph.pl`, inferno and speedscope read. Kernel frames end in `_[k]`, as
//! `stackcollapse-perf.pl --kernel` writes them, and JIT-compiled frames (JavaScript,
//! Java) in `_[j]`, as `stackcollapse-perf.pl --java` does.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use super::{Output, Written};
use crate::{
    attach::EventSet,
    profile::{Frame, Profile},
};

/// The on-CPU profile's collapsed stacks (`--folded`).
#[derive(Clone, Copy, Debug)]
pub struct Folded;

impl Output for Folded {
    fn applies_to(&self, _events: EventSet) -> bool {
        // Written even without CPU samples, empty: a script reading it finds the file.
        true
    }

    fn write(&self, written: &Written<'_>, mut writer: &mut dyn Write) -> io::Result<()> {
        write(written.cpu_folded(), &mut writer)
    }
}

/// The collapsed lines of a profile, one per distinct path whatever thread ran it, with
/// its weight divided by `unit` (and rounded; paths that round to 0 are left out),
/// sorted so that equal profiles give equal files.
pub fn lines(profile: &Profile, unit: u64) -> Vec<String> {
    let names: Vec<String> = profile.frames.iter().map(frame_label).collect();
    let mut paths: BTreeMap<String, u64> = BTreeMap::new();
    for stack in profile
        .stacks
        .iter()
        .filter(|stack| !stack.frames.is_empty())
    {
        let path: Vec<&str> = stack.frames.iter().map(|&id| names[id].as_str()).collect();
        *paths.entry(path.join(";")).or_default() += stack.count;
    }
    paths
        .into_iter()
        .filter_map(|(path, weight)| {
            let count = (weight + unit / 2) / unit;
            (count > 0).then(|| format!("{path} {count}"))
        })
        .collect()
}

/// Writes the collapsed lines.
pub fn write(lines: &[String], writer: &mut impl Write) -> io::Result<()> {
    lines.iter().try_for_each(|line| writeln!(writer, "{line}"))
}

/// A frame as it appears in collapsed stacks: `;` separates frames and a newline ends the
/// record, so neither may appear inside a name.
pub fn frame_label(frame: &Frame) -> String {
    let name: String = frame
        .name
        .chars()
        .map(|c| if c == ';' || c.is_control() { ':' } else { c })
        .collect();
    let jit = frame
        .source
        .as_ref()
        .is_some_and(|source| source.language.is_jit());
    if frame.kernel {
        format!("{name}_[k]")
    } else if jit {
        format!("{name}_[j]")
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Origin, ProfileBuilder};

    #[test]
    fn stacks_collapse_root_first_with_kernel_frames_marked() {
        let frame = |name: &str, kernel| Frame::native(name, kernel);
        let mut builder = ProfileBuilder::default();
        builder.push(
            [
                frame("main", false),
                frame("read", false),
                frame("vfs_read", true),
            ],
            2,
        );
        builder.push([frame("main", false), frame("odd;name", false)], 1);
        // The same path run by another thread adds to the same line.
        builder.push_from(
            Origin {
                pid: Some(1),
                tid: Some(2),
            },
            [frame("main", false), frame("odd;name", false)],
            2,
        );
        let profile = builder.build();
        assert_eq!(
            lines(&profile, 1),
            vec!["main;odd:name 3", "main;read;vfs_read_[k] 2"]
        );
        // In units of 4, the lighter path rounds up to 1, and in units of 5 it vanishes.
        assert_eq!(
            lines(&profile, 4),
            vec!["main;odd:name 1", "main;read;vfs_read_[k] 1"]
        );
        assert_eq!(lines(&profile, 5), vec!["main;odd:name 1"]);
    }
}
