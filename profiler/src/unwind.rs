//! Completing frame-pointer stacks with the caller of the innermost function.
//!
//! A frame-pointer walk finds each caller through the frame the callee set up. gcc
//! leaves that setup out of leaf functions even with `-fno-omit-frame-pointer`, and no
//! function has its frame yet in its first instructions, so a sample there skips the
//! innermost function's caller: `spin <- worker` instead of `spin <- hot_phase <- worker`.
//!
//! The BPF side also sends the user stack pointer and the stack words above it. Here the
//! innermost address is looked up in its binary's `.eh_frame`: where the function's
//! canonical frame address is still relative to the stack pointer, the frame pointer
//! belongs to the caller, and the return address into the caller sits at a known offset
//! above the stack pointer. It is read from the copied words and put back into the stack.

use std::{
    borrow::Cow,
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, LittleEndian, RegisterRule, UnwindContext, UnwindSection as _,
    X86_64,
};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ReadCache};
use profiler_common::{CpuSample, STACK_TOP_WORDS};

use crate::memory_map::MemoryMaps;

/// What the stack needs at one innermost address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeafRule {
    /// The function has its frame, or nothing is known: the walk is right as it is.
    Walked,
    /// The return address into the caller is this many words above the stack pointer.
    ReturnAddressAt(usize),
}

/// Completes the user stacks of samples; caches what it learns per address and binary.
#[derive(Default)]
pub struct LeafUnwinder {
    rules: HashMap<(u32, u64), LeafRule>,
    binaries: HashMap<PathBuf, Option<UnwindTable>>,
}

impl LeafUnwinder {
    /// The sample's user stack, innermost first, with the innermost function's caller
    /// put back where the frame-pointer walk skipped it.
    pub fn complete<'s>(&mut self, maps: &mut MemoryMaps, sample: &'s CpuSample) -> Cow<'s, [u64]> {
        let walked = sample.user_frames();
        let Some(&leaf) = walked.first() else {
            return Cow::Borrowed(walked);
        };
        let rule = match self.rules.get(&(sample.tgid, leaf)) {
            Some(rule) => *rule,
            None => match self.rule_for(maps, sample.tgid, leaf) {
                Some(rule) => {
                    self.rules.insert((sample.tgid, leaf), rule);
                    rule
                }
                // Not mapped as far as we know yet (the process may have just exec'd):
                // leave the stack as walked, and look again at the next sample.
                None => LeafRule::Walked,
            },
        };
        let caller = match rule {
            LeafRule::ReturnAddressAt(index) => sample.stack_top().get(index).copied(),
            LeafRule::Walked => None,
        };
        match caller {
            // A zero word means the copy failed; an equal one means the walk has it.
            Some(caller) if caller != 0 && walked.get(1) != Some(&caller) => {
                let mut completed = Vec::with_capacity(walked.len() + 1);
                completed.push(leaf);
                completed.push(caller);
                completed.extend_from_slice(&walked[1..]);
                completed.truncate(profiler_common::MAX_STACK_DEPTH);
                Cow::Owned(completed)
            }
            _ => Cow::Borrowed(walked),
        }
    }

    /// The rule at `address`, or None while no mapping is known to hold it.
    fn rule_for(&mut self, maps: &mut MemoryMaps, tgid: u32, address: u64) -> Option<LeafRule> {
        maps.observe(tgid, &[address]);
        let mapping = maps.mapping(tgid, address)?;
        let Some(path) = mapping.path.clone() else {
            return Some(LeafRule::Walked); // JIT code has no .eh_frame to read.
        };
        let file_offset = mapping.file_offset_of(address);
        let table = self.binaries.entry(path).or_insert_with_key(|path| {
            // Through the process's root, so that containers' files are found.
            let root = format!("/proc/{tgid}/root");
            UnwindTable::read(&Path::new(&root).join(path.strip_prefix("/").unwrap_or(path)))
        });
        Some(
            table
                .as_ref()
                .map_or(LeafRule::Walked, |table| table.rule_at(file_offset)),
        )
    }
}

