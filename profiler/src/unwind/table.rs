//! Compiling one file's call-frame information (`.eh_frame`, or `.debug_frame` where
//! that is all it has, or a Go binary's function table) into the sorted rows the
//! kernel's unwinder binary-searches.

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EhFrameHdr, EndianSlice, LittleEndian, Pointer,
    RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use object::{
    Endianness, Object as _, ObjectSection as _, ReadRef,
    elf::{FileHeader64, PF_X, PT_GNU_EH_FRAME, PT_LOAD, ProgramHeader64},
    read::elf::{FileHeader as _, ProgramHeader as _},
};
use profiler_common::{UnwindRow, cfa_rule};

use crate::runtime::go;

/// Why a file has no unwind table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableError {
    /// The file could not be opened or read.
    Unreadable,
    /// The file is no ELF file the parser understands.
    NotElf,
    /// The file has neither `.eh_frame` nor `.debug_frame`, or they do not parse.
    NoFrameInfo,
    /// The file's code lies above 4 GiB, beyond the rows' 32-bit addresses.
    TooLarge,
    /// The kernel's table had no room left for the file's rows.
    TableFull,
}

impl TableError {
    /// The reason as the report names it.
    pub fn name(self) -> &'static str {
        match self {
            TableError::Unreadable => "unreadable",
            TableError::NotElf => "not_elf",
            TableError::NoFrameInfo => "no_frame_info",
            TableError::TooLarge => "too_large",
            TableError::TableFull => "table_full",
        }
    }
}

/// A loadable segment: where its bytes are in the file, and where they go in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the segment in the file.
    pub file_offset: u64,
    /// Bytes of the segment in the file.
    pub file_size: u64,
    /// The segment's ELF virtual address.
    pub address: u64,
    /// Whether it is mapped executable.
    pub executable: bool,
}

/// One file's unwind rows and segments.
#[derive(Clone, Debug, Default)]
pub struct FileTable {
    /// By ascending address, each covering up to the next.
    pub rows: Vec<UnwindRow>,
    /// The loadable segments, to turn mapped addresses into ELF addresses.
    pub segments: Vec<Segment>,
}

/// What to subtract from an address of an executable mapping that starts at `start`
/// with file offset `file_offset` to get its file's ELF virtual address, given the
/// file's segments.
///
/// The mapping's offset is the segment's rounded down to a page, so it may also fall in
/// the segment before; the executable one is the one mapped executable.
pub fn bias(segments: &[Segment], start: u64, file_offset: u64) -> Option<u64> {
    let holds = |segment: &&Segment| {
        (segment.file_offset & !(PAGE - 1)..segment.file_offset + segment.file_size.max(1))
            .contains(&file_offset)
    };
    let segment = segments
        .iter()
        .filter(holds)
        .max_by_key(|segment| segment.executable)?;
    Some(
        start
            .wrapping_sub(file_offset)
            .wrapping_add(segment.file_offset)
            .wrapping_sub(segment.address),
    )
}

/// The page size segments are mapped with.
const PAGE: u64 = 4096;

impl FileTable {
    /// Compiles the table of an ELF file.
    ///
    /// The frame sections are found through the section headers, or, where those are
    /// missing or corrupt, through the `PT_GNU_EH_FRAME` program header, as the C++
    /// runtime finds them: a file the loader can map can be unwound.
    pub fn compile<'data, R: ReadRef<'data>>(data: R) -> Result<FileTable, TableError> {
        let header = FileHeader64::<Endianness>::parse(data).map_err(|_| TableError::NotElf)?;
        let endian = header.endian().map_err(|_| TableError::NotElf)?;
        let program_headers = header
            .program_headers(endian, data)
            .map_err(|_| TableError::NotElf)?;
        let segments: Vec<Segment> = program_headers
            .iter()
            .filter(|header| header.p_type(endian) == PT_LOAD)
            .map(|header| Segment {
                file_offset: header.p_offset(endian),
                file_size: header.p_filesz(endian),
                address: header.p_vaddr(endian),
                executable: header.p_flags(endian) & PF_X != 0,
            })
            .collect();
        let parsed = object::File::parse(data).ok();
        let go_rows = parsed.as_ref().and_then(go::unwind_rows);
        let mut rows = match (&parsed, go_rows) {
            // A Go binary's own code is in its function table; `.eh_frame`, if any,
            // covers the C code linked in with cgo.
            (Some(file), Some(mut go_rows)) => {
                if let Some(Ok(c_rows)) = frame_section(file, ".eh_frame") {
                    go_rows.extend(c_rows);
                }
                Some(Ok(go_rows))
            }
            (Some(file), None) => {
                frame_section(file, ".eh_frame").or_else(|| frame_section(file, ".debug_frame"))
            }
            (None, _) => None,
        }
        .or_else(|| eh_frame_from_program_headers(data, endian, program_headers, &segments))
        .ok_or(TableError::NoFrameInfo)??;
        sort_and_merge(&mut rows);
        if rows.is_empty() {
            return Err(TableError::NoFrameInfo);
        }
        Ok(FileTable { rows, segments })
    }
}

