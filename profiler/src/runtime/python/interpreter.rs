//! Finding a CPython interpreter in a running process, and the layout of its version.
//!
//! The interpreter is the mapped file that defines `_PyRuntime`: a shared
//! `libpython3.x.so`, a statically linked `python3.x`, or a program that embeds
//! either. Its version comes from `Py_Version` (3.11 on), and the offsets of the fields
//! the kernel walks from a table per minor version, checked on 3.13 against the
//! `_Py_DebugOffsets` the interpreter publishes about itself.

use std::{collections::HashMap, fs, os::unix::fs::FileExt as _, path::Path};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _, ReadCache, SegmentFlags};
use profiler_common::{
    PYTHON_EVERY_FRAME, PYTHON_GIL_HOLDER, PYTHON_GIL_LOCKED, PYTHON_NO_FIELD, PythonLayout,
    PythonProcess,
};

use super::view;
use crate::{
    memory_map::{FileId, Mapping},
    unwind::{Segment, bias},
};

/// A CPython version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// 3.
    pub major: u8,
    /// 11 for 3.11.
    pub minor: u8,
    /// The patch release, when the interpreter says it (`Py_Version`, 3.11 on).
    pub micro: Option<u8>,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        match self.micro {
            Some(micro) => write!(f, ".{micro}"),
            None => Ok(()),
        }
    }
}

/// Where the fields userspace reads from Python objects sit, besides those the kernel
/// reads too ([`PythonLayout::code_qualname`], [`PythonLayout::code_first_line`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLayout {
    /// Offset in `PyCodeObject` of `co_filename`.
    pub code_filename: u64,
    /// Offset of `co_linetable`, the bytes that map instructions to lines.
    pub code_line_table: u64,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's characters start.
    pub ascii_data: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where other compact strings' characters start.
    pub compact_data: u64,
}

/// A CPython interpreter found in a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpreter {
    /// Its version.
    pub version: Version,
    /// The file that holds it.
    pub file: FileId,
    /// That file's path, as the process maps it.
    pub path: String,
    /// The function name prefixes of the extension modules built into it.
    pub extension_prefixes: Vec<String>,
    /// What the kernel walks its frames with.
    pub kernel: PythonProcess,
    /// Address of `PyCode_Type`: every code object's type.
    pub code_type: u64,
    /// Where userspace reads names.
    pub objects: ObjectLayout,
}

/// A version the walker supports, and the offsets that go with it.
struct KnownLayout {
    minor: u8,
    /// Offset of `autoTSSkey` in `_PyRuntimeState`.
    thread_state_key: u64,
    /// Offset in `_PyRuntimeState` of the main interpreter's GIL: `ceval.gil` before
    /// 3.12, then `_gil` of the main interpreter, which `_PyRuntime` holds.
    gil: u64,
    kernel: PythonLayout,
    objects: ObjectLayout,
}

/// 3.12 dropped `wstr` from strings; 3.13 kept the 3.12 objects.
const OBJECTS_SINCE_3_12: ObjectLayout = ObjectLayout {
    code_filename: 112,
    code_line_table: 136,
    ascii_data: 40,
    compact_data: 56,
};

/// Read from the headers of CPython 3.10.13, 3.11.7, 3.12.1 and 3.13.0 (`offsetof` on
/// `Py_BUILD_CORE` builds); the GIL's found in each running interpreter as the words
/// `{ interval: 5000, last_holder: PyThreadState_Get(), locked: 1 }`.
const KNOWN_LAYOUTS: [KnownLayout; 4] = [
    // The thread state points at the current frame object, each frame at its caller,
    // and every Python call runs a C eval loop of its own. No qualified names yet:
    // `co_name` stands in for `co_qualname`.
    KnownLayout {
        minor: 10,
        thread_state_key: 584,
        gil: 352,
        kernel: PythonLayout {
            thread_frame_holder: PYTHON_NO_FIELD,
            holder_current_frame: 24,
            thread_id: 176,
            frame_code: 32,
            frame_previous: 24,
            frame_owner: PYTHON_NO_FIELD,
            frame_is_entry: PYTHON_EVERY_FRAME,
            code_first_line: 40,
            code_qualname: 112,
            frame_instruction: 96,
            code_instructions: PYTHON_NO_FIELD,
            _padding: 0,
        },
        objects: ObjectLayout {
            code_filename: 104,
            code_line_table: 120,
            ascii_data: 48,
            compact_data: 72,
        },
    },
    KnownLayout {
        minor: 11,
        thread_state_key: 592,
        gil: 360,
        kernel: PythonLayout {
            thread_frame_holder: 56,
            holder_current_frame: 8,
            thread_id: 152,
            frame_code: 32,
            frame_previous: 48,
            frame_owner: 69,
            frame_is_entry: 68,
            code_first_line: 72,
            code_qualname: 128,
            frame_instruction: 56,
            code_instructions: 184,
            _padding: 0,
        },
        objects: ObjectLayout {
            code_filename: 112,
            code_line_table: 136,
            ascii_data: 48,
            compact_data: 72,
        },
    },
    KnownLayout {
        minor: 12,
        thread_state_key: 1544,
        gil: 77432,
        kernel: PythonLayout {
            thread_frame_holder: 56,
            holder_current_frame: 0,
            thread_id: 136,
            frame_code: 0,
            frame_previous: 8,
            frame_owner: 70,
            frame_is_entry: PYTHON_NO_FIELD,
            code_first_line: 68,
            code_qualname: 128,
            frame_instruction: 56,
            code_instructions: 192,
            _padding: 0,
        },
        objects: OBJECTS_SINCE_3_12,
    },
    KnownLayout {
        minor: 13,
        thread_state_key: 2160,
        gil: 96104,
        kernel: PythonLayout {
            thread_frame_holder: PYTHON_NO_FIELD,
            holder_current_frame: 72,
            thread_id: 152,
            frame_code: 0,
            frame_previous: 8,
            frame_owner: 70,
            frame_is_entry: PYTHON_NO_FIELD,
            code_first_line: 68,
            code_qualname: 128,
            frame_instruction: 56,
            code_instructions: 200,
            _padding: 0,
        },
        objects: OBJECTS_SINCE_3_12,
    },
];

