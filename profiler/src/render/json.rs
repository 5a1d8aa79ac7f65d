//! The machine-readable report, `--json FILE`.
//!
//! Shares are fractions from 0 to 1 of the target's on-CPU samples; `functions` is sorted
//! by `total`, largest first. Durations are integer nanoseconds, stacks are listed root
//! first. Every section is present whatever `--events` says, empty when not recorded.
//! docs/reference.md documents every field.

use std::{io, sync::Arc, time::Duration};

use serde::ser::{Serialize, SerializeMap as _, Serializer};
use serde_json::{Value, json};

use super::{Output, Written};
use crate::{
    aggregate::{Completeness, Latency},
    analyze::{Check, FunctionShare, LockTime, LockTimes, RuleOutcome},
    attach::EventSet,
    profile::{
        Frame, Language, LockState, ObjectFile, Origin, Profile, ProfileBuilder, SourceFunction,
        Stack,
    },
    render::folded::frame_label,
    report::{Report, StackQuality, StopReason},
    runtime::python::PythonReport,
};

/// The JSON report (`--json`).
#[derive(Clone, Copy, Debug)]
pub struct JsonReport;

impl Output for JsonReport {
    fn applies_to(&self, _events: EventSet) -> bool {
        true
    }

    fn write(&self, written: &Written<'_>, mut writer: &mut dyn io::Write) -> io::Result<()> {
        let mut document = document(written.report, written.stop_to_svg);
        if let Some(interval) = written.interval {
            document.fields["stop_reason"] = json!("interval");
            document.fields["interval"] = json!({
                "index": interval.index,
                "start_s": interval.start.as_secs_f64(),
                "end_s": interval.end.as_secs_f64(),
            });
        }
        write(&document, &mut writer)
    }
}

/// The JSON document of a report.
pub struct Document<'r> {
    /// Every field, except that `cpu.stacks` is null here: the stacks are written from
    /// the profile as they are. A `Value` for each of a long recording's hundreds of
    /// thousands of frame ids took a fifth of the profiler's stop.
    pub fields: Value,
    stacks: &'r [Stack],
}

/// The JSON document of a report; `stop_to_svg` is the time from the stop to a written
/// SVG.
pub fn document(report: &Report, stop_to_svg: Duration) -> Document<'_> {
    Document {
        fields: fields(report, stop_to_svg),
        stacks: &report.profile.stacks,
    }
}

