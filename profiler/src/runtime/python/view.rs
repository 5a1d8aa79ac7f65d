//! The Python view: which native frames of a stack with Python frames are the
//! interpreter's own work (its eval loop, call plumbing, objects, iterators, reference
//! counting, allocator), to be folded into the Python frame that ran them, and which
//! are a library's, to be kept: extension modules, whether built into the interpreter's
//! file or loaded, and every other library.
//!
//! A frame is the interpreter's when its code is in the interpreter's own file
//! (`libpython3.X.so`, or a `python` built statically) and is not a function of one of
//! the extension modules built into that file. Those modules are known from the file's
//! `PyInit_<module>` symbols, and their functions from CPython's naming: a module's C
//! functions start with its name (`math_sqrt`, `_io_FileIO_read`, `time_sleep`). A
//! stripped interpreter names only its exported functions; its unnamed frames are the
//! interpreter's too.

use std::{collections::HashMap, sync::Arc};

use super::merge::{NativeRole, StandIns, native_role};
use crate::profile::{Frame, SourceFunction, is_native_entry_point};

/// The frame the garbage collector's work is shown as.
pub const COLLECTOR_FRAME: &str = "[gc]";

/// The frame a wait to take the GIL is shown as.
pub const GIL_WAIT_FRAME: &str = "[GIL wait]";

/// Built-in modules that are the interpreter's machinery, not a library: their time is
/// the time of the Python code that caused it (the collector has its own frame).
const MACHINERY_MODULES: [&str; 4] = ["gc", "_imp", "_abc", "_weakref"];

/// Modules whose functions are named after something other than the module.
const MODULE_ALIASES: [(&str, &[&str]); 2] =
    [("posix", &["os_"]), ("_socket", &["sock_", "socket_"])];

/// Python functions that start a thread or serve requests, by the file they are in
/// (its path's end, `/` first so that `mythreading.py` is not `threading.py`): they hold
/// the whole of a thread's or a request's time, and are nobody's hotspot.
const ENTRY_POINTS: [(&str, &[&str]); 14] = [
    (
        "/threading.py",
        &["Thread.run", "Thread._bootstrap", "Thread._bootstrap_inner"],
    ),
    (
        "/socketserver.py",
        &[
            "BaseServer.serve_forever",
            "BaseServer._handle_request_noblock",
            "BaseServer.process_request",
            "BaseServer.finish_request",
            "BaseRequestHandler.__init__",
            "ThreadingMixIn.process_request_thread",
        ],
    ),
    (
        "/http/server.py",
        &[
            "BaseHTTPRequestHandler.handle",
            "BaseHTTPRequestHandler.handle_one_request",
        ],
    ),
    (
        "/werkzeug/serving.py",
        &[
            "run_simple",
            "BaseWSGIServer.serve_forever",
            "WSGIRequestHandler.handle",
            "WSGIRequestHandler.handle_one_request",
            "WSGIRequestHandler.run_wsgi",
            "WSGIRequestHandler.run_wsgi.<locals>.execute",
        ],
    ),
    (
        "/gunicorn/app/base.py",
        &["BaseApplication.run", "Application.run"],
    ),
    ("/gunicorn/app/wsgiapp.py", &["run", "WSGIApplication.run"]),
    (
        "/gunicorn/arbiter.py",
        &[
            "Arbiter.run",
            "Arbiter.manage_workers",
            "Arbiter.spawn_workers",
            "Arbiter.spawn_worker",
        ],
    ),
    ("/gunicorn/workers/base.py", &["Worker.init_process"]),
    // The thread pool gunicorn's gthread workers and executors run requests in.
    (
        "/concurrent/futures/thread.py",
        &["_worker", "_WorkItem.run"],
    ),
    (
        "/gunicorn/workers/sync.py",
        &[
            "SyncWorker.run",
            "SyncWorker.run_for_one",
            "SyncWorker.run_for_multiple",
            "SyncWorker.accept",
            "SyncWorker.handle",
            "SyncWorker.handle_request",
        ],
    ),
    (
        "/gunicorn/workers/gthread.py",
        &[
            "ThreadWorker.init_process",
            "ThreadWorker.run",
            "ThreadWorker.handle",
            "ThreadWorker.handle_request",
        ],
    ),
    (
        "/flask/app.py",
        &[
            "Flask.__call__",
            "Flask.wsgi_app",
            "Flask.full_dispatch_request",
            "Flask.dispatch_request",
        ],
    ),
    // The `gunicorn` command, and `python -m gunicorn`.
    ("/bin/gunicorn", &["<module>"]),
    ("/gunicorn/__main__.py", &["<module>"]),
];

/// Whether the Python function `function` starts a thread or serves requests.
pub fn is_entry_point(function: &SourceFunction) -> bool {
    ENTRY_POINTS.iter().any(|(file, functions)| {
        function.file.ends_with(file) && functions.contains(&function.qualname.as_str())
    })
}

/// The dynamic linker's functions a shared interpreter calls to find its thread state:
/// the interpreter's work, though not in its file, and absent from a static one.
const THREAD_STATE_LOOKUPS: [&str; 2] = ["__tls_get_addr", "___tls_get_addr"];

/// Whether the interpreter's function `name` runs the garbage collector: a collection
/// started by an allocation, by `gc.collect()`, or at exit.
fn is_collector(name: &str) -> bool {
    name.starts_with("gc_collect")
        || name == "collect"
        || name.starts_with("collect.")
        || name.starts_with("_PyGC_Collect")
        || name == "_Py_RunGC"
}

