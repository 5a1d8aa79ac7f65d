//! The unwinding part of `cargo xtask bench`: how complete the kernel's DWARF unwinder
//! makes stacks, and what it costs.
//!
//! - Completeness on Debian's `redis-server` under `redis-benchmark` (loopback only,
//!   bounded request count), ours and `perf record --call-graph dwarf` sampling the same
//!   process at the same time: the share of samples that reach `main` or
//!   `start_thread`, and every function of `redis-server` holding 10 % or more.
//! - BPF time per sample, DWARF unwinding against frame-pointer walking
//!   (`--unwind fp`), on the demo service built with frame pointers, and DWARF on the
//!   same service built without them.
//! - BPF time per frame, each method on the same frame-pointer build of a workload
//!   whose threads spin at a shallow and at a deep stack
//!   (`tests/workloads/recursion.c`): the difference over the difference in depth, so
//!   that what a sample costs whatever its depth cancels out.
//! - The unwind tables of the demo service, `redis-server` and a Python process: files,
//!   rows, the tables' kernel memory and the time to build them at attach; and the
//!   kernel memory of all the profiler's maps (the goal: 4 MiB for the demo service).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    NO_FRAME_POINTERS,
    bench::{median, perf_samples},
    compile_c, compile_workload, output, profiler_binary, root,
};

const REDIS_PORT: &str = "6390";
/// Share of samples, in points, within which a function's share must match perf's.
const SHARE_TOLERANCE: f64 = 0.03;

/// Runs the three measurements and returns the results section.
pub fn run(dir: &Path, server: &Path, duration: Duration, runs: u32) -> anyhow::Result<Value> {
    let server_without_frame_pointers = dir.join("model-server-no-fp");
    compile_c(
        &root().join("demo/model_server.c"),
        &server_without_frame_pointers,
        NO_FRAME_POINTERS,
    )?;
    Ok(json!({
        "redis_completeness": redis_completeness(dir, duration)?,
        "cost_per_sample": cost_per_sample(dir, server, &server_without_frame_pointers, duration, runs)?,
        "cost_per_frame": cost_per_frame(dir, duration, runs)?,
        "tables": tables(dir, &server_without_frame_pointers)?,
    }))
}

/// A `redis-server` on loopback with `redis-benchmark` driving it; both stop on drop.
struct LoadedRedis {
    server: Child,
    benchmark: Child,
}

