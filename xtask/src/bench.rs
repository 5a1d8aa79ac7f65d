//! `cargo xtask bench`: the profiler's cost on a CPU-bound service, side by side with
//! `perf record -g` (and, at 999 Hz, `perf record --call-graph dwarf`) on the same
//! service in the same run; then its cost per traced syscall, side by side with
//! libbpf-tools `syscount` ([`crate::bench_syscalls`]); then its cost per malloc+free
//! pair next to bpftrace and heaptrack ([`crate::bench_alloc`]); then how complete and
//! how costly its unwinding is, next to perf's DWARF mode ([`crate::bench_unwind`]); its
//! Python frames next to py-spy's ([`crate::bench_python`]); its load-test mode next to
//! py-spy's ([`crate::bench_loadtest`]); last, what 999 Hz sampling costs the sampled
//! thread next to perf's ([`crate::bench_slowdown`]).
//!
//! The service is the demo's model-server with one worker per CPU, so that any CPU the
//! profiler takes shows up as lost throughput. Each configuration runs `--runs` times,
//! interleaved, and the medians are reported.

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{FRAME_POINTERS, compile_c, profiler_binary, require_root, root};

const FREQUENCIES: [u32; 2] = [99, 999];

/// What a load test adds to a recording: metrics refreshed every 5 s, a snapshot every
/// 5 s, and pprof profiles at the end.
const LIVE_VIEWS: [&str; 4] = ["--metrics-addr", "127.0.0.1:0", "--interval", "5"];

/// How perf records stacks: `-g` walks frame pointers, `dwarf` copies 8 KiB of stack
/// per sample and unwinds it afterwards.
#[derive(Clone, Copy)]
enum CallGraph {
    FramePointers,
    Dwarf,
}

/// A part of the benchmark, to run alone.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// CPU sampling against perf.
    Cpu,
    /// Syscall tracing against syscount.
    Syscalls,
    /// Allocation tracking against bpftrace and heaptrack.
    Alloc,
    /// Unwinding completeness and cost against perf --call-graph dwarf.
    Unwind,
    /// Python frames against py-spy.
    Python,
    /// Load-test mode on a gunicorn service against py-spy --subprocesses.
    Loadtest,
    /// What sampling at 999 Hz costs the interrupted thread, against perf record -g.
    Slowdown,
    /// Go, Node.js and Java services next to a C one, against perf record -g.
    Runtimes,
}

pub fn run(duration: u32, runs: u32, only: Option<Part>) -> anyhow::Result<()> {
    require_root("the profiler and perf attach to the kernel")?;
    let dir = root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let server = dir.join("model-server");
    compile_c(&root().join("demo/model_server.c"), &server, FRAME_POINTERS)?;
    let workers = std::thread::available_parallelism()?.get();
    let bench = Bench {
        dir,
        server,
        workers,
        duration: Duration::from_secs(duration.into()),
    };
    let selected = |part: Part| only.is_none_or(|only| only == part);
    // The parts that record a process for a while cap it at 10 s.
    let short = bench.duration.min(Duration::from_secs(10));
    let mut results = json!({
        "command": format!("cargo xtask bench --duration {duration} --runs {runs}"),
    });
    if selected(Part::Cpu) {
        results["cpu"] = bench.cpu_sampling(runs)?;
    }
    if selected(Part::Syscalls) {
        results["syscalls"] = crate::bench_syscalls::run(&bench.dir, runs)?;
    }
    if selected(Part::Alloc) {
        results["alloc"] = crate::bench_alloc::run(&bench.dir, runs)?;
    }
    if selected(Part::Unwind) {
        results["unwind"] = crate::bench_unwind::run(&bench.dir, &bench.server, short, runs)?;
    }
    if selected(Part::Python) {
        results["python"] = crate::bench_python::run(&bench.dir, short, runs)?;
    }
    if selected(Part::Runtimes) {
        results["runtimes"] = crate::bench_runtimes::run(&bench.dir, short, runs)?;
    }
    if selected(Part::Loadtest) {
        results["loadtest"] = crate::bench_loadtest::run(&bench.dir, runs)?;
    }
    if selected(Part::Slowdown) {
        // Four rounds per run: a round's three cases take about 12 s together.
        results["slowdown"] = crate::bench_slowdown::run(&bench.dir, (runs * 4).max(8))?;
    }
    let path = bench.dir.join("results.json");
    fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    println!("bench: wrote {}", path.display());
    Ok(())
}

