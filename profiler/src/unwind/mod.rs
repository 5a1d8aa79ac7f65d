//! Unwind tables for the kernel's unwinder (profiler-ebpf's `stacks` module).
//!
//! Each distinct executable file (by device and inode, so that a library mapped by many
//! processes is compiled once) becomes a run of [`UnwindRow`]s. The runs follow one
//! another in chunks of [`UNWIND_CHUNK_ROWS`] rows, array maps that the kernel's
//! unwinder reaches through an array of maps and that userspace writes through memory
//! mappings; a chunk is added when the files met need one, so the kernel holds about
//! what the targets need. Each target process gets the list of its executable
//! mappings, each pointing at its file's rows.
//!
//! The kernel reports a stack that reached an address outside every mapping it knows
//! ([`profiler_common::StackEnd::UnknownMapping`]): a library loaded with `dlopen`, a
//! started command's program. The process's map is then read again and handed to
//! [`UnwindTables::load_mappings`].

mod table;

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::FileExt as _,
    },
    ptr::NonNull,
    time::{Duration, Instant},
};

use aya::maps::MapData;
use object::ReadCache;
use profiler_common::{
    ExecutableMapping, MAX_MAPPINGS, MAX_UNWIND_CHUNKS, ProcessMappings, UNWIND_CHUNK_ROWS,
    UNWIND_SEARCH_STEPS, UnwindRow,
};
pub use table::{FileTable, Segment, TableError, bias};

use crate::{
    attach::{ProcessMappingLists, UnwindChunkSlots},
    memory_map::{FileId, Mapping},
    target,
};

/// A file whose table is compiled once for every process that maps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum FileKey {
    /// A file on disk.
    File(FileId),
    /// The kernel's vDSO, the same in every process.
    Vdso,
}

enum FileState {
    /// Compiled, not yet in the kernel's array.
    Compiled(FileTable),
    /// Its rows are in the kernel's array.
    Loaded {
        segments: Vec<Segment>,
        first_row: u32,
        rows: u32,
    },
    Failed(TableError),
}

/// What the tables cost and what could not be built, for the report.
#[derive(Clone, Debug, Default)]
pub struct TableStats {
    /// Files with a table in the kernel.
    pub files: usize,
    /// Rows in the kernel, over all files.
    pub rows: u64,
    /// Bytes of those rows.
    pub row_bytes: u64,
    /// Kernel memory of the row array and the processes' mapping lists.
    pub kernel_bytes: u64,
    /// Time spent reading files and compiling their tables.
    pub build_time: Duration,
    /// Files without a table, by reason.
    pub failed_files: BTreeMap<&'static str, usize>,
}

/// One chunk of the kernel's rows, written through a shared memory mapping of it.
struct MappedChunk {
    rows: NonNull<UnwindRow>,
    /// Keeps the map alive as long as the mapping.
    _map: MapData,
}

/// Bytes of one chunk: a whole number of pages.
const CHUNK_BYTES: usize = UNWIND_CHUNK_ROWS as usize * size_of::<UnwindRow>();

impl MappedChunk {
    /// Creates a chunk, maps it, and hands it to the kernel's unwinder at `index`.
    fn new(chunks: &mut UnwindChunkSlots, index: u32) -> std::io::Result<Self> {
        let map = MapData::create(
            aya_obj::Map::new_from_params(
                aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
                size_of::<u32>() as u32,
                size_of::<UnwindRow>() as u32,
                UNWIND_CHUNK_ROWS,
                aya_obj::generated::BPF_F_MMAPABLE,
            ),
            "unwind_chunk",
            None,
        )
        .map_err(std::io::Error::other)?;
        // SAFETY: maps the BPF array, created with BPF_F_MMAPABLE and
        // UNWIND_CHUNK_ROWS 8-byte entries, shared with the kernel; nothing else maps it.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CHUNK_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let chunk = MappedChunk {
            rows: NonNull::new(address.cast()).expect("mmap returned null"),
            _map: map,
        };
        chunks
            .set(index, &chunk._map, 0)
            .map_err(std::io::Error::other)?;
        Ok(chunk)
    }
}

impl Drop for MappedChunk {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.rows.as_ptr().cast(), CHUNK_BYTES) };
    }
}