/// Every field of the document, `cpu.stacks` left null.
fn fields(report: &Report, stop_to_svg: Duration) -> Value {
    let analysis = &report.analysis;
    let function = |share: &FunctionShare| {
        with(
            frame_fields(&share.frame),
            json!({
                "self": share.self_share,
                "total": share.total_share,
                "self_samples": share.self_samples,
                "total_samples": share.total_samples,
            }),
        )
    };
    let percentiles = |latency: &Latency| {
        json!({
            "p50_ns": latency.quantile(0.5),
            "p90_ns": latency.quantile(0.9),
            "p99_ns": latency.quantile(0.99),
            "p999_ns": latency.quantile(0.999),
            "max_ns": latency.max(),
        })
    };
    let losses = &report.losses;
    json!({
        "duration_s": report.duration.as_secs_f64(),
        "events": report.probes.events.names().collect::<Vec<_>>(),
        "stop_reason": stop_reason(report.stop),
        "target": {
            "pids": report.targets.iter().map(|t| t.pid).collect::<Vec<_>>(),
            "names": report.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            "command": report.command,
            "cgroup": report.cgroup,
            "all": report.probes.all,
            "namespace_pids": report.targets.iter().map(|t| t.namespace_pid).collect::<Vec<_>>(),
            "cgroups": report.targets.iter().map(|t| t.cgroup.as_deref()).collect::<Vec<_>>(),
            "exited": matches!(report.stop, StopReason::TargetsExited(_)),
        },
        "cpu": {
            "samples": analysis.samples,
            "lost": losses.cpu(),
            "steal_left_out": report.steal_samples_left_out,
            "frequency_hz": report.probes.frequency_hz,
            "threads": report.threads.iter().map(|&((pid, tid), samples)| {
                json!({"pid": pid, "tid": tid, "samples": samples})
            }).collect::<Vec<_>>(),
            "processes": report.processes().iter().map(|process| json!({
                "pid": process.pid,
                "name": process.name,
                "samples": process.samples,
                "share": process.samples as f64 / analysis.samples.max(1) as f64,
                "threads": process.threads,
            })).collect::<Vec<_>>(),
            "functions": analysis.functions.iter().map(function).collect::<Vec<_>>(),
            "hotspots": analysis.hotspots.iter().map(|hotspot| json!({
                "name": hotspot.frame.name,
                "total": hotspot.total_share,
                "threshold": analysis.hotspot_threshold,
            })).collect::<Vec<_>>(),
            "hot_lines": analysis.hot_lines.iter().map(|line| json!({
                "name": line.frame.name,
                "line": line.line,
                "total": line.total_share,
                "self": line.self_share,
            })).collect::<Vec<_>>(),
            "hot_path": analysis.hot_path.iter().map(|step| with(frame_fields(&step.frame), json!({
                "total": step.share,
                "hotspot": step.hotspot,
            }))).collect::<Vec<_>>(),
            "frames": report.profile.frames.iter().map(frame_fields).collect::<Vec<_>>(),
            "stacks": Value::Null,
        },
        "syscalls": report.syscalls.iter().map(|syscall| with(json!({
            "name": syscall.name,
            "nr": syscall.nr,
            "count": syscall.count,
            "errors": syscall.errors,
            "errnos": syscall.errnos.iter().map(|(name, count)| (name.clone(), json!(count)))
                .collect::<serde_json::Map<_, _>>(),
            "total_ns": syscall.total_ns,
        }), percentiles(&syscall.latency))).collect::<Vec<_>>(),
        "slow_calls": report.slow_calls.iter().map(|call| json!({
            "name": call.name,
            "duration_ns": call.duration_ns,
            "pid": call.pid,
            "tid": call.tid,
            "ret": call.ret,
            "stack": call.stack.iter().map(frame_label).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "slow_calls_total": report.slow_call_count,
        "slow_ms": report.probes.slow_syscall.as_secs_f64() * 1e3,
        "io": report.io.iter().map(|row| with(json!({
            "device": row.device,
            "op": row.op.to_string(),
            "count": row.stats.count,
            "bytes": row.stats.bytes,
            "errors": row.stats.errors,
        }), percentiles(&row.stats.latency))).collect::<Vec<_>>(),
        "offcpu": {
            "total_ns": report.offcpu.profile.samples(),
            "min_us": report.probes.offcpu_min.as_secs_f64() * 1e6,
            "functions": report.offcpu.functions.iter().map(|function| with(
                frame_fields(&function.frame),
                json!({
                    "total_ns": function.total_samples,
                    "self_ns": function.self_samples,
                }),
            )).collect::<Vec<_>>(),
            "threads": report.offcpu.threads.iter().map(|&((pid, tid), ns)| {
                json!({"pid": pid, "tid": tid, "total_ns": ns})
            }).collect::<Vec<_>>(),
        },
        "leaks": {
            "min_age_s": report.leaks.min_age.as_secs_f64(),
            "sample_bytes": report.probes.alloc_sample_bytes,
            "alloc_calls": report.leaks.alloc_calls,
            "free_calls": report.leaks.free_calls,
            "lost": losses.alloc(),
            "outstanding_bytes": report.leaks.outstanding_bytes,
            "outstanding_count": report.leaks.outstanding_count,
            "candidates": report.leaks.candidates.iter().map(|candidate| json!({
                "function": candidate.function,
                "pid": candidate.pid,
                "stack": candidate.stack.iter().map(frame_label).collect::<Vec<_>>(),
                "bytes": candidate.bytes,
                "count": candidate.count,
                "oldest_age_s": candidate.oldest_age.as_secs_f64(),
                "growth_bytes_per_s": candidate.growth_per_s,
            })).collect::<Vec<_>>(),
        },
        "stacks": stacks(&report.stack_quality),
        "python": with(python(&report.python), json!({ "gil": gil(&report.lock_times) })),
        "lost": {
            "cpu_samples": losses.cpu(),
            "syscalls": losses.syscalls(),
            "io": losses.io(),
            "offcpu": losses.offcpu(),
            "alloc": losses.alloc(),
            "by_reason": losses.counters.iter()
                .map(|(counter, count)| (format!("{counter:?}"), json!(count)))
                .chain([("MalformedRecord".to_owned(), json!(losses.malformed))])
                .collect::<serde_json::Map<_, _>>(),
        },
        "rules": analysis.rules.iter().map(rule).collect::<Vec<_>>(),
        "overhead": {
            "bpf_run_time_ns": report.cost.bpf.map(|bpf| bpf.run_time.as_nanos() as u64),
            "bpf_run_count": report.cost.bpf.map(|bpf| bpf.run_count),
            "profiler_cpu_s": report.cost.process_cpu.as_secs_f64(),
            "start_cpu_s": report.cost.start_cpu.as_secs_f64(),
            "start_ms": report.cost.start_wall.as_secs_f64() * 1e3,
            "stop_to_svg_ms": stop_to_svg.as_secs_f64() * 1e3,
            "naming_ms": report.cost.naming.as_secs_f64() * 1e3,
            "named_processes": report.cost.named_processes,
            "kernel_memory_bytes": report.cost.kernel_memory_bytes,
        },
    })
}

/// Writes `document` pretty-printed, with a final newline.
pub fn write(document: &Document<'_>, writer: &mut impl io::Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *writer, document)?;
    writeln!(writer)
}

impl Serialize for Document<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let cpu = Replacing {
            fields: &self.fields["cpu"],
            key: "stacks",
            value: &StackList(self.stacks),
        };
        Replacing {
            fields: &self.fields,
            key: "cpu",
            value: &cpu,
        }
        .serialize(serializer)
    }
}

/// An object with the value of one key written by `value` instead, in the object's
/// own key order.
struct Replacing<'a, V> {
    fields: &'a Value,
    key: &'a str,
    value: &'a V,
}

