//! The runtimes part of `cargo xtask bench`: Go, Node.js and Java services that measure
//! their own phases (the unwinding tests' workloads), next to a C service, each
//! recorded by the profiler and by `perf record -g` at the same time.
//!
//! For each it gives the profiler's BPF time per sample and per user frame (the
//! hybrid walk and the Go rows against the C service's DWARF rows), and, for both
//! tools, the share of samples whose stack reaches the runtime's root and passes
//! through `worker`.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    bench::{median, perf_samples},
    compile_workload, profiler_binary, root, run_checked,
};

/// One runtime's service: how to start it, and what its stacks' root and worker are
/// called in either tool's output.
struct Service {
    name: &'static str,
    /// Frames, one of which every complete stack holds: the outermost one each tool
    /// can reach (perf's frame-pointer walk stops one short of `clone3` and `_start`).
    roots: &'static [&'static str],
    /// Whether a frame, as either tool names it, is the function every sample of the
    /// work passes through.
    is_worker: fn(&str) -> bool,
    start: fn(&Path, Duration) -> anyhow::Result<Child>,
}

const SERVICES: [Service; 4] = [
    Service {
        name: "c",
        roots: &["clone3", "start_thread"],
        is_worker: |frame| frame == "worker",
        start: start_c,
    },
    Service {
        name: "go",
        roots: &[
            "runtime.goexit",
            "runtime.goexit.abi0",
            "runtime.mstart",
            "runtime.rt0_go",
        ],
        is_worker: |frame| frame == "main.worker",
        start: start_go,
    },
    Service {
        name: "node",
        roots: &["_start", "__libc_start_call_main"],
        // Ours: `worker (phases.js:33)_[j]`; perf's: `JS:*worker /path/phases.js:33:16`.
        is_worker: |frame| frame.starts_with("worker (phases.js") || frame.contains("worker /"),
        start: start_node,
    },
    Service {
        name: "java",
        roots: &["clone3", "start_thread"],
        is_worker: |frame| frame == "Phases.worker_[j]" || frame == "void Phases.worker()",
        start: start_java,
    },
];

/// Records each service `runs` times, interleaved, and returns the results section.
pub fn run(dir: &Path, duration: Duration, runs: u32) -> anyhow::Result<Value> {
    let mut measured: Vec<Vec<Value>> = vec![Vec::new(); SERVICES.len()];
    for run in 1..=runs {
        for (index, service) in SERVICES.iter().enumerate() {
            println!(
                "bench: runtimes, run {run} of {runs}: {} (profiler and perf record -g)",
                service.name
            );
            measured[index].push(measure(dir, service, duration)?);
        }
    }
    let rows: Vec<Value> = SERVICES
        .iter()
        .zip(&measured)
        .map(|(service, runs)| {
            let field = |name: &str| {
                median(
                    runs.iter()
                        .map(|run| run[name].as_f64().unwrap_or(0.0))
                        .collect(),
                )
            };
            json!({
                "service": service.name,
                "bpf_ns_per_sample": field("bpf_ns_per_sample"),
                "user_frames_per_sample": field("user_frames_per_sample"),
                "bpf_ns_per_user_frame": field("bpf_ns_per_user_frame"),
                "profiler_reaching_root": field("profiler_reaching_root"),
                "perf_reaching_root": field("perf_reaching_root"),
                "profiler_through_worker": field("profiler_through_worker"),
                "perf_through_worker": field("perf_through_worker"),
                "runs": runs,
            })
        })
        .collect();
    Ok(json!(rows))
}

