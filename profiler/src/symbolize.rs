//! Turning raw instruction pointers into function names, with blazesym.
//!
//! User addresses are only meaningful against the process's memory map at the time of
//! the sample, and the process may have exited, or live in another mount namespace, by
//! the time names are looked up at the end. So while recording,
//! [`Symbolizer::keep_files`] opens every file a target maps through the target's own
//! view of it (`/proc/PID/map_files`) whenever [`crate::memory_map`] reads the map
//! again, and keeps it open. At the end each file's addresses are looked up in that
//! file, one file at a time: a file that cannot be read or parsed costs its own frames,
//! never a whole process's.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::{fd::AsRawFd as _, unix::fs::FileExt as _},
    path::Path,
    sync::{Arc, OnceLock},
};

use blazesym::symbolize::{
    self as blaze, Input, Symbolized,
    source::{Elf, Kernel, Source},
};
use object::{Object as _, ObjectSymbol as _, ReadCache};
use smallvec::SmallVec;

use crate::{
    aggregate::{StackCounts, StackKey},
    elf,
    memory_map::{FileId, Mapping, MemoryMaps, read_mappings},
    profile::{
        Frame, Language, LockState, ObjectFile, Origin, Profile, ProfileBuilder, SourceFunction,
        Stack,
    },
    runtime::{self, go, perf_map::PerfMaps, python},
};

const UNKNOWN: &str = "[unknown]";

/// Why a user address got no name, as the report counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unnamed {
    /// Outside every mapping known for its process.
    UnknownMapping,
    /// In anonymous memory (JIT code) with no perf map naming it.
    AnonymousMemory,
    /// Its file could not be opened, read or parsed.
    UnreadableFile,
    /// Its file has no symbol covering it.
    NoSymbol,
}

impl Unnamed {
    /// The reason as the report names it.
    pub fn name(self) -> &'static str {
        match self {
            Unnamed::UnknownMapping => "unknown_mapping",
            Unnamed::AnonymousMemory => "anonymous_memory",
            Unnamed::UnreadableFile => "unreadable_file",
            Unnamed::NoSymbol => "no_symbol",
        }
    }
}

/// What a user address is named: its functions, outermost inlined first, and its file.
#[derive(Debug)]
struct UserNames {
    functions: Vec<String>,
    object: Option<Arc<ObjectFile>>,
    /// The language of the code, where a runtime's (Go's, a JIT's) rather than native.
    language: Option<Language>,
}

impl UserNames {
    fn unfiled(functions: Vec<String>) -> Self {
        UserNames {
            functions,
            object: None,
            language: None,
        }
    }
}

/// The names of the addresses of a set of stacks, from [`Symbolizer::resolve_new`].
#[derive(Debug, Default)]
pub struct Names {
    user: foldhash::HashMap<(u32, u64), UserNames>,
    kernel: HashMap<u64, Vec<String>>,
    /// The Python functions stacks refer to, by [`python::PythonFrameRef::function`].
    python: Vec<SourceFunction>,
    /// What the interpreter's native frames become in stacks with Python frames.
    python_view: python::PythonView,
    /// Distinct user addresses without a name, by reason.
    pub unnamed: BTreeMap<Unnamed, u64>,
}

impl Names {
    fn count_unnamed(&mut self, reason: Unnamed) {
        *self.unnamed.entry(reason).or_default() += 1;
    }

    /// Adds the names of `other`, which were looked up later (its Python functions,
    /// a longer list of the same, replace these).
    pub fn merge(&mut self, other: Names) {
        self.user.extend(other.user);
        self.kernel.extend(other.kernel);
        self.python = other.python;
        self.python_view = other.python_view;
        for (reason, count) in other.unnamed {
            *self.unnamed.entry(reason).or_default() += count;
        }
    }

    /// Names the Python frames of stacks with `functions`, and shows them in `view`.
    pub fn with_python(self, functions: Vec<SourceFunction>, view: python::PythonView) -> Self {
        Names {
            python: functions,
            python_view: view,
            ..self
        }
    }

    /// The named frames of a stack, root first, user frames below kernel frames, with
    /// inlined functions as frames of their own, and Python frames in place of the
    /// interpreter's frames that ran them.
    pub fn frames(&self, key: &StackKey) -> Vec<Frame> {
        self.placed_frames(key)
            .into_iter()
            .map(|(frame, _)| frame)
            .collect()
    }

