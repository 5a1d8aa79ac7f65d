//! Python frames: finding CPython interpreters in the targets, telling the kernel how
//! to walk their frames, and naming the code objects it reports.
//!
//! The kernel records each Python frame as the address of its code object with two of
//! the object's fields. Code objects can be freed once their function is gone, so they
//! are named here while recording, as soon as a stack brings a new one, from the live
//! process, and remembered by (process, address, fields): a new code object at a freed
//! one's address has other fields, and is read again.

mod code;
mod interpreter;
mod lines;
mod merge;
mod view;

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
pub use code::{Unresolved, module_path};
pub use interpreter::{Interpreter, Version};
pub use merge::{NativeRole, StandIns, end_at_gil_wait, interleave};
use profiler_common::{
    GilState, PYTHON_NO_INSTRUCTION, PythonEnd, PythonFrame, PythonProcess, PythonStack,
};
pub use view::{COLLECTOR_FRAME, GIL_WAIT_FRAME, PythonView};

use crate::{
    memory_map::{FileId, Mapping},
    profile::{Language, LockState, SourceFunction},
};

/// A Python frame of an aggregated stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PythonFrameRef {
    /// Index into [`PythonFrames::functions`].
    pub function: u32,
    /// Whether the frame is the outermost of one run of the interpreter's C eval
    /// function, so that the next frame out was called from native code.
    pub ends_call: bool,
    /// The line it was running, 0 if not known.
    pub line: u32,
}

/// A code object the kernel reported, as named: its function and its line table.
struct CodeObject {
    function: u32,
    lines: Option<Arc<lines::LineTable>>,
}

impl CodeObject {
    /// Its function, and the line `frame`, which runs it, was at (0 if not known).
    fn function_and_line(&self, frame: &PythonFrame) -> (u32, u32) {
        let line = match &self.lines {
            Some(table) if frame.instruction != PYTHON_NO_INSTRUCTION => {
                table.line(frame.instruction).unwrap_or(0)
            }
            // A frame that has begun no instruction is at its definition.
            Some(_) => frame.first_line,
            None => 0,
        };
        (self.function, line)
    }
}

/// What identifies a code object the kernel reported: its process, address and the two
/// fields read with it, but not the instruction its frame was at.
type CodeKey = (u32, u64, u32, u32);

/// A process's interpreter, as found.
struct ProcessState {
    /// The files that were looked at, to look again only when they change.
    candidates: Vec<FileId>,
    interpreter: Option<Interpreter>,
    memory: Option<fs::File>,
    /// The process's view of the file system, for module paths.
    root: PathBuf,
}

/// An interpreter found in a target, for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundInterpreter {
    /// The process.
    pub pid: u32,
    /// Its CPython version.
    pub version: Version,
}

/// What the Python walk found, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonReport {
    /// The interpreters walked.
    pub interpreters: Vec<FoundInterpreter>,
    /// One line per interpreter found but not walked, and why.
    pub notices: Vec<String>,
    /// How the Python stacks of CPU samples ended, by reason; processes that are not
    /// walked interpreters are left out.
    pub ends: BTreeMap<&'static str, u64>,
    /// Distinct code objects that could not be named, by reason.
    pub unresolved: BTreeMap<&'static str, u64>,
    /// Distinct functions named.
    pub functions: usize,
}

/// The Python side of a recording.
#[derive(Default)]
pub struct PythonFrames {
    kernel: Option<BpfHashMap<MapData, u32, PythonProcess>>,
    processes: HashMap<u32, ProcessState>,
    functions: Vec<SourceFunction>,
    function_ids: HashMap<SourceFunction, u32>,
    /// Named code objects by process and what the kernel read of them: looked up for
    /// every Python frame of every sample, so with a fast hash.
    code_objects: foldhash::HashMap<CodeKey, CodeObject>,
    modules: HashMap<PathBuf, Option<String>>,
    /// What was read of the files interpreters were looked for in.
    interpreter_files: interpreter::ReadFiles,
    view: PythonView,
    report: PythonReport,
}

impl PythonFrames {
    /// The Python side of a recording shown in the Python view, or with `internals`,
    /// with every native frame.
    pub fn new(internals: bool) -> Self {
        PythonFrames {
            view: PythonView::new(internals),
            ..PythonFrames::default()
        }
    }

    /// What the interpreters' native frames become in stacks with Python frames.
    pub fn view(&self) -> &PythonView {
        &self.view
    }

    /// Hands over the kernel's table of walked processes, and fills in those found so
    /// far.
    pub fn connect(&mut self, mut kernel: BpfHashMap<MapData, u32, PythonProcess>) {
        for (&tgid, state) in &self.processes {
            if let Some(interpreter) = &state.interpreter {
                // A full table leaves the process unwalked; its stacks say so.
                let _ = kernel.insert(&tgid, &interpreter.kernel, 0);
            }
        }
        self.kernel = Some(kernel);
    }

