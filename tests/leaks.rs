//! End-to-end tests of `profiler record --events alloc`: the real uprobes track a
//! workload that leaks a known number of blocks of a known size from `load_model` while
//! churning balanced allocations elsewhere (`tests/workloads/leaks.c`). Run as root, one
//! at a time, like `record.rs`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;
use common::{
    RULE_FIRED, TARGET_EXITED, USAGE, assert_close, compile_workload, container_root, in_container,
    pprof_row, pprof_top, profiler, read_json, record, run, scratch, stderr_line,
};

/// What the workload says it did.
struct Truth {
    leaked_blocks: u64,
    leaked_bytes: u64,
    churn_rounds: u64,
    handoffs: u64,
}

impl Truth {
    fn read(path: &Path) -> Self {
        let json = read_json(path);
        let field = |name: &str| json[name].as_u64().unwrap();
        Truth {
            leaked_blocks: field("leaked_blocks"),
            leaked_bytes: field("leaked_bytes"),
            churn_rounds: field("churn_rounds"),
            handoffs: field("handoffs"),
        }
    }
}

struct Recorded {
    dir: PathBuf,
    output: Output,
    report: Value,
    truth: Truth,
}

fn leaks_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| compile_workload("leaks"))
}

/// One recording of the workload started by the profiler and exiting during tracking,
/// shared by the tests below. The workload lingers 1.5 s after its last leak, so every
/// leaked block is older than the 1 s minimum age when it exits.
fn recorded() -> &'static Recorded {
    static RECORDED: OnceLock<Recorded> = OnceLock::new();
    RECORDED.get_or_init(|| {
        let dir = scratch("leaks");
        let output = record_workload(
            &dir,
            &["--fail-on", "leak>100KiB", "--fail-on", "leak>100MiB"],
        );
        Recorded {
            report: read_json(&dir.join("report.json")),
            truth: Truth::read(&dir.join("truth.json")),
            dir,
            output,
        }
    })
}

/// Records the workload, started by the profiler, with a 1 s minimum age and `args`.
fn record_workload(dir: &Path, args: &[&str]) -> Output {
    run(record(dir, &["--events", "alloc", "--leak-min-age", "1"])
        .args(args)
        .arg("--")
        .arg(leaks_binary())
        .arg(dir.join("truth.json"))
        .arg(dir.join("output.txt")))
}

/// The candidates whose allocating stack holds `function`.
fn candidates_from<'r>(report: &'r Value, function: &str) -> Vec<&'r Value> {
    report["leaks"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|candidate| {
            candidate["stack"]
                .as_array()
                .unwrap()
                .iter()
                .any(|frame| frame == function)
        })
        .collect()
}

/// The one candidate from the workload's leaking function.
fn leaking_candidate(report: &Value) -> &Value {
    let leaking = candidates_from(report, "load_model");
    assert_eq!(leaking.len(), 1, "{:#}", report["leaks"]);
    leaking[0]
}

