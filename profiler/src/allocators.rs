//! Finding the allocator a target really uses, and where in its file each allocating
//! function starts, so that uprobes can be placed there.
//!
//! The allocator is whatever the process maps that defines `malloc`: libc, a library
//! such as jemalloc or tcmalloc, or the main executable when an allocator is linked into
//! it. Every one of them is probed; when one forwards to another, the BPF side counts
//! the outermost call only.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSymbol, ReadCache, ReadRef, SymbolKind};
use profiler_common::program_names;

use crate::{elf::file_offset, exit::Failure, memory_map};

/// An allocating or freeing function and the BPF program its entry runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocatorFunction {
    /// The symbol.
    pub name: &'static str,
    /// The uprobe program for its entry.
    pub entry_program: &'static str,
    /// Whether its return is probed too, to learn the block it returns.
    pub returns_block: bool,
}

const fn allocating(name: &'static str, entry_program: &'static str) -> AllocatorFunction {
    AllocatorFunction {
        name,
        entry_program,
        returns_block: true,
    }
}

const fn freeing(name: &'static str) -> AllocatorFunction {
    AllocatorFunction {
        name,
        entry_program: program_names::FREE_ENTER,
        returns_block: false,
    }
}

/// Every function probed, in order of preference when two names share an address
/// (glibc's `aligned_alloc` is `memalign`; `mmap64` is `mmap`).
pub const ALLOCATOR_FUNCTIONS: [AllocatorFunction; 12] = [
    allocating("malloc", program_names::MALLOC_ENTER),
    allocating("calloc", program_names::CALLOC_ENTER),
    allocating("realloc", program_names::REALLOC_ENTER),
    allocating("reallocarray", program_names::REALLOCARRAY_ENTER),
    allocating("posix_memalign", program_names::POSIX_MEMALIGN_ENTER),
    allocating("aligned_alloc", program_names::MEMALIGN_ENTER),
    allocating("memalign", program_names::MEMALIGN_ENTER),
    allocating("valloc", program_names::MALLOC_ENTER),
    allocating("pvalloc", program_names::MALLOC_ENTER),
    allocating("mmap", program_names::MMAP_ENTER),
    freeing("free"),
    freeing("munmap"),
];

/// Whether `name` is an allocator's own frame, skipped when naming the function that
/// allocated: the probed functions under their glibc-internal names (`__GI___libc_malloc`,
/// `__mmap64`), and C++'s `operator new`.
pub fn is_allocator_frame(name: &str) -> bool {
    let bare = name.trim_start_matches("__GI_").trim_start_matches('_');
    let bare = bare.strip_prefix("libc_").unwrap_or(bare);
    let bare = bare.strip_suffix("64").unwrap_or(bare);
    ALLOCATOR_FUNCTIONS
        .iter()
        .any(|function| function.name == bare)
        || name.starts_with("operator new")
}

/// One uprobe to place: at a function's start in a file, on the first instruction the
/// kernel can emulate (see [`emulated_probe_offset`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    /// The file, by a path that reaches it ([`memory_map::Mapping::reachable_path`]).
    pub file: PathBuf,
    /// Where the probe goes, as an offset into the file.
    pub file_offset: u64,
    /// The function.
    pub function: AllocatorFunction,
}

/// The probe points of every allocator process `pid` maps. `executable` is its main
/// program, whose static symbols count too (an allocator linked in need not export
/// them); pass it for a process that has not `exec`ed it yet, whose map is still the
/// profiler's.
pub fn probe_points(pid: u32, executable: Option<&Path>) -> Result<Vec<ProbePoint>, Failure> {
    let mapped = memory_map::executable_files(pid).map_err(|error| {
        Failure::NoTarget(format!("reading the memory map of pid {pid}: {error}"))
    })?;
    let own_executable = fs::read_link(format!("/proc/{pid}/exe")).ok();
    let mut points = Vec::new();
    for mapping in mapped
        .iter()
        .filter(|mapping| mapping.path != own_executable)
    {
        points.extend(file_probe_points(&mapping.reachable_path(pid), false));
    }
    // The program's own file, through the process's link to it, whatever its root.
    let executable = executable.map_or_else(
        || PathBuf::from(format!("/proc/{pid}/exe")),
        Path::to_path_buf,
    );
    points.extend(file_probe_points(&executable, true));
    if points.is_empty() {
        return Err(Failure::KernelFeature(format!(
            "pid {pid} maps no allocator that defines `malloc` (a statically linked program \
             without symbols?); allocation tracking needs one"
        )));
    }
    Ok(points)
}

