//! The allocation part of `cargo xtask bench`: what tracking adds to each malloc+free
//! pair of the target, on a tight loop, next to bpftrace with empty uprobe/uretprobe
//! bodies (the kernel's trap floor), a bpftrace memleak-style script and heaptrack, in
//! the same run; and the profiler's memory while the target holds a million live
//! allocations.
//!
//! The loop is `tests/workloads/alloc_loop.c`, which times its own pairs and prints the
//! nanoseconds per pair.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{bench::median, bench_syscalls::run_loop, compile_workload, profiler_binary};

/// Pairs per traced run: a few seconds under the slowest tracer here.
const TRACED_PAIRS: u32 = 200_000;
/// Pairs untraced: enough for the clock to resolve a few nanoseconds each.
const UNTRACED_PAIRS: u32 = 20_000_000;
/// Live allocations for the memory measurement.
const HELD_ALLOCATIONS: u32 = 1_000_000;
/// The sampling mean the goals name.
const SAMPLE_BYTES: &str = "524288";

/// The tracers compared, each on the same loop.
#[derive(Clone, Copy, Debug)]
enum Tracer {
    None,
    Profiler,
    ProfilerSampled,
    BpftraceFloor,
    BpftraceMemleak,
    Heaptrack,
}

impl Tracer {
    const ALL: [Tracer; 6] = [
        Tracer::None,
        Tracer::Profiler,
        Tracer::ProfilerSampled,
        Tracer::BpftraceFloor,
        Tracer::BpftraceMemleak,
        Tracer::Heaptrack,
    ];

    fn label(self) -> &'static str {
        match self {
            Tracer::None => "untraced",
            Tracer::Profiler => "profiler --events alloc",
            Tracer::ProfilerSampled => "profiler --events alloc --alloc-sample-bytes 524288",
            Tracer::BpftraceFloor => "bpftrace, empty uprobe+uretprobe malloc, uprobe free",
            Tracer::BpftraceMemleak => "bpftrace memleak-style script",
            Tracer::Heaptrack => "heaptrack (LD_PRELOAD, restarts the target)",
        }
    }
}

/// Runs every tracer `runs` times, interleaved, and returns the results section.
pub fn run(dir: &Path, runs: u32) -> anyhow::Result<Value> {
    let workload = compile_workload(dir, "alloc_loop")?;
    let libc = libc_path()?;
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); Tracer::ALL.len()];
    for run in 1..=runs {
        for (index, tracer) in Tracer::ALL.into_iter().enumerate() {
            println!(
                "bench: allocations, run {run} of {runs}: {}",
                tracer.label()
            );
            results[index].push(ns_per_pair(tracer, &workload, &libc, dir)?);
        }
    }
    let medians: Vec<f64> = results.iter().map(|runs| median(runs.clone())).collect();
    let [untraced, exact, sampled, floor, memleak, heaptrack] = medians[..] else {
        bail!("one median per tracer");
    };
    println!("bench: allocations: profiler memory with {HELD_ALLOCATIONS} live allocations");
    let memory = memory_while_holding(&workload, dir)?;
    let start_and_stop = start_and_stop(&libc, dir, runs)?;
    Ok(json!({
        "workload": format!(
            "malloc(64)+free loop (tests/workloads/alloc_loop.c), {TRACED_PAIRS} pairs traced, \
             {UNTRACED_PAIRS} untraced; medians of {runs} runs"
        ),
        "untraced_ns_per_pair": untraced,
        "profiler_ns_per_pair": exact,
        "profiler_sampled_ns_per_pair": sampled,
        "bpftrace_floor_ns_per_pair": floor,
        "bpftrace_memleak_ns_per_pair": memleak,
        "heaptrack_ns_per_pair": heaptrack,
        "ratio_profiler_vs_floor": exact / floor,
        "ratio_memleak_vs_profiler": memleak / exact,
        "ratio_sampled_vs_exact": sampled / exact,
        "ratio_profiler_vs_heaptrack": exact / heaptrack,
        "memory_with_live_allocations": memory,
        "start_and_stop": start_and_stop,
        "runs_ns_per_pair": Tracer::ALL.iter().zip(&results).map(|(tracer, runs)| {
            (tracer.label().to_owned(), json!(runs))
        }).collect::<serde_json::Map<_, _>>(),
    }))
}