impl<V: Serialize> Serialize for Replacing<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Value::Object(object) = self.fields else {
            return self.fields.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(object.len()))?;
        for (name, value) in object {
            if name == self.key {
                map.serialize_entry(name, self.value)?;
            } else {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// `cpu.stacks`.
struct StackList<'a>(&'a [Stack]);

impl Serialize for StackList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(StackEntry))
    }
}

struct StackEntry<'a>(&'a Stack);

impl Serialize for StackEntry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Sorted, as every other object of the document is.
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("frames", &self.0.frames)?;
        if let Some(lock) = self.0.lock {
            map.serialize_entry("gil", lock.name())?;
        }
        if !self.0.lines.is_empty() {
            let lines = self.0.lines.iter().map(|&line| (line != 0).then_some(line));
            map.serialize_entry("lines", &lines.collect::<Vec<_>>())?;
        }
        map.serialize_entry("pid", &self.0.origin.pid)?;
        map.serialize_entry("samples", &self.0.count)?;
        map.serialize_entry("tid", &self.0.origin.tid)?;
        map.end()
    }
}

/// The on-CPU profile of a JSON report, as [`document`] wrote it in `cpu.frames` and
/// `cpu.stacks`: what `profiler diff` compares.
pub fn cpu_profile(document: &Value) -> Result<Profile, String> {
    let cpu = &document["cpu"];
    let (Some(frames), Some(stacks)) = (cpu["frames"].as_array(), cpu["stacks"].as_array()) else {
        return Err("it has no cpu.frames and cpu.stacks (is it a profiler JSON report?)".into());
    };
    let frames: Vec<Frame> = frames
        .iter()
        .map(frame_from_fields)
        .collect::<Option<_>>()
        .ok_or("a frame in cpu.frames is malformed")?;
    let mut builder = ProfileBuilder::default();
    for stack_fields in stacks {
        let indices = stack_fields["frames"]
            .as_array()
            .zip(stack_fields["samples"].as_u64());
        let (indices, samples) = indices.ok_or("a stack in cpu.stacks is malformed")?;
        let stack: Option<Vec<Frame>> = indices
            .iter()
            .map(|index| frames.get(usize::try_from(index.as_u64()?).ok()?).cloned())
            .collect();
        let id = |field: &str| {
            stack_fields[field]
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
        };
        let origin = Origin {
            pid: id("pid"),
            tid: id("tid"),
        };
        let frames = stack.ok_or("a stack refers to a frame that is not listed")?;
        let lines = stack_fields["lines"].as_array();
        let line = |index: usize| {
            lines
                .and_then(|lines| lines.get(index)?.as_u64())
                .and_then(|line| u32::try_from(line).ok())
                .unwrap_or(0)
        };
        let placed = frames
            .into_iter()
            .enumerate()
            .map(|(index, frame)| (frame, line(index)));
        let lock = stack_fields["gil"].as_str().and_then(LockState::from_name);
        builder.push_placed(origin, lock, placed, samples);
    }
    Ok(builder.build())
}