    /// [`Names::frames`], each with the source line it was running (0 for none).
    fn placed_frames(&self, key: &StackKey) -> Vec<(Frame, u32)> {
        let unplaced = |frames: Vec<Frame>| -> Vec<(Frame, u32)> {
            frames.into_iter().map(|frame| (frame, 0)).collect()
        };
        let native: Vec<Vec<(Frame, u32)>> = lookup_addresses(&key.user)
            .rev()
            .map(|address| unplaced(self.user_frames(key.tgid, address)))
            .collect();
        let stand_ins = self.python_view.stand_ins(
            (Frame::native(python::COLLECTOR_FRAME, false), 0),
            || (Frame::source(python::unknown_function()), 0),
            || (Frame::native(python::GIL_WAIT_FRAME, false), 0),
        );
        let mut frames = python::interleave(
            native,
            &key.python,
            |frame| {
                let function = &self.python[frame.function as usize];
                (Frame::source(function.clone()), frame.line)
            },
            |(frame, _)| self.python_view.role(frame),
            &stand_ins,
            key.native_complete,
        );
        frames.extend(
            lookup_addresses(&key.kernel)
                .rev()
                .flat_map(|address| unplaced(self.kernel_frames(address))),
        );
        if key.lock == Some(LockState::Waiting) {
            python::end_at_gil_wait(&mut frames, |(frame, _)| frame.source.is_some(), &stand_ins);
        }
        frames
    }

    /// The frames at user address `address` of process `tgid`, root first (inlined
    /// functions are frames of their own).
    fn user_frames(&self, tgid: u32, address: u64) -> Vec<Frame> {
        match self.user.get(&(tgid, address)) {
            Some(names) => named_frames(Some(&names.functions), false)
                .into_iter()
                .map(|frame| {
                    let source = names
                        .language
                        .and_then(|language| runtime::source_function(language, &frame.name));
                    Frame {
                        object: names.object.clone(),
                        ..match source {
                            Some(source) => Frame::source(source),
                            None => frame,
                        }
                    }
                })
                .collect(),
            None => named_frames(None, false),
        }
    }

    /// The frames at kernel address `address`, root first.
    fn kernel_frames(&self, address: u64) -> Vec<Frame> {
        named_frames(self.kernel.get(&address), true)
    }

    /// The named frames of a stack captured by a tracepoint program, without the
    /// kernel's tracing frames (and the program itself) at its inner end: they are the
    /// profiler looking, not the thread's work.
    pub fn frames_below_tracepoint(&self, key: &StackKey) -> Vec<Frame> {
        self.placed_frames_below_tracepoint(key)
            .into_iter()
            .map(|(frame, _)| frame)
            .collect()
    }

    fn placed_frames_below_tracepoint(&self, key: &StackKey) -> Vec<(Frame, u32)> {
        let mut frames = self.placed_frames(key);
        if let Some(hook) = frames
            .iter()
            .position(|(frame, _)| frame.kernel && is_tracing_frame(&frame.name))
        {
            frames.truncate(hook);
        }
        frames
    }

    /// The named, weighted stacks of `counts`, as [`Names::frames`] or, for stacks
    /// captured by a tracepoint program, [`Names::frames_below_tracepoint`] names them.
    /// When the stacks come from several processes, each starts at its process's root
    /// frame, named from `process_names`, as `perf script` tells them apart.
    pub fn profile(
        &self,
        counts: &StackCounts,
        captured: Capture,
        process_names: &HashMap<u32, String>,
    ) -> Profile {
        let several = from_several_processes(counts);
        let mut profile = ProfileBuilder::default();
        for (key, weight) in counts.stacks() {
            let frames = match captured {
                Capture::Sampled => self.placed_frames(key),
                Capture::AtTracepoint => self.placed_frames_below_tracepoint(key),
            };
            let root = several.then(|| (process_root(key.tgid, process_names), 0));
            profile.push_placed(
                origin(key),
                key.lock,
                root.into_iter().chain(frames),
                weight,
            );
        }
        profile.build()
    }
}

/// Whether the stacks of `counts` come from more than one process.
fn from_several_processes(counts: &StackCounts) -> bool {
    let mut processes = counts.stacks().map(|(key, _)| key.tgid);
    let first = processes.next();
    processes.any(|tgid| Some(tgid) != first)
}

/// The root frame of process `tgid`'s stacks in a profile of several processes.
fn process_root(tgid: u32, process_names: &HashMap<u32, String>) -> Frame {
    let name = process_names.get(&tgid).map_or("?", String::as_str);
    Frame::process(tgid, name)
}

