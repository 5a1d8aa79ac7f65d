//! Go: the function table (`.gopclntab`) that every Go binary carries, stripped or not.
//!
//! Go emits no `.eh_frame`, and a leaf function gets no frame pointer, so neither the
//! DWARF rows nor a frame-pointer walk find every caller. The table gives each
//! function's name and, at every instruction, how far the stack pointer is below the
//! return address: a CFA rule, which [`unwind_rows`] compiles into the same rows as
//! `.eh_frame`'s. [`FunctionNames`] names frames of binaries whose `.symtab` was
//! stripped (`go build -ldflags=-s -w`).
//!
//! Layouts read: Go 1.18 and 1.19 (magic `0xfffffff0`) and Go 1.20 and later
//! (`0xfffffff1`, which adds each function's start line), on 64-bit little-endian
//! targets, found through the `.gopclntab` section, the `runtime.pclntab` symbol, or,
//! in binaries linked by the system's linker and stripped, by its header. Older tables
//! are not read.

use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, ReadRef, SectionKind,
};
use profiler_common::{UnwindRow, cfa_rule};

use crate::profile::{Language, SourceFunction};

const GO_118_MAGIC: u32 = 0xffff_fff0;
/// Bytes of the table's header.
const HEADER_BYTES: usize = 72;
const GO_120_MAGIC: u32 = 0xffff_fff1;

/// `funcFlag_TOPFRAME`: a function at the top of its stack (`runtime.goexit`,
/// `runtime.mstart`, `runtime.rt0_go`), where Go's own traceback stops.
const TOP_FRAME: u8 = 1;
/// `funcFlag_SPWRITE`: a function that moves the stack pointer arbitrarily (stack
/// switches such as `runtime.systemstack`), whose table does not say where its caller is.
/// Go's own traceback stops there, and so does the profiler's: the frames of the system
/// stack end at them.
const WRITES_SP: u8 = 2;

/// `PCDATA_InlTreeIndex`: the pc-data table that says which inlined call runs where.
const PCDATA_INLINE_TREE_INDEX: u32 = 2;
/// `FUNCDATA_InlTree`: the function data that is the function's inline tree.
const FUNCDATA_INLINE_TREE: usize = 3;

/// Where the caller's rbp lies once a frame is set up, in words from the CFA: Go saves
/// it just below the return address.
const SAVED_RBP: i8 = -2;

/// A binary's parsed function table, borrowing the section's bytes.
struct Table<'data> {
    data: &'data [u8],
    /// Where the table lies in memory, for finding the module data that points at it.
    address: u64,
    /// Start of the code the functions' entry offsets count from.
    text_start: u64,
    function_count: usize,
    names: usize,
    pc_tables: usize,
    functions: usize,
    /// Bytes of a function record before its `funcID`.
    id_offset: usize,
}

/// One function of the table.
struct Function {
    entry: u64,
    end: u64,
    /// Offset of its record in the table.
    record: usize,
}

impl<'data> Table<'data> {
    /// The table of a Go binary: the `.gopclntab` section that Go's own linker writes,
    /// or, in a binary linked by the system's linker (cgo) or built as PIE, the table
    /// inside a data section, where `runtime.pclntab` names it or its header is found.
    fn find<'file, R: ReadRef<'data>>(file: &'file object::File<'data, R>) -> Option<Self> {
        if let Some(section) = file.section_by_name(".gopclntab") {
            return Self::parse(section.data().ok()?, section.address());
        }
        // Every file's table is compiled at attach: only a Go binary is worth the
        // search of its symbols and data below.
        if !is_go_binary(file) {
            return None;
        }
        let code = |address: u64| {
            file.sections().any(|section| {
                section.kind() == SectionKind::Text
                    && (section.address()..section.address() + section.size()).contains(&address)
            })
        };
        let symbol = file
            .symbols()
            .find(|symbol| symbol.name() == Ok("runtime.pclntab"));
        if let Some(symbol) = symbol {
            let section = file.section_by_index(symbol.section_index()?).ok()?;
            let at = usize::try_from(symbol.address().checked_sub(section.address())?).ok()?;
            return Self::parse(section.data().ok()?.get(at..)?, symbol.address());
        }
        [".data.rel.ro", ".rodata", ".noptrdata"]
            .into_iter()
            .filter_map(|name| {
                let section = file.section_by_name(name)?;
                Some((section.data().ok()?, section.address()))
            })
            .find_map(|(data, address)| {
                // The header is pointer-aligned.
                (0..data.len().saturating_sub(HEADER_BYTES))
                    .step_by(8)
                    .filter_map(|at| Self::parse(&data[at..], address + at as u64))
                    .find(|table| code(table.text_start))
            })
    }