#[test]
fn the_leaking_function_holds_the_bytes_it_leaked() {
    let Recorded { report, truth, .. } = recorded();
    let candidate = leaking_candidate(report);
    // The first frame outside the allocator, and the allocating caller is on the stack.
    assert_eq!(candidate["function"], "load_model");
    let stack: Vec<&str> = candidate["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|frame| frame.as_str().unwrap())
        .collect();
    let at = stack
        .iter()
        .position(|&frame| frame == "load_model")
        .unwrap();
    assert_eq!(stack[at - 1], "main", "{stack:?}");
    assert_close(
        "leaked bytes",
        candidate["bytes"].as_u64().unwrap(),
        truth.leaked_bytes,
        0.02,
    );
    assert_close(
        "leaked blocks",
        candidate["count"].as_u64().unwrap(),
        truth.leaked_blocks,
        0.02,
    );
    assert!(candidate["oldest_age_s"].as_f64().unwrap() >= 1.0);
    // The leaks' pprof profile, as `go tool pprof` reads it, holds the same bytes and
    // blocks.
    let pprof = recorded().dir.join("cpu-leaks.pb.gz");
    let candidates = report["leaks"]["candidates"].as_array().unwrap();
    for (index, unit, field) in [
        ("inuse_space", "B", "bytes"),
        ("inuse_objects", "", "count"),
    ] {
        let (total, rows) = pprof_top(&pprof, index, unit);
        let held: u64 = candidates.iter().map(|c| c[field].as_u64().unwrap()).sum();
        assert_eq!(total, held as f64, "{index}");
        assert_eq!(
            pprof_row(&rows, "load_model").cum,
            candidate[field].as_f64().unwrap(),
            "{index}"
        );
    }
    // Candidates come sorted by bytes.
    let bytes: Vec<u64> = report["leaks"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|candidate| candidate["bytes"].as_u64().unwrap())
        .collect();
    assert!(bytes.windows(2).all(|pair| pair[0] >= pair[1]), "{bytes:?}");
}

#[test]
fn balanced_allocations_leave_no_candidates_and_every_call_is_counted() {
    let Recorded { report, truth, .. } = recorded();
    for function in ["churn", "produce", "free_handed"] {
        assert!(
            candidates_from(report, function).is_empty(),
            "{function} has candidates: {:#}",
            report["leaks"]
        );
    }
    // Each churn round makes 5 allocating calls (malloc, calloc, realloc,
    // posix_memalign, aligned_alloc) and 4 frees; each handoff one malloc and one free
    // in another thread. libc's own (stdio, thread start) add a few more.
    let leaks = &report["leaks"];
    let alloc_calls = leaks["alloc_calls"].as_u64().unwrap();
    let expected_allocs = 5 * truth.churn_rounds + truth.handoffs + truth.leaked_blocks;
    assert!(
        (expected_allocs..expected_allocs + 50).contains(&alloc_calls),
        "{alloc_calls} allocating calls, expected {expected_allocs}"
    );
    let free_calls = leaks["free_calls"].as_u64().unwrap();
    let expected_frees = 4 * truth.churn_rounds + truth.handoffs;
    assert!(
        (expected_frees..expected_frees + 50).contains(&free_calls),
        "{free_calls} frees, expected {expected_frees}"
    );
    assert_eq!(leaks["lost"], 0);
    assert!(leaks["outstanding_bytes"].as_u64().unwrap() >= truth.leaked_bytes);
}

#[test]
fn the_target_computes_the_same_with_and_without_the_profiler() {
    let Recorded { dir, .. } = recorded();
    let alone = dir.join("alone");
    fs::create_dir_all(&alone).unwrap();
    let status = Command::new(leaks_binary())
        .arg(alone.join("truth.json"))
        .arg(alone.join("output.txt"))
        .args(["0", "0", "0"])
        .status()
        .unwrap();
    assert!(status.success());
    let profiled = fs::read_to_string(dir.join("output.txt")).unwrap();
    assert_eq!(
        profiled,
        fs::read_to_string(alone.join("output.txt")).unwrap()
    );
}

#[test]
fn a_target_exiting_during_tracking_ends_with_every_output_and_the_gate() {
    let Recorded {
        dir,
        output,
        report,
        ..
    } = recorded();
    assert_eq!(report["stop_reason"], "targets_exited");
    // The leak gate fired: exit code 3, with the rule in the one-line reason.
    assert_eq!(output.status.code(), Some(RULE_FIRED));
    assert!(stderr_line(output).contains("leak>100KiB"));
    let rules = report["rules"].as_array().unwrap();
    assert_eq!(rules[0]["kind"], "leak");
    assert_eq!(rules[0]["fired"], true);
    assert_eq!(rules[1]["fired"], false);
    let svg = fs::read_to_string(dir.join("leaks.svg")).unwrap();
    assert!(svg.contains("load_model"), "leaks.svg lacks load_model");
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        summary.contains("load_model: 1.1 MiB in 400 blocks"),
        "{summary}"
    );
}