/// Where a stack was recorded.
fn origin(key: &StackKey) -> Origin {
    Origin {
        pid: Some(key.tgid),
        tid: (key.tid != 0).then_some(key.tid),
    }
}

/// The frame ids of one address, root first: one, or one per inlined function.
type FrameIds = SmallVec<[usize; 2]>;

/// CPU stacks named once each, for the live views, which make profiles of the same
/// stacks every few seconds: each stack is kept as indices into a table of distinct
/// frames, so a profile of any counts is built without naming a stack or hashing a
/// frame again. Each address's frames and each Python function's frame are named and
/// interned once too, since a Python service shows a new stack in most samples, built of
/// frames seen before. Naming every stack so far at each refresh was most of the
/// load-test mode's steady cost.
#[derive(Debug, Default)]
pub struct NamedStacks {
    names: Names,
    frames: Vec<Frame>,
    /// What the Python merge makes of each of `frames`.
    roles: Vec<python::NativeRole>,
    /// The interpreters [`NamedStacks::roles`] were found with.
    roles_interpreters: usize,
    frame_ids: foldhash::HashMap<Frame, usize>,
    user_frames: foldhash::HashMap<(u32, u64), FrameIds>,
    kernel_frames: foldhash::HashMap<u64, FrameIds>,
    python_frames: foldhash::HashMap<u32, usize>,
    /// Each stack's frame ids with the source line each was running (0 for none).
    stacks: foldhash::HashMap<StackKey, Vec<(usize, u32)>>,
}

impl NamedStacks {
    /// The names of every address named so far.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The names of every address named so far, for naming other stacks.
    pub fn into_names(self) -> Names {
        self.names
    }

    /// Whether stack `key` is named.
    pub fn has(&self, key: &StackKey) -> bool {
        self.stacks.contains_key(key)
    }

    /// Names `keys`, new stacks sampled on the CPU, with `names`, which hold the names
    /// of their addresses that [`NamedStacks::names`] did not.
    pub fn add(&mut self, names: Names, keys: Vec<StackKey>) {
        self.names.merge(names);
        // A frame seen before its process's interpreter was found is the interpreter's
        // all the same.
        if self.names.python_view.interpreters() != self.roles_interpreters {
            self.roles_interpreters = self.names.python_view.interpreters();
            let view = &self.names.python_view;
            self.roles = self.frames.iter().map(|frame| view.role(frame)).collect();
        }
        let collector = self.intern(Frame::native(python::COLLECTOR_FRAME, false));
        let unknown_python = self.intern(Frame::source(python::unknown_function()));
        let gil_wait = self.intern(Frame::native(python::GIL_WAIT_FRAME, false));
        let stand_ins = self.names.python_view.stand_ins(
            (collector, 0),
            || (unknown_python, 0),
            || (gil_wait, 0),
        );
        let unplaced = |ids: FrameIds| -> SmallVec<[(usize, u32); 2]> {
            ids.into_iter().map(|id| (id, 0)).collect()
        };
        for key in keys {
            let native: Vec<SmallVec<[(usize, u32); 2]>> = lookup_addresses(&key.user)
                .rev()
                .map(|address| unplaced(self.user_frame_ids(key.tgid, address)))
                .collect();
            for frame in &key.python {
                self.python_frame_id(frame.function);
            }
            let mut frames = python::interleave(
                native,
                &key.python,
                |frame| (self.python_frames[&frame.function], frame.line),
                |&(id, _)| self.roles[id],
                &stand_ins,
                key.native_complete,
            );
            for address in lookup_addresses(&key.kernel).rev() {
                frames.extend(unplaced(self.kernel_frame_ids(address)));
            }
            if key.lock == Some(LockState::Waiting) {
                let is_python = |&(id, _): &(usize, u32)| self.frames[id].source.is_some();
                python::end_at_gil_wait(&mut frames, is_python, &stand_ins);
            }
            self.stacks.insert(key, frames);
        }
    }

    fn intern(&mut self, frame: Frame) -> usize {
        if let Some(&id) = self.frame_ids.get(&frame) {
            return id;
        }
        let id = self.frames.len();
        self.roles.push(self.names.python_view.role(&frame));
        self.frame_ids.insert(frame.clone(), id);
        self.frames.push(frame);
        id
    }

