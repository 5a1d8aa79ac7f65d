//! The load-test part of `cargo xtask bench`: what the profiler in load-test mode
//! (`--pid MASTER --children -F 99 --metrics-addr`) costs a gunicorn + Flask + numpy
//! service with two workers under a closed-loop HTTP load (wrk), next to py-spy
//! `record --subprocesses` at the same rate, as its users run it (it stops the target at
//! each sample), and next to nothing attached.
//!
//! Each round runs, interleaved: the service alone, the profiler for a short and for a
//! long recording, the same with syscalls and off-CPU time traced too (docs/load-test.md's
//! load-test command plus `offcpu`), and py-spy for the long one. The service's CPU is
//! read from /proc over each tool's run; the profiler's cost is its process CPU (GNU
//! time) plus its BPF programs' run time (its report; with syscalls traced the kernel
//! counts it only while its statistics are on, which the bench turns on for those runs,
//! adding their own clock reads to every traced syscall). The difference between the
//! long and the short recording is the steady cost, without start-up and stop, which
//! the goals are about.
//!
//! Last in each round, the live views: `profiler top` and `py-spy top`, each in a tmux
//! session of its own for the long recording's time, their CPU read from /proc (ours
//! with its BPF programs' run time, from their file descriptors) and their last screen
//! kept in `target/bench/loadtest-*-top.txt`.

use std::{
    fs,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    bench::{median, timed_with_rss},
    bench_python::PY_SPY_VERSION,
    bench_unwind::which_python,
    profiler_binary, root,
    setup::python_venv,
};

/// The service's Python packages, pinned so that a new machine measures the same service.
const PACKAGES: [&str; 3] = ["flask==3.1.3", "numpy==2.4.6", "gunicorn==27.0.1"];

/// Where the service listens.
const ADDRESS: &str = "127.0.0.1:18911";

/// The profiler's sampling rate, and py-spy's.
const RATE: &str = "99";

/// The short and the long recording; the steady cost is the difference.
const SHORT: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(40);

/// What the profiler traces in a load test.
#[derive(Clone, Copy, PartialEq)]
enum Events {
    /// CPU samples: the load-test mode.
    Cpu,
    /// CPU samples, syscalls and off-CPU time.
    CpuSyscallsOffCpu,
}

impl Events {
    fn flag(self) -> &'static str {
        match self {
            Events::Cpu => "cpu",
            Events::CpuSyscallsOffCpu => "cpu,syscalls,offcpu",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Unprofiled,
    Profiler(Events, Duration),
    PySpy,
    Top(Viewer),
}

/// A live full-screen view of the service.
#[derive(Clone, Copy, PartialEq)]
enum Viewer {
    Profiler,
    PySpy,
}

impl Viewer {
    fn name(self) -> &'static str {
        match self {
            Viewer::Profiler => "profiler",
            Viewer::PySpy => "py-spy",
        }
    }
}

impl Tool {
    const ALL: [Tool; 8] = [
        Tool::Unprofiled,
        Tool::Profiler(Events::Cpu, SHORT),
        Tool::Profiler(Events::Cpu, LONG),
        Tool::Profiler(Events::CpuSyscallsOffCpu, SHORT),
        Tool::Profiler(Events::CpuSyscallsOffCpu, LONG),
        Tool::PySpy,
        Tool::Top(Viewer::Profiler),
        Tool::Top(Viewer::PySpy),
    ];

    fn label(self) -> String {
        match self {
            Tool::Unprofiled => "unprofiled".to_owned(),
            Tool::Profiler(events, duration) => format!(
                "profiler --events {} --children -F {RATE} --metrics-addr, {} s",
                events.flag(),
                duration.as_secs()
            ),
            Tool::PySpy => format!("py-spy {PY_SPY_VERSION} record --subprocesses --rate {RATE}"),
            Tool::Top(Viewer::Profiler) => format!("profiler top --children -F {RATE}"),
            Tool::Top(Viewer::PySpy) => {
                format!("py-spy {PY_SPY_VERSION} top --subprocesses --rate {RATE}")
            }
        }
    }

    fn duration(self) -> Duration {
        match self {
            Tool::Profiler(_, duration) => duration,
            Tool::Unprofiled | Tool::PySpy | Tool::Top(_) => LONG,
        }
    }
}