    /// Looks for an interpreter in process `tgid`'s mappings, unless the files it
    /// could be in are the ones already looked at, or the one found is still mapped.
    pub fn observe(&mut self, tgid: u32, mappings: &[Mapping]) {
        let mut candidates: Vec<FileId> = mappings
            .iter()
            .filter_map(|mapping| mapping.file.clone())
            .collect();
        candidates.sort_by(|a, b| (&a.device, a.inode).cmp(&(&b.device, b.inode)));
        candidates.dedup();
        if let Some(state) = self.processes.get_mut(&tgid) {
            // A library loaded next to a found interpreter changes nothing: the
            // interpreter's file is parsed once per process, not at every import.
            let still_mapped = state
                .interpreter
                .as_ref()
                .is_some_and(|interpreter| candidates.contains(&interpreter.file));
            if still_mapped || state.candidates == candidates {
                state.candidates = candidates;
                return;
            }
        }
        let interpreter = match interpreter::detect(tgid, mappings, &mut self.interpreter_files) {
            Ok(found) => found,
            Err(reason) => {
                self.notice(&format!(
                    "pid {tgid}: {reason}; its Python frames are not shown"
                ));
                None
            }
        };
        if let Some(kernel) = &mut self.kernel {
            let _ = match &interpreter {
                Some(interpreter) => kernel.insert(&tgid, &interpreter.kernel, 0),
                None => kernel.remove(&tgid),
            };
        }
        if let Some(interpreter) = &interpreter {
            self.view
                .add_interpreter(interpreter.path.clone(), &interpreter.extension_prefixes);
            let found = FoundInterpreter {
                pid: tgid,
                version: interpreter.version,
            };
            if !self.report.interpreters.contains(&found) {
                self.report.interpreters.push(found);
            }
        }
        self.processes.insert(
            tgid,
            ProcessState {
                candidates,
                memory: interpreter
                    .as_ref()
                    .and_then(|_| fs::File::open(format!("/proc/{tgid}/mem")).ok()),
                interpreter,
                root: PathBuf::from(format!("/proc/{tgid}/root")),
            },
        );
    }

    /// Prints a one-line notice, once, and keeps it for the report.
    pub fn notice(&mut self, notice: &str) {
        if !self.report.notices.iter().any(|kept| kept == notice) {
            eprintln!("profiler: {notice}");
            self.report.notices.push(notice.to_owned());
        }
    }

    /// The named frames of a stack the kernel walked, innermost first, and counts how
    /// it ended.
    pub fn resolve(
        &mut self,
        tgid: u32,
        stack: &PythonStack,
        counted: bool,
    ) -> Box<[PythonFrameRef]> {
        let end = PythonEnd::from_raw(stack.end);
        if counted && end != PythonEnd::NotPython {
            *self.report.ends.entry(end_name(end)).or_default() += 1;
        }
        stack
            .frames()
            .iter()
            .enumerate()
            .map(|(index, frame)| {
                let (function, line) = self.function_and_line(tgid, frame);
                PythonFrameRef {
                    function,
                    ends_call: stack.ends_call(index),
                    line,
                }
            })
            .collect()
    }

    /// The function a frame runs and the line it was at, its code object read the first
    /// time: one hash lookup per frame of every sample otherwise.
    fn function_and_line(&mut self, tgid: u32, frame: &PythonFrame) -> (u32, u32) {
        let key = (tgid, frame.code, frame.first_line, frame.name_stamp);
        if let Some(code) = self.code_objects.get(&key) {
            return code.function_and_line(frame);
        }
        let code = self.read_code_object(tgid, frame);
        let found = code.function_and_line(frame);
        self.code_objects.insert(key, code);
        found
    }

    fn read_code_object(&mut self, tgid: u32, frame: &PythonFrame) -> CodeObject {
        let mut lines = None;
        let read = match self.processes.get(&tgid) {
            Some(ProcessState {
                interpreter: Some(interpreter),
                memory: Some(memory),
                root,
                ..
            }) => code::read_function(memory, interpreter, frame).map(|function| {
                lines = code::read_line_table(memory, interpreter, frame).map(Arc::new);
                (function, root)
            }),
            _ => Err(Unresolved::ProcessGone),
        };
        let function = match read {
            Ok((mut function, root)) => {
                let root = root.clone();
                function.module = self
                    .modules
                    .entry(PathBuf::from(&function.file))
                    .or_insert_with(|| module_path(Path::new(&function.file), &root))
                    .clone();
                function.entry = view::is_entry_point(&function);
                function.installed = code::is_installed(&function.file);
                function
            }
            Err(reason) => {
                *self.report.unresolved.entry(reason.name()).or_default() += 1;
                unknown_function()
            }
        };
        let next = self.functions.len() as u32;
        let id = *self
            .function_ids
            .entry(function.clone())
            .or_insert_with(|| {
                self.functions.push(function);
                next
            });
        CodeObject {
            function: id,
            lines,
        }
    }

    /// Every function named so far; [`PythonFrameRef::function`] indexes it.
    pub fn functions(&self) -> &[SourceFunction] {
        &self.functions
    }

    /// What the walk found.
    pub fn report(&self) -> PythonReport {
        PythonReport {
            functions: self.functions.len(),
            ..self.report.clone()
        }
    }
}

/// What the thread whose Python stack the kernel walked was doing about the GIL.
pub fn lock_state(stack: &PythonStack) -> Option<LockState> {
    match GilState::from_raw(stack.gil) {
        GilState::Unknown => None,
        GilState::Held => Some(LockState::Held),
        GilState::Released => Some(LockState::Released),
        GilState::Waiting => Some(LockState::Waiting),
    }
}

/// The name of a code object that could not be read.
pub const UNKNOWN_FUNCTION: &str = "[unknown Python function]";

/// The function of a code object that could not be read, or of Python code whose
/// frames were not walked.
pub fn unknown_function() -> SourceFunction {
    SourceFunction {
        language: Language::Python,
        qualname: UNKNOWN_FUNCTION.to_owned(),
        file: String::new(),
        line: 0,
        module: None,
        entry: false,
        installed: false,
    }
}

fn end_name(end: PythonEnd) -> &'static str {
    match end {
        PythonEnd::NotPython => "not_python",
        PythonEnd::Root => "root",
        PythonEnd::NoThreadState => "no_thread_state",
        PythonEnd::OtherThread => "other_thread",
        PythonEnd::DepthLimit => "depth_limit",
        PythonEnd::UnreadableMemory => "unreadable_memory",
    }
}