#[derive(Clone)]
struct Bench {
    dir: PathBuf,
    server: PathBuf,
    workers: usize,
    duration: Duration,
}

/// One profiled (or unprofiled) run of the service.
#[derive(Clone, Debug, Default)]
struct Measurement {
    /// The service's requests per second while profiled.
    throughput: f64,
    /// The profiling tool's process CPU (user + system), in seconds.
    tool_cpu: f64,
    /// CPU in the tool's BPF programs, in seconds (0 for perf, whose in-kernel sampling
    /// cost only shows as the service's slowdown).
    bpf_cpu: f64,
    samples: u64,
    lost: u64,
    /// From the end of the recording to a flame graph (ours) or to `perf script`'s
    /// text, the first step of perf's flame graph pipeline (perf).
    stop_to_output_ms: f64,
}

impl Measurement {
    fn median(all: &[Measurement]) -> Measurement {
        let pick = |field: fn(&Measurement) -> f64| median(all.iter().map(field).collect());
        Measurement {
            throughput: pick(|m| m.throughput),
            tool_cpu: pick(|m| m.tool_cpu),
            bpf_cpu: pick(|m| m.bpf_cpu),
            samples: pick(|m| m.samples as f64) as u64,
            lost: all.iter().map(|m| m.lost).max().unwrap_or(0),
            stop_to_output_ms: pick(|m| m.stop_to_output_ms),
        }
    }

    fn cpu_seconds(&self) -> f64 {
        self.tool_cpu + self.bpf_cpu
    }

    fn slowdown(&self, baseline: f64) -> f64 {
        1.0 - self.throughput / baseline
    }

    fn cost_per_sample_ns(&self) -> f64 {
        self.cpu_seconds() * 1e9 / self.samples.max(1) as f64
    }

    fn summary(&self, baseline: f64, duration: Duration) -> Value {
        json!({
            "requests_per_s": self.throughput,
            "slowdown_percent": self.slowdown(baseline) * 100.0,
            "tool_cpu_s": self.tool_cpu,
            "bpf_cpu_s": self.bpf_cpu,
            "cpu_percent_of_one_core": self.cpu_seconds() / duration.as_secs_f64() * 100.0,
            "samples": self.samples,
            "cost_per_sample_ns": self.cost_per_sample_ns(),
            "bpf_ns_per_sample": self.bpf_cpu * 1e9 / self.samples.max(1) as f64,
            "lost": self.lost,
            "stop_to_output_ms": self.stop_to_output_ms,
        })
    }
}