    fn user_frame_ids(&mut self, tgid: u32, address: u64) -> FrameIds {
        if let Some(ids) = self.user_frames.get(&(tgid, address)) {
            return ids.clone();
        }
        let frames = self.names.user_frames(tgid, address);
        let ids: FrameIds = frames.into_iter().map(|frame| self.intern(frame)).collect();
        self.user_frames.insert((tgid, address), ids.clone());
        ids
    }

    fn kernel_frame_ids(&mut self, address: u64) -> FrameIds {
        if let Some(ids) = self.kernel_frames.get(&address) {
            return ids.clone();
        }
        let frames = self.names.kernel_frames(address);
        let ids: FrameIds = frames.into_iter().map(|frame| self.intern(frame)).collect();
        self.kernel_frames.insert(address, ids.clone());
        ids
    }

    fn python_frame_id(&mut self, function: u32) {
        if !self.python_frames.contains_key(&function) {
            let frame = Frame::source(self.names.python[function as usize].clone());
            let id = self.intern(frame);
            self.python_frames.insert(function, id);
        }
    }

    /// The profile of `counts`, as [`Names::profile`] makes it of CPU samples, holding
    /// only the frames its stacks use.
    pub fn profile(&self, counts: &StackCounts, process_names: &HashMap<u32, String>) -> Profile {
        let several = from_several_processes(counts);
        let mut profile = Profile::default();
        let mut in_profile = vec![usize::MAX; self.frames.len()];
        let mut roots: HashMap<u32, usize> = HashMap::new();
        for (key, weight) in counts.stacks() {
            let named = self.stacks.get(key).map_or(&[][..], Vec::as_slice);
            let mut frames = Vec::with_capacity(named.len() + 1);
            let mut lines = Vec::new();
            if several {
                frames.push(*roots.entry(key.tgid).or_insert_with(|| {
                    profile.frames.push(process_root(key.tgid, process_names));
                    profile.frames.len() - 1
                }));
            }
            for &(id, _) in named {
                if in_profile[id] == usize::MAX {
                    in_profile[id] = profile.frames.len();
                    profile.frames.push(self.frames[id].clone());
                }
                frames.push(in_profile[id]);
            }
            if named.iter().any(|&(_, line)| line != 0) {
                lines.extend(several.then_some(0));
                lines.extend(named.iter().map(|&(_, line)| line));
            }
            profile.stacks.push(Stack {
                frames,
                lines,
                count: weight,
                origin: origin(key),
                lock: key.lock,
            });
        }
        profile
    }
}

/// Where stacks were captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// By a sampling interrupt: every frame is the thread's.
    Sampled,
    /// In a tracepoint program, which sits on top of the kernel's tracing frames.
    AtTracepoint,
}

/// The kernel functions between a tracepoint and the BPF program run from it.
fn is_tracing_frame(name: &str) -> bool {
    const PREFIXES: [&str; 6] = [
        "__traceiter_",
        "__bpf_trace_",
        "perf_trace_",
        "bpf_trace_run",
        "trace_call_bpf",
        "bpf_prog_",
    ];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The addresses of one file to name, as (process, address) and as file offsets.
struct FileLookup<'m> {
    mapping: &'m Mapping,
    addresses: Vec<(u32, u64)>,
    offsets: Vec<u64>,
}

/// Resolves the addresses of the target processes and the kernel.
pub struct Symbolizer {
    blazesym: blaze::Symbolizer,
    /// Every file a target mapped, open, by identity.
    files: HashMap<FileId, KeptFile>,
    /// The kernel's vDSO's function symbols, by address; the same in every process.
    vdso: Vec<(u64, u64, String)>,
    /// The JIT runtimes' perf maps, kept open.
    perf_maps: PerfMaps,
}

/// A file a target mapped, kept open.
struct KeptFile {
    file: fs::File,
    /// Read at its first lookup and kept: reading it at every lookup, each live view's,
    /// took a twentieth of the profiler's steady time on a Python service.
    build_id: OnceLock<Option<String>>,
    /// A Go binary's own function names, read at its first lookup; `None` for other
    /// files.
    go_names: OnceLock<Option<go::FunctionNames>>,
    /// The language of the file's code, where a runtime's: read at its first lookup.
    language: OnceLock<Option<Language>>,
}

impl KeptFile {
    fn new(file: fs::File) -> Self {
        KeptFile {
            file,
            build_id: OnceLock::new(),
            go_names: OnceLock::new(),
            language: OnceLock::new(),
        }
    }

