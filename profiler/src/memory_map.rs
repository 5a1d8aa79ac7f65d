//! The executable mappings of the target processes, read from `/proc/PID/maps` while
//! they run.
//!
//! The unwind tables need each process's mappings and files, and symbolization needs a
//! copy of the map kept for after the process exits. Both must be read while the process
//! lives, so the map is read when a target is first seen and again whenever a stack
//! holds an address outside the mappings known so far (a library loaded late, a JIT
//! region), or the kernel's unwinder reports one.

use std::{
    collections::HashMap,
    fs,
    ops::Range,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How long to wait before reading a process's map again for an address it does not
/// cover; keeps a stream of wild addresses from rereading it for every stack.
const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// A program younger than this (since its map was first read) may have its map read
/// again after [`YOUNG_REFRESH_INTERVAL`] already: it is still mapping its libraries.
const YOUNG_PROGRAM: Duration = Duration::from_secs(1);

/// How soon a young program's map may be read again.
const YOUNG_REFRESH_INTERVAL: Duration = Duration::from_millis(20);

/// A file as the kernel identifies it, whatever path or mount namespace names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// The device, as `/proc/PID/maps` prints it (`major:minor`, in hex).
    pub device: String,
    /// The inode.
    pub inode: u64,
}

/// One executable mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The addresses it covers.
    pub range: Range<u64>,
    /// Offset in the file of the mapping's first byte.
    pub file_offset: u64,
    /// The mapped file as the process names it; `None` for anonymous memory.
    pub path: Option<PathBuf>,
    /// The mapped file; `None` for anonymous memory.
    pub file: Option<FileId>,
    /// Whether this is the kernel's vDSO.
    pub vdso: bool,
}