/// The kernel's rows: every file's, one after another, in chunks added as files come.
struct MappedRows {
    chunk_slots: UnwindChunkSlots,
    chunks: Vec<MappedChunk>,
    used: u32,
}

impl MappedRows {
    /// Appends `rows`, returning the index of the first, or None if they do not fit.
    fn append(&mut self, rows: &[UnwindRow]) -> Option<u32> {
        let count = u32::try_from(rows.len()).ok()?;
        // The kernel's binary search covers this many rows of one file.
        if count > 1 << UNWIND_SEARCH_STEPS {
            return None;
        }
        let end = self.used.checked_add(count)?;
        let chunks_needed = end.div_ceil(UNWIND_CHUNK_ROWS);
        if chunks_needed > MAX_UNWIND_CHUNKS {
            return None;
        }
        while (self.chunks.len() as u32) < chunks_needed {
            let index = self.chunks.len() as u32;
            self.chunks
                .push(MappedChunk::new(&mut self.chunk_slots, index).ok()?);
        }
        let chunk_rows = UNWIND_CHUNK_ROWS as usize;
        let (mut at, mut rest) = (self.used as usize, rows);
        while !rest.is_empty() {
            let slot = at % chunk_rows;
            let (piece, after) = rest.split_at(rest.len().min(chunk_rows - slot));
            // SAFETY: the piece ends at or before its chunk's end, in a chunk mapped
            // whole, which no reader reads before the process mappings that point at
            // it are published.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    piece.as_ptr(),
                    self.chunks[at / chunk_rows].rows.as_ptr().add(slot),
                    piece.len(),
                );
            }
            (at, rest) = (at + piece.len(), after);
        }
        let first = self.used;
        self.used = end;
        Some(first)
    }

    /// Kernel memory of the chunks.
    fn bytes(&self) -> usize {
        self.chunks.len() * CHUNK_BYTES
    }
}

/// The kernel's side of the tables, once the BPF object is loaded.
struct Kernel {
    rows: MappedRows,
    processes: ProcessMappingLists,
    /// The generation of the last mapping list written.
    generation: u32,
}

/// Every target's unwind tables, compiled here and handed to the kernel.
#[derive(Default)]
pub struct UnwindTables {
    files: HashMap<FileKey, FileState>,
    /// Each process's executable mappings with the file each maps.
    processes: HashMap<u32, Vec<(Mapping, Option<FileKey>)>>,
    kernel: Option<Kernel>,
    build_time: Duration,
}

impl UnwindTables {
    /// Takes the executable mappings of process `tgid` as last read, and compiles the
    /// tables of files not seen before; once the kernel's maps are connected, loads them
    /// and tells the kernel the process's mappings.
    pub fn load_mappings(&mut self, tgid: u32, mappings: &[Mapping]) {
        let started = Instant::now();
        let mut keyed = Vec::with_capacity(mappings.len());
        for mapping in mappings {
            let key = if mapping.vdso {
                Some(FileKey::Vdso)
            } else {
                mapping.file.clone().map(FileKey::File)
            };
            if let Some(key) = &key
                && !self.files.contains_key(key)
            {
                match compile(tgid, mapping) {
                    Ok(table) => {
                        self.files.insert(key.clone(), FileState::Compiled(table));
                    }
                    // A process that exited before its file was read (a short-lived
                    // command) says nothing of the file: the next process to map it
                    // tries again.
                    Err(TableError::Unreadable) if !target::is_alive(tgid) => {}
                    Err(error) => {
                        self.files.insert(key.clone(), FileState::Failed(error));
                    }
                }
            }
            keyed.push((mapping.clone(), key));
        }
        self.build_time += started.elapsed();
        self.processes.insert(tgid, keyed);
        if self.kernel.is_some() {
            self.publish(tgid);
        }
    }

    /// Connects the kernel's maps and loads every process read so far.
    pub fn connect(&mut self, chunk_slots: UnwindChunkSlots, processes: ProcessMappingLists) {
        self.kernel = Some(Kernel {
            rows: MappedRows {
                chunk_slots,
                chunks: Vec::new(),
                used: 0,
            },
            processes,
            generation: 0,
        });
        let tgids: Vec<u32> = self.processes.keys().copied().collect();
        for tgid in tgids {
            self.publish(tgid);
        }
    }