/// The rows of the frame section `name` (`.eh_frame` or `.debug_frame`); `None` if the
/// file has no such section.
fn frame_section<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    name: &str,
) -> Option<Result<Vec<UnwindRow>, TableError>> {
    let section = file.section_by_name(name)?;
    let data = section.data().ok()?;
    if data.is_empty() {
        return None;
    }
    let mut bases = BaseAddresses::default();
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = file.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    Some(if name == ".eh_frame" {
        let bases = bases.set_eh_frame(section.address());
        table_rows(&EhFrame::new(data, LittleEndian), &bases)
    } else {
        table_rows(&DebugFrame::new(data, LittleEndian), &bases)
    })
}

/// The rows of the `.eh_frame` that the `PT_GNU_EH_FRAME` segment (`.eh_frame_hdr`)
/// points at. The section runs to its zero terminator, within its segment.
fn eh_frame_from_program_headers<'data, R: ReadRef<'data>>(
    data: R,
    endian: Endianness,
    program_headers: &[ProgramHeader64<Endianness>],
    segments: &[Segment],
) -> Option<Result<Vec<UnwindRow>, TableError>> {
    let header = program_headers
        .iter()
        .find(|header| header.p_type(endian) == PT_GNU_EH_FRAME)?;
    let header_address = header.p_vaddr(endian);
    let header_bytes = data
        .read_bytes_at(header.p_offset(endian), header.p_filesz(endian))
        .ok()?;
    let bases = BaseAddresses::default().set_eh_frame_hdr(header_address);
    let parsed = EhFrameHdr::new(header_bytes, LittleEndian)
        .parse(&bases, 8)
        .ok()?;
    let Pointer::Direct(eh_frame_address) = parsed.eh_frame_ptr() else {
        return None;
    };
    let segment = segments.iter().find(|segment| {
        (segment.address..segment.address + segment.file_size).contains(&eh_frame_address)
    })?;
    let offset = eh_frame_address - segment.address + segment.file_offset;
    let length = segment.address + segment.file_size - eh_frame_address;
    let eh_frame = data.read_bytes_at(offset, length).ok()?;
    let bases = bases.set_eh_frame(eh_frame_address);
    Some(table_rows(&EhFrame::new(eh_frame, LittleEndian), &bases))
}

type Slice<'data> = EndianSlice<'data, LittleEndian>;