/// The frame [`frame_fields`] describes.
fn frame_from_fields(fields: &Value) -> Option<Frame> {
    let name = fields["name"].as_str()?;
    let mut frame = Frame::native(name, fields["kernel"].as_bool()?);
    frame.object = fields["object"].as_str().map(|path| {
        Arc::new(ObjectFile {
            path: path.to_owned(),
            build_id: fields["build_id"].as_str().map(str::to_owned),
        })
    });
    let language = fields["language"].as_str()?;
    match Language::from_name(language) {
        None if language == "process" => {
            frame.process = Some(u32::try_from(fields["pid"].as_u64()?).ok()?);
        }
        Some(language) => {
            frame.source = Some(SourceFunction {
                language,
                qualname: fields["function"].as_str()?.to_owned(),
                file: fields["file"].as_str()?.to_owned(),
                line: u32::try_from(fields["line"].as_u64()?).ok()?,
                module: fields["module"].as_str().map(str::to_owned),
                entry: fields["entry"].as_bool().unwrap_or(false),
                installed: fields["installed"].as_bool().unwrap_or(false),
            })
        }
        None => {}
    }
    Some(frame)
}

/// Adds the fields of `extra` to `object`.
fn with(mut object: Value, extra: Value) -> Value {
    if let (Some(object), Value::Object(extra)) = (object.as_object_mut(), extra) {
        object.extend(extra);
    }
    object
}

/// What names a function: its name, where it runs, and for Python functions their
/// file, definition line and module.
fn frame_fields(frame: &Frame) -> Value {
    let language = match (&frame.source, frame.kernel, frame.process) {
        (_, _, Some(_)) => "process",
        (Some(source), _, _) => source.language.name(),
        (None, true, _) => "kernel",
        (None, false, _) => "native",
    };
    let mut fields = json!({
        "name": frame.name,
        "kernel": frame.kernel,
        "language": language,
    });
    if let Some(pid) = frame.process {
        fields["pid"] = json!(pid);
    }
    if let Some(object) = &frame.object {
        fields["object"] = json!(object.path);
        fields["build_id"] = json!(object.build_id);
    }
    if let Some(source) = &frame.source {
        fields = with(
            fields,
            json!({
                "function": source.qualname,
                "file": source.file,
                "line": source.line,
                "first_line": source.line,
                "module": source.module,
                "entry": source.entry,
                "installed": source.installed,
            }),
        );
    }
    fields
}

/// The interpreters walked and how well, and those that could not be.
fn python(report: &PythonReport) -> Value {
    json!({
        "interpreters": report.interpreters.iter().map(|found| json!({
            "pid": found.pid,
            "version": found.version.to_string(),
        })).collect::<Vec<_>>(),
        "notices": report.notices,
        "cpu_stack_ends": report.ends.iter()
            .map(|(reason, count)| ((*reason).to_owned(), json!(count)))
            .collect::<serde_json::Map<_, _>>(),
        "unresolved_code_objects": report.unresolved.iter()
            .map(|(reason, count)| ((*reason).to_owned(), json!(count)))
            .collect::<serde_json::Map<_, _>>(),
        "functions": report.functions,
    })
}