/// `path`, as process `tgid` names it, seen through its root: a container's files,
/// which may not exist on the host or be other files there.
fn in_process_root(tgid: u32, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{tgid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

impl Mapping {
    /// Opens the mapped file of process `tgid` through the process itself
    /// ([`Mapping::own_view`]); never by its path as the host sees it, which may name
    /// another file once the process is gone.
    pub fn open(&self, tgid: u32) -> std::io::Result<fs::File> {
        fs::File::open(self.own_view(tgid).ok_or(std::io::ErrorKind::NotFound)?)
    }

    /// A path by which the profiler reaches the very file mapped, for what takes a path
    /// (uprobes, while the process runs): [`Mapping::own_view`], else its path. A
    /// chroot's file shows in the map by its host path, a private mount's by its path
    /// inside: the first is right for both, and the path for a chroot.
    pub fn reachable_path(&self, tgid: u32) -> PathBuf {
        self.own_view(tgid)
            .unwrap_or_else(|| self.path.clone().unwrap_or_default())
    }

    /// The file through process `tgid`: its `/proc/PID/map_files` link (which needs
    /// CAP_SYS_ADMIN), else its path under the process's root, if either is there.
    fn own_view(&self, tgid: u32) -> Option<PathBuf> {
        let by_range = PathBuf::from(format!(
            "/proc/{tgid}/map_files/{:x}-{:x}",
            self.range.start, self.range.end
        ));
        let in_root = in_process_root(tgid, self.path.as_deref()?);
        [by_range, in_root]
            .into_iter()
            .find(|path| fs::metadata(path).is_ok())
    }

    /// Where `address` lies in the mapped file.
    pub fn file_offset_of(&self, address: u64) -> u64 {
        address - self.range.start + self.file_offset
    }
}

struct ProcessMap {
    mappings: Vec<Mapping>,
    read_at: Instant,
    /// When the map of its current program was first read.
    first_read_at: Instant,
}

impl ProcessMap {
    /// Whether it may be read again: a program maps its libraries in its first moments,
    /// so a young one's map goes stale fast, and its short life must not pass waiting.
    fn may_read_again(&self) -> bool {
        let interval = if self.first_read_at.elapsed() < YOUNG_PROGRAM {
            YOUNG_REFRESH_INTERVAL
        } else {
            REFRESH_INTERVAL
        };
        self.read_at.elapsed() >= interval
    }
}

/// The executable mappings of every process seen so far.
#[derive(Default)]
pub struct MemoryMaps {
    processes: HashMap<u32, ProcessMap>,
    /// Processes whose map was read since the last [`MemoryMaps::take_updated`].
    updated: Vec<u32>,
}

impl MemoryMaps {
    /// Makes sure `addresses` of process `tgid` are covered, reading its map again if
    /// they are not (at most every 250 ms, every 20 ms in its first second). Returns
    /// true if it was read.
    pub fn observe(&mut self, tgid: u32, addresses: &[u64]) -> bool {
        let stale = match self.processes.get(&tgid) {
            None => true,
            Some(known) => {
                // Most frames of a stack lie in the mapping of the frame before.
                let mut last: Option<&Mapping> = None;
                known.may_read_again()
                    && addresses.iter().any(|&address| {
                        if last.is_some_and(|mapping| mapping.range.contains(&address)) {
                            return false;
                        }
                        last = find(&known.mappings, address);
                        last.is_none()
                    })
            }
        };
        stale && self.read(tgid)
    }

    /// Reads the process's map again, unless that was done less than 250 ms ago (20 ms
    /// in its first second): for
    /// when something else than an address (the kernel's unwinder, after an `exec`)
    /// says the copy is stale. Returns true if it was read.
    pub fn refresh(&mut self, tgid: u32) -> bool {
        let recent = self
            .processes
            .get(&tgid)
            .is_some_and(|known| !known.may_read_again());
        !recent && self.read(tgid)
    }

    /// Reads the map of a process that was just forked or has just `exec`ed: whatever
    /// was known of it is another program's.
    pub fn restart(&mut self, tgid: u32) -> bool {
        self.processes.remove(&tgid);
        self.read(tgid)
    }

    /// Reads the process's map now. Returns false if the process is gone, in which case
    /// the last copy stays in use. A process that exited but was not yet waited for (a
    /// zombie) has an empty map: that counts as gone, or a stack streamed before its
    /// exit would take every name of the process with it.
    pub fn read(&mut self, tgid: u32) -> bool {
        let Ok(maps) = fs::read_to_string(format!("/proc/{tgid}/maps")) else {
            return false;
        };
        let mappings = parse(&maps);
        if mappings.is_empty() && self.processes.contains_key(&tgid) {
            return false;
        }
        let now = Instant::now();
        let first_read_at = self
            .processes
            .get(&tgid)
            .map_or(now, |known| known.first_read_at);
        self.processes.insert(
            tgid,
            ProcessMap {
                mappings,
                read_at: now,
                first_read_at,
            },
        );
        if !self.updated.contains(&tgid) {
            self.updated.push(tgid);
        }
        true
    }

    /// The processes whose map was read since the last call, so that copies kept
    /// elsewhere (the symbolizer's) can follow.
    pub fn take_updated(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.updated)
    }

    /// The executable mappings last read for process `tgid`.
    pub fn mappings(&self, tgid: u32) -> &[Mapping] {
        self.processes
            .get(&tgid)
            .map_or(&[], |process| &process.mappings)
    }

    /// Sets the mappings of process `tgid`, as if read from its map.
    #[cfg(test)]
    pub fn insert(&mut self, tgid: u32, mut mappings: Vec<Mapping>) {
        mappings.sort_by_key(|mapping| mapping.range.start);
        self.processes.insert(
            tgid,
            ProcessMap {
                mappings,
                read_at: Instant::now(),
                first_read_at: Instant::now(),
            },
        );
    }

    /// The mapping holding `address`, if known.
    pub fn mapping(&self, tgid: u32, address: u64) -> Option<&Mapping> {
        find(&self.processes.get(&tgid)?.mappings, address)
    }
}

/// The executable mappings of a process now, by ascending address.
pub fn read_mappings(tgid: u32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse(&fs::read_to_string(format!("/proc/{tgid}/maps"))?))
}

