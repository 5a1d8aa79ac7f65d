//! End-to-end tests of `profiler record --events syscalls,io,offcpu`: the real BPF
//! programs trace a workload that waits in known ways and measures every wait itself
//! (`tests/workloads/waits.c`), while another process makes the same syscalls and must
//! not be counted. Run as root, one at a time, like `record.rs`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use serde_json::Value;

mod common;
use common::{
    RULE_FIRED, USAGE, assert_close, compile_workload, entries_where, pprof_row, pprof_top,
    profiler, read_json, record, run, scratch, stderr_line,
};

/// One recording of the workload with every event kind, shared by the tests below: it
/// takes a few seconds, and each test checks another part of it.
struct Recorded {
    dir: PathBuf,
    output: Output,
    report: Value,
    truth: Value,
}

fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let dir = scratch("waits");
        let waits = compile_workload("waits");
        // Another process hammering the same syscall during the whole recording.
        let noise = Command::new(&waits)
            .args(["--noise", "6"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let truth = dir.join("truth.json");
        let disk_rule = format!("io:{}.p99>1us", disk_of(&dir));
        let output = run(record(
            &dir,
            &[
                "--events",
                "all",
                "--fail-on",
                "clock_nanosleep.p50>20ms",
                "--fail-on",
                "read.p99>1s",
                "--fail-on",
                "io.p99>1us",
                "--fail-on",
                &disk_rule,
                "--fail-on",
                "io.p99>10s",
                "--fail-on",
                "io:nosuchdisk.p99>1us",
            ],
        )
        .arg("--")
        .arg(&waits)
        .arg(&truth)
        .arg(&dir));
        let noise = noise.wait_with_output().unwrap();
        let noise_calls: u64 = String::from_utf8_lossy(&noise.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(noise_calls > 100_000, "the noise made {noise_calls} calls");
        Recorded {
            report: read_json(&dir.join("report.json")),
            truth: read_json(&truth),
            dir,
            output,
        }
    })
}

/// The disk that holds `path`, as the block tracepoints name it: a partition's requests
/// are its disk's.
fn disk_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let device = fs::canonicalize(format!("/sys/dev/block/{major}:{minor}"))
        .unwrap_or_else(|error| panic!("{major}:{minor} is not a block device: {error}"));
    let disk = if device.join("partition").exists() {
        device.parent().unwrap().to_owned()
    } else {
        device
    };
    disk.file_name().unwrap().to_string_lossy().into_owned()
}

fn syscall<'r>(report: &'r Value, name: &str) -> &'r Value {
    entries_where(&report["syscalls"], "name", name)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no {name} in the syscalls section"))
}

fn truth_u64(recorded: &Recorded, field: &str) -> u64 {
    recorded.truth[field].as_u64().unwrap()
}

#[test]
fn a_fast_syscall_is_counted_exactly_and_no_other_process_is() {
    let recorded = recorded();
    let getppid = syscall(&recorded.report, "getppid");
    // The noise process made hundreds of thousands more; none may be counted.
    assert_eq!(getppid["count"], truth_u64(recorded, "getppid_calls"));
    assert_eq!(getppid["errors"], 0);
    let lost = &recorded.report["lost"];
    for kind in ["syscalls", "io", "offcpu", "cpu_samples"] {
        assert_eq!(lost[kind], 0, "lost {kind}");
    }
}

#[test]
fn pipe_read_latency_matches_the_workloads_own_mean() {
    let recorded = recorded();
    let read = syscall(&recorded.report, "read");
    assert!(read["count"].as_u64().unwrap() >= truth_u64(recorded, "pipe_reads"));
    let p50 = read["p50_ns"].as_u64().unwrap();
    assert_close("read p50", p50, truth_u64(recorded, "read_mean_ns"), 0.05);
    let max = read["max_ns"].as_u64().unwrap();
    assert!(read["p99_ns"].as_u64().unwrap() <= max);
}

