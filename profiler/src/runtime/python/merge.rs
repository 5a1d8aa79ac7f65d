//! Putting Python frames where they ran: each native `_PyEval_EvalFrameDefault` frame
//! gives way to the Python frames it was running, the interpreter's call plumbing
//! between them is left out, and in the Python view ([`super::view`]) the rest of the
//! interpreter's work under them folds into the Python frame that ran it.

use super::PythonFrameRef;

/// The interpreter's C function that runs Python frames.
const EVAL_FUNCTION: &str = "_PyEval_EvalFrameDefault";

/// Native functions that only pass a call on between Python frames, or from a builtin to
/// Python code; they tell the reader nothing the Python frames around them do not.
const PLUMBING_PREFIXES: [&str; 13] = [
    // `-X perf`'s trampolines, one per code object, named from the perf map: the Python
    // walk already gives the frame each one enters.
    "py::",
    "_PyEval_",
    "PyEval_EvalCode",
    "_PyFunction_Vectorcall",
    "PyObject_Vectorcall",
    "_PyObject_Vectorcall",
    "PyObject_Call",
    "_PyObject_Call",
    "_PyObject_MakeTpCall",
    "_PyObject_FastCall",
    "_PyVectorcall_Call",
    "method_vectorcall",
    "cfunction_",
];

/// What the merge makes of a native frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeRole {
    /// The interpreter's eval function: it gives way to the Python frames it ran.
    Eval,
    /// Call plumbing between Python frames: left out.
    Plumbing,
    /// The interpreter's own work (objects, iterators, reference counting...): under a
    /// Python frame, its time is that frame's own.
    Internal,
    /// The garbage collector: under a Python frame, shown as one `[gc]` frame.
    Collector,
    /// A process's or thread's way to its first Python frame (`_start`, `main`,
    /// `start_thread`): left out above it, kept under it.
    Entry,
    /// Anything else: kept.
    Kept,
}

/// The role of the native function `name` in a stack with Python frames.
pub fn native_role(name: &str) -> NativeRole {
    if name == EVAL_FUNCTION {
        NativeRole::Eval
    } else if PLUMBING_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
    {
        NativeRole::Plumbing
    } else {
        NativeRole::Kept
    }
}

/// The frames the Python view shows for work it cannot show as it ran.
#[derive(Clone, Debug)]
pub struct StandIns<F> {
    /// The garbage collector's work.
    pub collector: F,
    /// Python code whose frames were not walked (the thread state not found yet): in
    /// place of the outermost eval function, in the Python view only.
    pub unknown_python: Option<F>,
    /// A wait to take the GIL: in place of the frames that waited, in the Python view
    /// only.
    pub gil_wait: Option<F>,
}

/// Ends `frames`, a stack whose thread waited for the GIL, at its innermost Python frame
/// (`is_python`), followed by the stand-in for the wait in place of the interpreter's,
/// libc's and the kernel's frames that did the waiting: the wait is the reason, not
/// how `take_gil` sleeps. Without that stand-in (`--python-internals`), they stay.
pub fn end_at_gil_wait<F: Clone>(
    frames: &mut Vec<F>,
    is_python: impl Fn(&F) -> bool,
    stand_ins: &StandIns<F>,
) {
    let Some(wait) = &stand_ins.gil_wait else {
        return;
    };
    if let Some(innermost) = frames.iter().rposition(is_python) {
        frames.truncate(innermost + 1);
        frames.push(wait.clone());
    }
}