/// The probe points in one file, if it defines `malloc`; empty for anything unreadable
/// or not ELF. `include_static_symbols` for a process's main program. A process's file
/// is given by a path that reaches the very file ([`memory_map::Mapping::reachable_path`]),
/// so that the probes go into the file a container maps, whatever the host has at that
/// path.
pub fn file_probe_points(file: &Path, include_static_symbols: bool) -> Vec<ProbePoint> {
    // Read lazily, as the unwinder does: every mapped library is looked at, and one can
    // be a gigabyte, of which only the symbol tables and a few bytes of code are needed.
    let Ok(opened) = fs::File::open(file) else {
        return Vec::new();
    };
    let cache = ReadCache::new(opened);
    let Ok(elf) = object::File::parse(&cache) else {
        return Vec::new();
    };
    let mut addresses = defined_functions(elf.dynamic_symbols());
    if include_static_symbols {
        for (address, static_address) in addresses.iter_mut().zip(defined_functions(elf.symbols()))
        {
            *address = address.or(static_address);
        }
    }
    let is_allocator = ALLOCATOR_FUNCTIONS
        .iter()
        .zip(&addresses)
        .any(|(function, address)| function.name == "malloc" && address.is_some());
    if !is_allocator {
        return Vec::new();
    }
    let mut placed = HashSet::new();
    ALLOCATOR_FUNCTIONS
        .into_iter()
        .zip(addresses)
        .filter_map(|(function, address)| Some((function, address?)))
        .filter(|&(_, address)| placed.insert(address))
        .filter_map(|(function, address)| {
            let (file_offset, segment_left) = file_offset(&elf, address)?;
            let code = cache
                .read_bytes_at(file_offset, segment_left.min(PROLOGUE_BYTES as u64))
                .unwrap_or_default();
            Some(ProbePoint {
                file: file.to_path_buf(),
                file_offset: file_offset + emulated_probe_offset(code) as u64,
                function,
            })
        })
        .collect()
}

/// The address of each of [`ALLOCATOR_FUNCTIONS`] that `symbols` define, in one pass.
fn defined_functions<'d>(
    symbols: impl Iterator<Item = impl ObjectSymbol<'d>>,
) -> [Option<u64>; ALLOCATOR_FUNCTIONS.len()] {
    let mut addresses = [None; ALLOCATOR_FUNCTIONS.len()];
    for symbol in symbols {
        if symbol.kind() != SymbolKind::Text || !symbol.is_definition() {
            continue;
        }
        let Ok(name) = symbol.name() else {
            continue;
        };
        if let Some(index) = ALLOCATOR_FUNCTIONS
            .iter()
            .position(|function| function.name == name)
        {
            addresses[index].get_or_insert(symbol.address());
        }
    }
    addresses
}

/// Leading instructions at most this long are stepped over to find one to probe.
const PROLOGUE_BYTES: usize = 32;

/// How far into a function's `code` to place its probe.
///
/// x86 uprobes emulate a few instructions (push, jumps, calls); any other is copied out
/// and single-stepped, which costs two extra traps and, in a VM, about 14 us per hit
/// here instead of under 0.5 us. glibc's `free` starts with `test %rdi,%rdi; je`, so a
/// probe on its first instruction makes every free 30 times dearer than a probe on the
/// `je`. The probe therefore moves past leading instructions that only set flags or
/// write scratch registers, onto the first emulated one. Those change neither the stack
/// pointer nor an argument register, so the programs read the same arguments and return
/// address as at the entry, and since no branch is stepped over, every call still hits
/// the probe. Anything else, or no emulated instruction in reach, keeps the entry.
pub fn emulated_probe_offset(code: &[u8]) -> usize {
    let mut offset = 0;
    while offset < code.len().min(PROLOGUE_BYTES) {
        let rest = &code[offset..];
        if is_emulated(rest) {
            return offset;
        }
        match harmless_length(rest) {
            Some(length) => offset += length,
            None => return 0,
        }
    }
    0
}

/// `push reg`, `jcc`, `jmp` and `call` with a relative target.
fn is_emulated(code: &[u8]) -> bool {
    matches!(
        code,
        [0x50..=0x57, ..]
            | [0x41, 0x50..=0x57, ..]
            | [0x70..=0x7f | 0xe8 | 0xe9 | 0xeb, ..]
            | [0x0f, 0x80..=0x8f, ..]
    )
}