#[test]
fn sleep_latency_matches_the_workloads_own_mean() {
    let recorded = recorded();
    let sleep = syscall(&recorded.report, "clock_nanosleep");
    assert_eq!(sleep["count"], truth_u64(recorded, "sleeps"));
    let p50 = sleep["p50_ns"].as_u64().unwrap();
    assert_close(
        "clock_nanosleep p50",
        p50,
        truth_u64(recorded, "sleep_mean_ns"),
        0.05,
    );
    // Every sleep is slower than --slow-ms, so each came with its stack, root first.
    let slow: Vec<&Value> =
        entries_where(&recorded.report["slow_calls"], "name", "clock_nanosleep");
    assert_eq!(slow.len() as u64, truth_u64(recorded, "sleeps"));
    for call in slow {
        let stack: Vec<&str> = call["stack"]
            .as_array()
            .unwrap()
            .iter()
            .map(|frame| frame.as_str().unwrap())
            .collect();
        let main = stack.iter().position(|&frame| frame == "main");
        let sleep = stack.iter().position(|&frame| frame.ends_with("nanosleep"));
        assert!(
            main.is_some() && main < sleep,
            "main should call nanosleep: {stack:?}"
        );
    }
}

#[test]
fn write_and_fdatasync_show_up_as_syscalls_and_as_block_io() {
    let recorded = recorded();
    let syncs = truth_u64(recorded, "syncs");
    assert_eq!(syscall(&recorded.report, "fdatasync")["count"], syncs);
    assert_eq!(syscall(&recorded.report, "pwrite64")["count"], syncs);
    let writes: Vec<&Value> = entries_where(&recorded.report["io"], "op", "write");
    let bytes: u64 = writes.iter().map(|io| io["bytes"].as_u64().unwrap()).sum();
    assert!(
        bytes >= truth_u64(recorded, "sync_bytes"),
        "{bytes} bytes written to block devices"
    );
    for io in writes {
        assert!(
            io["device"]
                .as_str()
                .is_some_and(|device| !device.is_empty())
        );
        assert!(io["p50_ns"].as_u64().unwrap() > 0);
        assert!(io["p99_ns"].as_u64() <= io["max_ns"].as_u64());
    }
}

#[test]
fn a_thread_blocked_on_a_lock_shows_off_cpu_with_its_stack() {
    let recorded = recorded();
    let offcpu = &recorded.report["offcpu"];
    let wait = entries_where(&offcpu["functions"], "name", "wait_for_lock")
        .first()
        .copied()
        .expect("wait_for_lock in the off-CPU functions");
    assert_close(
        "wait_for_lock off-CPU time",
        wait["total_ns"].as_u64().unwrap(),
        truth_u64(recorded, "lock_wait_ns"),
        0.05,
    );
    let svg = fs::read_to_string(recorded.dir.join("offcpu.svg")).unwrap();
    assert!(svg.contains("Off-CPU flame graph: waits (pid "));
    assert!(svg.contains("wait_for_lock"));
    // Blocked time is drawn in microseconds, and the flame graph says so.
    assert!(svg.contains(" us, "), "the count name is us");
    // The off-CPU pprof profile holds the same time, as `go tool pprof` reads it.
    let (total_ns, rows) = pprof_top(&recorded.dir.join("cpu-offcpu.pb.gz"), "offcpu", "ns");
    assert_eq!(total_ns, offcpu["total_ns"].as_f64().unwrap());
    assert_eq!(
        pprof_row(&rows, "wait_for_lock").cum,
        wait["total_ns"].as_f64().unwrap()
    );
}

