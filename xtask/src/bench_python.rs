//! The Python part of `cargo xtask bench`: the profiler against py-spy on the bundled
//! Python model service (`demo/model_service.py`), then the cost of the kernel's Python
//! walk per frame.
//!
//! - Side by side, each tool recording the service alone in its own run, interleaved
//!   with unprofiled runs: the service's throughput (its slowdown), each tool's CPU per
//!   sample, and the `Model.predict` share each reports next to the share the service's
//!   threads measured of themselves (`time.thread_time_ns`). py-spy runs as its users
//!   run it (it stops the target with `ptrace` for every sample) and with
//!   `--nonblocking`.
//! - Two sampling rates, so that each tool's fixed cost (start-up, symbolization, output)
//!   drops out of the marginal cost per sample: the CPU the tool spent at the high rate
//!   minus at the low rate, over the samples it gained.
//! - BPF time per sample of `tests/workloads/python_phases.py deep` with 0 and 150
//!   recursive Python frames: the difference is the walk's cost for 150 frames. On 3.11
//!   and later a Python call does not recurse in C, so the native stack does not grow.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    bench::{median, timed},
    bench_unwind::{bpf_ns_per_sample, record_child, which_python},
    output, profiler_binary, root,
    setup::python_venv,
};

/// py-spy from PyPI, pinned so that a new machine measures the same tool.
pub const PY_SPY_VERSION: &str = "0.4.3";

/// Samples per second: py-spy's default, then ten times more.
const RATES: [u32; 2] = [100, 1000];

/// The recursion depths whose difference gives the walk's cost per frame.
const DEPTHS: [u32; 2] = [0, 150];

/// The function the service's `predict` phase runs.
const PREDICT: &str = "Model.predict";

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Unprofiled,
    Profiler,
    PySpy,
    /// py-spy without stopping the target: cheaper, and its own help warns that the
    /// stacks it reads may then be torn.
    PySpyNonblocking,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Unprofiled => "unprofiled",
            Tool::Profiler => "profiler",
            Tool::PySpy => "py-spy",
            Tool::PySpyNonblocking => "py-spy --nonblocking",
        }
    }
}

/// One run of the service under one tool at one rate.
#[derive(Clone, Debug, Default)]
struct Measurement {
    requests_per_s: f64,
    /// The tool's user + system CPU, plus for the profiler its BPF run time, in seconds.
    cpu_s: f64,
    /// Of which BPF.
    bpf_s: f64,
    /// Thread stacks recorded.
    samples: f64,
    /// Samples the tool lost or failed to read.
    lost: f64,
    /// `Model.predict`'s share of the samples, as the tool reports it.
    predict_share: f64,
    /// `predict`'s share of the service's CPU time, as its threads measured it.
    predict_truth: f64,
    /// The service's threads' context switches per second while the tool ran: a tool
    /// that stops the target to read it adds some at every sample.
    context_switches_per_s: f64,
}

impl Measurement {
    fn median(all: &[Measurement]) -> Measurement {
        let pick = |field: fn(&Measurement) -> f64| median(all.iter().map(field).collect());
        Measurement {
            requests_per_s: pick(|m| m.requests_per_s),
            cpu_s: pick(|m| m.cpu_s),
            bpf_s: pick(|m| m.bpf_s),
            samples: pick(|m| m.samples),
            lost: all.iter().map(|m| m.lost).fold(0.0, f64::max),
            predict_share: pick(|m| m.predict_share),
            predict_truth: pick(|m| m.predict_truth),
            context_switches_per_s: pick(|m| m.context_switches_per_s),
        }
    }

    fn summary(&self, baseline: f64, all: &[Measurement]) -> Value {
        json!({
            "requests_per_s": self.requests_per_s,
            "slowdown_percent": (1.0 - self.requests_per_s / baseline) * 100.0,
            "cpu_s": self.cpu_s,
            "bpf_s": self.bpf_s,
            "samples": self.samples,
            "cost_per_sample_us": self.cpu_s * 1e6 / self.samples.max(1.0),
            "lost": self.lost,
            "predict_share_percent": self.predict_share * 100.0,
            "predict_measured_percent": self.predict_truth * 100.0,
            // Each run against its own measurement, then the median of the gaps.
            "predict_gap_points": median(all.iter().map(|m| (m.predict_share - m.predict_truth).abs() * 100.0).collect()),
            "requests_per_s_runs": all.iter().map(|m| m.requests_per_s).collect::<Vec<_>>(),
            "target_context_switches_per_s": self.context_switches_per_s,
        })
    }
}

/// The marginal CPU per sample between the low and the high rate, in microseconds.
fn marginal_cost_us(low: &Measurement, high: &Measurement) -> f64 {
    (high.cpu_s - low.cpu_s) * 1e6 / (high.samples - low.samples).max(1.0)
}