    fn parse(data: &'data [u8], address: u64) -> Option<Self> {
        let id_offset = match u32_at(data, 0)? {
            GO_118_MAGIC => 36,
            GO_120_MAGIC => 40,
            _ => return None,
        };
        // One-byte instruction quantum and 8-byte pointers: amd64.
        if data.get(6..8)? != [1, 8] {
            return None;
        }
        let word = |index: usize| usize::try_from(u64_at(data, 8 + index * 8)?).ok();
        Some(Table {
            data,
            address,
            function_count: word(0)?,
            text_start: u64_at(data, 24)?,
            names: word(3)?,
            pc_tables: word(6)?,
            functions: word(7)?,
            id_offset,
        })
    }

    /// Every function, by ascending entry.
    fn functions(&self) -> impl Iterator<Item = Function> + '_ {
        let entry = move |index: usize| {
            let at = self.functions.checked_add(index.checked_mul(8)?)?;
            Some((u32_at(self.data, at)?, u32_at(self.data, at + 4)?))
        };
        (0..self.function_count).map_while(move |index| {
            let (start, record) = entry(index)?;
            let (end, _) = entry(index + 1)?;
            Some(Function {
                entry: self.text_start + u64::from(start),
                end: self.text_start + u64::from(end),
                record: self.functions.checked_add(record as usize)?,
            })
        })
    }

    fn name(&self, function: &Function) -> Option<&'data str> {
        self.name_at(u32_at(self.data, function.record + 4)?)
    }

    fn flags(&self, function: &Function) -> u8 {
        self.data
            .get(function.record + self.id_offset + 1)
            .copied()
            .unwrap_or(0)
    }

    /// The function's stack-pointer deltas: (first address, end, bytes pushed since the
    /// call), in order.
    fn stack_deltas(&self, function: &Function) -> Vec<(u64, u64, i64)> {
        match u32_at(self.data, function.record + 16) {
            Some(offset) => self.pc_values(function, offset),
            None => Vec::new(),
        }
    }

    /// The function's inline-tree indices by address: (first address, end, index into
    /// its inline tree, or -1 where no inlined call runs), in order.
    fn inline_indices(&self, function: &Function) -> Vec<(u64, u64, i64)> {
        let count = u32_at(self.data, function.record + 28).unwrap_or(0);
        if count <= PCDATA_INLINE_TREE_INDEX {
            return Vec::new();
        }
        let at = function.record + self.id_offset + 4 + 4 * PCDATA_INLINE_TREE_INDEX as usize;
        match u32_at(self.data, at) {
            Some(offset) => self.pc_values(function, offset),
            None => Vec::new(),
        }
    }

    /// Where the function's inline tree lies, as an offset from the module's `gofunc`.
    fn inline_tree(&self, function: &Function) -> Option<u32> {
        let pc_data = u32_at(self.data, function.record + 28)? as usize;
        let func_data = usize::from(*self.data.get(function.record + self.id_offset + 3)?);
        if func_data <= FUNCDATA_INLINE_TREE {
            return None;
        }
        let at = function.record + self.id_offset + 4 + 4 * (pc_data + FUNCDATA_INLINE_TREE);
        u32_at(self.data, at).filter(|&offset| offset != u32::MAX)
    }

    /// A name in the function-name table.
    fn name_at(&self, offset: u32) -> Option<&'data str> {
        let start = self.names.checked_add(offset as usize)?;
        let bytes = self.data.get(start..)?;
        let length = bytes.iter().position(|&byte| byte == 0)?;
        std::str::from_utf8(&bytes[..length]).ok()
    }

    /// A pc-value table of the function: (first address, end, value), in order. Each
    /// entry is a zig-zag value delta and an address delta, from -1 at the entry.
    fn pc_values(&self, function: &Function, offset: u32) -> Vec<(u64, u64, i64)> {
        let mut values = Vec::new();
        if offset == 0 {
            return values;
        }
        let Some(mut bytes) = self
            .pc_tables
            .checked_add(offset as usize)
            .and_then(|start| self.data.get(start..))
        else {
            return values;
        };
        let (mut pc, mut value) = (function.entry, -1i64);
        let mut first = true;
        while let Some((encoded, rest)) = varint(bytes) {
            if encoded == 0 && !first {
                break;
            }
            first = false;
            let Some((pc_step, rest)) = varint(rest) else {
                break;
            };
            bytes = rest;
            value += if encoded & 1 != 0 {
                -((encoded >> 1) as i64) - 1
            } else {
                (encoded >> 1) as i64
            };
            let end = pc.saturating_add(pc_step);
            if end > function.end {
                break;
            }
            values.push((pc, end, value));
            pc = end;
        }
        values
    }
}