    fn language(&self) -> Option<Language> {
        *self.language.get_or_init(|| {
            let cache = ReadCache::new(&self.file);
            let file = object::File::parse(&cache).ok()?;
            go::is_go_binary(&file).then_some(Language::Go)
        })
    }

    fn go_names(&self) -> Option<&go::FunctionNames> {
        self.go_names
            .get_or_init(|| {
                self.language()?;
                let cache = ReadCache::new(&self.file);
                go::FunctionNames::read(&object::File::parse(&cache).ok()?)
            })
            .as_ref()
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A symbolizer that demangles names and reports inlined functions.
    pub fn new() -> Self {
        Symbolizer {
            blazesym: blaze::Symbolizer::builder()
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
            files: HashMap::new(),
            vdso: own_vdso_symbols().unwrap_or_default(),
            perf_maps: PerfMaps::default(),
        }
    }

    /// Opens the files of `mappings` of process `tgid` that are not open yet, so that
    /// their addresses can be named after the process exits, from whatever mount
    /// namespace it runs in.
    pub fn keep_files(&mut self, tgid: u32, mappings: &[Mapping]) {
        if mappings
            .iter()
            .any(|mapping| mapping.file.is_none() && !mapping.vdso)
        {
            self.perf_maps.keep(tgid);
        }
        // A runtime that writes a jitdump file maps it executable, for perf to find.
        let jitdump = mappings.iter().find(|mapping| {
            mapping
                .path
                .as_deref()
                .and_then(Path::file_name)
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("jit-") && name.ends_with(".dump"))
        });
        if let Some(file) = jitdump.and_then(|mapping| mapping.open(tgid).ok()) {
            self.perf_maps.keep_jitdump(tgid, file);
        }
        for mapping in mappings {
            let (Some(id), Some(_)) = (&mapping.file, &mapping.path) else {
                continue;
            };
            if self.files.contains_key(id) {
                continue;
            }
            if let Ok(file) = mapping.open(tgid) {
                self.files.insert(id.clone(), KeptFile::new(file));
            }
        }
    }