/// The frames of a user stack with its Python frames in place, root first, as whatever
/// stands for a frame (`F`: the frame itself, or its index in a table of frames):
/// `python_frame` makes one of a Python frame, `role` says what a native one is, and
/// `stand_ins` stand for the rest.
///
/// `native` holds each user address's frames, root first (an address with inlined
/// functions has several); `python` is innermost first, as the kernel walked it. The
/// k-th interpreter call from the root runs the k-th group of Python frames from the
/// root. When the native stack did not reach its root, the groups are paired from the
/// innermost instead, and groups with no native frame left are put at the root.
/// In the Python view, a stack starts at its outermost Python frame, whether the
/// interpreter was linked into the program or loaded, unless a library's frame (an
/// embedding server's) is above it.
pub fn interleave<F: Clone, N: AsRef<[F]> + IntoIterator<Item = F>>(
    native: Vec<N>,
    python: &[PythonFrameRef],
    python_frame: impl Fn(&PythonFrameRef) -> F,
    role: impl Fn(&F) -> NativeRole,
    stand_ins: &StandIns<F>,
    native_complete: bool,
) -> Vec<F> {
    let groups = root_first_groups(python);
    let evals: Vec<usize> = native
        .iter()
        .enumerate()
        .filter(|(_, frames)| {
            frames
                .as_ref()
                .first()
                .is_some_and(|frame| role(frame) == NativeRole::Eval)
        })
        .map(|(index, _)| index)
        .collect();
    if python.is_empty() && (evals.is_empty() || stand_ins.unknown_python.is_none()) {
        return native.into_iter().flatten().collect();
    }
    // For each native address, the groups that replace it.
    let mut replacing: Vec<Vec<&[PythonFrameRef]>> = vec![Vec::new(); native.len()];
    let mut at_root: Vec<&[PythonFrameRef]> = Vec::new();
    let paired = groups.len().min(evals.len());
    if evals.is_empty() {
        at_root = groups;
    } else if native_complete {
        for (group, &eval) in groups.iter().zip(&evals) {
            replacing[eval].push(group);
        }
        // Entered Python, not its eval function yet: the innermost call takes them.
        if paired > 0 {
            replacing[evals[paired - 1]].extend(&groups[paired..]);
        }
    } else {
        let skipped_groups = groups.len() - paired;
        let skipped_evals = evals.len() - paired;
        at_root.extend(&groups[..skipped_groups]);
        for (group, &eval) in groups[skipped_groups..].iter().zip(&evals[skipped_evals..]) {
            replacing[eval].push(group);
        }
    }
    let root_first =
        |group: &&[PythonFrameRef]| group.iter().rev().map(&python_frame).collect::<Vec<_>>();
    let mut merged: Vec<F> = at_root.iter().flat_map(root_first).collect();
    let mut under_python = !merged.is_empty();
    let mut in_collector = false;
    for (index, frames) in native.into_iter().enumerate() {
        if evals.contains(&index) {
            let before = merged.len();
            merged.extend(replacing[index].iter().flat_map(root_first));
            if merged.len() == before
                && !under_python
                && let Some(unknown) = &stand_ins.unknown_python
            {
                merged.push(unknown.clone());
            }
            if merged.len() > before {
                under_python = true;
                in_collector = false;
            }
            continue;
        }
        for frame in frames {
            match role(&frame) {
                NativeRole::Kept => {
                    merged.push(frame);
                    in_collector = false;
                }
                NativeRole::Entry if under_python => {
                    merged.push(frame);
                    in_collector = false;
                }
                NativeRole::Collector if !in_collector => {
                    merged.push(stand_ins.collector.clone());
                    in_collector = true;
                }
                NativeRole::Eval
                | NativeRole::Plumbing
                | NativeRole::Internal
                | NativeRole::Collector
                | NativeRole::Entry => {}
            }
        }
    }
    merged
}