/// The symbols an interpreter is found by, as ELF virtual addresses.
#[derive(Clone, Debug, Default)]
pub struct Symbols {
    runtime: Option<u64>,
    version: Option<u64>,
    code_type: Option<u64>,
    /// The function name prefixes of the extension modules built into the file.
    extension_prefixes: Vec<String>,
}

impl Symbols {
    /// Keeps `address` if `name` is one of the symbols an interpreter is found by;
    /// extension modules import them, and only the interpreter defines them.
    fn note(&mut self, name: &str, address: u64) {
        let slot = match name {
            "_PyRuntime" => &mut self.runtime,
            "Py_Version" => &mut self.version,
            "PyCode_Type" => &mut self.code_type,
            _ => return,
        };
        slot.get_or_insert(address);
    }

    fn complete(&self) -> bool {
        self.runtime.is_some() && self.version.is_some() && self.code_type.is_some()
    }
}

/// What was read of each file that could hold an interpreter: its symbols and
/// segments, or `None` if it could not be read. The processes of a server (a master and
/// its workers, every Python process of `--all`) share their interpreter's file, whose
/// symbol table is read once.
pub type ReadFiles = HashMap<FileId, Option<(Symbols, Vec<Segment>)>>;

/// Looks for a CPython interpreter among the files process `tgid` maps. `Ok(None)`
/// when there is none; `Err` with a one-line reason when there is one the walker
/// cannot walk.
pub fn detect(
    tgid: u32,
    mappings: &[Mapping],
    read_files: &mut ReadFiles,
) -> Result<Option<Interpreter>, String> {
    let program = fs::read_link(format!("/proc/{tgid}/exe")).ok();
    let mut seen: Vec<&FileId> = Vec::new();
    for mapping in mappings {
        let (Some(id), Some(path)) = (&mapping.file, &mapping.path) else {
            continue;
        };
        let named_python = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().contains("python"));
        if seen.contains(&id) || !(named_python || program.as_deref() == Some(path.as_path())) {
            continue;
        }
        seen.push(id);
        let read = read_files
            .entry(id.clone())
            .or_insert_with(|| read_symbols(tgid, mapping));
        let Some((symbols, segments)) = read.clone() else {
            continue;
        };
        let Some(runtime) = symbols.runtime else {
            continue;
        };
        let Some(bias) = bias(&segments, mapping.range.start, mapping.file_offset) else {
            continue;
        };
        let memory = fs::File::open(format!("/proc/{tgid}/mem"))
            .map_err(|error| format!("cannot read the memory of process {tgid}: {error}"))?;
        let version = match symbols.version {
            Some(address) => read_version(&memory, address.wrapping_add(bias)),
            None => version_from_name(path),
        }
        .ok_or_else(|| format!("{}: CPython of an unknown version", path.display()))?;
        if is_free_threaded(path) {
            return Err(format!(
                "{}: CPython {version} free-threaded builds are not walked",
                path.display()
            ));
        }
        let layout = KNOWN_LAYOUTS
            .iter()
            .find(|layout| version.major == 3 && layout.minor == version.minor)
            .ok_or_else(|| {
                format!(
                    "{}: CPython {version} is not walked (3.10 to 3.13 are)",
                    path.display()
                )
            })?;
        let runtime = runtime.wrapping_add(bias);
        let kernel = match version.minor {
            13 => checked_against_debug_offsets(&memory, runtime, layout)
                .map_err(|reason| format!("{}: CPython {version}: {reason}", path.display()))?,
            _ => layout.kernel,
        };
        let code_type = symbols
            .code_type
            .ok_or_else(|| format!("{}: no PyCode_Type symbol", path.display()))?
            .wrapping_add(bias);
        return Ok(Some(Interpreter {
            version,
            file: id.clone(),
            path: path.to_string_lossy().into_owned(),
            extension_prefixes: symbols.extension_prefixes,
            kernel: PythonProcess {
                thread_state_key: runtime + layout.thread_state_key,
                gil: runtime + layout.gil,
                layout: kernel,
            },
            code_type,
            objects: layout.objects,
        }));
    }
    Ok(None)
}