    /// Looks up the names of the addresses in `stacks` that `known` does not name (most
    /// frames of a new stack were named with an earlier one), all at once, each file's
    /// addresses together, so that each source (a binary, kallsyms) is read once.
    pub fn resolve_new<'k>(
        &mut self,
        maps: &MemoryMaps,
        stacks: impl IntoIterator<Item = &'k StackKey>,
        known: &Names,
    ) -> Names {
        let mut user_addresses: Vec<(u32, u64)> = Vec::new();
        let mut kernel_addresses = Vec::new();
        for key in stacks {
            user_addresses.extend(lookup_addresses(&key.user).map(|address| (key.tgid, address)));
            kernel_addresses.extend(lookup_addresses(&key.kernel));
        }
        user_addresses.sort_unstable();
        user_addresses.dedup();
        user_addresses.retain(|address| !known.user.contains_key(address));
        kernel_addresses.retain(|address| !known.kernel.contains_key(address));

        let mut names = Names::default();
        let mut by_file: HashMap<&FileId, FileLookup<'_>> = HashMap::new();
        let mut anonymous: HashMap<u32, Vec<u64>> = HashMap::new();
        for &(tgid, address) in &user_addresses {
            match maps.mapping(tgid, address) {
                Some(mapping) if mapping.vdso => {
                    let name = self.vdso_name(mapping.file_offset_of(address));
                    if name.is_none() {
                        names.count_unnamed(Unnamed::NoSymbol);
                    }
                    let frame = name.unwrap_or_else(|| "[vdso]".to_owned());
                    names
                        .user
                        .insert((tgid, address), UserNames::unfiled(vec![frame]));
                }
                Some(mapping) => match &mapping.file {
                    Some(id) => {
                        let lookup = by_file.entry(id).or_insert_with(|| FileLookup {
                            mapping,
                            addresses: Vec::new(),
                            offsets: Vec::new(),
                        });
                        lookup.addresses.push((tgid, address));
                        lookup.offsets.push(mapping.file_offset_of(address));
                    }
                    None => anonymous.entry(tgid).or_default().push(address),
                },
                None => names.count_unnamed(Unnamed::UnknownMapping),
            }
        }
        for (id, lookup) in by_file {
            let looked_up = self.file_names(id, &lookup.offsets);
            let language = self.files.get(id).and_then(KeptFile::language);
            let object = lookup.mapping.path.as_ref().map(|path| {
                Arc::new(ObjectFile {
                    path: path.to_string_lossy().into_owned(),
                    build_id: self.files.get(id).and_then(|kept| {
                        kept.build_id
                            .get_or_init(|| elf::build_id(&kept.file))
                            .clone()
                    }),
                })
            });
            for (index, &(tgid, address)) in lookup.addresses.iter().enumerate() {
                let found = match &looked_up {
                    Some(found) => found[index].clone().ok_or(Unnamed::NoSymbol),
                    None => Err(Unnamed::UnreadableFile),
                };
                let frames = found.unwrap_or_else(|reason| {
                    names.count_unnamed(reason);
                    vec![file_label(lookup.mapping)]
                });
                let names_of_address = UserNames {
                    functions: frames,
                    object: object.clone(),
                    language,
                };
                names.user.insert((tgid, address), names_of_address);
            }
        }
        for (tgid, addresses) in anonymous {
            let found = self.perf_maps.names(tgid, &addresses);
            let unnamed = found.iter().filter(|name| name.is_none()).count() as u64;
            if unnamed > 0 {
                let hint = runtime::perf_map_hint(maps.mappings(tgid));
                self.perf_maps.count_unnamed(tgid, unnamed, hint);
            }
            for (address, found) in addresses.iter().zip(found) {
                let Some(name) = found else {
                    names.count_unnamed(Unnamed::AnonymousMemory);
                    let unnamed = UserNames::unfiled(vec![UNKNOWN.to_owned()]);
                    names.user.insert((tgid, *address), unnamed);
                    continue;
                };
                let language = Language::ALL.into_iter().find(|&language| {
                    language.is_jit() && runtime::source_function(language, &name).is_some()
                });
                let jit = UserNames {
                    language,
                    ..UserNames::unfiled(vec![name])
                };
                names.user.insert((tgid, *address), jit);
            }
        }

        kernel_addresses.sort_unstable();
        kernel_addresses.dedup();
        let kernel_source = Kernel {
            // kallsyms has every function; a vmlinux search is slow and rarely succeeds.
            vmlinux: blazesym::MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        };
        let kernel_names = self.names(&Source::Kernel(kernel_source), &kernel_addresses);
        names.kernel = kernel_addresses
            .into_iter()
            .zip(kernel_names)
            .filter_map(|(address, found)| Some((address, found?)))
            .collect();
        names
    }

    /// Names of a file's addresses, given as file offsets: `None` if the file could not
    /// be read or parsed, and `None` in place of an offset it has no symbol for.
    ///
    /// An address between functions is looked up once more a byte further: a signal
    /// trampoline's return address is its first instruction, and one byte back, where
    /// return addresses are looked up, lies the padding before it.
    fn file_names(&self, id: &FileId, offsets: &[u64]) -> Option<Vec<Option<Vec<String>>>> {
        let file = &self.files.get(id)?.file;
        // blazesym reads files by path; this one is the kept descriptor.
        let source = Source::Elf(Elf::new(format!("/proc/self/fd/{}", file.as_raw_fd())));
        let lookup = |offsets: &[u64]| -> Option<Vec<Option<Vec<String>>>> {
            let symbolized = self
                .blazesym
                .symbolize(&source, Input::FileOffset(offsets))
                .ok()?;
            Some(symbolized.into_iter().map(symbol_names).collect())
        };
        // A Go binary's function table names its functions and the calls inlined into
        // them, stripped or not; blazesym names the rest (cgo's C code).
        let go_names = self.files.get(id).and_then(KeptFile::go_names);
        let mut found: Vec<Option<Vec<String>>> = match go_names {
            Some(go_names) => offsets
                .iter()
                .map(|&offset| go_names.at_file_offset(offset))
                .collect(),
            None => vec![None; offsets.len()],
        };
        // At the offset, then a byte further (see above). A file blazesym cannot read
        // is unreadable, unless the function table named its addresses.
        for (step, needed) in [(0, go_names.is_none()), (1, false)] {
            let unnamed: Vec<usize> = (0..offsets.len()).filter(|&i| found[i].is_none()).collect();
            if unnamed.is_empty() {
                break;
            }
            let at: Vec<u64> = unnamed.iter().map(|&i| offsets[i] + step).collect();
            let names = match lookup(&at) {
                Some(names) => names,
                None if needed => return None,
                None => break,
            };
            for (index, names) in unnamed.into_iter().zip(names) {
                found[index] = names;
            }
        }
        Some(found)
    }

    /// Names for each address, outermost inlined function first; `None` where the
    /// source has none, or could not be read.
    fn names(&self, source: &Source<'_>, addresses: &[u64]) -> Vec<Option<Vec<String>>> {
        if addresses.is_empty() {
            // Loading a source, kallsyms above all, costs tens of milliseconds.
            return Vec::new();
        }
        match self.blazesym.symbolize(source, Input::AbsAddr(addresses)) {
            Ok(symbols) => symbols.into_iter().map(symbol_names).collect(),
            Err(_) => vec![None; addresses.len()],
        }
    }

    /// One line per process whose JIT code went unnamed, with what its runtime needs.
    pub fn jit_hints(&self) -> Vec<String> {
        self.perf_maps.hints()
    }

    /// The vDSO function holding `offset`.
    fn vdso_name(&self, offset: u64) -> Option<String> {
        let index = self.vdso.partition_point(|(start, _, _)| *start <= offset);
        let (start, size, name) = self.vdso.get(index.checked_sub(1)?)?;
        (offset < start + (*size).max(1)).then(|| name.clone())
    }
}

