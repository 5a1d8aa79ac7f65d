//! Language runtimes: finding them in the targets, walking and naming the frames of
//! the program's own code, and the view that shows those frames in place of the
//! runtime's native internals.
//!
//! A runtime is a module here. It finds its interpreter in a process's mappings, tells
//! the kernel how to walk its frames, names what the kernel walked as
//! [`crate::profile::SourceFunction`]s, and says what each native frame of a stack with
//! its frames becomes: kept, replaced by source frames, or folded into the source frame
//! that ran it.

pub mod go;
pub mod java;
pub mod node;
pub mod perf_map;
pub mod python;

use crate::{
    memory_map::Mapping,
    profile::{Language, SourceFunction},
};

/// The source function a native or JIT frame named `name` is, in code of `language`.
pub fn source_function(language: Language, name: &str) -> Option<SourceFunction> {
    match language {
        Language::Go => Some(go::source_function(name)),
        Language::JavaScript => node::source_function(name),
        Language::Java => java::source_function(name),
        Language::Python => None,
    }
}

/// How the runtime of a process with these mappings writes the perf map that names its
/// JIT code.
pub fn perf_map_hint(mappings: &[Mapping]) -> &'static str {
    let maps = |name: &str| {
        mappings.iter().any(|mapping| {
            mapping
                .path
                .as_deref()
                .and_then(|path| path.file_name())
                .is_some_and(|file| file == name)
        })
    };
    if maps("libjvm.so") {
        java::PERF_MAP_HINT
    } else if maps("node") || maps("nodejs") || maps("libnode.so.108") {
        node::PERF_MAP_HINT
    } else {
        "the runtime must write /tmp/perf-PID.map (the perf map format)"
    }
}