/// One run under load.
#[derive(Clone, Copy, Default)]
struct Measurement {
    requests_per_s: f64,
    p99_ms: f64,
    /// The service's CPU (master and workers) over the tool's run, in seconds.
    service_cpu: f64,
    /// The tool's CPU, its BPF programs included, in seconds.
    tool_cpu: f64,
    /// The tool's peak resident memory, in MiB.
    tool_rss_mib: f64,
}

impl Measurement {
    fn median(all: &[Measurement]) -> Measurement {
        let pick = |field: fn(&Measurement) -> f64| median(all.iter().map(field).collect());
        Measurement {
            requests_per_s: pick(|m| m.requests_per_s),
            p99_ms: pick(|m| m.p99_ms),
            service_cpu: pick(|m| m.service_cpu),
            tool_cpu: pick(|m| m.tool_cpu),
            tool_rss_mib: pick(|m| m.tool_rss_mib),
        }
    }
}

/// Runs every tool `runs` times, interleaved, and returns the results section.
pub fn run(dir: &Path, runs: u32) -> anyhow::Result<Value> {
    let venv = install_service(dir)?;
    let mut service = Service::start(&venv, dir)?;
    let mut all: Vec<Vec<Measurement>> = vec![Vec::new(); Tool::ALL.len()];
    for round in 1..=runs {
        for (index, tool) in Tool::ALL.into_iter().enumerate() {
            println!("bench: load test, run {round} of {runs}: {}", tool.label());
            all[index].push(service.measure(tool, &venv, dir)?);
        }
    }
    service.stop();
    let medians: Vec<Measurement> = all.iter().map(|runs| Measurement::median(runs)).collect();
    let [
        unprofiled,
        short,
        long,
        short_traced,
        long_traced,
        py_spy,
        profiler_top,
        py_spy_top,
    ] = medians[..]
    else {
        bail!("one median per tool");
    };
    // Run by run, then the median: the slope of the profiler's CPU over the service's.
    let steady = |shorts: &[Measurement], longs: &[Measurement]| -> Vec<f64> {
        shorts
            .iter()
            .zip(longs)
            .map(|(short, long)| {
                (long.tool_cpu - short.tool_cpu) / (long.service_cpu - short.service_cpu)
            })
            .collect()
    };
    let (steady, steady_traced) = (steady(&all[1], &all[2]), steady(&all[3], &all[4]));
    let steady_share = median(steady.clone());
    let per_second = (long.tool_cpu - short.tool_cpu) / (LONG - SHORT).as_secs_f64();
    let summary = |measurement: Measurement| {
        json!({
            "requests_per_s": measurement.requests_per_s,
            "throughput_vs_unprofiled": measurement.requests_per_s / unprofiled.requests_per_s,
            "p99_ms": measurement.p99_ms,
            "service_cpu_s": measurement.service_cpu,
            "tool_cpu_s": measurement.tool_cpu,
            "tool_share_of_service_cpu": measurement.tool_cpu / measurement.service_cpu,
            "tool_peak_rss_mib": measurement.tool_rss_mib,
        })
    };
    Ok(json!({
        "workload": format!(
            "gunicorn -w 2 tests/workloads/flask_service.py under wrk -t2 -c8 on {ADDRESS}; \
             medians of {runs} interleaved rounds"
        ),
        "unprofiled": summary(unprofiled),
        "profiler_short": summary(short),
        "profiler_long": summary(long),
        "py_spy": summary(py_spy),
        "profiler_top": summary(profiler_top),
        "py_spy_top": summary(py_spy_top),
        "profiler_steady_share_of_service_cpu": steady_share,
        "profiler_steady_share_by_run": steady,
        "profiler_fixed_cpu_s": short.tool_cpu - per_second * SHORT.as_secs_f64(),
        "with_syscalls_and_offcpu": {
            "short": summary(short_traced),
            "long": summary(long_traced),
            "steady_share_of_service_cpu": median(steady_traced.clone()),
            "steady_share_by_run": steady_traced,
        },
    }))
}

/// A virtual environment under `dir` with the service's packages and py-spy, installed
/// unless they are already there.
fn install_service(dir: &Path) -> anyhow::Result<PathBuf> {
    let venv = dir.join("loadtest-venv");
    let mut packages: Vec<String> = PACKAGES.iter().map(|package| package.to_string()).collect();
    packages.push(format!("py-spy=={PY_SPY_VERSION}"));
    python_venv(&which_python(), &venv, &packages)?;
    Ok(venv)
}

/// The gunicorn service, master and workers.
struct Service {
    master: Child,
}