/// Runs both measurements and returns the results section.
pub fn run(dir: &Path, duration: Duration, runs: u32) -> anyhow::Result<Value> {
    let py_spy = install_py_spy(dir)?;
    let python = which_python();
    let python_version = output(Command::new(&python).arg("--version")).unwrap_or_default();
    let configurations: Vec<(Tool, u32)> = [(Tool::Unprofiled, 0)]
        .into_iter()
        .chain(
            RATES
                .iter()
                .flat_map(|&rate| [(Tool::Profiler, rate), (Tool::PySpy, rate)]),
        )
        .chain([(Tool::PySpyNonblocking, RATES[0])])
        .collect();
    let bench = PythonBench {
        dir: dir.to_owned(),
        python,
        py_spy,
        duration,
    };
    let mut measured: Vec<Vec<Measurement>> = vec![Vec::new(); configurations.len()];
    for run in 1..=runs {
        for (index, &(tool, rate)) in configurations.iter().enumerate() {
            println!(
                "bench: Python service, run {run} of {runs}: {} at {rate} Hz",
                tool.label()
            );
            measured[index].push(bench.measure(tool, rate)?);
        }
    }
    let medians: Vec<Measurement> = measured
        .iter()
        .map(|runs| Measurement::median(runs))
        .collect();
    let baseline = medians[0].requests_per_s;
    let find = |tool: Tool, rate: u32| {
        configurations
            .iter()
            .position(|&configuration| configuration == (tool, rate))
            .map(|index| &medians[index])
            .unwrap()
    };
    let rows: Vec<Value> = configurations
        .iter()
        .zip(&medians)
        .zip(&measured)
        .skip(1)
        .map(|(((tool, rate), median), all)| {
            let mut row = median.summary(baseline, all);
            row["tool"] = json!(tool.label());
            row["rate_hz"] = json!(rate);
            row
        })
        .collect();
    let ours = marginal_cost_us(
        find(Tool::Profiler, RATES[0]),
        find(Tool::Profiler, RATES[1]),
    );
    let theirs = marginal_cost_us(find(Tool::PySpy, RATES[0]), find(Tool::PySpy, RATES[1]));
    Ok(json!({
        "service": "demo/model_service.py, 2 worker threads",
        "python": python_version.trim(),
        "py_spy": PY_SPY_VERSION,
        "seconds_per_run": duration.as_secs_f64(),
        "unprofiled_requests_per_s": baseline,
        "unprofiled_requests_per_s_runs": measured[0].iter().map(|m| m.requests_per_s).collect::<Vec<_>>(),
        "unprofiled_context_switches_per_s": medians[0].context_switches_per_s,
        "rows": rows,
        "marginal_cost_per_sample_us": { "profiler": ours, "py_spy": theirs },
        "ratio_py_spy_to_profiler_marginal_cost": theirs / ours.max(1e-9),
        "walk_cost": walk_cost(dir, &bench.python, duration.min(Duration::from_secs(5)), runs)?,
    }))
}

/// py-spy in a virtual environment of its own under `dir`, installed unless the pinned
/// version is already there.
fn install_py_spy(dir: &Path) -> anyhow::Result<PathBuf> {
    let venv = dir.join("py-spy-venv");
    python_venv(
        &which_python(),
        &venv,
        &[format!("py-spy=={PY_SPY_VERSION}")],
    )?;
    Ok(venv.join("bin/py-spy"))
}

struct PythonBench {
    dir: PathBuf,
    python: PathBuf,
    py_spy: PathBuf,
    duration: Duration,
}

/// What the service said of itself when it stopped.
struct ServiceReport {
    requests_per_s: f64,
    predict_share: f64,
}

impl PythonBench {
    fn measure(&self, tool: Tool, rate: u32) -> anyhow::Result<Measurement> {
        let started = Instant::now();
        let service = Command::new(&self.python)
            .arg(root().join("demo/model_service.py"))
            .stdout(Stdio::piped())
            .spawn()
            .context("starting demo/model_service.py")?;
        // Past its start-up, as a service under load would be.
        sleep(Duration::from_millis(500));
        let pid = service.id().to_string();
        let seconds = self.duration.as_secs_f64().to_string();
        let switches_before = context_switches(service.id());
        let recording = Instant::now();
        let recorded = match tool {
            Tool::Unprofiled => {
                sleep(self.duration);
                Ok(Measurement::default())
            }
            Tool::Profiler => self.with_profiler(&pid, &seconds, rate),
            Tool::PySpy | Tool::PySpyNonblocking => {
                self.with_py_spy(&pid, &seconds, rate, tool == Tool::PySpyNonblocking)
            }
        };
        let context_switches_per_s =
            (context_switches(service.id()) - switches_before) / recording.elapsed().as_secs_f64();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let lifetime = started.elapsed().as_secs_f64();
        let said = String::from_utf8_lossy(&service.wait_with_output()?.stdout).into_owned();
        let report = read_service_report(&said, lifetime)?;
        Ok(Measurement {
            requests_per_s: report.requests_per_s,
            predict_truth: report.predict_share,
            context_switches_per_s,
            ..recorded?
        })
    }