/// The function name prefixes of an interpreter's built-in extension modules, from the
/// names of its `PyInit_` functions.
pub fn extension_prefixes<'n>(init_functions: impl IntoIterator<Item = &'n str>) -> Vec<String> {
    let mut prefixes = Vec::new();
    for module in init_functions
        .into_iter()
        .filter_map(|name| name.strip_prefix("PyInit_"))
        .filter(|module| !MACHINERY_MODULES.contains(module))
    {
        prefixes.push(format!("{module}_"));
        if let Some((_, aliases)) = MODULE_ALIASES.iter().find(|(name, _)| *name == module) {
            prefixes.extend(aliases.iter().map(|alias| (*alias).to_owned()));
        }
    }
    prefixes
}

/// What the view makes of each native frame, and whether it is the Python view at all.
#[derive(Clone, Debug, Default)]
pub struct PythonView {
    /// `--python-internals`: every native frame stays, as the interpreter ran it.
    internals: bool,
    /// The interpreters' files, by path as their processes map them, with the function
    /// name prefixes of their built-in extension modules.
    interpreter_files: Arc<HashMap<String, Arc<[String]>>>,
}

impl PythonView {
    /// The Python view, or with `internals`, every native frame.
    pub fn new(internals: bool) -> Self {
        PythonView {
            internals,
            interpreter_files: Arc::default(),
        }
    }

    /// Adds an interpreter's file, mapped at `path`, whose built-in extension modules'
    /// functions start with `prefixes`.
    pub fn add_interpreter(&mut self, path: String, prefixes: &[String]) {
        if !self.interpreter_files.contains_key(&path) {
            Arc::make_mut(&mut self.interpreter_files).insert(path, prefixes.into());
        }
    }

    /// The frames the view shows for work it cannot show as it ran: `collector`, and
    /// in the Python view, `unknown_python()` and `gil_wait()`.
    pub fn stand_ins<F>(
        &self,
        collector: F,
        unknown_python: impl FnOnce() -> F,
        gil_wait: impl FnOnce() -> F,
    ) -> StandIns<F> {
        StandIns {
            collector,
            unknown_python: (!self.internals).then(unknown_python),
            gil_wait: (!self.internals).then(gil_wait),
        }
    }

    /// Interpreter files known: the view of a frame may change when this grows.
    pub fn interpreters(&self) -> usize {
        self.interpreter_files.len()
    }

    /// What the merge makes of the native frame `frame` in a stack with Python frames.
    pub fn role(&self, frame: &Frame) -> NativeRole {
        let role = native_role(&frame.name);
        if role != NativeRole::Kept || self.internals {
            return role;
        }
        if is_native_entry_point(&frame.name) {
            return NativeRole::Entry;
        }
        if THREAD_STATE_LOOKUPS.contains(&frame.name.as_str()) {
            return NativeRole::Internal;
        }
        let Some(prefixes) = frame
            .object
            .as_ref()
            .and_then(|object| self.interpreter_files.get(&object.path))
        else {
            return NativeRole::Kept;
        };
        if is_collector(&frame.name) {
            NativeRole::Collector
        } else if prefixes.iter().any(|prefix| frame.name.starts_with(prefix)) {
            NativeRole::Kept
        } else {
            NativeRole::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ObjectFile;

    fn in_file(name: &str, path: &str) -> Frame {
        Frame {
            object: Some(Arc::new(ObjectFile {
                path: path.to_owned(),
                build_id: None,
            })),
            ..Frame::native(name, false)
        }
    }

    #[test]
    fn the_interpreters_own_functions_fold_and_its_modules_and_libraries_stay() {
        let mut view = PythonView::new(false);
        let prefixes = extension_prefixes(["PyInit_math", "PyInit_posix", "PyInit_gc"]);
        view.add_interpreter("/usr/lib/libpython3.12.so.1.0".to_owned(), &prefixes);
        let python = |name| in_file(name, "/usr/lib/libpython3.12.so.1.0");
        assert_eq!(view.role(&python("listiter_next")), NativeRole::Internal);
        assert_eq!(
            view.role(&python("[libpython3.12.so.1.0]")),
            NativeRole::Internal
        );
        assert_eq!(view.role(&python("gc_traverse")), NativeRole::Internal);
        assert_eq!(view.role(&python("gc_collect_main")), NativeRole::Collector);
        assert_eq!(view.role(&python("math_sqrt")), NativeRole::Kept);
        assert_eq!(view.role(&python("os_stat_impl")), NativeRole::Kept);
        assert_eq!(
            view.role(&python("_PyEval_EvalFrameDefault")),
            NativeRole::Eval
        );
        assert_eq!(
            view.role(&python("_PyObject_MakeTpCall")),
            NativeRole::Plumbing
        );
        let numpy = in_file("DOUBLE_matmul", "/venv/numpy/_multiarray_umath.so");
        assert_eq!(view.role(&numpy), NativeRole::Kept);
        assert_eq!(view.role(&Frame::native("memcpy", false)), NativeRole::Kept);
        let internals = PythonView {
            internals: true,
            ..view
        };
        assert_eq!(internals.role(&python("listiter_next")), NativeRole::Kept);
        assert_eq!(internals.role(&python("gc_collect_main")), NativeRole::Kept);
    }
}