impl LoadedRedis {
    fn start() -> anyhow::Result<Self> {
        let mut server = Command::new("redis-server")
            .args(["--port", REDIS_PORT, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        // Ready when it answers; a server that could not bind its port has exited.
        let answers = || {
            output(Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", REDIS_PORT, "ping"]))
                .is_some_and(|reply| reply.trim() == "PONG")
        };
        if !(0..50).any(|_| {
            answers() || {
                sleep(Duration::from_millis(100));
                false
            }
        }) {
            let _ = server.kill();
            let _ = server.wait();
            bail!("redis-server does not answer on 127.0.0.1:{REDIS_PORT}: is the port taken?");
        }
        let benchmark = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", REDIS_PORT, "-c", "50", "-q"])
            .args(["-n", "20000000", "-t", "set,get,incr,lpush,lrange_100"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-benchmark")?;
        sleep(Duration::from_secs(1));
        Ok(LoadedRedis { server, benchmark })
    }
}

impl Drop for LoadedRedis {
    fn drop(&mut self) {
        let _ = self.benchmark.kill();
        let _ = self.benchmark.wait();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn redis_completeness(dir: &Path, duration: Duration) -> anyhow::Result<Value> {
    println!(
        "bench: unwinding, redis-server under redis-benchmark: profiler and perf --call-graph dwarf"
    );
    let redis = LoadedRedis::start()?;
    let pid = redis.server.id().to_string();
    let seconds = duration.as_secs_f64().to_string();
    let data = dir.join("redis-perf.data");
    let mut perf = Command::new("perf")
        .args([
            "record",
            "-F",
            "499",
            "--call-graph",
            "dwarf",
            "-p",
            &pid,
            "-o",
        ])
        .arg(&data)
        .args(["--", "sleep", &seconds])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let report = record(dir, redis.server.id(), duration, &["-F", "499"]);
    if !perf.wait()?.success() {
        bail!("perf record on redis-server failed");
    }
    let report = report?;
    drop(redis);
    let ours: HashMap<String, f64> = report["cpu"]["functions"]
        .as_array()
        .context("functions")?
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap_or("").to_owned(),
                f["total"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let theirs = perf_stacks(&data)?;
    let reaching_root = |share: &dyn Fn(&str) -> f64| share("main") + share("start_thread");
    let our_root = reaching_root(&|name| ours.get(name).copied().unwrap_or(0.0));
    let perf_root = reaching_root(&|name| theirs.share(name));
    let mut functions = Vec::new();
    for (name, perf_share) in theirs.redis_functions(0.10) {
        let our_share = ours.get(&name).copied().unwrap_or(0.0);
        functions.push(json!({
            "function": name,
            "perf": perf_share,
            "profiler": our_share,
            "within_3_points": (our_share - perf_share).abs() <= SHARE_TOLERANCE,
        }));
    }
    Ok(json!({
        "profiler_reaching_main_or_start_thread": our_root,
        "profiler_reaching_root": report["stacks"]["cpu"]["complete"],
        "perf_dwarf_reaching_main_or_start_thread": perf_root,
        "profiler_samples": report["cpu"]["samples"],
        "perf_samples": theirs.samples,
        "redis_functions_at_10_percent_or_more": functions,
    }))
}

/// The stacks `perf script` prints: per sample, each frame's function and file.
struct PerfStacks {
    samples: usize,
    /// Samples whose stack holds the function, by function.
    inclusive: HashMap<String, usize>,
    /// Functions of `redis-server` (the binary, not its libraries or the kernel).
    redis: Vec<String>,
}

impl PerfStacks {
    fn share(&self, name: &str) -> f64 {
        self.inclusive.get(name).copied().unwrap_or(0) as f64 / self.samples.max(1) as f64
    }

    fn redis_functions(&self, at_least: f64) -> Vec<(String, f64)> {
        let mut functions: Vec<(String, f64)> = self
            .redis
            .iter()
            .map(|name| (name.clone(), self.share(name)))
            .filter(|(_, share)| *share >= at_least)
            .collect();
        functions.sort_by(|a, b| b.1.total_cmp(&a.1));
        functions
    }
}

fn perf_stacks(data: &Path) -> anyhow::Result<PerfStacks> {
    let mut stacks = PerfStacks {
        samples: 0,
        inclusive: HashMap::new(),
        redis: Vec::new(),
    };
    for sample in perf_samples(data)? {
        stacks.samples += 1;
        let mut seen: Vec<String> = Vec::new();
        for frame in sample {
            if frame.file.contains("redis-")
                && !stacks.redis.contains(&frame.name)
                && frame.name != "[unknown]"
            {
                stacks.redis.push(frame.name.clone());
            }
            if !seen.contains(&frame.name) {
                seen.push(frame.name);
            }
        }
        for name in seen {
            *stacks.inclusive.entry(name).or_default() += 1;
        }
    }
    Ok(stacks)
}

/// BPF time per CPU sample for each unwinding method and build of the demo service.
fn cost_per_sample(
    dir: &Path,
    with_frame_pointers: &Path,
    without_frame_pointers: &Path,
    duration: Duration,
    runs: u32,
) -> anyhow::Result<Value> {
    let configurations: [(&str, &Path, &str); 3] = [
        ("frame pointers, --unwind fp", with_frame_pointers, "fp"),
        (
            "frame pointers, --unwind dwarf",
            with_frame_pointers,
            "dwarf",
        ),
        (
            "no frame pointers, --unwind dwarf",
            without_frame_pointers,
            "dwarf",
        ),
    ];
    let mut measured: Vec<Vec<(f64, f64)>> = vec![Vec::new(); configurations.len()];
    for run in 1..=runs {
        for (index, (label, server, method)) in configurations.iter().enumerate() {
            println!("bench: unwinding cost, run {run} of {runs}: {label}");
            let report = record_child(
                dir,
                start_service(server)?,
                duration,
                &["-F", "999", "--unwind", method],
            )?;
            let complete = report["stacks"]["cpu"]["complete"].as_f64().unwrap_or(0.0);
            measured[index].push((bpf_ns_per_sample(&report), complete));
        }
    }
    let per_sample: Vec<f64> = measured
        .iter()
        .map(|runs| median(runs.iter().map(|(ns, _)| *ns).collect()))
        .collect();
    let rows: Vec<Value> = configurations
        .iter()
        .zip(&per_sample)
        .zip(&measured)
        .map(|(((label, _, _), ns), runs)| {
            json!({
                "configuration": label,
                "bpf_ns_per_sample": ns,
                "reaching_root": median(runs.iter().map(|(_, complete)| *complete).collect()),
            })
        })
        .collect();
    Ok(json!({
        "rows": rows,
        "ratio_dwarf_to_fp": per_sample[1] / per_sample[0].max(1e-9),
        "ratio_dwarf_without_fp_to_fp": per_sample[2] / per_sample[0].max(1e-9),
    }))
}

/// The depths the recursion workload spins at, in its own frames below the thread's
/// start: far enough apart that the difference in BPF time is mostly the frames'.
const SHALLOW_DEPTH: u32 = 8;
const DEEP_DEPTH: u32 = 88;

/// BPF time per user frame for each unwinding method at 999 Hz: samples at
/// [`DEEP_DEPTH`] less samples at [`SHALLOW_DEPTH`], over the frames between them, on
/// the same frame-pointer build. In a steady workload the DWARF unwinder finds most
/// rows in its per-CPU cache, as it does here.
fn cost_per_frame(dir: &Path, duration: Duration, runs: u32) -> anyhow::Result<Value> {
    let workload = compile_workload(dir, "recursion")?;
    let threads = std::thread::available_parallelism()?.get().to_string();
    let methods = ["fp", "dwarf"];
    let mut per_frame = Vec::new();
    let mut rows = Vec::new();
    for method in methods {
        let mut at_depth = Vec::new();
        for depth in [SHALLOW_DEPTH, DEEP_DEPTH] {
            let mut measured = Vec::new();
            for run in 1..=runs {
                println!(
                    "bench: cost per frame, run {run} of {runs}: --unwind {method}, depth {depth}"
                );
                let child = Command::new(&workload)
                    .args([threads.as_str(), &depth.to_string()])
                    .spawn()?;
                let report =
                    record_child(dir, child, duration, &["-F", "999", "--unwind", method])?;
                measured.push(bpf_ns_per_sample(&report));
            }
            at_depth.push(median(measured));
        }
        let ns_per_frame = (at_depth[1] - at_depth[0]) / f64::from(DEEP_DEPTH - SHALLOW_DEPTH);
        per_frame.push(ns_per_frame);
        rows.push(json!({
            "method": method,
            "bpf_ns_per_sample_shallow": at_depth[0],
            "bpf_ns_per_sample_deep": at_depth[1],
            "bpf_ns_per_frame": ns_per_frame,
        }));
    }
    Ok(json!({
        "what": format!(
            "recursion.c with frame pointers, one thread per CPU spinning {SHALLOW_DEPTH} and \
             {DEEP_DEPTH} frames deep, 999 Hz; medians of {runs} runs"
        ),
        "rows": rows,
        "ratio_dwarf_to_fp_per_frame": per_frame[1] / per_frame[0].max(1e-9),
    }))
}

/// The unwind tables built for the demo service, redis-server and a Python process.
fn tables(dir: &Path, server: &Path) -> anyhow::Result<Value> {
    let second = Duration::from_secs(1);
    let mut rows = Vec::new();
    for target in ["demo service", "redis-server", "python3"] {
        println!("bench: unwind tables of the {target}");
        let report = match target {
            "demo service" => record_child(dir, start_service(server)?, second, &[]),
            "redis-server" => {
                let redis = LoadedRedis::start()?;
                record(dir, redis.server.id(), second, &[])
            }
            _ => record_child(
                dir,
                Command::new(which_python())
                    .args([
                        "-c",
                        "import hashlib\nwhile True: hashlib.sha256(b'x' * 4096).digest()",
                    ])
                    .spawn()?,
                second,
                &[],
            ),
        }?;
        rows.push(json!({
            "target": target,
            "tables": report["stacks"]["unwind_tables"],
            "kernel_memory_mib": report["overhead"]["kernel_memory_bytes"]
                .as_f64()
                .map(|bytes| bytes / f64::from(1 << 20)),
        }));
    }
    Ok(json!(rows))
}

/// Records a child for `duration` with `args` once it has started, then ends it.
pub fn record_child(
    dir: &Path,
    mut child: Child,
    duration: Duration,
    args: &[&str],
) -> anyhow::Result<Value> {
    sleep(Duration::from_millis(500));
    let report = record(dir, child.id(), duration, args);
    let _ = child.kill();
    let _ = child.wait();
    report
}

/// The BPF run time per CPU sample of a report, in nanoseconds.
pub fn bpf_ns_per_sample(report: &Value) -> f64 {
    let samples = report["cpu"]["samples"].as_f64().unwrap_or(0.0).max(1.0);
    report["overhead"]["bpf_run_time_ns"]
        .as_f64()
        .unwrap_or(0.0)
        / samples
}

pub fn which_python() -> PathBuf {
    output(Command::new("sh").args(["-c", "command -v python3"]))
        .map(|path| PathBuf::from(path.trim()))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn start_service(server: &Path) -> anyhow::Result<Child> {
    let workers = std::thread::available_parallelism()?.get();
    let child = Command::new(server)
        .arg(workers.to_string())
        .stdout(Stdio::null())
        .spawn()?;
    sleep(Duration::from_millis(200));
    Ok(child)
}

/// Records process `pid` for `duration` and returns the JSON report.
fn record(dir: &Path, pid: u32, duration: Duration, args: &[&str]) -> anyhow::Result<Value> {
    let report_path = dir.join("unwind-report.json");
    let status = Command::new(profiler_binary())
        .args(["record", "--pid", &pid.to_string()])
        .args(["--duration", &duration.as_secs_f64().to_string()])
        .args(args)
        .arg("-o")
        .arg(dir.join("unwind.svg"))
        .arg("--json")
        .arg(&report_path)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("profiler record --pid {pid} failed: {status}");
    }
    Ok(serde_json::from_str(&fs::read_to_string(&report_path)?)?)
}