/// Where a Go module's `gofunc` (the base of every function's data, such as its inline
/// tree) is: the module data is the one that points at the function table, and holds
/// the start of the code at a fixed place.
fn module_gofunc<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    table: &Table<'_>,
) -> Option<u64> {
    // Words into `runtime.moduledata`: its `text`, and its `gofunc` (Go 1.20 added
    // `covctrs` and `ecovctrs` before it).
    const TEXT: usize = 22;
    let gofunc = if table.id_offset == 36 { 38 } else { 40 };
    [".noptrdata", ".data", ".data.rel.ro"]
        .into_iter()
        .filter_map(|name| file.section_by_name(name)?.data().ok())
        .find_map(|data| {
            (0..data.len().saturating_sub((gofunc + 1) * 8))
                .step_by(8)
                .find(|&at| {
                    u64_at(data, at) == Some(table.address)
                        && u64_at(data, at + TEXT * 8) == Some(table.text_start)
                })
                .and_then(|at| u64_at(data, at + gofunc * 8))
        })
}

/// The bytes of the file at virtual address `address` on, within its section.
fn bytes_at<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    address: u64,
) -> Option<&'data [u8]> {
    file.sections().find_map(|section| {
        let offset = address.checked_sub(section.address())?;
        (offset < section.size())
            .then(|| section.data().ok()?.get(offset as usize..))
            .flatten()
    })
}

/// The names of the calls inlined at each address of `function`, innermost last:
/// (first address, end, names).
fn inlined_calls(
    table: &Table<'_>,
    function: &Function,
    tree: &[u8],
) -> Vec<(u64, u64, Vec<String>)> {
    // `inlinedCall`: Go 1.18 and 1.19 {parent i16, funcID u8, _, file i32, line i32,
    // nameOff i32, parentPc i32}; Go 1.20 on {funcID u8, _ [3]u8, nameOff i32,
    // parentPc i32, startLine i32}.
    let (size, name_at, parent_pc_at) = if table.id_offset == 36 {
        (20, 12, 16)
    } else {
        (16, 4, 8)
    };
    let indices = table.inline_indices(function);
    let index_at = |pc: u64| {
        indices
            .iter()
            .find(|(start, end, _)| (*start..*end).contains(&pc))
            .map_or(-1, |&(_, _, index)| index)
    };
    let mut calls = Vec::new();
    for &(start, end, first) in &indices {
        let mut names = Vec::new();
        let mut index = first;
        // The chain runs from the innermost inlined call out; a bound against a
        // malformed tree that loops.
        while index >= 0 && names.len() < 64 {
            let entry = index as usize * size;
            let (Some(name), Some(parent_pc)) = (
                u32_at(tree, entry + name_at).and_then(|offset| table.name_at(offset)),
                u32_at(tree, entry + parent_pc_at),
            ) else {
                break;
            };
            names.push(name.to_owned());
            index = index_at(function.entry + u64::from(parent_pc));
        }
        if !names.is_empty() {
            names.reverse();
            calls.push((start, end, names));
        }
    }
    calls
}

/// The unwind rows of a Go binary's functions, by its function table; `None` if the
/// file has no table this module reads.
pub fn unwind_rows<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
) -> Option<Vec<UnwindRow>> {
    let table = Table::find(file)?;
    let mut rows = Vec::new();
    for function in table.functions() {
        let flags = table.flags(&function);
        let row = |address: u64, cfa_rule: u8, cfa_offset: u16, rbp_offset: i8| {
            Some(UnwindRow {
                address: u32::try_from(address).ok()?,
                cfa_offset,
                cfa_rule,
                rbp_offset,
            })
        };
        if flags & (TOP_FRAME | WRITES_SP) != 0 {
            rows.extend(row(function.entry, cfa_rule::ROOT, 0, 0));
        } else {
            for (start, _, pushed) in table.stack_deltas(&function) {
                let rule = u16::try_from(pushed + 8).ok().map(|offset| {
                    let rbp = if pushed > 0 { SAVED_RBP } else { 0 };
                    (cfa_rule::RSP, offset, rbp)
                });
                let (rule, offset, rbp) = rule.unwrap_or((cfa_rule::NONE, 0, 0));
                rows.extend(row(start, rule, offset, rbp));
            }
        }
        // Where the function ends, the padding before the next one has no rule.
        rows.extend(row(function.end, cfa_rule::NONE, 0, 0));
    }
    (!rows.is_empty()).then_some(rows)
}

/// A Go binary's function names, looked up by where the code lies in the file.
pub struct FunctionNames {
    /// The loadable segments: (file offset, bytes in the file, virtual address).
    segments: Vec<(u64, u64, u64)>,
    /// (entry, end, name), by ascending entry.
    functions: Vec<(u64, u64, String)>,
    /// (first address, end, the calls inlined there, outermost first), by ascending
    /// address.
    inlined: Vec<(u64, u64, Vec<String>)>,
}