/// The interpreter's symbols and loadable segments, read through the process's own
/// view of the file.
fn read_symbols(tgid: u32, mapping: &Mapping) -> Option<(Symbols, Vec<Segment>)> {
    let by_range = format!(
        "/proc/{tgid}/map_files/{:x}-{:x}",
        mapping.range.start, mapping.range.end
    );
    let file = fs::File::open(by_range).ok()?;
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let mut symbols = Symbols::default();
    let mut init_functions = Vec::new();
    // A built-in module's init function is exported, so that the dynamic symbols, a
    // few thousand, hold them all.
    for symbol in elf
        .dynamic_symbols()
        .filter(|symbol| symbol.is_definition())
    {
        match symbol.name() {
            Ok(name) if name.starts_with("PyInit_") => init_functions.push(name.to_owned()),
            Ok(name) => symbols.note(name, symbol.address()),
            Err(_) => {}
        }
    }
    symbols.extension_prefixes =
        view::extension_prefixes(init_functions.iter().map(String::as_str));
    // A static interpreter may leave some of the three out of its dynamic symbols; the
    // full symbol table is ten times longer, each name a read of the file.
    if !symbols.complete() {
        for symbol in elf.symbols().filter(|symbol| symbol.is_definition()) {
            if let Ok(name) = symbol.name() {
                symbols.note(name, symbol.address());
            }
            if symbols.complete() {
                break;
            }
        }
    }
    let segments = elf
        .segments()
        .map(|segment| {
            let (file_offset, file_size) = segment.file_range();
            Segment {
                file_offset,
                file_size,
                address: segment.address(),
                executable: matches!(
                    segment.flags(),
                    SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
                ),
            }
        })
        .collect();
    Some((symbols, segments))
}

/// `Py_Version`, which holds `PY_VERSION_HEX`.
fn read_version(memory: &fs::File, address: u64) -> Option<Version> {
    let mut bytes = [0; 4];
    memory.read_exact_at(&mut bytes, address).ok()?;
    let hex = u32::from_le_bytes(bytes);
    Some(Version {
        major: (hex >> 24) as u8,
        minor: (hex >> 16) as u8,
        micro: Some((hex >> 8) as u8),
    })
}

/// The version in a file name such as `libpython3.10.so.1.0` or `python3.10`, for
/// interpreters older than `Py_Version`.
fn version_from_name(path: &Path) -> Option<Version> {
    let name = path.file_name()?.to_string_lossy();
    let digits = &name[name.find("python")? + "python".len()..];
    let mut parts = digits.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some(Version {
        major,
        minor: minor.parse().ok()?,
        micro: None,
    })
}

/// Free-threaded builds (`python3.13t`, `libpython3.13t.so`) lay objects out
/// differently.
fn is_free_threaded(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(start) = name.find("python3.") else {
        return false;
    };
    let rest = &name[start + "python3.".len()..];
    let after_minor = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    after_minor.starts_with('t')
}

/// Field indices, in 8-byte words, of CPython 3.13's `_Py_DebugOffsets`.
mod debug_offsets {
    pub const FREE_THREADED: usize = 2;
    pub const INTERPRETER_GIL: usize = 15;
    pub const GIL_LOCKED: usize = 17;
    pub const GIL_HOLDER: usize = 18;
    pub const THREAD_CURRENT_FRAME: usize = 23;
    pub const THREAD_ID: usize = 24;
    pub const FRAME_PREVIOUS: usize = 29;
    pub const FRAME_EXECUTABLE: usize = 30;
    pub const FRAME_OWNER: usize = 33;
    pub const FRAME_INSTRUCTION: usize = 31;
    pub const CODE_QUALNAME: usize = 37;
    pub const CODE_LINE_TABLE: usize = 38;
    pub const CODE_FIRST_LINE: usize = 39;
    pub const CODE_INSTRUCTIONS: usize = 43;
    pub const WORDS: usize = 44;
}