    /// Loads the process's files into the kernel's array, then tells the kernel its
    /// mappings: the rows must be in place before anything points at them.
    fn publish(&mut self, tgid: u32) {
        let Some(kernel) = &mut self.kernel else {
            return;
        };
        let Some(keyed) = self.processes.get(&tgid) else {
            return;
        };
        kernel.generation = kernel.generation.checked_add(1).unwrap_or(1);
        let mut list = ProcessMappings {
            count: 0,
            generation: kernel.generation,
            mappings: [ExecutableMapping::default(); MAX_MAPPINGS],
        };
        // The kernel's search compares addresses below 2^63 only: the `[vsyscall]` page
        // above would be taken for the end of the highest mapping, the dynamic loader's,
        // and it has no unwind information anyway.
        let user_space = keyed
            .iter()
            .filter(|(mapping, _)| mapping.range.start < 1 << 63);
        for (mapping, key) in user_space.take(MAX_MAPPINGS) {
            let mut entry = ExecutableMapping {
                start: mapping.range.start,
                end: mapping.range.end,
                ..ExecutableMapping::default()
            };
            if let Some(state) = key.as_ref().and_then(|key| self.files.get_mut(key)) {
                load_file(state, &mut kernel.rows);
                if let FileState::Loaded {
                    segments,
                    first_row,
                    rows,
                } = state
                    && let Some(bias) = bias(segments, mapping.range.start, mapping.file_offset)
                {
                    entry.bias = bias;
                    entry.first_row = *first_row;
                    entry.rows = *rows;
                }
            }
            list.mappings[list.count as usize] = entry;
            list.count += 1;
        }
        // A process that exited meanwhile cannot be unwound anyway.
        let _ = kernel.processes.insert(&tgid, &list, 0);
    }

    /// What the tables cost, and the files that have none.
    pub fn stats(&self) -> TableStats {
        let mut stats = TableStats {
            build_time: self.build_time,
            ..TableStats::default()
        };
        for state in self.files.values() {
            match state {
                FileState::Loaded { rows, .. } => {
                    stats.files += 1;
                    stats.rows += u64::from(*rows);
                }
                FileState::Failed(error) => {
                    *stats.failed_files.entry(error.name()).or_default() += 1;
                }
                FileState::Compiled(_) => {}
            }
        }
        stats.row_bytes = stats.rows * size_of::<UnwindRow>() as u64;
        if let Some(kernel) = &self.kernel {
            stats.kernel_bytes = kernel.rows.bytes() as u64
                + (self.processes.len() * size_of::<ProcessMappings>()) as u64;
        }
        stats
    }
}

/// Moves a compiled table into the kernel's array; a table that does not fit fails.
fn load_file(state: &mut FileState, rows: &mut MappedRows) {
    let FileState::Compiled(table) = state else {
        return;
    };
    *state = match rows.append(&table.rows) {
        Some(first_row) => FileState::Loaded {
            segments: std::mem::take(&mut table.segments),
            first_row,
            rows: table.rows.len() as u32,
        },
        None => FileState::Failed(TableError::TableFull),
    };
}

/// Compiles the table of a mapped file, read through the process's own view of it: its
/// `map_files` link works across mount namespaces and for deleted files; its root is
/// the fallback. The vDSO is read from the process's memory.
fn compile(tgid: u32, mapping: &Mapping) -> Result<FileTable, TableError> {
    if mapping.vdso {
        let length = (mapping.range.end - mapping.range.start) as usize;
        let memory =
            fs::File::open(format!("/proc/{tgid}/mem")).map_err(|_| TableError::Unreadable)?;
        let mut image = vec![0; length];
        memory
            .read_exact_at(&mut image, mapping.range.start)
            .map_err(|_| TableError::Unreadable)?;
        return FileTable::compile(&*image);
    }
    let file = mapping.open(tgid).map_err(|_| TableError::Unreadable)?;
    // Read lazily: only the headers and the frame sections of a large library.
    let cache = ReadCache::new(file);
    FileTable::compile(&cache)
}