/// The names blazesym found for one address, outermost inlined function first.
fn symbol_names(symbolized: Symbolized<'_>) -> Option<Vec<String>> {
    match symbolized {
        Symbolized::Sym(symbol) if !symbol.name.is_empty() => Some(
            std::iter::once(symbol.name.into_owned())
                .chain(
                    symbol
                        .inlined
                        .iter()
                        .map(|inlined| inlined.name.to_string()),
                )
                .collect(),
        ),
        Symbolized::Sym(_) | Symbolized::Unknown(_) => None,
    }
}

/// What an unnamed address in a file is called: the file's name in brackets, as perf
/// shows it.
fn file_label(mapping: &Mapping) -> String {
    let name = mapping
        .path
        .as_deref()
        .and_then(Path::file_name)
        .map_or_else(|| UNKNOWN.into(), |name| name.to_string_lossy());
    format!("[{name}]")
}

/// The function symbols of this process's vDSO, which the kernel maps identically into
/// every process, as (offset, size, name) sorted by offset.
fn own_vdso_symbols() -> Option<Vec<(u64, u64, String)>> {
    let mapping = read_mappings(std::process::id())
        .ok()?
        .into_iter()
        .find(|mapping| mapping.vdso)?;
    let mut image = vec![0; (mapping.range.end - mapping.range.start) as usize];
    fs::File::open("/proc/self/mem")
        .ok()?
        .read_exact_at(&mut image, mapping.range.start)
        .ok()?;
    let file = object::File::parse(&*image).ok()?;
    let mut symbols: Vec<(u64, u64, String)> = file
        .dynamic_symbols()
        .filter(|symbol| symbol.kind() == object::SymbolKind::Text)
        .filter_map(|symbol| {
            Some((
                symbol.address(),
                symbol.size(),
                symbol.name().ok()?.to_owned(),
            ))
        })
        .collect();
    symbols.sort();
    Some(symbols)
}

/// The addresses to look up for a raw stack, innermost first: every frame but the
/// innermost holds a return address, which points after the call, so step back into it.
fn lookup_addresses(stack: &[u64]) -> impl DoubleEndedIterator<Item = u64> + '_ {
    stack.iter().enumerate().map(|(depth, &address)| {
        if depth == 0 {
            address
        } else {
            address.saturating_sub(1)
        }
    })
}

