//! speedscope files (`--speedscope FILE`), as https://www.speedscope.app and `npx
//! speedscope` open them: the on-CPU samples as a sampled profile per thread, busiest
//! first, over one shared table of frames. The format is speedscope's
//! `file-format-schema.json`; the tests check the file against the schema the npm
//! package ships.
//!
//! Weights are sample counts (unit `none`), as the JSON report counts them; each
//! distinct stack of a thread is one sample weighted by how often it was seen, so the
//! time-ordered view has no meaning here, and the left-heavy and sandwich views do.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Write},
};

use serde_json::{Value, json};

use super::{Output, Written, summary};
use crate::{
    attach::EventSet,
    profile::{Frame, Origin, Profile},
};

/// The on-CPU profile as a speedscope file.
#[derive(Clone, Copy, Debug)]
pub struct Speedscope;

impl Output for Speedscope {
    fn applies_to(&self, events: EventSet) -> bool {
        events.cpu
    }

    fn write(&self, written: &Written<'_>, mut writer: &mut dyn Write) -> io::Result<()> {
        let report = written.report;
        let title = summary::flame_graph_labels(report).title;
        let document = document(&report.profile, &report.process_names, &title);
        serde_json::to_writer(&mut writer, &document)?;
        writeln!(writer)
    }
}

/// One thread's samples: speedscope frame indices, root first, and their weights.
#[derive(Default)]
struct ThreadSamples {
    samples: Vec<Vec<usize>>,
    weights: Vec<u64>,
}

/// The speedscope document of an on-CPU `profile` of the processes `process_names`
/// names, titled `title`.
fn document(profile: &Profile, process_names: &BTreeMap<u32, String>, title: &str) -> Value {
    // Root frames that name a process are left out: each profile is one thread's.
    let mut index_of: HashMap<usize, usize> = HashMap::new();
    let mut frames: Vec<Value> = Vec::new();
    let mut threads: BTreeMap<Origin, ThreadSamples> = BTreeMap::new();
    for stack in &profile.stacks {
        let sample: Vec<usize> = stack
            .frames
            .iter()
            .filter(|&&id| profile.frames[id].process.is_none())
            .map(|&id| {
                *index_of.entry(id).or_insert_with(|| {
                    frames.push(frame(&profile.frames[id]));
                    frames.len() - 1
                })
            })
            .collect();
        if sample.is_empty() {
            continue;
        }
        let thread = threads.entry(stack.origin).or_default();
        thread.samples.push(sample);
        thread.weights.push(stack.count);
    }
    let mut threads: Vec<(Origin, ThreadSamples)> = threads.into_iter().collect();
    threads.sort_by_key(|(_, thread)| std::cmp::Reverse(thread.weights.iter().sum::<u64>()));
    let profiles: Vec<Value> = threads
        .into_iter()
        .map(|(origin, thread)| {
            let total: u64 = thread.weights.iter().sum();
            json!({
                "type": "sampled",
                "name": thread_name(process_names, origin),
                "unit": "none",
                "startValue": 0,
                "endValue": total,
                "samples": thread.samples,
                "weights": thread.weights,
            })
        })
        .collect();
    json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "name": title,
        "exporter": concat!("profiler ", env!("CARGO_PKG_VERSION")),
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": profiles,
    })
}

/// A frame as speedscope shows it: a Python function by its qualified name, with its
/// file and the line of its definition; a native one with the file it was mapped from.
fn frame(frame: &Frame) -> Value {
    match (&frame.source, &frame.object) {
        (Some(python), _) => json!({
            "name": python.qualname,
            "file": python.file,
            "line": python.line,
        }),
        (None, Some(object)) => json!({
            "name": frame.name,
            "file": object.path,
        }),
        (None, None) => json!({ "name": summary::display_name(frame) }),
    }
}

/// `model-server [4242] thread 4243`, or the process alone when the thread is unknown.
fn thread_name(process_names: &BTreeMap<u32, String>, origin: Origin) -> String {
    let process = match origin.pid {
        Some(pid) => match process_names.get(&pid) {
            Some(name) => format!("{name} [{pid}]"),
            None => format!("[{pid}]"),
        },
        None => "every process".to_owned(),
    };
    match origin.tid {
        Some(tid) => format!("{process} thread {tid}"),
        None => process,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileBuilder;

    #[test]
    fn each_thread_is_a_profile_over_shared_frames_busiest_first() {
        let mut builder = ProfileBuilder::default();
        let thread = |tid| Origin {
            pid: Some(7),
            tid: Some(tid),
        };
        let stack = |names: &[&str]| {
            let mut frames = vec![Frame::process(7, "server")];
            frames.extend(names.iter().map(|name| Frame::native(*name, false)));
            frames
        };
        builder.push_from(thread(8), stack(&["main", "work"]), 3);
        builder.push_from(thread(9), stack(&["main", "work", "inner"]), 5);
        builder.push_from(thread(9), stack(&["main"]), 1);
        let names = BTreeMap::from([(7, "server".to_owned())]);
        let document = document(&builder.build(), &names, "title");
        let names: Vec<&str> = document["shared"]["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|frame| frame["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["main", "work", "inner"]);
        let profiles = document["profiles"].as_array().unwrap();
        assert_eq!(profiles[0]["name"], "server [7] thread 9");
        assert_eq!(profiles[0]["samples"], json!([[0, 1, 2], [0]]));
        assert_eq!(profiles[0]["weights"], json!([5, 1]));
        assert_eq!(profiles[0]["endValue"], 6);
        assert_eq!(profiles[1]["name"], "server [7] thread 8");
        assert_eq!(profiles[1]["samples"], json!([[0, 1]]));
    }
}