impl Bench {
    /// The service's throughput and each tool's cost, unprofiled, under the profiler
    /// and under perf, at each of [`FREQUENCIES`].
    fn cpu_sampling(&self, runs: u32) -> anyhow::Result<Value> {
        let mut baseline = Vec::new();
        let mut ours: Vec<Vec<Measurement>> = vec![Vec::new(); FREQUENCIES.len()];
        let mut perf: Vec<Vec<Measurement>> = vec![Vec::new(); FREQUENCIES.len()];
        let mut perf_dwarf = Vec::new();
        let mut live = Vec::new();
        for run in 1..=runs {
            println!("bench: run {run} of {runs}: unprofiled");
            baseline.push(self.unprofiled()?);
            println!("bench: run {run} of {runs}: profiler at 99 Hz with live views and pprof");
            live.push(self.with_profiler(99, &LIVE_VIEWS)?);
            for (index, &hz) in FREQUENCIES.iter().enumerate() {
                println!("bench: run {run} of {runs}: profiler at {hz} Hz");
                ours[index].push(self.with_profiler(hz, &[])?);
                println!("bench: run {run} of {runs}: perf record -g at {hz} Hz");
                perf[index].push(self.with_perf(hz, CallGraph::FramePointers)?);
            }
            println!("bench: run {run} of {runs}: perf record --call-graph dwarf at 999 Hz");
            perf_dwarf.push(self.with_perf(999, CallGraph::Dwarf)?);
        }

        let spread = |values: &[f64]| {
            let low = values.iter().copied().fold(f64::INFINITY, f64::min);
            let high = values.iter().copied().fold(0.0, f64::max);
            (high - low) / median(values.to_vec()) * 100.0
        };
        let baseline_spread = spread(&baseline);
        let runs_json = json!({
            "baseline_requests_per_s": baseline,
            "profiler_requests_per_s": ours.iter().map(|runs| runs.iter().map(|m| m.throughput).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "perf_requests_per_s": perf.iter().map(|runs| runs.iter().map(|m| m.throughput).collect::<Vec<_>>()).collect::<Vec<_>>(),
        });
        let baseline = median(baseline);
        let perf_dwarf = Measurement::median(&perf_dwarf);
        let mut rows = Vec::new();
        for (index, &hz) in FREQUENCIES.iter().enumerate() {
            let ours = Measurement::median(&ours[index]);
            let perf = Measurement::median(&perf[index]);
            let mut row = json!({
                "frequency_hz": hz,
                "profiler": ours.summary(baseline, self.duration),
                "perf": perf.summary(baseline, self.duration),
                "ratio_slowdown": ratio(ours.slowdown(baseline), perf.slowdown(baseline)),
                "ratio_cpu": ratio(ours.cpu_seconds(), perf.cpu_seconds()),
                "ratio_cost_per_sample": ratio(ours.cost_per_sample_ns(), perf.cost_per_sample_ns()),
            });
            if hz == 999 {
                row["perf_dwarf"] = perf_dwarf.summary(baseline, self.duration);
                row["ratio_slowdown_to_perf_dwarf"] =
                    ratio(ours.slowdown(baseline), perf_dwarf.slowdown(baseline));
            }
            rows.push(row);
        }
        let live = Measurement::median(&live);
        let plain = Measurement::median(&ours[0]);
        let perf = Measurement::median(&perf[0]);
        let fixed = self.fixed_cost(runs)?;
        Ok(json!({
            "workload": format!("demo/model_server.c, {workers} workers on {workers} CPUs, {seconds} s per run, medians of {runs} runs", workers = self.workers, seconds = self.duration.as_secs()),
            "baseline_requests_per_s": baseline,
            "baseline_spread_percent": baseline_spread,
            "rows": rows,
            "live_views_99_hz": {
                "options": "--metrics-addr --interval 5 --pprof",
                "profiler": live.summary(baseline, self.duration),
                "added_cpu_s": live.cpu_seconds() - plain.cpu_seconds(),
                "ratio_cpu_to_plain": ratio(live.cpu_seconds(), plain.cpu_seconds()),
                "ratio_cpu_to_perf": ratio(live.cpu_seconds(), perf.cpu_seconds()),
            },
            "fixed_cost_99_hz": fixed,
            "runs": runs_json,
        }))
    }

    /// What a recording costs whatever its length, ours and `perf record -g`'s: the CPU
    /// of a short and a long recording at 99 Hz, extrapolated to none. Perf's names
    /// nothing until `perf script`, which is not counted.
    fn fixed_cost(&self, runs: u32) -> anyhow::Result<Value> {
        let (short, long) = (Duration::from_secs(5), Duration::from_secs(25));
        let at = |duration| Bench {
            duration,
            ..self.clone()
        };
        let mut ours = Vec::new();
        let mut perf = Vec::new();
        for run in 1..=runs {
            println!("bench: fixed cost, run {run} of {runs}: profiler and perf, 5 s and 25 s");
            let profiled = [
                at(short).with_profiler(99, &[])?,
                at(long).with_profiler(99, &[])?,
            ];
            let perfed = [
                at(short).with_perf(99, CallGraph::FramePointers)?,
                at(long).with_perf(99, CallGraph::FramePointers)?,
            ];
            let intercept = |[short_run, long_run]: [Measurement; 2]| {
                let (a, b) = (short_run.cpu_seconds(), long_run.cpu_seconds());
                a - (b - a) * short.as_secs_f64() / (long - short).as_secs_f64()
            };
            ours.push(intercept(profiled));
            perf.push(intercept(perfed));
        }
        let (ours_median, perf_median) = (median(ours.clone()), median(perf.clone()));
        Ok(json!({
            "workload": format!("demo/model_server.c, {} workers, --pid, 5 s and 25 s at 99 Hz; medians of {runs} runs", self.workers),
            "profiler_fixed_cpu_s": ours_median,
            "perf_record_g_fixed_cpu_s": perf_median,
            "ratio_profiler_to_perf": ratio(ours_median, perf_median),
            "runs_profiler": ours,
            "runs_perf": perf,
        }))
    }

    fn start_server(&self) -> anyhow::Result<(Child, Instant)> {
        let child = Command::new(&self.server)
            .arg(self.workers.to_string())
            .stdout(Stdio::piped())
            .spawn()?;
        Ok((child, Instant::now()))
    }

    /// Stops the service and returns its requests per second over its lifetime.
    fn stop_server(&self, child: Child, started: Instant) -> anyhow::Result<f64> {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let lifetime = started.elapsed().as_secs_f64();
        let output = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let served: f64 = text
            .split_once("served ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|count| count.parse().ok())
            .with_context(|| format!("model-server printed no request count: {text}"))?;
        Ok(served / lifetime)
    }

    fn unprofiled(&self) -> anyhow::Result<f64> {
        let (server, started) = self.start_server()?;
        sleep(self.duration);
        self.stop_server(server, started)
    }

    /// The service under the profiler at `hz`, with `extra` options (which, when given,
    /// also write a pprof profile).
    fn with_profiler(&self, hz: u32, extra: &[&str]) -> anyhow::Result<Measurement> {
        let (server, started) = self.start_server()?;
        let report = self.dir.join(format!("profiler-{hz}.json"));
        let mut extra: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        if !extra.is_empty() {
            extra.push("--pprof".to_owned());
            extra.push(self.dir.join("profiler.pb.gz").display().to_string());
        }
        let times = timed(
            Command::new(profiler_binary())
                .args(["record", "--pid", &server.id().to_string()])
                .args([
                    "--duration",
                    &self.duration.as_secs_f64().to_string(),
                    "-F",
                    &hz.to_string(),
                ])
                .arg("-o")
                .arg(self.dir.join(format!("profiler-{hz}.svg")))
                .arg("--json")
                .arg(&report)
                .args(&extra),
            Stdio::inherit(),
        )?;
        let throughput = self.stop_server(server, started)?;
        let report: Value = serde_json::from_str(&fs::read_to_string(&report)?)?;
        Ok(Measurement {
            throughput,
            tool_cpu: times,
            bpf_cpu: report["overhead"]["bpf_run_time_ns"]
                .as_f64()
                .unwrap_or(0.0)
                / 1e9,
            samples: report["cpu"]["samples"].as_u64().unwrap_or(0),
            lost: report["cpu"]["lost"].as_u64().unwrap_or(0),
            stop_to_output_ms: report["overhead"]["stop_to_svg_ms"].as_f64().unwrap_or(0.0),
        })
    }

    fn with_perf(&self, hz: u32, call_graph: CallGraph) -> anyhow::Result<Measurement> {
        let (server, started) = self.start_server()?;
        let data = self.dir.join(format!("perf-{hz}.data"));
        let log = self.dir.join(format!("perf-{hz}.log"));
        let call_graph: &[&str] = match call_graph {
            CallGraph::FramePointers => &["-g"],
            CallGraph::Dwarf => &["--call-graph", "dwarf"],
        };
        let times = timed(
            Command::new("perf")
                .args(["record", "-F", &hz.to_string()])
                .args(call_graph)
                .args(["-p", &server.id().to_string(), "-o"])
                .arg(&data)
                .args(["--", "sleep", &self.duration.as_secs_f64().to_string()]),
            fs::File::create(&log)?.into(),
        )?;
        let throughput = self.stop_server(server, started)?;
        let log = fs::read_to_string(&log)?;
        let script_started = Instant::now();
        let script = Command::new("perf")
            .args(["script", "-i"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !script.success() {
            bail!("perf script failed");
        }
        Ok(Measurement {
            throughput,
            tool_cpu: times,
            bpf_cpu: 0.0,
            samples: number_before(&log, " samples)").unwrap_or(0),
            lost: number_before(&log, " chunks").unwrap_or(0),
            stop_to_output_ms: script_started.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// Runs a command under GNU time, its stderr going to `stderr`, and returns its user +
/// system CPU seconds.
pub fn timed(command: &Command, stderr: Stdio) -> anyhow::Result<f64> {
    Ok(timed_with_rss(command, stderr)?.0)
}

/// As [`timed`], and also the command's peak resident memory, in MiB.
pub fn timed_with_rss(command: &Command, stderr: Stdio) -> anyhow::Result<(f64, f64)> {
    let times = root().join("target/bench/time.txt");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%U %S %M", "-o"])
        .arg(&times)
        .arg(command.get_program())
        .args(command.get_args());
    let status = timed
        .stdout(Stdio::null())
        .stderr(stderr)
        .status()
        .with_context(|| format!("running {command:?}"))?;
    // The profiler's own exit code 8 (target exited) would mean the bench is broken too.
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    // GNU time may print a line about the exit status first: the figures are last.
    let text = fs::read_to_string(&times)?;
    let fields: Vec<f64> = text
        .split_whitespace()
        .rev()
        .take(3)
        .filter_map(|field| field.parse().ok())
        .collect();
    let [rss_kib, system, user] = fields[..] else {
        bail!("GNU time printed no `user system rss` line: {text}");
    };
    Ok((user + system, rss_kib / 1024.0))
}

/// One frame of a `perf script` sample: its function, without the offset, and the file
/// perf found it in.
pub struct PerfFrame {
    pub name: String,
    pub file: String,
}

/// The samples `perf record -g` wrote to `data`, each a list of frames leaf first.
pub fn perf_samples(data: &std::path::Path) -> anyhow::Result<Vec<Vec<PerfFrame>>> {
    let script = Command::new("perf")
        .args(["script", "-F", "ip,sym,dso", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    let text = String::from_utf8_lossy(&script.stdout);
    Ok(text
        .split("\n\n")
        .filter(|sample| !sample.trim().is_empty())
        .map(|sample| sample.lines().filter_map(perf_frame).collect())
        .collect())
}

/// "    55d0c0a01234 main.worker+0x2c (/srv/go-phases)": the function may hold spaces
/// (a Java method's signature).
fn perf_frame(line: &str) -> Option<PerfFrame> {
    let (_ip, rest) = line.trim_start().split_once(' ')?;
    let (symbol, file) = rest.rsplit_once(" (").map_or((rest, ""), |(symbol, file)| {
        (symbol, file.trim_end_matches(')'))
    });
    let name = symbol.rsplit_once('+').map_or(symbol, |(name, _)| name);
    Some(PerfFrame {
        name: name.to_owned(),
        file: file.to_owned(),
    })
}

/// The integer just before `marker` in `text`, as in "(12345 samples)".
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let end = text.find(marker)?;
    let start = text[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    text[start..end].parse().ok()
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn ratio(ours: f64, theirs: f64) -> Value {
    if theirs.abs() < 1e-12 {
        Value::Null
    } else {
        json!(ours / theirs)
    }
}