fn named_frames(names: Option<&Vec<String>>, kernel: bool) -> Vec<Frame> {
    match names {
        Some(names) => names
            .iter()
            .map(|name| Frame::native(name.clone(), kernel))
            .collect(),
        None => vec![Frame::native(UNKNOWN, kernel)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn return_addresses_step_back_but_the_innermost_frame_does_not() {
        assert_eq!(
            lookup_addresses(&[10, 20, 30]).collect::<Vec<_>>(),
            vec![10, 19, 29]
        );
    }

    #[test]
    fn own_functions_get_names_and_an_unreadable_file_costs_only_its_own() {
        let address = a_function_to_find as *const () as u64;
        let pid = std::process::id();
        let mut maps = MemoryMaps::default();
        maps.read(pid);
        let own = maps.mapping(pid, address).unwrap().clone();
        let mut symbolizer = Symbolizer::new();
        symbolizer.keep_files(pid, std::slice::from_ref(&own));
        // A second file that cannot be parsed, mapped at made-up addresses.
        let broken = std::env::temp_dir().join(format!("profiler-broken-{pid}.so"));
        fs::write(&broken, b"\x7fELF not really").unwrap();
        let broken_mapping = Mapping {
            range: 0x1000..0x2000,
            file_offset: 0,
            path: Some(broken.clone()),
            file: Some(FileId {
                device: "ff:ff".to_owned(),
                inode: 1,
            }),
            vdso: false,
        };
        symbolizer.files.insert(
            broken_mapping.file.clone().unwrap(),
            KeptFile::new(fs::File::open(&broken).unwrap()),
        );
        let mut extended = MemoryMaps::default();
        extended.insert(pid, vec![broken_mapping, own]);
        let key = StackKey::new(pid, pid, &[0x1800, address + 1], &[]);
        let names = symbolizer.resolve_new(&extended, [&key], &Names::default());
        fs::remove_file(&broken).unwrap();
        let frames: Vec<String> = names.frames(&key).into_iter().map(|f| f.name).collect();
        assert!(frames[0].ends_with("a_function_to_find"), "{frames:?}");
        assert_eq!(
            frames[1],
            format!("[{}]", broken.file_name().unwrap().to_string_lossy())
        );
        assert_eq!(names.unnamed.get(&Unnamed::UnreadableFile), Some(&1));
    }

    #[test]
    fn tracing_frames_and_what_they_ran_are_cut_off() {
        let names = Names {
            unnamed: BTreeMap::new(),
            python: Vec::new(),
            python_view: python::PythonView::default(),
            user: [((1, 10), UserNames::unfiled(vec!["main".to_owned()]))]
                .into_iter()
                .collect(),
            kernel: HashMap::from([
                (100, vec!["bpf_prog_1234_sched_switch".to_owned()]),
                (199, vec!["perf_trace_sched_switch".to_owned()]),
                (299, vec!["__traceiter_sched_switch".to_owned()]),
                (399, vec!["__schedule".to_owned()]),
            ]),
        };
        let key = StackKey::new(1, 1, &[10], &[100, 200, 300, 400]);
        let frames: Vec<String> = names
            .frames_below_tracepoint(&key)
            .into_iter()
            .map(|frame| frame.name)
            .collect();
        assert_eq!(frames, vec!["main", "__schedule"]);
        assert_eq!(names.frames(&key).len(), 5);
    }

    #[test]
    fn stacks_named_once_make_the_profile_names_make() {
        let names = || Names {
            unnamed: BTreeMap::new(),
            python: Vec::new(),
            python_view: python::PythonView::default(),
            user: [
                ((1, 10), UserNames::unfiled(vec!["main".to_owned()])),
                ((1, 20), UserNames::unfiled(vec!["work".to_owned()])),
                ((2, 10), UserNames::unfiled(vec!["serve".to_owned()])),
            ]
            .into_iter()
            .collect(),
            kernel: HashMap::new(),
        };
        let keys = [
            StackKey::new(1, 1, &[21, 10], &[]),
            StackKey::new(1, 3, &[10], &[]),
            StackKey::new(2, 2, &[10], &[]),
        ];
        let mut named = NamedStacks::default();
        named.add(names(), keys.to_vec());
        let process_names = HashMap::from([(1, "api".to_owned()), (2, "worker".to_owned())]);
        // Each stack as its frames' names, its weight and its origin.
        let spelled = |profile: Profile| -> Vec<(Vec<String>, u64, Origin)> {
            let mut stacks: Vec<_> = profile
                .stacks
                .iter()
                .map(|stack| {
                    let frames = stack.frames.iter();
                    let names = frames.map(|&id| profile.frames[id].name.clone());
                    (names.collect::<Vec<_>>(), stack.count, stack.origin)
                })
                .collect();
            stacks.sort_by(|a, b| a.0.cmp(&b.0));
            stacks
        };
        for chosen in [&keys[..], &keys[..2]] {
            let mut counts = StackCounts::default();
            for (weight, key) in chosen.iter().enumerate() {
                counts.add(key.clone(), weight as u64 + 1);
            }
            let expected = names().profile(&counts, Capture::Sampled, &process_names);
            assert_eq!(
                spelled(named.profile(&counts, &process_names)),
                spelled(expected)
            );
        }
    }
}