impl FunctionNames {
    /// The names of a Go binary's functions and of the calls inlined into them; `None`
    /// if the file has no table this module reads.
    pub fn read<'data, R: ReadRef<'data>>(file: &object::File<'data, R>) -> Option<Self> {
        let table = Table::find(file)?;
        let gofunc = module_gofunc(file, &table);
        let mut functions = Vec::new();
        let mut inlined = Vec::new();
        for function in table.functions() {
            let Some(name) = table.name(&function) else {
                continue;
            };
            functions.push((function.entry, function.end, name.to_owned()));
            let tree = gofunc
                .zip(table.inline_tree(&function))
                .and_then(|(base, offset)| bytes_at(file, base + u64::from(offset)));
            if let Some(tree) = tree {
                inlined.extend(inlined_calls(&table, &function, tree));
            }
        }
        let segments = file
            .segments()
            .map(|segment| {
                let (offset, size) = segment.file_range();
                (offset, size, segment.address())
            })
            .collect();
        Some(FunctionNames {
            segments,
            functions,
            inlined,
        })
    }

    /// The function whose code is at `offset` in the file, then the calls inlined
    /// there, innermost last.
    pub fn at_file_offset(&self, offset: u64) -> Option<Vec<String>> {
        let address = self.segments.iter().find_map(|&(start, size, address)| {
            (start..start + size)
                .contains(&offset)
                .then(|| offset - start + address)
        })?;
        let index = self
            .functions
            .partition_point(|&(entry, _, _)| entry <= address);
        let (_, end, name) = self.functions.get(index.checked_sub(1)?)?;
        if address >= *end {
            return None;
        }
        let mut names = vec![name.clone()];
        let index = self
            .inlined
            .partition_point(|&(start, _, _)| start <= address);
        if let Some((_, end, calls)) = index.checked_sub(1).and_then(|i| self.inlined.get(i))
            && address < *end
        {
            names.extend(calls.iter().cloned());
        }
        Some(names)
    }
}

/// Where every goroutine and thread starts: they hold all of the time, and are nobody's
/// hotspot.
const ENTRY_POINTS: &[&str] = &[
    "runtime.goexit",
    "runtime.main",
    "runtime.mstart",
    "runtime.mstart0",
    "runtime.mstart1",
    "runtime.rt0_go",
];

/// Whether a file is a Go binary: it has Go's build id or its function table.
pub fn is_go_binary<'data, R: ReadRef<'data>>(file: &object::File<'data, R>) -> bool {
    file.section_by_name(".note.go.buildid").is_some()
        || file.section_by_name(".gopclntab").is_some()
}

/// The source function of the Go function named `name`, as the function table spells
/// it (`main.predict`, `net/http.(*conn).serve`).
pub fn source_function(name: &str) -> SourceFunction {
    // The package is the path up to the first dot after its last slash.
    let after_slash = name.rfind('/').map_or(0, |slash| slash + 1);
    let package = name[after_slash..]
        .find('.')
        .map(|dot| &name[..after_slash + dot]);
    SourceFunction {
        language: Language::Go,
        qualname: name.to_owned(),
        file: String::new(),
        line: 0,
        module: package.map(str::to_owned),
        entry: ENTRY_POINTS.contains(&name),
        installed: package != Some("main"),
    }
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// An unsigned LEB128 number and the bytes after it.
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[index + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_read_as_the_go_linker_writes_them() {
        assert_eq!(varint(&[0x05, 0xff]), Some((5, &[0xff][..])));
        assert_eq!(varint(&[0x80, 0x01]), Some((128, &[][..])));
        assert_eq!(varint(&[0x80]), None);
    }

    #[test]
    fn functions_know_their_package_and_the_program_s_own_code() {
        let served = source_function("net/http.(*conn).serve");
        assert_eq!(served.module.as_deref(), Some("net/http"));
        assert!(served.installed && !served.entry);
        let predict = source_function("main.predict");
        assert_eq!(predict.module.as_deref(), Some("main"));
        assert!(!predict.installed);
        assert!(predict.is_named("predict"));
        assert!(source_function("runtime.goexit").entry);
    }

    #[test]
    fn a_table_of_another_layout_is_not_read() {
        let mut header = vec![0u8; 72];
        header[..4].copy_from_slice(&0xffff_fffbu32.to_le_bytes());
        header[6] = 1;
        header[7] = 8;
        assert!(Table::parse(&header, 0).is_none());
        header[..4].copy_from_slice(&GO_118_MAGIC.to_le_bytes());
        assert!(Table::parse(&header, 0).is_some());
        header[7] = 4;
        assert!(Table::parse(&header, 0).is_none());
    }
}
