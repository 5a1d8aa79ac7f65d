//! Completing frame-pointer stacks with the callers of the innermost, frameless functions.
//!
//! A frame-pointer walk finds each caller through the frame the callee set up. gcc
//! leaves that setup out of leaf functions even with `-fno-omit-frame-pointer`, no
//! function has its frame yet in its first instructions, and distribution libraries
//! (Debian's glibc) set up none at all. So a stack that ends in such functions skips
//! their callers: `spin <- worker` instead of `spin <- hot_phase <- worker`, or
//! `clock_nanosleep <- __libc_start_call_main` with `nanosleep` and `main` missing.
//!
//! The BPF side also sends the stack words above the user stack pointer. Here each
//! innermost address is looked up in its binary's `.eh_frame`: while a function's
//! canonical frame address is relative to the stack pointer, the frame pointer still
//! belongs to a caller, and the return address into the caller sits at a known offset
//! in the copied words. Callers are recovered that way, one frameless function after
//! another, until one has its frame, where the frame-pointer walk takes over.

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
use profiler_common::{STACK_TOP_WORDS, Stacks};

use crate::memory_map::MemoryMaps;

/// What the stack needs at one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeafRule {
    /// The function has its frame, or nothing is known: the walk is right as it is.
    Walked,
    /// The function has no frame here: the return address into its caller is
    /// `return_address` words above the stack pointer, and the caller's stack pointer
    /// `caller_stack` words above it.
    Frameless {
        return_address: usize,
        caller_stack: usize,
    },
}

/// Frameless functions recovered per stack at most; more would mean a bad table.
const MAX_RECOVERED: usize = 16;

/// Completes the user stacks of samples; caches what it learns per address and binary.
#[derive(Default)]
pub struct LeafUnwinder {
    rules: HashMap<(u32, u64), LeafRule>,
    binaries: HashMap<PathBuf, Option<UnwindTable>>,
}

impl LeafUnwinder {
    /// The user stack of a thread of process `tgid`, innermost first, with the callers
    /// of frameless innermost functions put back where the frame-pointer walk skipped
    /// them.
    pub fn complete<'s>(
        &mut self,
        maps: &mut MemoryMaps,
        tgid: u32,
        stacks: &'s Stacks,
    ) -> Cow<'s, [u64]> {
        let walked = stacks.user_frames();
        let Some(&leaf) = walked.first() else {
            return Cow::Borrowed(walked);
        };
        let words = stacks.stack_top();
        let mut recovered = Vec::new();
        // The innermost address is where the thread stopped; every caller's is a return
        // address, which is looked up one byte back, in the call.
        let mut lookup = leaf;
        let mut stack_pointer = 0;
        while recovered.len() < MAX_RECOVERED {
            let LeafRule::Frameless {
                return_address,
                caller_stack,
            } = self.rule(maps, tgid, lookup)
            else {
                break;
            };
            let caller = match words.get(stack_pointer + return_address) {
                // A zero word means the copy failed; an equal one means the walk has it.
                Some(&caller) if caller != 0 && walked.get(1) != Some(&caller) => caller,
                _ => break,
            };
            recovered.push(caller);
            lookup = caller - 1;
            stack_pointer += caller_stack;
        }
        if recovered.is_empty() {
            return Cow::Borrowed(walked);
        }
        let mut completed = Vec::with_capacity(walked.len() + recovered.len());
        completed.push(leaf);
        completed.extend(recovered);
        completed.extend_from_slice(&walked[1..]);
        completed.truncate(profiler_common::MAX_STACK_DEPTH);
        Cow::Owned(completed)
    }

    fn rule(&mut self, maps: &mut MemoryMaps, tgid: u32, address: u64) -> LeafRule {
        if let Some(rule) = self.rules.get(&(tgid, address)) {
            return *rule;
        }
        match self.rule_for(maps, tgid, address) {
            Some(rule) => {
                self.rules.insert((tgid, address), rule);
                rule
            }
            // Not mapped as far as we know yet (the process may have just exec'd):
            // leave the stack as walked, and look again at the next sample.
            None => LeafRule::Walked,
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
        let words = |bytes: i64| usize::try_from(bytes / 8).ok();
        match (words(*offset + return_address), words(*offset)) {
            (Some(return_address), Some(caller_stack)) if return_address < STACK_TOP_WORDS => {
                LeafRule::Frameless {
                    return_address,
                    caller_stack,
                }
            }
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
            LeafRule::Frameless {
                return_address: 0,
                caller_stack: 1
            }
        );
    }

    #[test]
    fn the_walked_caller_is_not_added_twice_and_a_missing_one_is_added() {
        // SAFETY: all-zero is a valid Stacks.
        let mut stacks: Stacks = unsafe { std::mem::zeroed() };
        let tgid = std::process::id();
        let entry = a_function as *const () as u64;
        stacks.user[..2].copy_from_slice(&[entry, 0x1000]);
        stacks.user_bytes = 16;
        stacks.stack_top[0] = 0x2000;
        stacks.stack_top_bytes = 8;
        let mut unwinder = LeafUnwinder::default();
        let mut maps = MemoryMaps::default();
        assert_eq!(
            &*unwinder.complete(&mut maps, tgid, &stacks),
            &[entry, 0x2000, 0x1000]
        );
        stacks.stack_top[0] = 0x1000;
        assert_eq!(
            &*unwinder.complete(&mut maps, tgid, &stacks),
            &[entry, 0x1000]
        );
        // The stack words could not be read: nothing to add.
        stacks.stack_top_bytes = 0;
        assert_eq!(
            &*unwinder.complete(&mut maps, tgid, &stacks),
            &[entry, 0x1000]
        );
    }
}
