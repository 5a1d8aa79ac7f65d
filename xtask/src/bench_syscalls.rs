//! The syscall part of `cargo xtask bench`: what tracing adds to each syscall of the
//! target, on a tight `getppid` loop, next to libbpf-tools `syscount` (counts only) and
//! `syscount -L` (with latency), and whether anything is lost at that rate.
//!
//! The loop is `tests/workloads/waits.c --noise SECONDS`, which calls getppid() for a
//! fixed wall-clock time and prints how many calls it made; the cost per call is that
//! time over that count.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{bench::median, compile_workload, profiler_binary};

const SYSCOUNT: &str = "/usr/sbin/syscount";
const LOOP_SECONDS: f64 = 3.0;

/// The tracers compared, each on the same loop.
#[derive(Clone, Copy, Debug)]
enum Tracer {
    None,
    Profiler,
    Syscount,
    SyscountLatency,
}

impl Tracer {
    const ALL: [Tracer; 4] = [
        Tracer::None,
        Tracer::Profiler,
        Tracer::Syscount,
        Tracer::SyscountLatency,
    ];

    fn label(self) -> &'static str {
        match self {
            Tracer::None => "untraced",
            Tracer::Profiler => "profiler --events syscalls",
            Tracer::Syscount => "syscount",
            Tracer::SyscountLatency => "syscount -L",
        }
    }
}

/// One run of the loop under a tracer.
#[derive(Clone, Copy, Debug, Default)]
struct LoopRun {
    ns_per_call: f64,
    /// Records the profiler reports lost (0 for the others, which do not say).
    lost: u64,
}

/// Runs every tracer `runs` times, interleaved, and returns the results section.
pub fn run(dir: &Path, runs: u32) -> anyhow::Result<Value> {
    let waits = compile_workload(dir, "waits")?;
    let mut results: Vec<Vec<LoopRun>> = vec![Vec::new(); Tracer::ALL.len()];
    for run in 1..=runs {
        for (index, tracer) in Tracer::ALL.into_iter().enumerate() {
            println!("bench: syscalls, run {run} of {runs}: {}", tracer.label());
            results[index].push(loop_under(tracer, &waits, dir)?);
        }
    }
    let medians: Vec<f64> = results
        .iter()
        .map(|runs| median(runs.iter().map(|run| run.ns_per_call).collect()))
        .collect();
    let untraced = medians[0];
    let added = |index: usize| medians[index] - untraced;
    let lost: u64 = results[1].iter().map(|run| run.lost).sum();
    Ok(json!({
        "workload": format!("getppid() loop for {LOOP_SECONDS} s (tests/workloads/waits.c --noise), medians of {runs} runs"),
        "untraced_ns_per_call": untraced,
        "profiler_ns_per_call": medians[1],
        "syscount_ns_per_call": medians[2],
        "syscount_latency_ns_per_call": medians[3],
        "profiler_added_ns": added(1),
        "syscount_added_ns": added(2),
        "syscount_latency_added_ns": added(3),
        "ratio_added_vs_syscount_latency": added(1) / added(3),
        "profiler_calls_per_s": 1e9 / medians[1],
        "profiler_lost": lost,
        "runs_ns_per_call": Tracer::ALL.iter().zip(&results).map(|(tracer, runs)| {
            (tracer.label().to_owned(), json!(runs.iter().map(|run| run.ns_per_call).collect::<Vec<_>>()))
        }).collect::<serde_json::Map<_, _>>(),
    }))
}

fn loop_under(tracer: Tracer, waits: &Path, dir: &Path) -> anyhow::Result<LoopRun> {
    let seconds = LOOP_SECONDS.to_string();
    match tracer {
        Tracer::None => Ok(LoopRun {
            ns_per_call: ns_per_call(&run_loop(Command::new(waits).args(["--noise", &seconds]))?)?,
            lost: 0,
        }),
        Tracer::Profiler => {
            // Command mode: the loop starts only once the probes are attached.
            let report = dir.join("syscalls.json");
            run_loop(
                Command::new(profiler_binary())
                    .args(["record", "--events", "syscalls", "--json"])
                    .arg(&report)
                    .arg("--")
                    .arg(waits)
                    .args(["--noise", &seconds]),
            )?;
            let report: Value = serde_json::from_str(&fs::read_to_string(&report)?)?;
            let calls = report["syscalls"]
                .as_array()
                .and_then(|syscalls| syscalls.iter().find(|s| s["name"] == "getppid"))
                .and_then(|getppid| getppid["count"].as_u64())
                .context("the report has no getppid count")?;
            Ok(LoopRun {
                ns_per_call: LOOP_SECONDS * 1e9 / calls as f64,
                lost: report["lost"]["syscalls"].as_u64().unwrap_or(0),
            })
        }
        Tracer::Syscount | Tracer::SyscountLatency => {
            let mut syscount = Command::new(SYSCOUNT);
            if matches!(tracer, Tracer::SyscountLatency) {
                syscount.arg("-L");
            }
            let mut syscount = syscount
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting syscount")?;
            // syscount traces every process from the moment it has attached.
            sleep(Duration::from_secs(2));
            let output = run_loop(Command::new(waits).args(["--noise", &seconds]));
            // SAFETY: plain syscall signalling our own child.
            unsafe { libc::kill(syscount.id() as i32, libc::SIGINT) };
            syscount.wait()?;
            Ok(LoopRun {
                ns_per_call: ns_per_call(&output?)?,
                lost: 0,
            })
        }
    }
}

/// Runs a benchmark loop to its end and returns what it printed.
pub fn run_loop(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The loop prints its call count on a line of its own.
fn ns_per_call(output: &str) -> anyhow::Result<f64> {
    let calls: f64 = output
        .lines()
        .find_map(|line| line.trim().parse().ok())
        .with_context(|| format!("the loop printed no call count: {output}"))?;
    Ok(LOOP_SECONDS * 1e9 / calls)
}