impl Service {
    fn start(venv: &Path, dir: &Path) -> anyhow::Result<Self> {
        let master = Command::new(venv.join("bin/gunicorn"))
            .args(["-w", "2", "-b", ADDRESS, "--chdir"])
            .arg(root().join("tests/workloads"))
            .arg("flask_service:app")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("gunicorn.log"))?)
            .spawn()
            .context("starting gunicorn")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(ADDRESS).is_err() {
            if Instant::now() > deadline {
                bail!("gunicorn did not listen on {ADDRESS} within 30 s");
            }
            sleep(Duration::from_millis(100));
        }
        let service = Service { master };
        // Warm up: the workers import and compile on their first requests.
        service.load(Duration::from_secs(3))?.wait()?;
        Ok(service)
    }

    /// wrk against the service for `duration`, started now.
    fn load(&self, duration: Duration) -> anyhow::Result<Child> {
        Command::new("wrk")
            .args(["-t2", "-c8", "--latency", "-d"])
            .arg(format!("{}s", duration.as_secs()))
            .arg(format!("http://{ADDRESS}/predict"))
            .stdout(Stdio::piped())
            .spawn()
            .context("starting wrk")
    }

    fn measure(&self, tool: Tool, venv: &Path, dir: &Path) -> anyhow::Result<Measurement> {
        let pid = self.master.id().to_string();
        let before = self.cpu_seconds();
        let load = self.load(tool.duration())?;
        let seconds = tool.duration().as_secs().to_string();
        let (tool_cpu, tool_rss_mib) = match tool {
            Tool::Unprofiled => {
                sleep(tool.duration());
                (0.0, 0.0)
            }
            Tool::Profiler(events, _) => {
                let report = dir.join("loadtest-report.json");
                let mut profiler = Command::new(profiler_binary());
                profiler
                    .args(["record", "--events", events.flag()])
                    .args(["--pid", &pid, "--children", "-F", RATE])
                    .args(["--metrics-addr", "127.0.0.1:0", "--duration", &seconds])
                    .arg("-o")
                    .arg(dir.join("loadtest.svg"))
                    .arg("--json")
                    .arg(&report);
                // The profiler keeps the kernel's BPF statistics off while syscalls are
                // traced, as they cost every syscall; the bench wants the figure.
                let statistics = (events == Events::CpuSyscallsOffCpu)
                    .then(BpfStatistics::on)
                    .transpose()?;
                let times = timed_with_rss(&profiler, Stdio::null());
                drop(statistics);
                let (process_cpu, rss_mib) = times?;
                let report: Value = serde_json::from_str(&fs::read_to_string(&report)?)?;
                let bpf_ns = report["overhead"]["bpf_run_time_ns"]
                    .as_f64()
                    .with_context(|| format!("{}: the report has no BPF time", tool.label()))?;
                (process_cpu + bpf_ns / 1e9, rss_mib)
            }
            Tool::PySpy => {
                let mut py_spy = Command::new(venv.join("bin/py-spy"));
                py_spy
                    .args(["record", "--pid", &pid, "--subprocesses", "--rate", RATE])
                    .args(["--duration", &seconds, "--format", "raw", "-o"])
                    .arg(dir.join("loadtest-py-spy.txt"));
                timed_with_rss(&py_spy, Stdio::null())?
            }
            Tool::Top(viewer) => {
                let command = match viewer {
                    Viewer::Profiler => format!(
                        "exec {} top --pid {pid} --children -F {RATE}",
                        profiler_binary().display()
                    ),
                    Viewer::PySpy => format!(
                        "exec {} top --pid {pid} --subprocesses --rate {RATE}",
                        venv.join("bin/py-spy").display()
                    ),
                };
                let view = LiveView::start(&command)?;
                sleep(tool.duration());
                let cost = view.cost()?;
                fs::write(
                    dir.join(format!("loadtest-{}-top.txt", viewer.name())),
                    view.screen()?,
                )?;
                view.quit();
                cost
            }
        };
        let service_cpu = self.cpu_seconds() - before;
        let said = String::from_utf8_lossy(&load.wait_with_output()?.stdout).into_owned();
        Ok(Measurement {
            requests_per_s: field_after(&said, "Requests/sec:")
                .and_then(|value| value.parse().ok())
                .with_context(|| format!("no Requests/sec in wrk's output:\n{said}"))?,
            p99_ms: field_after(&said, "99%")
                .and_then(milliseconds)
                .with_context(|| format!("no 99th percentile in wrk's output:\n{said}"))?,
            service_cpu,
            tool_cpu,
            tool_rss_mib,
        })
    }

    /// The CPU time of the master and its workers, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let master = self.master.id();
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let (parent, seconds) = process_cpu(pid)?;
                (pid == master || parent == master).then_some(seconds)
            })
            .sum()
    }

    fn stop(&mut self) {
        // SAFETY: a plain signal to our own child; gunicorn's master stops its workers.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
        let _ = self.master.wait();
    }
}