#[test]
fn cpu_samples_carry_kernel_frames_as_often_as_the_thread_runs_in_the_kernel() {
    // A getppid() loop runs about half its time in the kernel, by its own account.
    let dir = scratch("kernel-share");
    let truth = dir.join("truth.json");
    let output = run(record(&dir, &["-F", "999"])
        .arg("--")
        .arg(compile_workload("waits"))
        .args(["--noise", "2"])
        .arg(&truth));
    assert_eq!(output.status.code(), Some(0));
    let (report, truth) = (read_json(&dir.join("report.json")), read_json(&truth));
    let (user_ns, system_ns) = (
        truth["user_ns"].as_f64().unwrap(),
        truth["system_ns"].as_f64().unwrap(),
    );
    let measured = system_ns / (user_ns + system_ns);
    // Every sample taken in the kernel is under the syscall entry: the kernel
    // function with the largest total holds them all.
    let functions = report["cpu"]["functions"].as_array().unwrap();
    let in_kernel = functions
        .iter()
        .filter(|function| function["kernel"] == true)
        .map(|function| function["total"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let samples = report["cpu"]["samples"].as_f64().unwrap();
    // The kernel's split is itself sampled, on its ticks: both bounds count.
    let ticks = (user_ns + system_ns) / 4e6;
    let bound = 3.0
        * ((measured * (1.0 - measured)) / samples + (measured * (1.0 - measured)) / ticks).sqrt();
    assert!(
        (in_kernel - measured).abs() <= bound,
        "{:.1}% of the samples in the kernel, the workload measured {:.1}% (bound {:.1} points)",
        in_kernel * 100.0,
        measured * 100.0,
        bound * 100.0
    );
}

/// The off-CPU time under kernel functions whose names satisfy `matches`.
fn kernel_offcpu_ns(report: &Value, matches: impl Fn(&str) -> bool) -> u64 {
    report["offcpu"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|function| function["kernel"] == true)
        .filter(|function| function["name"].as_str().is_some_and(&matches))
        .map(|function| function["total_ns"].as_u64().unwrap())
        .max()
        .unwrap_or(0)
}

#[test]
fn blocked_kernel_stacks_name_the_wait_and_keep_the_scheduler_when_asked() {
    // By default the kernel stack is read as the wait ends: the futex wait is on it,
    // the scheduler's own functions are not.
    let recorded = recorded();
    let lock_wait_ns = truth_u64(recorded, "lock_wait_ns") as f64;
    let futex_ns = kernel_offcpu_ns(&recorded.report, |name| name.contains("futex_wait"));
    assert!(
        futex_ns as f64 >= 0.95 * lock_wait_ns,
        "{futex_ns} ns under futex_wait, {lock_wait_ns} ns waited for the lock"
    );
    assert_eq!(
        kernel_offcpu_ns(&recorded.report, |name| name == "__schedule"),
        0
    );
    // Taken as the thread blocks, it keeps them, with the same time.
    let dir = scratch("waits-scheduler-frames");
    let truth = dir.join("truth.json");
    let output = run(
        record(&dir, &["--events", "offcpu", "--offcpu-scheduler-frames"])
            .arg("--")
            .arg(compile_workload("waits"))
            .arg(&truth)
            .arg(&dir),
    );
    assert_eq!(output.status.code(), Some(0));
    let (report, truth) = (read_json(&dir.join("report.json")), read_json(&truth));
    let lock_wait_ns = truth["lock_wait_ns"].as_u64().unwrap();
    assert_close(
        "wait_for_lock off-CPU time",
        offcpu_function(&report, "wait_for_lock")["total_ns"]
            .as_u64()
            .unwrap(),
        lock_wait_ns,
        0.05,
    );
    let schedule_ns = kernel_offcpu_ns(&report, |name| name == "__schedule");
    assert!(
        schedule_ns as f64 >= 0.95 * lock_wait_ns as f64,
        "{schedule_ns} ns under __schedule, {lock_wait_ns} ns waited for the lock"
    );
}

/// The off-CPU entry of the function `name`.
fn offcpu_function<'r>(report: &'r Value, name: &str) -> &'r Value {
    entries_where(&report["offcpu"]["functions"], "name", name)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no {name} in the off-CPU functions"))
}