/// The parts of an ELF file that unwinding needs.
struct UnwindTable {
    eh_frame: Vec<u8>,
    bases: BaseAddresses,
    /// (file offset, file size, virtual address) of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
}

impl UnwindTable {
    fn read(path: &Path) -> Option<UnwindTable> {
        // Read lazily: a large binary (a GPU library can be a gigabyte) is not read whole
        // for its .eh_frame.
        let cache = ReadCache::new(fs::File::open(path).ok()?);
        let file = object::File::parse(&cache).ok()?;
        let section_address =
            |name: &str| file.section_by_name(name).map(|section| section.address());
        let eh_frame = file.section_by_name(".eh_frame")?;
        let mut bases = BaseAddresses::default().set_eh_frame(eh_frame.address());
        if let Some(text) = section_address(".text") {
            bases = bases.set_text(text);
        }
        if let Some(got) = section_address(".got") {
            bases = bases.set_got(got);
        }
        Some(UnwindTable {
            eh_frame: eh_frame.data().ok()?.to_vec(),
            bases,
            segments: file
                .segments()
                .map(|segment| {
                    let (offset, size) = segment.file_range();
                    (offset, size, segment.address())
                })
                .collect(),
        })
    }

    fn rule_at(&self, file_offset: u64) -> LeafRule {
        let Some(address) = self
            .segments
            .iter()
            .find(|(offset, size, _)| (*offset..offset + size).contains(&file_offset))
            .map(|(offset, _, address)| file_offset - offset + address)
        else {
            return LeafRule::Walked;
        };
        let eh_frame = EhFrame::new(&self.eh_frame, LittleEndian);
        let mut context = UnwindContext::new();
        let Ok(row) = eh_frame.unwind_info_for_address(
            &self.bases,
            &mut context,
            address,
            EhFrame::cie_from_offset,
        ) else {
            return LeafRule::Walked;
        };
        let CfaRule::RegisterAndOffset { register, offset } = row.cfa() else {
            return LeafRule::Walked;
        };
        if *register != X86_64::RSP {
            return LeafRule::Walked; // CFA from the frame pointer: the frame is set up.
        }
        let Some(RegisterRule::Offset(return_address)) = row.register(X86_64::RA) else {
            return LeafRule::Walked;
        };
        let index = (offset + return_address) / 8;
        match usize::try_from(index) {
            Ok(index) if index < STACK_TOP_WORDS => LeafRule::ReturnAddressAt(index),
            _ => LeafRule::Walked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function() -> u64 {
        std::hint::black_box(7)
    }

    #[test]
    fn at_a_functions_first_instruction_the_return_address_is_on_top_of_the_stack() {
        let entry = a_function as *const () as u64;
        let pid = std::process::id();
        let mut maps = MemoryMaps::default();
        maps.observe(pid, &[entry]);
        let mapping = maps.mapping(pid, entry).unwrap();
        let table = UnwindTable::read(Path::new("/proc/self/exe")).unwrap();
        assert_eq!(
            table.rule_at(mapping.file_offset_of(entry)),
            LeafRule::ReturnAddressAt(0)
        );
    }

    #[test]
    fn the_walked_caller_is_not_added_twice_and_a_missing_one_is_added() {
        let mut sample: CpuSample = unsafe { std::mem::zeroed() };
        sample.tgid = std::process::id();
        let entry = a_function as *const () as u64;
        sample.user_stack[..2].copy_from_slice(&[entry, 0x1000]);
        sample.user_stack_bytes = 16;
        sample.stack_top[0] = 0x2000;
        sample.stack_top_bytes = 8;
        let mut unwinder = LeafUnwinder::default();
        let mut maps = MemoryMaps::default();
        assert_eq!(
            &*unwinder.complete(&mut maps, &sample),
            &[entry, 0x2000, 0x1000]
        );
        sample.stack_top[0] = 0x1000;
        assert_eq!(&*unwinder.complete(&mut maps, &sample), &[entry, 0x1000]);
        // Interrupted in the kernel: no stack words, nothing to add.
        sample.stack_top_bytes = 0;
        assert_eq!(&*unwinder.complete(&mut maps, &sample), &[entry, 0x1000]);
    }
}