/// The Python frames split into the runs of each interpreter call, root first; each run
/// stays innermost first.
fn root_first_groups(python: &[PythonFrameRef]) -> Vec<&[PythonFrameRef]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for (index, frame) in python.iter().enumerate() {
        if frame.ends_call {
            groups.push(&python[start..=index]);
            start = index + 1;
        }
    }
    if start < python.len() {
        groups.push(&python[start..]);
    }
    groups.reverse();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Frame, Language, SourceFunction};

    fn native(names: &[&str]) -> Vec<Vec<Frame>> {
        names
            .iter()
            .map(|name| vec![Frame::native(*name, false)])
            .collect()
    }

    fn functions(names: &[&str]) -> Vec<SourceFunction> {
        names
            .iter()
            .map(|name| SourceFunction {
                language: Language::Python,
                qualname: (*name).to_owned(),
                file: "/app/main.py".to_owned(),
                line: 1,
                module: None,
                entry: false,
                installed: false,
            })
            .collect()
    }

    /// Innermost first: (function index, ends a call).
    fn python(frames: &[(u32, bool)]) -> Vec<PythonFrameRef> {
        frames
            .iter()
            .map(|&(function, ends_call)| PythonFrameRef {
                function,
                ends_call,
                line: 0,
            })
            .collect()
    }

    fn names(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(|frame| frame.name.clone()).collect()
    }

    fn merge(
        native: Vec<Vec<Frame>>,
        python: &[PythonFrameRef],
        functions: &[SourceFunction],
        native_complete: bool,
    ) -> Vec<String> {
        let python_frame =
            |frame: &PythonFrameRef| Frame::source(functions[frame.function as usize].clone());
        let role = |frame: &Frame| native_role(&frame.name);
        names(&interleave(
            native,
            python,
            python_frame,
            role,
            &StandIns {
                collector: Frame::native(crate::runtime::python::COLLECTOR_FRAME, false),
                unknown_python: None,
                gil_wait: None,
            },
            native_complete,
        ))
    }

    #[test]
    fn a_callback_keeps_native_python_native_python_order() {
        let native = native(&[
            "main",
            "PyEval_EvalCode",
            EVAL_FUNCTION,
            "cfunction_vectorcall_FASTCALL_KEYWORDS",
            "builtin_sorted",
            "list_sort_impl",
            "_PyObject_Vectorcall",
            "_PyEval_Vector",
            EVAL_FUNCTION,
            "PyNumber_Multiply",
        ]);
        let functions = functions(&["<module>", "rank", "key"]);
        // key | rank, <module>
        let stack = python(&[(2, true), (1, false), (0, true)]);
        let merged = merge(native, &stack, &functions, true);
        assert_eq!(
            merged,
            vec![
                "main",
                "<module> (main.py:1)",
                "rank (main.py:1)",
                "builtin_sorted",
                "list_sort_impl",
                "key (main.py:1)",
                "PyNumber_Multiply",
            ]
        );
    }

    #[test]
    fn a_perf_trampoline_gives_way_to_the_python_frame_it_enters() {
        let native = native(&[
            "main",
            "py::outer:/srv/main.py",
            EVAL_FUNCTION,
            "py::inner:/srv/main.py",
            EVAL_FUNCTION,
            "PyNumber_Multiply",
        ]);
        let functions = functions(&["outer", "inner"]);
        let stack = python(&[(1, true), (0, true)]);
        assert_eq!(
            merge(native, &stack, &functions, true),
            vec![
                "main",
                "outer (main.py:1)",
                "inner (main.py:1)",
                "PyNumber_Multiply"
            ]
        );
    }

    #[test]
    fn a_python_call_not_yet_in_its_eval_function_joins_the_innermost_one() {
        let native = native(&["main", EVAL_FUNCTION, "_PyFunction_Vectorcall"]);
        let functions = functions(&["outer", "inner"]);
        let stack = python(&[(1, true), (0, true)]);
        assert_eq!(
            merge(native, &stack, &functions, true),
            vec!["main", "outer (main.py:1)", "inner (main.py:1)"]
        );
    }

    #[test]
    fn a_truncated_native_stack_pairs_from_the_innermost_call() {
        let native = native(&[EVAL_FUNCTION, "hash_update"]);
        let functions = functions(&["<module>", "predict"]);
        let stack = python(&[(1, true), (0, true)]);
        assert_eq!(
            merge(native, &stack, &functions, false),
            vec!["<module> (main.py:1)", "predict (main.py:1)", "hash_update"]
        );
    }

    #[test]
    fn the_interpreters_work_under_python_frames_folds_and_the_collector_is_one_frame() {
        let native = native(&[
            "_start",
            "embedding_server_run",
            "Py_BytesMain",
            EVAL_FUNCTION,
            "builtin_sum",
            "PyIter_Next",
            EVAL_FUNCTION,
            "gc_collect_main",
            "visit_decref",
            "gc_collect_main",
            "memset",
        ]);
        let functions = functions(&["<module>", "predict", "<genexpr>"]);
        let stack = python(&[(2, true), (1, false), (0, true)]);
        // As the view would have it: an embedding server and libc's memset are
        // libraries; the rest, the interpreter's.
        let role = |frame: &Frame| match frame.name.as_str() {
            "_start" => NativeRole::Entry,
            "embedding_server_run" | "memset" => NativeRole::Kept,
            "gc_collect_main" => NativeRole::Collector,
            name if name == EVAL_FUNCTION => NativeRole::Eval,
            _ => NativeRole::Internal,
        };
        let python_frame =
            |frame: &PythonFrameRef| Frame::source(functions[frame.function as usize].clone());
        let merged = interleave(
            native,
            &stack,
            python_frame,
            role,
            &StandIns {
                collector: Frame::native("[gc]", false),
                unknown_python: Some(Frame::native("[unknown Python function]", false)),
                gil_wait: None,
            },
            true,
        );
        assert_eq!(
            names(&merged),
            vec![
                "embedding_server_run",
                "<module> (main.py:1)",
                "predict (main.py:1)",
                "<genexpr> (main.py:1)",
                "[gc]",
                "memset",
            ]
        );
    }

    #[test]
    fn python_code_whose_frames_were_not_walked_is_one_unknown_frame_in_the_view() {
        let native = native(&["main", EVAL_FUNCTION, "builtin_sorted", "memcpy"]);
        let role = |frame: &Frame| match frame.name.as_str() {
            "main" => NativeRole::Entry,
            "memcpy" => NativeRole::Kept,
            name if name == EVAL_FUNCTION => NativeRole::Eval,
            _ => NativeRole::Internal,
        };
        let stand_ins = |unknown_python| StandIns {
            collector: Frame::native("[gc]", false),
            unknown_python,
            gil_wait: None,
        };
        let view = interleave(
            native.clone(),
            &[],
            |_| unreachable!(),
            role,
            &stand_ins(Some(Frame::native("[unknown Python function]", false))),
            true,
        );
        assert_eq!(names(&view), vec!["[unknown Python function]", "memcpy"]);
        let internals = interleave(
            native,
            &[],
            |_| unreachable!(),
            role,
            &stand_ins(None),
            true,
        );
        assert_eq!(names(&internals).len(), 4);
    }

    #[test]
    fn stacks_without_python_frames_keep_every_native_frame() {
        let native = native(&["main", "PyObject_Call", "work"]);
        assert_eq!(
            merge(native, &[], &[], true),
            vec!["main", "PyObject_Call", "work"]
        );
    }

    #[test]
    fn a_gil_wait_ends_at_the_innermost_python_frame_in_the_python_view_only() {
        let python = Frame {
            source: Some(crate::runtime::python::unknown_function()),
            ..Frame::native("work (app.py:3)", false)
        };
        let stack = vec![
            Frame::native("start_thread", false),
            python.clone(),
            Frame::native("take_gil", false),
            Frame::native("__futex_abstimed_wait_common", false),
            Frame::native("futex_wait", true),
        ];
        let wait = Frame::native("[GIL wait]", false);
        let stand_ins = |gil_wait| StandIns {
            collector: Frame::native("[gc]", false),
            unknown_python: None,
            gil_wait,
        };
        let mut viewed = stack.clone();
        end_at_gil_wait(
            &mut viewed,
            |frame| frame.source.is_some(),
            &stand_ins(Some(wait.clone())),
        );
        assert_eq!(viewed, vec![stack[0].clone(), python, wait]);
        let mut internals = stack.clone();
        end_at_gil_wait(
            &mut internals,
            |frame| frame.source.is_some(),
            &stand_ins(None),
        );
        assert_eq!(internals, stack);
    }
}