/// Every row of every FDE, plus a [`cfa_rule::NONE`] row where an FDE ends, since the
/// next one need not start there.
fn table_rows<'data, S: UnwindSection<Slice<'data>>>(
    section: &S,
    bases: &BaseAddresses,
) -> Result<Vec<UnwindRow>, TableError> {
    let mut context = UnwindContext::new();
    let mut rows = Vec::new();
    let mut entries = section.entries(bases);
    let mut parsed_any = false;
    // A malformed entry ends the walk: what came before it is still good.
    while let Ok(Some(entry)) = entries.next() {
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        parsed_any = true;
        let signal = fde.is_signal_trampoline();
        let Ok(mut table) = fde.rows(section, bases, &mut context) else {
            continue;
        };
        while let Ok(Some(row)) = table.next_row() {
            let Ok(address) = u32::try_from(row.start_address()) else {
                return Err(TableError::TooLarge);
            };
            let (cfa_rule, cfa_offset) = if signal {
                (cfa_rule::SIGNAL, 0)
            } else {
                caller_rule(section, row.cfa(), row.register(X86_64::RA))
            };
            rows.push(UnwindRow {
                address,
                cfa_offset,
                cfa_rule,
                rbp_offset: saved_rbp(row.register(X86_64::RBP)),
            });
        }
        if let Ok(end) = u32::try_from(fde.end_address()) {
            rows.push(UnwindRow {
                address: end,
                ..UnwindRow::default()
            });
        }
    }
    if parsed_any {
        Ok(rows)
    } else {
        Err(TableError::NoFrameInfo)
    }
}

/// How the caller is found: the CFA rule and its offset, or [`cfa_rule::NONE`] where
/// the kernel's unwinder cannot follow the rule.
fn caller_rule<'data, S: UnwindSection<Slice<'data>>>(
    section: &S,
    cfa: &CfaRule<usize>,
    return_address: Option<RegisterRule<usize>>,
) -> (u8, u16) {
    const NOT_FOLLOWED: (u8, u16) = (cfa_rule::NONE, 0);
    match return_address {
        Some(RegisterRule::Undefined) => return (cfa_rule::ROOT, 0),
        Some(RegisterRule::Offset(-8)) => {}
        _ => return NOT_FOLLOWED,
    }
    match cfa {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = u16::try_from(*offset) else {
                return NOT_FOLLOWED;
            };
            match *register {
                X86_64::RSP => (cfa_rule::RSP, offset),
                X86_64::RBP => (cfa_rule::RBP, offset),
                _ => NOT_FOLLOWED,
            }
        }
        CfaRule::Expression(expression) => expression
            .get(section)
            .ok()
            .and_then(|expression| plt_threshold(expression.0.slice()))
            .map_or(NOT_FOLLOWED, |threshold| (cfa_rule::PLT, threshold)),
    }
}

/// The PLT stub's CFA expression as the linkers write it:
/// `rsp + 8 + ((rip & 15) >= N) << 3`. Returns N.
fn plt_threshold(expression: &[u8]) -> Option<u16> {
    const DW_OP_BREG7: u8 = 0x77;
    const DW_OP_BREG16: u8 = 0x80;
    const DW_OP_LIT0: u8 = 0x30;
    const DW_OP_AND: u8 = 0x1a;
    const DW_OP_GE: u8 = 0x2a;
    const DW_OP_SHL: u8 = 0x24;
    const DW_OP_PLUS: u8 = 0x22;
    match *expression {
        [
            DW_OP_BREG7,
            8,
            DW_OP_BREG16,
            0,
            mask,
            DW_OP_AND,
            threshold,
            DW_OP_GE,
            shift,
            DW_OP_SHL,
            DW_OP_PLUS,
        ] if mask == DW_OP_LIT0 + 15 && shift == DW_OP_LIT0 + 3 => {
            threshold.checked_sub(DW_OP_LIT0).map(u16::from)
        }
        _ => None,
    }
}

