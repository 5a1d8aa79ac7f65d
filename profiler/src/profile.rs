//! The profile's data model: named frames, weighted stacks and where they were
//! recorded. Everything that reads a profile (the analysis, every output format) reads
//! these types, whatever runtime the frames came from.

use std::{path::Path, sync::Arc};

/// The language of a [`SourceFunction`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    /// CPython's code objects.
    Python,
    /// Go functions, named by the binary's function table.
    Go,
    /// JavaScript compiled by V8 (Node.js), named by its perf map.
    JavaScript,
    /// Java methods compiled by the JVM, named by its perf map.
    Java,
}

impl Language {
    /// Every language.
    pub const ALL: [Language; 4] = [
        Language::Python,
        Language::Go,
        Language::JavaScript,
        Language::Java,
    ];

    /// The language [`Language::name`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|language| language.name() == name)
    }

    /// The name the JSON report and the metrics give the language.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Go => "go",
            Language::JavaScript => "js",
            Language::Java => "java",
        }
    }

    /// Whether its code is compiled while the program runs, as flame graphs mark it.
    pub fn is_jit(self) -> bool {
        matches!(self, Language::JavaScript | Language::Java)
    }
}

/// What a thread was doing about its runtime's global lock (CPython's GIL) when a stack
/// was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockState {
    /// It held the lock.
    Held,
    /// It ran without it: native code that released it.
    Released,
    /// It waited to take it.
    Waiting,
}

impl LockState {
    /// Every state, in the order reports list them.
    pub const ALL: [LockState; 3] = [LockState::Held, LockState::Released, LockState::Waiting];

    /// The name the JSON report and the metrics give the state.
    pub fn name(self) -> &'static str {
        match self {
            LockState::Held => "held",
            LockState::Released => "released",
            LockState::Waiting => "waiting",
        }
    }

    /// The state [`LockState::name`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.name() == name)
    }
}

/// A function of the program's own source, as its runtime names it: a Python function
/// rather than the interpreter's C frame that ran it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceFunction {
    /// Its language.
    pub language: Language,
    /// The qualified name: `Model.predict`, `main.<locals>.work`.
    pub qualname: String,
    /// The source file, as the runtime spells it.
    pub file: String,
    /// The line of the definition.
    pub line: u32,
    /// The module the file is, `deepseek.core.model`, when its place can be told.
    pub module: Option<String>,
    /// Whether it is a thread's or a server's entry point (`Thread.run`, a serve loop)
    /// rather than the program's work, as its runtime knows them.
    pub entry: bool,
    /// Whether it is installed code (a package's, the standard library's) rather than
    /// the program's own.
    pub installed: bool,
}

impl SourceFunction {
    /// The frame's label: `Model.predict (model.py:42)`, with the line of its
    /// definition.
    pub fn label(&self) -> String {
        self.label_at(self.line)
    }

    /// The label of the function at line `line`: `Model.predict (model.py:45)`.
    pub fn label_at(&self, line: u32) -> String {
        if self.file.is_empty() {
            return self.qualname.clone();
        }
        let file = Path::new(&self.file).file_name().map_or_else(
            || self.file.clone(),
            |name| name.to_string_lossy().into_owned(),
        );
        format!("{} ({file}:{line})", self.qualname)
    }

    /// Whether `name` names this function: its qualified name, its last part, or the
    /// module path followed by either.
    pub fn is_named(&self, name: &str) -> bool {
        let short = self.qualname.rsplit('.').next().unwrap_or(&self.qualname);
        if name == self.qualname || name == short {
            return true;
        }
        self.module.as_deref().is_some_and(|module| {
            name.strip_prefix(module)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| rest == self.qualname || rest == short)
        })
    }
}

/// Functions that every thread passes through, so they always hold (nearly) all of the
/// time and would drown out the real hotspots.
const PROCESS_ROOTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_main_impl",
    "__libc_start_call_main",
    "main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "thread_start",
    "std::rt::lang_start",
    "std::rt::lang_start_internal",
    // CPython's way from `main` to the script's first frame.
    "Py_BytesMain",
    "Py_Main",
    "Py_RunMain",
    "pymain_main",
    "pymain_run_python",
    "pymain_run_file",
    "pymain_run_file_obj",
    "pymain_run_module",
    "pymain_run_command",
    "_PyRun_AnyFileObject",
    "_PyRun_SimpleFileObject",
    "PyRun_AnyFileExFlags",
    "PyRun_SimpleFileExFlags",
    "pyrun_file",
    "run_mod",
    "run_eval_code_obj",
    "PyEval_EvalCode",
    "thread_run",
    "pythread_wrapper",
];

/// Whether `name` is a native process or thread entry point rather than real work.
pub fn is_native_entry_point(name: &str) -> bool {
    PROCESS_ROOTS.contains(&name)
        || name.starts_with("std::rt::lang_start::")
        || name.starts_with("std::sys::pal::unix::thread::Thread::new::thread_start")
}

/// A named frame of a symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled function name, or `[unknown]`.
    pub name: String,
    /// Whether the frame is in the kernel.
    pub kernel: bool,
    /// The source function, for a frame of an interpreted or compiled-at-run-time
    /// language's code (a Python function).
    pub source: Option<SourceFunction>,
    /// The pid, for the root frame that names a process in a profile of several.
    pub process: Option<u32>,
    /// The file a native user frame's code was mapped from, where it was one.
    pub object: Option<Arc<ObjectFile>>,
}

/// A file that code was mapped from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectFile {
    /// Its path, as the process named it.
    pub path: String,
    /// Its GNU build id in hex, if it has one.
    pub build_id: Option<String>,
}