fn ns_per_pair(tracer: Tracer, workload: &Path, libc: &str, dir: &Path) -> anyhow::Result<f64> {
    let pairs = TRACED_PAIRS.to_string();
    let output = match tracer {
        Tracer::None => run_loop(Command::new(workload).arg(UNTRACED_PAIRS.to_string()))?,
        Tracer::Profiler | Tracer::ProfilerSampled => {
            let mut profiler = Command::new(profiler_binary());
            profiler
                .args(["record", "--events", "alloc", "--leaks-output"])
                .arg(dir.join("leaks.svg"));
            if matches!(tracer, Tracer::ProfilerSampled) {
                profiler.args(["--alloc-sample-bytes", SAMPLE_BYTES]);
            }
            run_loop(profiler.arg("--").arg(workload).arg(&pairs))?
        }
        Tracer::BpftraceFloor | Tracer::BpftraceMemleak => {
            let script = match tracer {
                Tracer::BpftraceFloor => floor_script(libc),
                _ => memleak_script(libc),
            };
            run_loop(
                Command::new("bpftrace")
                    .args(["-e", &script, "-c"])
                    .arg(format!("{} {pairs}", workload.display())),
            )?
        }
        Tracer::Heaptrack => run_loop(
            Command::new("heaptrack")
                .arg("-o")
                .arg(dir.join("heaptrack.out"))
                .arg(workload)
                .arg(&pairs),
        )?,
    };
    output
        .lines()
        .find_map(|line| line.strip_suffix(" ns per pair")?.trim().parse().ok())
        .with_context(|| format!("{} printed no time per pair: {output}", tracer.label()))
}

/// How long a recording of an idle process runs.
const IDLE_RECORDING: Duration = Duration::from_secs(2);

/// What placing and taking out the allocation probes adds to the wall time of a 2 s
/// recording of an idle process: the profiler with `--events alloc` against the same
/// recording of CPU samples alone, next to bpftrace with malloc entry and return and
/// free against bpftrace with no probe, `runs` times interleaved; and how long the
/// profiler's recording said it lasted.
fn start_and_stop(libc: &str, dir: &Path, runs: u32) -> anyhow::Result<Value> {
    let mut idle = Command::new("sleep").arg("600").spawn()?;
    let pid = idle.id().to_string();
    let seconds = IDLE_RECORDING.as_secs();
    let report = dir.join("alloc-start-stop.json");
    let profiler = |events: &str| {
        let mut profiler = Command::new(profiler_binary());
        profiler
            .args(["record", "--pid", &pid, "--events", events, "--duration"])
            .arg(seconds.to_string())
            .arg("--json")
            .arg(&report)
            .stdout(Stdio::null());
        profiler
    };
    let bpftrace = |probes: String| {
        let mut bpftrace = Command::new("bpftrace");
        bpftrace
            .args(["-p", &pid, "-e"])
            .arg(format!("{probes} interval:s:{seconds} {{ exit(); }}"))
            .stdout(Stdio::null());
        bpftrace
    };
    let probes =
        format!("uprobe:{libc}:malloc {{}} uretprobe:{libc}:malloc {{}} uprobe:{libc}:free {{}}");
    let mut commands = [
        profiler("alloc"),
        profiler("cpu"),
        bpftrace(probes),
        bpftrace(String::new()),
    ];
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); commands.len()];
    let mut recorded = Vec::new();
    for run in 1..=runs {
        println!("bench: allocations, run {run} of {runs}: start and stop of the probes");
        for (index, command) in commands.iter_mut().enumerate() {
            let start = Instant::now();
            let status = command.status()?;
            if !status.success() {
                bail!("{command:?} failed: {status}");
            }
            walls[index].push(start.elapsed().as_secs_f64());
            if index == 0 {
                let said: Value = serde_json::from_str(&fs::read_to_string(&report)?)?;
                recorded.push(said["duration_s"].as_f64().unwrap_or(0.0));
            }
        }
    }
    idle.kill()?;
    idle.wait()?;
    let walls: Vec<f64> = walls.into_iter().map(median).collect();
    let profiler_added = walls[0] - walls[1];
    let bpftrace_added = walls[2] - walls[3];
    Ok(json!({
        "what": format!(
            "{seconds} s recording of an idle process: --events alloc against --events cpu, \
             bpftrace with malloc entry and return and free against bpftrace with no probe; \
             wall seconds, medians of {runs} runs"
        ),
        "profiler_alloc_wall_s": walls[0],
        "profiler_cpu_wall_s": walls[1],
        "bpftrace_probes_wall_s": walls[2],
        "bpftrace_bare_wall_s": walls[3],
        "profiler_probes_add_s": profiler_added,
        "bpftrace_probes_add_s": bpftrace_added,
        "ratio_profiler_vs_bpftrace": profiler_added / bpftrace_added,
        "profiler_recorded_s": recorded,
    }))
}