/// Where the caller's rbp was saved, in words from the CFA; 0 if rbp still holds it.
fn saved_rbp(rule: Option<RegisterRule<usize>>) -> i8 {
    match rule {
        Some(RegisterRule::Offset(offset)) if offset % 8 == 0 => {
            i8::try_from(offset / 8).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Sorts rows by address. Where an FDE's end marker and the next FDE's first row share
/// an address the row wins; runs of equal rules become one row.
fn sort_and_merge(rows: &mut Vec<UnwindRow>) {
    rows.sort_by_key(|row| (row.address, row.cfa_rule != cfa_rule::NONE));
    // Of rows at one address the last, a row over an end marker, stays.
    rows.reverse();
    rows.dedup_by_key(|row| row.address);
    rows.reverse();
    rows.dedup_by(|row, earlier| same_rule(row, earlier));
    // A table that begins with a gap needs no marker for it.
    if rows
        .first()
        .is_some_and(|row| row.cfa_rule == cfa_rule::NONE)
    {
        rows.remove(0);
    }
}

fn same_rule(a: &UnwindRow, b: &UnwindRow) -> bool {
    (a.cfa_rule, a.cfa_offset, a.rbp_offset) == (b.cfa_rule, b.cfa_offset, b.rbp_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_table() -> FileTable {
        let data = std::fs::read("/proc/self/exe").unwrap();
        FileTable::compile(&*data).unwrap()
    }

    /// The row covering ELF address `address`.
    fn row_at(table: &FileTable, address: u64) -> UnwindRow {
        let index = table
            .rows
            .partition_point(|row| u64::from(row.address) <= address);
        table.rows[index - 1]
    }

    fn elf_address(code: u64) -> u64 {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let table = own_table();
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next().unwrap().split_once('-').unwrap();
            let (start, end) = (
                u64::from_str_radix(start, 16).unwrap(),
                u64::from_str_radix(end, 16).unwrap(),
            );
            let _permissions = fields.next();
            let offset = u64::from_str_radix(fields.next().unwrap(), 16).unwrap();
            if (start..end).contains(&code) {
                return code - bias(&table.segments, start, offset).unwrap();
            }
        }
        panic!("{code:#x} is not mapped");
    }

    #[inline(never)]
    fn a_function() -> u64 {
        std::hint::black_box(7)
    }

    #[test]
    fn at_a_functions_entry_the_return_address_is_on_top_of_the_stack() {
        let table = own_table();
        let row = row_at(&table, elf_address(a_function as *const () as u64));
        assert_eq!(
            (row.cfa_rule, row.cfa_offset, row.rbp_offset),
            (cfa_rule::RSP, 8, 0)
        );
    }

    #[test]
    fn rows_are_sorted_and_have_no_repeated_rule() {
        let table = own_table();
        assert!(table.rows.len() > 1000, "{} rows", table.rows.len());
        for pair in table.rows.windows(2) {
            assert!(pair[0].address < pair[1].address);
            assert!(!same_rule(&pair[0], &pair[1]));
        }
    }

    #[test]
    fn the_linkers_plt_expression_is_recognised() {
        let plt = [0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22];
        assert_eq!(plt_threshold(&plt), Some(11));
        assert_eq!(plt_threshold(&plt[..10]), None);
    }

    #[test]
    fn an_fde_end_gives_way_to_the_next_fde_at_the_same_address() {
        let row = |address, cfa_rule, cfa_offset| UnwindRow {
            address,
            cfa_offset,
            cfa_rule,
            rbp_offset: 0,
        };
        let mut rows = vec![
            row(0x20, cfa_rule::NONE, 0),
            row(0x10, cfa_rule::RSP, 8),
            row(0x20, cfa_rule::RSP, 8),
            row(0x18, cfa_rule::RSP, 16),
            row(0x30, cfa_rule::NONE, 0),
        ];
        sort_and_merge(&mut rows);
        assert_eq!(
            rows,
            vec![
                row(0x10, cfa_rule::RSP, 8),
                row(0x18, cfa_rule::RSP, 16),
                row(0x20, cfa_rule::RSP, 8),
                row(0x30, cfa_rule::NONE, 0),
            ]
        );
    }

    #[test]
    fn without_section_headers_the_frames_are_found_through_the_program_headers() {
        let mut data = std::fs::read("/proc/self/exe").unwrap();
        let whole = FileTable::compile(&*data).unwrap();
        // e_shoff, 40 bytes in: point the section headers past the end of the file.
        data[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(object::File::parse(&*data).is_err());
        let headerless = FileTable::compile(&*data).unwrap();
        assert_eq!(headerless.rows, whole.rows);
        assert_eq!(headerless.segments, whole.segments);
    }

    #[test]
    fn a_file_that_is_not_elf_has_no_table() {
        assert_eq!(
            FileTable::compile(&b"#!/bin/sh\n"[..]).unwrap_err(),
            TableError::NotElf
        );
    }
}