impl Frame {
    /// Whether the frame is a process's, thread's or server's entry point rather than
    /// real work: every thread passes through one, so it holds (nearly) all of the time
    /// and would drown out the real hotspots.
    pub fn is_entry_point(&self) -> bool {
        match &self.source {
            Some(source) => source.entry,
            None => self.process.is_none() && !self.kernel && is_native_entry_point(&self.name),
        }
    }

    /// A native or kernel frame.
    pub fn native(name: impl Into<String>, kernel: bool) -> Self {
        Frame {
            name: name.into(),
            kernel,
            source: None,
            process: None,
            object: None,
        }
    }

    /// The frame of a runtime's source function, labelled `Model.predict (model.py:42)`.
    pub fn source(function: SourceFunction) -> Self {
        Frame {
            source: Some(function.clone()),
            ..Frame::native(function.label(), false)
        }
    }

    /// The root frame of process `pid` named `name`: `model-server [4242]`.
    pub fn process(pid: u32, name: &str) -> Self {
        Frame {
            process: Some(pid),
            ..Frame::native(format!("{name} [{pid}]"), false)
        }
    }
}

/// A symbolized stack and its weight: samples, or nanoseconds off the CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// Indices into [`Profile::frames`], root first.
    pub frames: Vec<usize>,
    /// The source line each of `frames` was running, by position, 0 for a frame that
    /// has none (native code); empty when no frame has one.
    pub lines: Vec<u32>,
    /// Weight of exactly this stack.
    pub count: u64,
    /// Where it was recorded.
    pub origin: Origin,
    /// What its thread was doing about its runtime's global lock, where it has one and
    /// it was read.
    pub lock: Option<LockState>,
}

/// The process and thread a stack was recorded in, where it is one thread's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// The process.
    pub pid: Option<u32>,
    /// The thread.
    pub tid: Option<u32>,
}

/// Symbolized, counted stacks, with every distinct frame stored once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Distinct frames; stacks refer to them by index.
    pub frames: Vec<Frame>,
    /// Distinct stacks.
    pub stacks: Vec<Stack>,
}

impl Profile {
    /// The frames of `stack`, one of this profile's, root first, each with the source
    /// line it was running (0 for none).
    pub fn placed<'p>(
        &'p self,
        stack: &'p Stack,
    ) -> impl DoubleEndedIterator<Item = (&'p Frame, u32)> + 'p {
        stack.frames.iter().enumerate().map(|(index, &id)| {
            (
                &self.frames[id],
                stack.lines.get(index).copied().unwrap_or(0),
            )
        })
    }

    /// This profile with each source frame split by the line it was running, as
    /// `Model.predict (model.py:25)` for line 25, as py-spy draws them; frames without a
    /// line keep their definition's.
    pub fn by_line(&self) -> Profile {
        let mut builder = ProfileBuilder::default();
        for stack in &self.stacks {
            let frames = self.placed(stack).map(|(frame, line)| match &frame.source {
                Some(source) if line != 0 => Frame {
                    name: source.label_at(line),
                    ..frame.clone()
                },
                _ => frame.clone(),
            });
            builder.push_placed(
                stack.origin,
                stack.lock,
                frames.map(|frame| (frame, 0)),
                stack.count,
            );
        }
        builder.build()
    }

    /// Total weight over all stacks.
    pub fn samples(&self) -> u64 {
        self.stacks.iter().map(|stack| stack.count).sum()
    }
}

/// Builds a [`Profile`], storing each distinct frame once.
#[derive(Debug, Default)]
pub struct ProfileBuilder {
    profile: Profile,
    frame_ids: foldhash::HashMap<Frame, usize>,
}

impl ProfileBuilder {
    /// Adds a stack given as frames, root first, of no known origin.
    pub fn push(&mut self, frames: impl IntoIterator<Item = Frame>, count: u64) {
        self.push_from(Origin::default(), frames, count);
    }

    /// Adds a stack given as frames, root first, recorded in `origin`.
    pub fn push_from(
        &mut self,
        origin: Origin,
        frames: impl IntoIterator<Item = Frame>,
        count: u64,
    ) {
        self.push_placed(
            origin,
            None,
            frames.into_iter().map(|frame| (frame, 0)),
            count,
        );
    }

    /// Adds a stack given as frames with the source line each was running (0 for
    /// none), root first, recorded in `origin` with its runtime's lock in `lock`.
    pub fn push_placed(
        &mut self,
        origin: Origin,
        lock: Option<LockState>,
        frames: impl IntoIterator<Item = (Frame, u32)>,
        count: u64,
    ) {
        let (frames, mut lines): (Vec<usize>, Vec<u32>) = frames
            .into_iter()
            .map(|(frame, line)| {
                let next = self.frame_ids.len();
                let id = *self.frame_ids.entry(frame.clone()).or_insert_with(|| {
                    self.profile.frames.push(frame);
                    next
                });
                (id, line)
            })
            .unzip();
        if lines.iter().all(|&line| line == 0) {
            lines = Vec::new();
        }
        self.profile.stacks.push(Stack {
            frames,
            lines,
            count,
            origin,
            lock,
        });
    }

    /// The finished profile.
    pub fn build(self) -> Profile {
        self.profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_builder_stores_each_frame_once() {
        let frame = |name: &str| Frame::native(name, false);
        let mut builder = ProfileBuilder::default();
        builder.push([frame("main"), frame("work")], 3);
        builder.push([frame("main"), frame("idle")], 1);
        let profile = builder.build();
        assert_eq!(profile.frames.len(), 3);
        assert_eq!(profile.stacks[1].frames, vec![0, 2]);
        assert_eq!(profile.samples(), 4);
    }
}
