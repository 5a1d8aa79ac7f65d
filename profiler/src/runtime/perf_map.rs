//! Names of JIT-compiled code from the perf maps runtimes write (`/tmp/perf-PID.map`:
//! Node.js with `--perf-basic-prof`, the JVM after `jcmd PID Compiler.perfmap`).
//!
//! The file is opened through the process's own root, under the pid the process has in
//! its own namespace, and kept open: it is read again whenever it has grown (runtimes
//! append as they compile), also after the process has exited, when the names are
//! wanted most.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::{FileExt as _, MetadataExt as _},
};

/// One process's perf map.
#[derive(Default)]
struct PerfMap {
    file: Option<fs::File>,
    /// Bytes of the file parsed so far.
    parsed: u64,
    /// Code ranges by start: (end, name); a later line for the same start wins, as the
    /// runtime reused the memory.
    ranges: BTreeMap<u64, (u64, String)>,
}

/// The perf maps of the target processes.
#[derive(Default)]
pub struct PerfMaps {
    processes: HashMap<u32, PerfMap>,
    /// Per process, JIT addresses no perf map named, and what the process's runtime
    /// needs to write one.
    unnamed: BTreeMap<u32, (u64, &'static str)>,
}

impl PerfMaps {
    /// Opens the perf map of process `tgid` if it has one and it is not open yet; called
    /// while the process lives, whenever its memory map is read.
    pub fn keep(&mut self, tgid: u32) {
        let map = self.processes.entry(tgid).or_default();
        if map.file.is_none() {
            map.file = open(tgid);
        }
    }

    /// Whether process `tgid` has a perf map.
    pub fn has_map(&mut self, tgid: u32) -> bool {
        self.keep(tgid);
        self.processes
            .get(&tgid)
            .is_some_and(|map| map.file.is_some())
    }

    /// The name of the JIT code at each of `addresses` of process `tgid`, if its perf
    /// map names it.
    pub fn names(&mut self, tgid: u32, addresses: &[u64]) -> Vec<Option<String>> {
        self.keep(tgid);
        let Some(map) = self.processes.get_mut(&tgid) else {
            return vec![None; addresses.len()];
        };
        map.read_new_lines();
        addresses.iter().map(|&address| map.name(address)).collect()
    }

    /// Counts `count` JIT addresses of process `tgid` that no perf map named; `hint` says
    /// how its runtime writes one.
    pub fn count_unnamed(&mut self, tgid: u32, count: u64, hint: &'static str) {
        let entry = self.unnamed.entry(tgid).or_insert((0, hint));
        entry.0 += count;
    }

    /// One line per process whose JIT code went unnamed: why, and what to do.
    pub fn hints(&self) -> Vec<String> {
        self.unnamed
            .iter()
            .map(|(&tgid, &(count, hint))| {
                let has_map = self
                    .processes
                    .get(&tgid)
                    .is_some_and(|map| map.file.is_some());
                if has_map {
                    format!(
                        "{count} JIT addresses of process {tgid} are not in its perf map, \
                         which is older than their code: {hint}"
                    )
                } else {
                    format!(
                        "the JIT code of process {tgid} is unnamed ({count} addresses): \
                         it wrote no /tmp/perf-{tgid}.map; {hint}"
                    )
                }
            })
            .collect()
    }
}

impl PerfMap {
    fn read_new_lines(&mut self) {
        let Some(file) = &self.file else {
            return;
        };
        let Ok(length) = file.metadata().map(|metadata| metadata.size()) else {
            return;
        };
        if length <= self.parsed {
            return;
        }
        let mut bytes = vec![0; (length - self.parsed) as usize];
        if file.read_exact_at(&mut bytes, self.parsed).is_err() {
            return;
        }
        // Whole lines only: the runtime may be writing the last one.
        let complete = bytes
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |end| end + 1);
        for line in String::from_utf8_lossy(&bytes[..complete]).lines() {
            if let Some((start, size, name)) = parse_line(line) {
                self.ranges
                    .insert(start, (start.saturating_add(size), name.to_owned()));
            }
        }
        self.parsed += complete as u64;
    }

    fn name(&self, address: u64) -> Option<String> {
        let (_, (end, name)) = self.ranges.range(..=address).next_back()?;
        (address < *end).then(|| name.clone())
    }
}

/// Opens `/tmp/perf-NSPID.map` in the process's own root and namespace.
fn open(tgid: u32) -> Option<fs::File> {
    let pid = namespaced_pid(tgid)?;
    fs::File::open(format!("/proc/{tgid}/root/tmp/perf-{pid}.map")).ok()
}

/// The pid process `tgid` has in its own pid namespace: the last of `NSpid`.
fn namespaced_pid(tgid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{tgid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// A perf map line: `START SIZE NAME`, the numbers in hex with or without `0x`.
fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let mut fields = line.splitn(3, ' ');
    let hex = |field: &str| u64::from_str_radix(field.trim_start_matches("0x"), 16).ok();
    let start = hex(fields.next()?)?;
    let size = hex(fields.next()?)?;
    let name = fields.next()?.trim_end();
    (!name.is_empty()).then_some((start, size, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_node_and_the_jvm_write_them() {
        assert_eq!(
            parse_line("7f22d4006f80 494 JS:*predict /srv/app.js:20:17"),
            Some((0x7f22_d400_6f80, 0x494, "JS:*predict /srv/app.js:20:17"))
        );
        assert_eq!(
            parse_line("0x7f3a1c000100 0x40 Interpreter"),
            Some((0x7f3a_1c00_0100, 0x40, "Interpreter"))
        );
        assert_eq!(parse_line("nonsense"), None);
    }

    #[test]
    fn unnamed_jit_code_is_reported_with_what_its_runtime_needs() {
        let mut maps = PerfMaps::default();
        maps.count_unnamed(4242, 3, "start it with --perf-basic-prof");
        maps.count_unnamed(4242, 2, "start it with --perf-basic-prof");
        let hints = maps.hints();
        assert_eq!(hints.len(), 1);
        assert!(hints[0].contains("(5 addresses)"), "{hints:?}");
        assert!(
            hints[0].ends_with("start it with --perf-basic-prof"),
            "{hints:?}"
        );
    }

    #[test]
    fn a_later_line_for_the_same_code_wins_and_a_gap_is_unnamed() {
        let mut map = PerfMap::default();
        map.ranges.insert(0x1000, (0x1100, "old".into()));
        map.ranges.insert(0x1000, (0x1080, "new".into()));
        assert_eq!(map.name(0x1010).as_deref(), Some("new"));
        assert_eq!(map.name(0x1090), None);
        assert_eq!(map.name(0xfff), None);
    }
}
