//! Collapsed stacks: one line per distinct stack, `root;...;leaf count`, the format that
//! `flamegraph.pl`, inferno and speedscope read. Kernel frames end in `_[k]`, as
//! `stackcollapse-perf.pl --kernel` writes them.

use std::io::{self, Write};

use crate::symbolize::{Frame, Profile};

/// The collapsed lines of a profile, with each stack's weight divided by `unit` (and
/// rounded; stacks that round to 0 are left out), sorted so that equal profiles give
/// equal files.
pub fn lines(profile: &Profile, unit: u64) -> Vec<String> {
    let names: Vec<String> = profile.frames.iter().map(frame_label).collect();
    let mut lines: Vec<String> = profile
        .stacks
        .iter()
        .filter(|stack| !stack.frames.is_empty())
        .filter_map(|stack| {
            let count = (stack.count + unit / 2) / unit;
            let path: Vec<&str> = stack.frames.iter().map(|&id| names[id].as_str()).collect();
            (count > 0).then(|| format!("{} {count}", path.join(";")))
        })
        .collect();
    lines.sort_unstable();
    lines
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
    if frame.kernel {
        format!("{name}_[k]")
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::ProfileBuilder;

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
        let profile = builder.build();
        assert_eq!(
            lines(&profile, 1),
            vec!["main;odd:name 1", "main;read;vfs_read_[k] 2"]
        );
        // In units of 2, the lighter stack rounds up to 1, and in units of 4 it vanishes.
        assert_eq!(
            lines(&profile, 2),
            vec!["main;odd:name 1", "main;read;vfs_read_[k] 1"]
        );
        assert_eq!(lines(&profile, 4), vec!["main;read;vfs_read_[k] 1"]);
    }
}