/// The length of an instruction that only sets flags or writes a scratch register
/// (rax, r10, r11), or `None`.
fn harmless_length(code: &[u8]) -> Option<usize> {
    const REGISTER_DIRECT: u8 = 0b11 << 6;
    let is_register = |modrm: u8| modrm & 0b1100_0000 == REGISTER_DIRECT;
    match *code {
        // endbr64
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => Some(4),
        // test reg, reg
        [0x85, modrm, ..] if is_register(modrm) => Some(2),
        [0x40..=0x4f, 0x85, modrm, ..] if is_register(modrm) => Some(3),
        // test $imm32, reg
        [0xf7, modrm, ..] if modrm & 0b1111_1000 == 0b1100_0000 => Some(6),
        [0x40..=0x4f, 0xf7, modrm, ..] if modrm & 0b1111_1000 == 0b1100_0000 => Some(7),
        // cmp{b,l,q} $imm8, disp32(%rip)
        [0x80 | 0x83, 0x3d, ..] => Some(7),
        [0x48, 0x83, 0x3d, ..] => Some(8),
        // mov reg, reg into a scratch register
        [rex @ 0x40..=0x4f, 0x89, modrm, ..] if is_register(modrm) => {
            let destination = (modrm & 0b111) | ((rex & 1) << 3);
            matches!(destination, 0 | 10 | 11).then_some(3)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_allocator_is_libc_with_each_function_once() {
        let points = probe_points(std::process::id(), None).unwrap();
        let libc: Vec<&ProbePoint> = points
            .iter()
            .filter(|point| {
                // The file is reached through the process's own link to it.
                let file = fs::canonicalize(&point.file).unwrap_or_default();
                file.to_string_lossy().contains("libc.so")
            })
            .collect();
        for name in [
            "malloc",
            "calloc",
            "realloc",
            "free",
            "posix_memalign",
            "mmap",
        ] {
            assert!(
                libc.iter().any(|point| point.function.name == name),
                "{name} not found in {points:?}"
            );
        }
        let offsets: HashSet<(&Path, u64)> = points
            .iter()
            .map(|point| (point.file.as_path(), point.file_offset))
            .collect();
        assert_eq!(offsets.len(), points.len(), "a function probed twice");
    }

    #[test]
    fn probes_move_onto_the_first_emulated_instruction_and_no_further() {
        // glibc 2.36's free: test %rdi,%rdi; je ...
        assert_eq!(
            emulated_probe_offset(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0]),
            3
        );
        // mmap: mov %ecx,%r10d; test $0xfff,%r9d; jne ...
        let mmap = [
            0x41, 0x89, 0xca, 0x41, 0xf7, 0xc1, 0xff, 0x0f, 0, 0, 0x75, 0x14,
        ];
        assert_eq!(emulated_probe_offset(&mmap), 10);
        // posix_memalign: cmpb $0x0,disp(%rip); push %r12
        let memalign = [0x80, 0x3d, 1, 2, 0x14, 0, 0, 0x41, 0x54];
        assert_eq!(emulated_probe_offset(&memalign), 7);
        // malloc: push %r12 at the entry.
        assert_eq!(emulated_probe_offset(&[0x41, 0x54, 0x55]), 0);
        // reallocarray: mov %rsi,%rax; mul %rdx clobbers an argument: stay at the entry.
        assert_eq!(
            emulated_probe_offset(&[0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2]),
            0
        );
        // mov %rdi,%rsi writes an argument register.
        assert_eq!(emulated_probe_offset(&[0x48, 0x89, 0xfe, 0x55]), 0);
        // munmap: mov $0xb,%eax; syscall
        assert_eq!(emulated_probe_offset(&[0xb8, 0x0b, 0, 0, 0, 0x0f, 0x05]), 0);
    }

    #[test]
    fn allocator_frames_are_recognized_and_callers_are_not() {
        assert!(is_allocator_frame("malloc"));
        assert!(is_allocator_frame("__libc_calloc"));
        assert!(is_allocator_frame("__GI___libc_malloc"));
        assert!(is_allocator_frame("__GI___mmap64"));
        assert!(is_allocator_frame("operator new(unsigned long)"));
        assert!(!is_allocator_frame("load_model"));
    }
}
