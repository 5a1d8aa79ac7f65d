//! Where things of an ELF file lie in the file, for uprobes, which are placed by file
//! offset, and what identifies a build of it.

use std::{fs, path::Path};

use object::{Object as _, ObjectSegment as _, ReadCache, ReadRef};

/// Where the code at virtual `address` lies in the file, through its loadable segment,
/// and how many of the segment's bytes in the file follow it.
pub fn file_offset<'d, R: ReadRef<'d>>(
    elf: &object::File<'d, R>,
    address: u64,
) -> Option<(u64, u64)> {
    elf.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (start..start + size)
            .contains(&address)
            .then(|| (address - start + offset, start + size - address))
    })
}

/// The file offset of a program's entry point, where it starts once the dynamic loader
/// has mapped its libraries; `None` if it is no ELF file (a script, say).
pub fn entry_file_offset(program: &Path) -> Option<u64> {
    let cache = ReadCache::new(fs::File::open(program).ok()?);
    let elf = object::File::parse(&cache).ok()?;
    file_offset(&elf, elf.entry()).map(|(offset, _)| offset)
}

/// The file's GNU build id, in hex, as `file` and debuginfod spell it.
pub fn build_id(file: &fs::File) -> Option<String> {
    let cache = ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let id = elf.build_id().ok()??;
    Some(id.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_has_an_entry_point_and_a_script_has_none() {
        assert!(entry_file_offset(Path::new("/proc/self/exe")).is_some());
        let script = std::env::temp_dir().join(format!("profiler-script-{}", std::process::id()));
        fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(entry_file_offset(&script), None);
        assert_eq!(build_id(&fs::File::open(&script).unwrap()), None);
        fs::remove_file(script).unwrap();
    }
}