/// Offset of `_gil` in 3.13's `PyInterpreterState`; the main interpreter sits at 88352
/// in `_PyRuntime`, which puts its GIL at the table's 96104.
const INTERPRETER_GIL_3_13: u32 = 7752;

/// The 3.13 layout, after checking that the interpreter's own `_Py_DebugOffsets` (at
/// the start of `_PyRuntime`) agrees with it: a patch release that moved a field is
/// refused, never walked with wrong offsets.
fn checked_against_debug_offsets(
    memory: &fs::File,
    runtime: u64,
    layout: &KnownLayout,
) -> Result<PythonLayout, String> {
    let mut bytes = [0u8; debug_offsets::WORDS * 8];
    memory
        .read_exact_at(&mut bytes, runtime)
        .map_err(|error| format!("cannot read _Py_DebugOffsets: {error}"))?;
    if &bytes[..8] != b"xdebugpy" {
        return Err("no _Py_DebugOffsets at _PyRuntime".to_owned());
    }
    let word = |index: usize| {
        let mut value = [0; 8];
        value.copy_from_slice(&bytes[index * 8..index * 8 + 8]);
        u64::from_le_bytes(value)
    };
    if word(debug_offsets::FREE_THREADED) != 0 {
        return Err("free-threaded builds are not walked".to_owned());
    }
    let kernel = layout.kernel;
    let expected = [
        (
            debug_offsets::THREAD_CURRENT_FRAME,
            kernel.holder_current_frame,
        ),
        (debug_offsets::THREAD_ID, kernel.thread_id),
        (debug_offsets::FRAME_PREVIOUS, kernel.frame_previous),
        (debug_offsets::FRAME_EXECUTABLE, kernel.frame_code),
        (debug_offsets::FRAME_OWNER, kernel.frame_owner),
        (debug_offsets::CODE_QUALNAME, kernel.code_qualname),
        (debug_offsets::CODE_FIRST_LINE, kernel.code_first_line),
        (debug_offsets::FRAME_INSTRUCTION, kernel.frame_instruction),
        (debug_offsets::CODE_INSTRUCTIONS, kernel.code_instructions),
        (
            debug_offsets::CODE_LINE_TABLE,
            layout.objects.code_line_table as u32,
        ),
        (debug_offsets::INTERPRETER_GIL, INTERPRETER_GIL_3_13),
        // These two count from the interpreter state too.
        (
            debug_offsets::GIL_LOCKED,
            INTERPRETER_GIL_3_13 + PYTHON_GIL_LOCKED as u32,
        ),
        (
            debug_offsets::GIL_HOLDER,
            INTERPRETER_GIL_3_13 + PYTHON_GIL_HOLDER as u32,
        ),
    ];
    match expected
        .iter()
        .find(|&&(index, offset)| word(index) != u64::from(offset))
    {
        Some(_) => Err("its _Py_DebugOffsets differ from 3.13.0's".to_owned()),
        None => Ok(kernel),
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::{PYTHON_CODE_BYTES, PYTHON_FRAME_BYTES};

    use super::*;

    #[test]
    fn versions_and_free_threading_read_from_file_names() {
        let version = version_from_name(Path::new("/usr/lib/libpython3.10.so.1.0")).unwrap();
        assert_eq!((version.major, version.minor), (3, 10));
        let version = version_from_name(Path::new("/usr/bin/python3.13t")).unwrap();
        assert_eq!((version.major, version.minor), (3, 13));
        assert!(is_free_threaded(Path::new("/usr/bin/python3.13t")));
        assert!(is_free_threaded(Path::new("/x/libpython3.14t.so.1.0")));
        assert!(!is_free_threaded(Path::new("/x/libpython3.13.so.1.0")));
        assert!(!is_free_threaded(Path::new("/usr/bin/python3.11")));
    }

    #[test]
    fn every_known_layout_reads_fields_the_kernel_copies_hold() {
        for layout in &KNOWN_LAYOUTS {
            let kernel = layout.kernel;
            for offset in [
                kernel.frame_code,
                kernel.frame_previous,
                kernel.frame_instruction,
            ] {
                assert!(offset + 8 <= PYTHON_FRAME_BYTES, "3.{}", layout.minor);
            }
            for byte in [kernel.frame_owner, kernel.frame_is_entry] {
                assert!(
                    !(PYTHON_FRAME_BYTES..PYTHON_EVERY_FRAME).contains(&byte),
                    "3.{}",
                    layout.minor
                );
            }
            assert!(kernel.code_qualname > kernel.code_first_line);
            assert!(
                kernel.code_qualname - kernel.code_first_line + 8 <= PYTHON_CODE_BYTES,
                "3.{}",
                layout.minor
            );
        }
    }
}