#[test]
fn waits_keep_their_time_and_stacks_when_stacks_are_taken_at_their_end() {
    // Every span, however short, so that the time adds up to the workload's own.
    let dir = scratch("waits-every-span");
    let truth = dir.join("truth.json");
    let output = run(
        record(&dir, &["--events", "offcpu", "--offcpu-min-us", "0"])
            .arg("--")
            .arg(compile_workload("waits"))
            .arg(&truth)
            .arg(&dir),
    );
    assert_eq!(output.status.code(), Some(0));
    let (report, truth) = (read_json(&dir.join("report.json")), read_json(&truth));
    let total = |name: &str| offcpu_function(&report, name)["total_ns"].as_u64().unwrap();
    // Main left the CPU many times before its sleeps, so their user stacks were taken
    // as it returned to user space, not as it left.
    assert_close(
        "sleep_in_turns off-CPU time",
        total("sleep_in_turns"),
        truth["sleep_total_ns"].as_u64().unwrap(),
        0.05,
    );
    // The command was held at its entry point while its tables loaded: stopped, not
    // waiting in its code, and none of its off-CPU time.
    assert!(
        entries_where(&report["offcpu"]["functions"], "name", "do_signal_stop").is_empty(),
        "{:#}",
        report["offcpu"]["functions"]
    );
    // No span lost: not to a ring sized for the streamed records, nor to a user
    // stack that moved before it was taken.
    assert_eq!(report["lost"]["offcpu"], 0, "{:#}", report["lost"]);
    // The sharers were preempted, runnable: their kernel stacks were read as they were
    // switched back in, and end in the interrupt they were preempted on.
    let share_ns = total("share_a_cpu");
    assert_close(
        "share_a_cpu off-CPU time",
        share_ns,
        truth["share_wait_ns"].as_u64().unwrap(),
        0.05,
    );
    let interrupted_ns: u64 = report["offcpu"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|function| {
            function["kernel"] == true
                && function["name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with("asm_sysvec_"))
        })
        .map(|function| function["total_ns"].as_u64().unwrap())
        .sum();
    assert!(
        interrupted_ns as f64 >= 0.95 * share_ns as f64,
        "{interrupted_ns} ns under interrupt entries, {share_ns} ns in share_a_cpu"
    );
}

#[test]
fn latency_rules_fire_on_the_measured_quantile() {
    let recorded = recorded();
    assert_eq!(recorded.output.status.code(), Some(RULE_FIRED));
    assert!(stderr_line(&recorded.output).contains("clock_nanosleep.p50>20ms"));
    let rules = recorded.report["rules"].as_array().unwrap();
    assert_eq!(rules[0]["kind"], "latency");
    assert_eq!(rules[0]["fired"], true);
    assert!(rules[0]["value_ns"].as_u64().unwrap() > 20_000_000);
    assert_eq!(rules[1]["fired"], false);
}

#[test]
fn io_rules_fire_on_block_request_latency_and_hold_under_a_looser_limit() {
    let recorded = recorded();
    let io_rules: Vec<&Value> = recorded.report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["kind"] == "io")
        .collect();
    let outcome = |rule: &Value| (rule["matched"] == true, rule["fired"] == true);
    // io.p99>1us, io:DISK.p99>1us, io.p99>10s, io:nosuchdisk.p99>1us.
    assert_eq!(
        io_rules
            .iter()
            .map(|rule| outcome(rule))
            .collect::<Vec<_>>(),
        vec![(true, true), (true, true), (true, false), (false, false)],
        "{io_rules:?}"
    );
    assert_eq!(io_rules[1]["device"], disk_of(&recorded.dir));
    // The workload waited for every write and flush in an fdatasync it timed.
    let sync_max_ns = truth_u64(recorded, "sync_max_ns");
    let rows = recorded.report["io"].as_array().unwrap();
    for row in rows
        .iter()
        .filter(|row| row["op"] == "write" || row["op"] == "flush")
    {
        let max = row["max_ns"].as_u64().unwrap();
        assert!(
            max <= sync_max_ns,
            "a request of {max} ns outlasted the longest fdatasync, {sync_max_ns} ns"
        );
    }
    // Every device's p99 is one distribution's: between its rows' own.
    let p99s: Vec<u64> = rows
        .iter()
        .map(|row| row["p99_ns"].as_u64().unwrap())
        .collect();
    let observed = io_rules[0]["value_ns"].as_u64().unwrap();
    assert!(
        (*p99s.iter().min().unwrap()..=*p99s.iter().max().unwrap()).contains(&observed),
        "io.p99 {observed} ns against the rows' {p99s:?}"
    );
    assert!(
        sync_max_ns < 10_000_000_000,
        "an fdatasync took {sync_max_ns} ns"
    );
    let summary = String::from_utf8_lossy(&recorded.output.stdout);
    assert!(
        summary.contains("UNMATCHED  io:nosuchdisk.p99>1us: no block request went to nosuchdisk"),
        "{summary}"
    );
}

#[test]
fn a_latency_rule_without_syscall_tracing_is_a_usage_error() {
    let dir = scratch("latency-rule-usage");
    let output = run(profiler()
        .args(["record", "--fail-on", "read.p99>50ms", "-o"])
        .arg(dir.join("flame.svg"))
        .args(["--", "true"]));
    assert_eq!(output.status.code(), Some(USAGE));
    assert!(stderr_line(&output).contains("--events syscalls"));
    assert!(!Path::new(&dir.join("flame.svg")).exists());
}