    fn with_profiler(&self, pid: &str, seconds: &str, rate: u32) -> anyhow::Result<Measurement> {
        let report_path = self.dir.join(format!("python-profiler-{rate}.json"));
        let cpu = timed(
            Command::new(profiler_binary())
                .args(["record", "--pid", pid, "--duration", seconds])
                .args(["-F", &rate.to_string(), "-o"])
                .arg(self.dir.join(format!("python-profiler-{rate}.svg")))
                .arg("--json")
                .arg(&report_path),
            Stdio::null(),
        )?;
        let report: Value = serde_json::from_str(&fs::read_to_string(&report_path)?)?;
        let bpf_s = report["overhead"]["bpf_run_time_ns"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9;
        let predict_share = report["cpu"]["functions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|function| function["language"] == "python" && function["function"] == PREDICT)
            .and_then(|function| function["total"].as_f64())
            .unwrap_or(0.0);
        Ok(Measurement {
            cpu_s: cpu + bpf_s,
            bpf_s,
            samples: report["cpu"]["samples"].as_f64().unwrap_or(0.0),
            lost: report["cpu"]["lost"].as_f64().unwrap_or(0.0),
            predict_share,
            ..Measurement::default()
        })
    }

    fn with_py_spy(
        &self,
        pid: &str,
        seconds: &str,
        rate: u32,
        nonblocking: bool,
    ) -> anyhow::Result<Measurement> {
        let raw = self.dir.join(format!("py-spy-{rate}.txt"));
        let log = self.dir.join(format!("py-spy-{rate}.log"));
        let mut command = Command::new(&self.py_spy);
        command
            .args(["record", "--pid", pid, "--duration", seconds])
            .args(["--rate", &rate.to_string(), "--format", "raw", "--output"])
            .arg(&raw);
        if nonblocking {
            command.arg("--nonblocking");
        }
        let cpu = timed(&command, fs::File::create(&log)?.into())?;
        let log = fs::read_to_string(&log)?;
        // py-spy's raw format: one collapsed stack and its count per line; its stack
        // frames read "Model.predict (model_service.py:21)".
        let stacks = fs::read_to_string(&raw)?;
        let (mut samples, mut predict) = (0.0, 0.0);
        for line in stacks.lines() {
            let Some((stack, count)) = line.rsplit_once(' ') else {
                continue;
            };
            let count: f64 = count.parse().unwrap_or(0.0);
            samples += count;
            if stack
                .split(';')
                .any(|frame| frame.starts_with(&format!("{PREDICT} (")))
            {
                predict += count;
            }
        }
        if samples == 0.0 {
            bail!("py-spy recorded nothing: {log}");
        }
        Ok(Measurement {
            cpu_s: cpu,
            samples,
            lost: errors(&log),
            predict_share: predict / samples,
            ..Measurement::default()
        })
    }
}

/// The errors py-spy counted: "Samples: 560 Errors: 0".
fn errors(log: &str) -> f64 {
    log.split_once("Errors: ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0.0)
}

/// The context switches of all of `pid`'s threads so far.
fn context_switches(pid: u32) -> f64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    tasks
        .filter_map(|task| fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Reads "served N requests" and "predict X%" from what the service printed.
fn read_service_report(said: &str, lifetime: f64) -> anyhow::Result<ServiceReport> {
    let after = |marker: &str| {
        said.split_once(marker)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(|value| value.trim_end_matches(['%', ',']).to_owned())
    };
    let served: f64 = after("served ")
        .and_then(|count| count.parse().ok())
        .with_context(|| format!("the service printed no request count: {said}"))?;
    let predict: f64 = after("predict ")
        .and_then(|share| share.parse().ok())
        .with_context(|| format!("the service printed no predict share: {said}"))?;
    Ok(ServiceReport {
        requests_per_s: served / lifetime,
        predict_share: predict / 100.0,
    })
}

/// BPF time per CPU sample of a Python stack `DEPTHS` deep, and the difference per
/// frame.
fn walk_cost(dir: &Path, python: &Path, duration: Duration, runs: u32) -> anyhow::Result<Value> {
    let mut measured: Vec<Vec<f64>> = vec![Vec::new(); DEPTHS.len()];
    for run in 1..=runs {
        for (index, depth) in DEPTHS.iter().enumerate() {
            println!("bench: Python walk, run {run} of {runs}: {depth} recursive frames");
            let workload = Command::new(python)
                .arg(root().join("tests/workloads/python_phases.py"))
                .args(["deep", &(duration.as_secs() + 60).to_string(), "/dev/null"])
                .arg(depth.to_string())
                .spawn()
                .context("starting python_phases.py deep")?;
            let report = record_child(dir, workload, duration, &["-F", "999"])?;
            measured[index].push(bpf_ns_per_sample(&report));
        }
    }
    let per_sample: Vec<f64> = measured.into_iter().map(median).collect();
    let frames = f64::from(DEPTHS[1] - DEPTHS[0]);
    Ok(json!({
        "rows": DEPTHS.iter().zip(&per_sample).map(|(depth, ns)| json!({
            "recursive_frames": depth,
            "bpf_ns_per_sample": ns,
        })).collect::<Vec<_>>(),
        "bpf_ns_per_python_frame": (per_sample[1] - per_sample[0]) / frames,
    }))
}
