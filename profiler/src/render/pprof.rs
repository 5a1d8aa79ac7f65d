//! pprof profiles (`--pprof FILE`): gzipped `profile.proto`, the format `go tool pprof`,
//! Pyroscope, Parca and the cloud profilers read. One profile per recorded kind: on-CPU
//! samples and time, off-CPU time, and the bytes and blocks leak candidates hold.
//!
//! The messages are declared here with prost's derive, field numbers as in
//! `profile.proto`; prost does the encoding.

use std::{
    collections::HashMap,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use super::{Output, OutputPath, Written};
use crate::{
    attach::EventSet,
    profile::{Frame, ObjectFile, Origin},
    report::{ProfileKind, Report},
};

/// The gzipped pprof profile of one kind (`--pprof`).
#[derive(Clone, Copy, Debug)]
pub struct Pprof(pub ProfileKind);

/// Every kind's pprof output when `--pprof` names `path`: the on-CPU profile at `path`,
/// the others with `-offcpu` or `-leaks` after the file's stem (`cpu.pb.gz` →
/// `cpu-offcpu.pb.gz`). Each is written when its kind is recorded.
pub fn outputs_at(path: &Path) -> [OutputPath; 3] {
    [ProfileKind::Cpu, ProfileKind::OffCpu, ProfileKind::Leaks]
        .map(|kind| OutputPath::new(Pprof(kind), path_of(kind, path)))
}

fn path_of(kind: ProfileKind, path: &Path) -> PathBuf {
    let suffix = match kind {
        ProfileKind::Cpu => return path.to_owned(),
        ProfileKind::OffCpu => "-offcpu",
        ProfileKind::Leaks => "-leaks",
    };
    let name = path
        .file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    let (stem, extensions) = match name.find('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name.as_str(), ""),
    };
    path.with_file_name(format!("{stem}{suffix}{extensions}"))
}

impl Output for Pprof {
    fn applies_to(&self, events: EventSet) -> bool {
        self.0.recorded_in(events)
    }

    fn write(&self, written: &Written<'_>, writer: &mut dyn Write) -> io::Result<()> {
        let mut encoder = GzEncoder::new(writer, Compression::default());
        encoder.write_all(&profile(written.report, self.0).encode_to_vec())?;
        encoder.finish()?;
        Ok(())
    }
}

/// The `kind` profile of `report`.
fn profile(report: &Report, kind: ProfileKind) -> Profile {
    let mut builder = Builder::default();
    match kind {
        ProfileKind::Cpu => {
            let period = report.probes.sample_interval_ns() as i64;
            builder.sample_types(&[("samples", "count"), ("cpu", "nanoseconds")]);
            builder.profile.period_type = Some(builder.value_type("cpu", "nanoseconds"));
            builder.profile.period = period;
            for stack in &report.profile.stacks {
                let samples = stack.count as i64;
                builder.sample(
                    report,
                    report.profile.placed(stack),
                    stack.origin,
                    vec![samples, samples * period],
                );
            }
        }
        ProfileKind::OffCpu => {
            builder.sample_types(&[("offcpu", "nanoseconds")]);
            let profile = &report.offcpu.profile;
            for stack in &profile.stacks {
                let frames = profile.placed(stack);
                builder.sample(report, frames, stack.origin, vec![stack.count as i64]);
            }
        }
        ProfileKind::Leaks => {
            // Go's heap profiles name these so; pprof's views know them.
            builder.sample_types(&[("inuse_objects", "count"), ("inuse_space", "bytes")]);
            for candidate in &report.leaks.candidates {
                let origin = Origin {
                    pid: Some(candidate.pid),
                    tid: None,
                };
                let values = vec![candidate.count as i64, candidate.bytes as i64];
                let frames = candidate.stack.iter().map(|frame| (frame, 0));
                builder.sample(report, frames, origin, values);
            }
        }
    }
    let started = SystemTime::now()
        .checked_sub(report.duration)
        .and_then(|start| start.duration_since(UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO);
    builder.profile.time_nanos = started.as_nanos() as i64;
    builder.profile.duration_nanos = report.duration.as_nanos() as i64;
    builder.profile.string_table = builder.strings.table;
    builder.profile
}

/// Interns strings, functions and locations as a profile is filled.
#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: Strings,
    /// Function ids by frame.
    functions: HashMap<Frame, u64>,
    /// Location ids by frame and source line: a location is one line of one function,
    /// so that `go tool pprof -list` shows a Python function's lines.
    locations: HashMap<(Frame, u32), u64>,
    /// Mapping ids by file; the kernel is one mapping.
    mappings: HashMap<Option<Arc<ObjectFile>>, u64>,
}

impl Builder {
    fn value_type(&mut self, kind: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.strings.id(kind),
            unit: self.strings.id(unit),
        }
    }

    fn sample_types(&mut self, types: &[(&str, &str)]) {
        self.profile.sample_type = types
            .iter()
            .map(|(kind, unit)| self.value_type(kind, unit))
            .collect();
    }

    /// Adds a sample of `frames`, root first, each with the source line it was running
    /// (0 for none), with its process and thread as labels.
    fn sample<'f>(
        &mut self,
        report: &Report,
        frames: impl DoubleEndedIterator<Item = (&'f Frame, u32)>,
        origin: Origin,
        value: Vec<i64>,
    ) {
        // pprof lists a sample's locations leaf first; a process's root frame is a
        // label instead.
        let location_id = frames
            .rev()
            .filter(|(frame, _)| frame.process.is_none())
            .map(|(frame, line)| self.location(frame, line))
            .collect();
        let mut label = Vec::new();
        if let Some(pid) = origin.pid {
            label.push(self.number_label("pid", pid));
            if let Some(name) = report.process_names.get(&pid) {
                label.push(Label {
                    key: self.strings.id("process"),
                    str: self.strings.id(name),
                    ..Label::default()
                });
            }
        }
        if let Some(tid) = origin.tid {
            label.push(self.number_label("tid", tid));
        }
        self.profile.sample.push(Sample {
            location_id,
            value,
            label,
        });
    }

    fn number_label(&mut self, key: &str, number: u32) -> Label {
        Label {
            key: self.strings.id(key),
            num: i64::from(number),
            ..Label::default()
        }
    }

    /// The id of `frame`'s location at source line `line` (0: its definition's, if it
    /// has one), added the first time.
    fn location(&mut self, frame: &Frame, line: u32) -> u64 {
        if let Some(&id) = self.locations.get(&(frame.clone(), line)) {
            return id;
        }
        let id = self.locations.len() as u64 + 1;
        let function_id = self.function(frame);
        let first_line = frame.source.as_ref().map_or(0, |source| source.line);
        let mapping_id = self.mapping(frame);
        self.profile.location.push(Location {
            id,
            mapping_id,
            line: vec![Line {
                function_id,
                line: i64::from(if line == 0 { first_line } else { line }),
                column: 0,
            }],
            ..Location::default()
        });
        self.locations.insert((frame.clone(), line), id);
        id
    }

    /// The id of `frame`'s function, added the first time.
    fn function(&mut self, frame: &Frame) -> u64 {
        if let Some(&id) = self.functions.get(frame) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        // `go tool pprof` shows a function's file but no label of its location, so a
        // runtime's function that has no file carries its language there: `[go]`.
        let language_file;
        let (name, file, line) = match &frame.source {
            Some(source) if source.file.is_empty() => {
                language_file = format!("[{}]", source.language.name());
                (
                    source.qualname.as_str(),
                    language_file.as_str(),
                    source.line,
                )
            }
            Some(source) => (source.qualname.as_str(), source.file.as_str(), source.line),
            None => (frame.name.as_str(), "", 0),
        };
        let name = self.strings.id(name);
        self.profile.function.push(Function {
            id,
            name,
            system_name: name,
            filename: self.strings.id(file),
            start_line: i64::from(line),
        });
        self.functions.insert(frame.clone(), id);
        id
    }

    /// The id of the mapping `frame`'s code came from (its file's, or the kernel's),
    /// added the first time; 0, no mapping, for Python frames and unknown files.
    fn mapping(&mut self, frame: &Frame) -> u64 {
        let object = if frame.kernel {
            Some(Arc::new(ObjectFile {
                path: "[kernel.kallsyms]".to_owned(),
                build_id: None,
            }))
        } else {
            frame.object.clone()
        };
        let Some(file) = &object else {
            return 0;
        };
        if let Some(&id) = self.mappings.get(&object) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let build_id = file.build_id.as_deref().map_or(0, |id| self.strings.id(id));
        self.profile.mapping.push(Mapping {
            id,
            filename: self.strings.id(&file.path),
            build_id,
            has_functions: true,
            ..Mapping::default()
        });
        self.mappings.insert(object, id);
        id
    }
}