/// One recording of a service by both tools at once.
fn measure(dir: &Path, service: &Service, duration: Duration) -> anyhow::Result<Value> {
    // Started for the warm-up (the JIT's) and the recording, with a second to spare.
    let mut child = (service.start)(dir, duration + Duration::from_secs(4))?;
    sleep(Duration::from_secs(3));
    let pid = child.id().to_string();
    if service.name == "java" {
        run_checked(
            Command::new("jcmd")
                .args([&pid, "Compiler.perfmap"])
                .stdout(Stdio::null()),
        )?;
    }
    let seconds = duration.as_secs_f64().to_string();
    let perf_data = dir.join(format!("runtimes-{}.perf", service.name));
    let mut perf = Command::new("perf")
        .args(["record", "-g", "-F", "499", "-p", &pid, "-o"])
        .arg(&perf_data)
        .args(["--", "sleep", &seconds])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let report_path = dir.join(format!("runtimes-{}.json", service.name));
    let folded_path = dir.join(format!("runtimes-{}.folded", service.name));
    let status = Command::new(profiler_binary())
        .args(["record", "--pid", &pid, "--duration", &seconds, "-F", "499"])
        .arg("-o")
        .arg(dir.join("runtimes.svg"))
        .arg("--json")
        .arg(&report_path)
        .arg("--folded")
        .arg(&folded_path)
        .stdout(Stdio::null())
        .status()?;
    let perf_status = perf.wait()?;
    let _ = child.kill();
    let _ = child.wait();
    if !status.success() || !perf_status.success() {
        bail!("recording the {} service failed", service.name);
    }
    let report: Value = serde_json::from_str(&fs::read_to_string(&report_path)?)?;
    let ours = folded_stacks(&fs::read_to_string(&folded_path)?);
    let theirs: Vec<(Vec<String>, u64)> = perf_samples(&perf_data)?
        .into_iter()
        .map(|frames| (frames.into_iter().map(|frame| frame.name).collect(), 1))
        .collect();
    let samples = report["cpu"]["samples"].as_f64().unwrap_or(0.0).max(1.0);
    let bpf_ns = report["overhead"]["bpf_run_time_ns"]
        .as_f64()
        .unwrap_or(0.0)
        / samples;
    let frames = user_frames_per_sample(&report).context("the report's stacks")?;
    let reaching = |stacks: &[(Vec<String>, u64)]| {
        share(stacks, |frames| {
            frames
                .iter()
                .any(|frame| service.roots.contains(&frame.as_str()))
        })
    };
    let through = |stacks: &[(Vec<String>, u64)]| {
        share(stacks, |frames| {
            frames.iter().any(|frame| (service.is_worker)(frame))
        })
    };
    Ok(json!({
        "bpf_ns_per_sample": bpf_ns,
        "user_frames_per_sample": frames,
        "bpf_ns_per_user_frame": bpf_ns / frames.max(1.0),
        "profiler_reaching_root": reaching(&ours),
        "perf_reaching_root": reaching(&theirs),
        "profiler_through_worker": through(&ours),
        "perf_through_worker": through(&theirs),
    }))
}

/// The mean number of user frames in the report's CPU samples.
fn user_frames_per_sample(report: &Value) -> Option<f64> {
    let frames = report["cpu"]["frames"].as_array()?;
    let (mut weighted, mut samples) = (0.0, 0.0);
    for stack in report["cpu"]["stacks"].as_array()? {
        let count = stack["samples"].as_f64()?;
        let user = stack["frames"]
            .as_array()?
            .iter()
            .filter(|&id| {
                let frame = &frames[id.as_u64().unwrap_or(0) as usize];
                frame["kernel"] == false && frame["language"] != "process"
            })
            .count();
        weighted += count * user as f64;
        samples += count;
    }
    Some(weighted / samples.max(1.0))
}

fn share(stacks: &[(Vec<String>, u64)], keep: impl Fn(&[String]) -> bool) -> f64 {
    let total: u64 = stacks.iter().map(|(_, count)| count).sum();
    let kept: u64 = stacks
        .iter()
        .filter(|(frames, _)| keep(frames))
        .map(|(_, count)| count)
        .sum();
    kept as f64 / total.max(1) as f64
}

fn folded_stacks(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .filter_map(|line| {
            let (stack, count) = line.rsplit_once(' ')?;
            Some((
                stack.split(';').map(str::to_owned).collect(),
                count.parse().ok()?,
            ))
        })
        .collect()
}

fn workload(name: &str) -> std::path::PathBuf {
    root().join("tests/workloads").join(name)
}

fn start_c(dir: &Path, length: Duration) -> anyhow::Result<Child> {
    let binary = compile_workload(dir, "phases")?;
    Ok(Command::new(binary)
        .args(["2", &length.as_secs().to_string(), "0"])
        .arg(dir.join("runtimes-c-truth.json"))
        .stdout(Stdio::null())
        .spawn()?)
}

fn start_go(dir: &Path, length: Duration) -> anyhow::Result<Child> {
    let binary = dir.join("go-phases");
    run_checked(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(workload("phases.go"))
            .env("GOCACHE", dir.join("go-cache"))
            .env("GOFLAGS", "-buildvcs=false"),
    )?;
    Ok(Command::new(binary)
        .args([&length.as_secs().to_string(), "2"])
        .arg(dir.join("runtimes-go-truth.json"))
        .spawn()?)
}

fn start_node(dir: &Path, length: Duration) -> anyhow::Result<Child> {
    Ok(Command::new("node")
        .args([
            "--perf-basic-prof",
            "--interpreted-frames-native-stack",
            "--no-turbo-inlining",
        ])
        .arg(workload("phases.js"))
        .arg(length.as_secs().to_string())
        .arg(dir.join("runtimes-node-truth.json"))
        .spawn()?)
}

fn start_java(dir: &Path, length: Duration) -> anyhow::Result<Child> {
    Ok(Command::new("java")
        .args([
            "-XX:+PreserveFramePointer",
            "-XX:CompileCommand=quiet",
            "-XX:CompileCommand=dontinline,Phases::*",
            "-XX:CompileCommand=exclude,Phases::main",
        ])
        .arg(workload("Phases.java"))
        .args(["2", &length.as_secs().saturating_sub(2).to_string()])
        .arg(dir.join("runtimes-java-truth.json"))
        .spawn()?)
}
