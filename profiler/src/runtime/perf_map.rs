//! Names of JIT-compiled code from the perf maps runtimes write (`/tmp/perf-PID.map`:
//! Node.js with `--perf-basic-prof`, the JVM after `jcmd PID Compiler.perfmap`) and
//! from jitdump files (`jit-PID.dump`: Node.js with `--perf-prof`).
//!
//! A perf map is opened through the process's own root, under the pid the process has
//! in its own namespace; a jitdump file is found as the runtime maps it (a marker
//! mapping perf also looks for). Both are kept open and read again whenever they have
//! grown (runtimes append as they compile), also after the process has exited, when
//! the names are wanted most.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::{FileExt as _, MetadataExt as _},
};

/// One process's perf map and jitdump file.
#[derive(Default)]
struct PerfMap {
    file: Option<fs::File>,
    /// Bytes of the file parsed so far.
    parsed: u64,
    /// The jitdump file, and the bytes of it parsed so far.
    jitdump: Option<(fs::File, u64)>,
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

    /// Keeps the jitdump file that process `tgid` mapped, opened through the mapping.
    pub fn keep_jitdump(&mut self, tgid: u32, file: fs::File) {
        let map = self.processes.entry(tgid).or_default();
        if map.jitdump.is_none() {
            map.jitdump = Some((file, 0));
        }
    }