/// The first mapping of each distinct file a process maps executable code from, in map
/// order.
pub fn executable_files(tgid: u32) -> std::io::Result<Vec<Mapping>> {
    let mut files: Vec<Mapping> = Vec::new();
    for mapping in read_mappings(tgid)? {
        if mapping.path.is_some() && !files.iter().any(|file| file.path == mapping.path) {
            files.push(mapping);
        }
    }
    Ok(files)
}

/// The mapping of `mappings`, sorted by address and not overlapping, that holds
/// `address`.
fn find(mappings: &[Mapping], address: u64) -> Option<&Mapping> {
    let after = mappings.partition_point(|mapping| mapping.range.start <= address);
    let mapping = &mappings[after.checked_sub(1)?];
    mapping.range.contains(&address).then_some(mapping)
}

/// The executable lines of a `/proc/PID/maps` text.
fn parse(maps: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            if !fields.next()?.contains('x') {
                return None;
            }
            let file_offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let device = fields.next()?;
            let inode: u64 = fields.next()?.parse().ok()?;
            // The path is the rest of the line and may hold spaces.
            let path = fields.collect::<Vec<_>>().join(" ");
            let is_file = inode != 0 && path.starts_with('/');
            Some(Mapping {
                range: u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?,
                file_offset,
                file: is_file.then(|| FileId {
                    device: device.to_owned(),
                    inode,
                }),
                vdso: path == "[vdso]",
                path: is_file.then(|| PathBuf::from(path)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_lines_parse_with_offsets_and_paths() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/my server
55d0c0a01000-55d0c0a05000 r-xp 00001000 fe:01 123 /usr/bin/my server
7f0000000000-7f0000001000 rwxp 00000000 00:00 0
7ffd5a1f0000-7ffd5a1f2000 r-xp 00000000 00:00 0                          [vdso]
";
        let mappings = parse(maps);
        assert_eq!(mappings.len(), 3);
        assert_eq!(
            mappings[0].path.as_deref(),
            Some(std::path::Path::new("/usr/bin/my server"))
        );
        assert_eq!(mappings[0].file_offset_of(0x55d0c0a01010), 0x1010);
        assert_eq!(
            mappings[0].file,
            Some(FileId {
                device: "fe:01".to_owned(),
                inode: 123
            })
        );
        assert_eq!(mappings[1].path, None);
        assert_eq!(mappings[2].path, None);
        assert!(mappings[2].vdso && !mappings[1].vdso);
    }

    #[test]
    fn an_address_is_found_in_its_mapping_and_not_between_mappings() {
        let maps = "\
1000-2000 r-xp 00000000 fe:01 1 /a
3000-5000 r-xp 00000000 fe:01 2 /b
5000-6000 r-xp 00000000 fe:01 3 /c
";
        let mappings = parse(maps);
        let file =
            |address| find(&mappings, address).map(|mapping| mapping.file.clone().unwrap().inode);
        assert_eq!(file(0xfff), None);
        assert_eq!(file(0x1000), Some(1));
        assert_eq!(file(0x1fff), Some(1));
        assert_eq!(file(0x2000), None);
        assert_eq!(file(0x4fff), Some(2));
        assert_eq!(file(0x5000), Some(3));
        assert_eq!(file(0x6000), None);
    }

    #[test]
    fn own_code_is_found_in_own_map() {
        let address = parse as *const () as u64;
        let mut maps = MemoryMaps::default();
        assert!(maps.observe(std::process::id(), &[address]));
        assert!(
            maps.mapping(std::process::id(), address)
                .unwrap()
                .path
                .is_some()
        );
        // Covered now, so it is not read again.
        assert!(!maps.observe(std::process::id(), &[address]));
        assert_eq!(maps.take_updated(), vec![std::process::id()]);
        assert!(maps.take_updated().is_empty());
    }
}