/// The string table: index 0 is the empty string, as the format requires.
struct Strings {
    table: Vec<String>,
    ids: HashMap<String, i64>,
}

impl Default for Strings {
    fn default() -> Self {
        Strings {
            table: vec![String::new()],
            ids: HashMap::from([(String::new(), 0)]),
        }
    }
}

impl Strings {
    fn id(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(text.to_owned());
        self.ids.insert(text.to_owned(), id);
        id
    }
}

// profile.proto (github.com/google/pprof/proto/profile.proto), the fields written.

#[derive(Clone, PartialEq, prost::Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    period: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
    #[prost(int64, tag = "3")]
    num: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Mapping {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    memory_start: u64,
    #[prost(uint64, tag = "3")]
    memory_limit: u64,
    #[prost(uint64, tag = "4")]
    file_offset: u64,
    #[prost(int64, tag = "5")]
    filename: i64,
    #[prost(int64, tag = "6")]
    build_id: i64,
    #[prost(bool, tag = "7")]
    has_functions: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    mapping_id: u64,
    #[prost(uint64, tag = "3")]
    address: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
    #[prost(int64, tag = "3")]
    column: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
    #[prost(int64, tag = "5")]
    start_line: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_file_next_to_the_named_one() {
        let paths: Vec<PathBuf> = outputs_at(Path::new("out/cpu.pb.gz"))
            .into_iter()
            .map(|output| output.path)
            .collect();
        assert_eq!(
            paths,
            [
                "out/cpu.pb.gz",
                "out/cpu-offcpu.pb.gz",
                "out/cpu-leaks.pb.gz"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            path_of(ProfileKind::Leaks, Path::new("profile")),
            Path::new("profile-leaks")
        );
    }

    #[test]
    fn a_runtime_function_without_a_file_names_its_language_in_its_place() {
        let mut builder = Builder::default();
        let go = Frame::source(crate::runtime::go::source_function("main.predict"));
        let id = builder.function(&go);
        let function = &builder.profile.function[id as usize - 1];
        assert_eq!(
            builder.strings.table[function.name as usize],
            "main.predict"
        );
        assert_eq!(builder.strings.table[function.filename as usize], "[go]");
    }

    #[test]
    fn strings_start_empty_and_are_interned_once() {
        let mut strings = Strings::default();
        assert_eq!(strings.id(""), 0);
        assert_eq!(strings.id("cpu"), 1);
        assert_eq!(strings.id("samples"), 2);
        assert_eq!(strings.id("cpu"), 1);
        assert_eq!(strings.table, ["", "cpu", "samples"]);
    }
}