    /// The name of the JIT code at each of `addresses` of process `tgid`, if its perf
    /// map names it.
    pub fn names(&mut self, tgid: u32, addresses: &[u64]) -> Vec<Option<String>> {
        self.keep(tgid);
        let Some(map) = self.processes.get_mut(&tgid) else {
            return vec![None; addresses.len()];
        };
        map.read_new_lines();
        map.read_new_records();
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
                    .is_some_and(|map| map.file.is_some() || map.jitdump.is_some());
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

    /// Reads the jitdump records added since the last read: each code load names a
    /// range of code.
    fn read_new_records(&mut self) {
        let Some((file, parsed)) = &mut self.jitdump else {
            return;
        };
        let Ok(length) = file.metadata().map(|metadata| metadata.size()) else {
            return;
        };
        if length <= *parsed {
            return;
        }
        let mut bytes = vec![0; (length - *parsed) as usize];
        if file.read_exact_at(&mut bytes, *parsed).is_err() {
            return;
        }
        let mut at = 0;
        if *parsed == 0 {
            match jitdump_header_size(&bytes) {
                Some(size) => at = size,
                None => {
                    // Not a jitdump file: nothing more to read from it.
                    *parsed = u64::MAX;
                    return;
                }
            }
        }
        // Whole records only: the runtime may be writing the last one.
        while let Some(record) = jitdump_record(&bytes[at..]) {
            match record.code {
                Some(JitCode::Load { start, size, name }) => {
                    self.ranges
                        .insert(start, (start.saturating_add(size), name.to_owned()));
                }
                Some(JitCode::Move { from, to, size }) => {
                    if let Some((_, name)) = self.ranges.remove(&from) {
                        self.ranges.insert(to, (to.saturating_add(size), name));
                    }
                }
                None => {}
            }
            at += record.size;
        }
        *parsed += at as u64;
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

/// `JiTD`, the jitdump file's magic, as a little-endian runtime writes it.
const JITDUMP_MAGIC: u32 = 0x4a69_5444;
/// `JIT_CODE_LOAD`: a record that names newly compiled code.
const JIT_CODE_LOAD: u32 = 0;
/// `JIT_CODE_MOVE`: a record that says compiled code moved (V8's compacting collector).
const JIT_CODE_MOVE: u32 = 1;

/// The size of a jitdump file's header, if `bytes` start with one.
fn jitdump_header_size(bytes: &[u8]) -> Option<usize> {
    let word = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    (word(0)? == JITDUMP_MAGIC).then_some(word(8)? as usize)
}

/// One jitdump record.
struct JitdumpRecord<'b> {
    /// Its bytes, to the next record.
    size: usize,
    /// What it says of compiled code, if anything.
    code: Option<JitCode<'b>>,
}

/// What a jitdump record says of compiled code.
#[derive(Debug, PartialEq)]
enum JitCode<'b> {
    /// Code was compiled at `start`, `size` bytes, named `name`.
    Load {
        start: u64,
        size: u64,
        name: &'b str,
    },
    /// The code at `from` moved to `to`.
    Move { from: u64, to: u64, size: u64 },
}

/// The record at the start of `bytes`, if it is there whole.
fn jitdump_record(bytes: &[u8]) -> Option<JitdumpRecord<'_>> {
    let word = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let long = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let (kind, size) = (word(0)?, word(4)? as usize);
    // A record holds at least its own 16-byte header.
    if size < 16 || size > bytes.len() {
        return None;
    }
    let code = match kind {
        // pid, tid, vma, code address, code size, code index, name.
        JIT_CODE_LOAD => (|| {
            let name = bytes.get(56..size)?;
            let name = &name[..name.iter().position(|&byte| byte == 0)?];
            Some(JitCode::Load {
                start: long(32)?,
                size: long(40)?,
                name: std::str::from_utf8(name).ok()?,
            })
        })(),
        // pid, tid, vma, old code address, new code address, code size, code index.
        JIT_CODE_MOVE if size >= 64 => Some(JitCode::Move {
            from: long(32)?,
            to: long(40)?,
            size: long(48)?,
        }),
        _ => None,
    };
    Some(JitdumpRecord { size, code })
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
    fn jitdump_code_loads_name_their_code_and_a_partial_record_waits() {
        let mut load = Vec::new();
        let name = b"JS:*predict /srv/app.js:20:17\0";
        let size = 56 + name.len() + 4;
        load.extend(JIT_CODE_LOAD.to_le_bytes());
        load.extend((size as u32).to_le_bytes());
        load.extend(0u64.to_le_bytes());
        load.extend([0; 16]);
        load.extend(0x7f00_0000_1000u64.to_le_bytes());
        load.extend(0x80u64.to_le_bytes());
        load.extend(0u64.to_le_bytes());
        load.extend(name);
        load.extend([0xcc; 4]);
        let record = jitdump_record(&load).unwrap();
        assert_eq!(record.size, size);
        assert_eq!(
            record.code,
            Some(JitCode::Load {
                start: 0x7f00_0000_1000,
                size: 0x80,
                name: "JS:*predict /srv/app.js:20:17"
            })
        );
        assert!(jitdump_record(&load[..size - 1]).is_none());
        let mut header = JITDUMP_MAGIC.to_le_bytes().to_vec();
        header.extend(1u32.to_le_bytes());
        header.extend(40u32.to_le_bytes());
        assert_eq!(jitdump_header_size(&header), Some(40));
        assert_eq!(jitdump_header_size(b"nonsense"), None);
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

    #[test]
    fn a_code_move_carries_its_name_to_the_new_address() {
        let mut moved = Vec::new();
        moved.extend(JIT_CODE_MOVE.to_le_bytes());
        moved.extend(64u32.to_le_bytes());
        moved.extend([0; 24]);
        moved.extend(0x1000u64.to_le_bytes());
        moved.extend(0x5000u64.to_le_bytes());
        moved.extend(0x80u64.to_le_bytes());
        moved.extend(0u64.to_le_bytes());
        let mut header = JITDUMP_MAGIC.to_le_bytes().to_vec();
        header.extend(1u32.to_le_bytes());
        header.extend(12u32.to_le_bytes());
        let path = std::env::temp_dir().join(format!("jit-move-{}.dump", std::process::id()));
        fs::write(&path, [header, moved].concat()).unwrap();
        let mut map = PerfMap {
            jitdump: Some((fs::File::open(&path).unwrap(), 0)),
            ..PerfMap::default()
        };
        map.ranges.insert(0x1000, (0x1080, "JS:*predict".into()));
        map.read_new_records();
        fs::remove_file(&path).unwrap();
        assert_eq!(map.name(0x1010), None);
        assert_eq!(map.name(0x5010).as_deref(), Some("JS:*predict"));
    }
}