/// Process `pid`'s parent and its user and system CPU so far in seconds, from /proc.
fn process_cpu(pid: u32) -> Option<(u32, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let parent = fields.get(1)?.parse().ok()?;
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    let ticks_per_s = 100.0;
    Some((parent, (user + system) / ticks_per_s))
}

/// The first word after `label` on the line where `label` starts.
fn field_after<'t>(text: &'t str, label: &str) -> Option<&'t str> {
    text.lines()
        .find_map(|line| line.trim_start().strip_prefix(label))?
        .split_whitespace()
        .next()
}

/// wrk's latency (`850.21us`, `12.34ms`, `1.02s`) in milliseconds.
fn milliseconds(value: &str) -> Option<f64> {
    let (number, scale) = if let Some(number) = value.strip_suffix("us") {
        (number, 1e-3)
    } else if let Some(number) = value.strip_suffix("ms") {
        (number, 1.0)
    } else {
        (value.strip_suffix('s')?, 1e3)
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// The kernel's BPF run-time statistics, on while this lives (`kernel.bpf_stats_enabled`).
/// A live view running in a detached tmux session of its own, quit on drop.
struct LiveView {
    /// The view's process: the session's shell `exec`s it.
    pid: u32,
}

impl LiveView {
    const SOCKET: &str = "profiler-bench";

    fn start(command: &str) -> anyhow::Result<LiveView> {
        let _ = Self::tmux(&["kill-server"]);
        Self::tmux(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "50",
            command,
        ])?;
        let pid = Self::tmux(&["list-panes", "-t", "top", "-F", "#{pane_pid}"])?
            .trim()
            .parse()
            .context("tmux's pane pid")?;
        Ok(LiveView { pid })
    }

    fn tmux(args: &[&str]) -> anyhow::Result<String> {
        let said = Command::new("tmux")
            .args(["-L", Self::SOCKET])
            .args(args)
            .output()
            .context("running tmux")?;
        if !said.status.success() {
            bail!("tmux {args:?}: {}", String::from_utf8_lossy(&said.stderr));
        }
        Ok(String::from_utf8_lossy(&said.stdout).into_owned())
    }

    /// The view's CPU since it started, its BPF programs' run time included, in seconds,
    /// and its peak resident memory in MiB.
    fn cost(&self) -> anyhow::Result<(f64, f64)> {
        let (_, process_cpu) = process_cpu(self.pid).context("the live view has exited")?;
        // A BPF program's file descriptor reports its run time while the kernel's
        // statistics are on, which the profiler turns on for itself in this mode.
        let bpf_ns: f64 = fs::read_dir(format!("/proc/{}/fdinfo", self.pid))?
            .flatten()
            .filter_map(|entry| fs::read_to_string(entry.path()).ok())
            .filter(|info| info.contains("prog_type:"))
            .filter_map(|info| {
                field_after(&info, "run_time_ns:").and_then(|value| value.parse::<f64>().ok())
            })
            .sum();
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let peak_kib: f64 = field_after(&status, "VmHWM:")
            .and_then(|value| value.parse().ok())
            .context("no VmHWM")?;
        Ok((process_cpu + bpf_ns / 1e9, peak_kib / 1024.0))
    }

    fn screen(&self) -> anyhow::Result<String> {
        Self::tmux(&["capture-pane", "-p", "-t", "top"])
    }

    /// Sends `q`, as a user would, and waits up to 5 s for the view to end.
    fn quit(self) {
        let _ = Self::tmux(&["send-keys", "-t", "top", "q"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        let _ = Self::tmux(&["kill-server"]);
    }
}

struct BpfStatistics;

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatistics {
    fn on() -> anyhow::Result<Self> {
        fs::write(BPF_STATS_SYSCTL, "1").context("turning the kernel's BPF statistics on")?;
        Ok(BpfStatistics)
    }
}

impl Drop for BpfStatistics {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS_SYSCTL, "0");
    }
}