/// Empty bodies: what the kernel's uprobe and uretprobe traps cost by themselves, with
/// the probes on the functions' entries, as bpftrace places them.
fn floor_script(libc: &str) -> String {
    format!(
        "uprobe:{libc}:malloc /pid == cpid/ {{}} \
         uretprobe:{libc}:malloc /pid == cpid/ {{}} \
         uprobe:{libc}:free /pid == cpid/ {{}}"
    )
}

/// bcc memleak's approach in bpftrace: size and stack at entry, the block at return,
/// taken out again at free.
fn memleak_script(libc: &str) -> String {
    format!(
        "uprobe:{libc}:malloc /pid == cpid/ {{ @size[tid] = arg0; @stack[tid] = ustack; }} \
         uretprobe:{libc}:malloc /pid == cpid && @size[tid]/ {{ \
             @bytes[retval] = @size[tid]; @time[retval] = nsecs; @stacks[retval] = @stack[tid]; \
             delete(@size[tid]); delete(@stack[tid]); }} \
         uprobe:{libc}:free /pid == cpid/ {{ \
             delete(@bytes[arg0]); delete(@time[arg0]); delete(@stacks[arg0]); }} \
         END {{ clear(@size); clear(@stack); clear(@bytes); clear(@time); clear(@stacks); }}"
    )
}

/// Peak resident memory of the profiler and the BPF map memory it holds (`memlock` in
/// its map fds' fdinfo) while the target holds [`HELD_ALLOCATIONS`] live blocks, and
/// how long the recording took to finish reading them.
fn memory_while_holding(workload: &Path, dir: &Path) -> anyhow::Result<Value> {
    let mut profiler = Command::new(profiler_binary())
        .args([
            "record",
            "--events",
            "alloc",
            "--leak-min-age",
            "1",
            "--json",
        ])
        .arg(dir.join("alloc-memory.json"))
        .arg("--leaks-output")
        .arg(dir.join("leaks.svg"))
        .arg("--")
        .arg(workload)
        .args(["0", &HELD_ALLOCATIONS.to_string(), "4000"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the profiler")?;
    let pid = profiler.id();
    let started = Instant::now();
    let mut rss_kib = 0u64;
    while profiler.try_wait()?.is_none() {
        rss_kib = rss_kib.max(status_field(pid, "VmRSS:").unwrap_or(0));
        sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    let report: Value = serde_json::from_str(&fs::read_to_string(dir.join("alloc-memory.json"))?)?;
    Ok(json!({
        "live_allocations": HELD_ALLOCATIONS,
        "tracked_live": report["leaks"]["outstanding_count"],
        "profiler_rss_peak_mib": rss_kib as f64 / 1024.0,
        // The maps' memory as the recording ended, with every allocation still held.
        "bpf_maps_mib": report["overhead"]["kernel_memory_bytes"]
            .as_f64()
            .map(|bytes| bytes / (1024.0 * 1024.0)),
        "target_run_s": 4.0,
        "profiler_wall_s": elapsed.as_secs_f64(),
        // From the stop to a written leak flame graph: the table read whole, summed and
        // named.
        "stop_to_svg_ms": report["overhead"]["stop_to_svg_ms"],
    }))
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn libc_path() -> anyhow::Result<String> {
    let maps = fs::read_to_string("/proc/self/maps")?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libc.so"))
        .map(str::to_owned)
        .context("no libc in this process's map")
}