/// `python.gil`: time held, released and waiting, per process and for the top
/// functions; `waiting_s` is null when off-CPU time was not recorded.
fn gil(times: &LockTimes) -> Value {
    let time = |time: &LockTime| {
        let mut fields = serde_json::Map::new();
        for state in LockState::ALL {
            let ns = time.ns(state);
            fields.insert(
                format!("{}_s", state.name()),
                json!(ns.map(|ns| ns as f64 / 1e9)),
            );
            fields.insert(format!("{}_share", state.name()), json!(time.share(state)));
        }
        Value::Object(fields)
    };
    json!({
        "processes": times.processes.iter()
            .map(|process| with(json!({ "pid": process.pid }), time(&process.time)))
            .collect::<Vec<_>>(),
        "functions": times.functions.iter()
            .map(|function| with(frame_fields(&function.frame), time(&function.time)))
            .collect::<Vec<_>>(),
    })
}

/// How complete the user stacks were, per kind of record, and the unwind tables' cost.
fn stacks(quality: &StackQuality) -> Value {
    let completeness = |completeness: &Completeness| {
        json!({
            "total": completeness.total(),
            "complete": completeness.complete_share(),
            "truncated": completeness.truncated()
                .map(|(reason, count)| (reason.to_owned(), json!(count)))
                .collect::<serde_json::Map<_, _>>(),
            "methods": completeness.methods()
                .map(|(method, count)| (method.to_owned(), json!(count)))
                .collect::<serde_json::Map<_, _>>(),
        })
    };
    let tables = &quality.tables;
    json!({
        "cpu": completeness(&quality.cpu),
        "offcpu": completeness(&quality.offcpu),
        "slow_calls": completeness(&quality.slow_calls),
        "alloc": completeness(&quality.alloc),
        "unnamed_addresses": quality.unnamed.iter()
            .map(|(reason, count)| ((*reason).to_owned(), json!(count)))
            .collect::<serde_json::Map<_, _>>(),
        "jit_hints": quality.jit_hints,
        "unwind_tables": {
            "files": tables.files,
            "rows": tables.rows,
            "row_bytes": tables.row_bytes,
            "kernel_bytes": tables.kernel_bytes,
            "build_ms": tables.build_time.as_secs_f64() * 1e3,
            "files_without_table": tables.failed_files.iter()
                .map(|(reason, count)| ((*reason).to_owned(), json!(count)))
                .collect::<serde_json::Map<_, _>>(),
        },
    })
}

fn rule(outcome: &RuleOutcome) -> Value {
    let mut rule = match &outcome.rule.check {
        Check::CpuShare { limit, .. } => json!({
            "kind": "cpu",
            "share": outcome.observed,
            "limit": limit,
        }),
        Check::Latency { limit_ns, .. } => json!({
            "kind": "latency",
            "value_ns": outcome.observed as u64,
            "limit_ns": limit_ns,
        }),
        Check::BlockIo {
            device, limit_ns, ..
        } => json!({
            "kind": "io",
            "device": device,
            "value_ns": outcome.observed as u64,
            "limit_ns": limit_ns,
        }),
        Check::Leak { limit_bytes } => json!({
            "kind": "leak",
            "bytes": outcome.observed as u64,
            "limit_bytes": limit_bytes,
        }),
    };
    rule["rule"] = json!(outcome.rule.text);
    rule["matched"] = json!(outcome.matched);
    rule["fired"] = json!(outcome.fired);
    rule
}

fn stop_reason(stop: StopReason) -> Value {
    match stop {
        StopReason::Duration => json!("duration"),
        StopReason::Interrupted => json!("sigint"),
        StopReason::Terminated => json!("sigterm"),
        StopReason::Quit => json!("quit"),
        StopReason::TargetsExited(_) => json!("targets_exited"),
    }
}