#[test]
fn blocks_allocated_before_the_attach_are_not_candidates() {
    let dir = scratch("leaks-attach");
    let truth_path = dir.join("truth.json");
    // 300 blocks leaked from early_load() at once, then a 2.5 s pause before leaking
    // from load_model(), and a 1.5 s linger.
    let mut workload = Command::new(leaks_binary())
        .arg(&truth_path)
        .arg(dir.join("output.txt"))
        .args(["300", "2500", "1500"])
        .spawn()
        .unwrap();
    let ready = dir.join("truth.json.ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    assert!(ready.exists(), "the workload never got ready");
    let pid = workload.id().to_string();
    let output = run(&mut record(
        &dir,
        &["--pid", &pid, "--events", "alloc", "--leak-min-age", "1"],
    ));
    workload.wait().unwrap();
    assert_eq!(output.status.code(), Some(TARGET_EXITED));
    let report = read_json(&dir.join("report.json"));
    assert!(
        candidates_from(&report, "early_load").is_empty(),
        "blocks of unknown origin reported: {:#}",
        report["leaks"]
    );
    let truth = Truth::read(&truth_path);
    let leaking = leaking_candidate(&report);
    assert_close(
        "leaked bytes",
        leaking["bytes"].as_u64().unwrap(),
        truth.leaked_bytes,
        0.02,
    );
}

/// The kernel takes allocation probes out one grace period at a time, seconds for all of
/// them: the recording still ends when `--duration` says, and they come out meanwhile.
#[test]
fn a_table_of_many_live_blocks_is_read_whole_and_once() {
    // More blocks than a batch holds: the table's readers each read a range of its
    // buckets, and a reader's last batch runs into the next one's range.
    let held: u64 = 150_000;
    let dir = scratch("leaks-many");
    let output = run(record(&dir, &["--events", "alloc", "--leak-min-age", "0"])
        .arg("--")
        .arg(compile_workload("alloc_loop"))
        .args(["0", &held.to_string(), "300"]));
    assert!(output.status.success(), "{}", stderr_line(&output));
    let report = read_json(&dir.join("report.json"));
    // The holding loop's blocks are 64 bytes each; its array of pointers is one block.
    let holding: Vec<_> = candidates_from(&report, "main")
        .into_iter()
        .filter(|candidate| candidate["count"].as_f64() > Some(1.0))
        .collect();
    assert_eq!(holding.len(), 1, "{:#}", report["leaks"]);
    assert_eq!(holding[0]["count"].as_f64(), Some(held as f64));
    assert_eq!(holding[0]["bytes"].as_f64(), Some((held * 64) as f64));
}

#[test]
fn a_duration_ends_the_recording_on_time_while_the_probes_come_out() {
    let dir = scratch("leaks-duration");
    let mut idle = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = idle.id().to_string();
    let output = run(&mut record(
        &dir,
        &["--pid", &pid, "--events", "alloc", "--duration", "2"],
    ));
    idle.kill().unwrap();
    idle.wait().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let recorded = read_json(&dir.join("report.json"))["duration_s"]
        .as_f64()
        .unwrap();
    assert!(
        (recorded - 2.0).abs() <= 0.1,
        "a 2 s recording lasted {recorded:.3} s"
    );
}

#[test]
fn sampled_tracking_estimates_the_leak_without_seeing_every_block() {
    let dir = scratch("leaks-sampled");
    let output = record_workload(&dir, &["--alloc-sample-bytes", "4096"]);
    assert_eq!(output.status.code(), Some(0));
    let report = read_json(&dir.join("report.json"));
    let truth = Truth::read(&dir.join("truth.json"));
    assert_eq!(report["leaks"]["sample_bytes"], 4096);
    // 3000-byte blocks are sampled with probability 1 - exp(-3000/4096) = 0.52, so about
    // 208 of the 400 are seen: the reweighted estimate has a standard error of 5 %.
    let leaking = leaking_candidate(&report);
    assert_close(
        "estimated leaked bytes",
        leaking["bytes"].as_u64().unwrap(),
        truth.leaked_bytes,
        0.2,
    );
    // Every call is still counted, sampled or not.
    assert!(report["leaks"]["alloc_calls"].as_u64().unwrap() >= 5 * truth.churn_rounds);
}

#[test]
fn a_process_a_shell_starts_has_its_leaks_tracked() {
    let dir = scratch("leaks_followed");
    // The workload pauses 500 ms before leaking: new processes get their probes within
    // a drain interval or two of their fork.
    let script = format!(
        "{} {} {} 0 500; true",
        leaks_binary().display(),
        dir.join("truth.json").display(),
        dir.join("output.txt").display()
    );
    let output = run(record(&dir, &["--events", "alloc", "--leak-min-age", "1"])
        .args(["--", "sh", "-c", &script]));
    assert_eq!(output.status.code(), Some(0));
    let report = read_json(&dir.join("report.json"));
    let truth = Truth::read(&dir.join("truth.json"));
    let candidate = leaking_candidate(&report);
    assert_ne!(
        candidate["pid"], report["target"]["pids"][0],
        "the leak is the shell's child's"
    );
    assert_close(
        "leaked bytes",
        candidate["bytes"].as_u64().unwrap(),
        truth.leaked_bytes,
        0.02,
    );
}

#[test]
fn a_leak_in_a_container_is_found_in_its_own_allocator() {
    let dir = scratch("leaks_container");
    let root = dir.join("root");
    container_root(&root, leaks_binary());
    // It pauses 3 s after writing /truth.json.ready, for the recording to start.
    let mut container = in_container(&root, &["/truth.json", "/output.txt", "0", "3000"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !root.join("truth.json.ready").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the container never started"
        );
        sleep(Duration::from_millis(20));
    }
    let unshare = container.id().to_string();
    let output = run(
        record(&dir, &["--events", "alloc", "--leak-min-age", "1"]).args([
            "--pid",
            &unshare,
            "--children",
            "--duration",
            "8",
        ]),
    );
    assert!(container.wait().unwrap().success());
    assert_eq!(output.status.code(), Some(TARGET_EXITED));
    let report = read_json(&dir.join("report.json"));
    let truth = Truth::read(&root.join("truth.json"));
    // Probed in the container's own copy of libc: the host's file at the same path is
    // another one, which the container never calls.
    let candidate = leaking_candidate(&report);
    assert_close(
        "leaked bytes",
        candidate["bytes"].as_u64().unwrap(),
        truth.leaked_bytes,
        0.02,
    );
    assert!(
        candidate["stack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|frame| frame == "main")
    );
    // The workload is pid 1 in its own namespace.
    let namespace_pids = report["target"]["namespace_pids"].as_array().unwrap();
    assert!(
        namespace_pids.iter().any(|pid| pid == 1),
        "{namespace_pids:?}"
    );
}

#[test]
fn a_leak_rule_without_allocation_tracking_is_refused() {
    let dir = scratch("leaks-rule");
    let output = run(profiler()
        .args(["record", "--pid", "1", "--fail-on", "leak>1MiB", "-o"])
        .arg(dir.join("flame.svg"))
        .arg("--leaks-output")
        .arg(dir.join("leaks.svg")));
    assert_eq!(output.status.code(), Some(USAGE));
    assert!(stderr_line(&output).contains("--events alloc"));
}
