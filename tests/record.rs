//! End-to-end tests of `profiler record`: the real binary loads its real BPF programs into
//! the running kernel and profiles real processes that these tests start. They need root
//! (`cargo xtask test` runs them so) and run one at a time, since they measure CPU time.
//!
//! Every accuracy check compares with what the workload measured about itself.

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    thread::sleep,
    time::{Duration, Instant},
};

use profiler_common::program_names;
use serde_json::Value;

mod common;
use common::{
    INPUT, INTERRUPTED, NO_TARGET, OUTPUT, PRIVILEGES, RULE_FIRED, TARGET_EXITED, USAGE,
    assert_sampled_for_its_cpu_time, compile_workload, container_root, entries_where, in_container,
    pprof_row, pprof_top, profiler, read_json, record, run, scratch, speedscope, speedscope_path,
    speedscope_weights, stderr_line, thread_samples,
};

/// The `phases` workload, compiled once.
fn phases_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| compile_workload("phases"))
}

/// What the `phases` workload measured about itself.
struct Truth(Value);

impl Truth {
    fn read(path: &Path) -> Truth {
        Truth(read_json(path))
    }

    /// hot_phase's share of the whole process's CPU time.
    fn hot_share(&self) -> f64 {
        self.0["hot_ns"].as_f64().unwrap() / self.0["process_ns"].as_f64().unwrap()
    }

    fn tids(&self) -> Vec<u64> {
        self.0["tids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|tid| tid.as_u64().unwrap())
            .collect()
    }
}

/// Starts `phases THREADS SECONDS DELAY_MS TRUTH` in the background.
fn start_phases(dir: &Path, threads: u32, seconds: f64, delay_ms: u32) -> Child {
    Command::new(phases_binary())
        .args([
            threads.to_string(),
            seconds.to_string(),
            delay_ms.to_string(),
        ])
        .arg(dir.join("truth.json"))
        .spawn()
        .unwrap()
}

/// Asserts that hot_phase holds the share of the CPU time the workload measured,
/// within `tolerance`.
fn assert_hot_share(report: &Value, truth: &Truth, tolerance: f64) {
    let measured = total_share(report, "hot_phase");
    let expected = truth.hot_share();
    assert!(
        (measured - expected).abs() <= tolerance,
        "hot_phase: the profile says {measured:.3}, the workload measured {expected:.3}"
    );
}

/// A `sh -c` script that runs `phases THREADS SECONDS 0 TRUTH` in a child process of
/// the shell: `; true` keeps the shell from exec'ing it in its own.
fn phases_in_shell(threads: u32, seconds: u32, truth: &Path) -> String {
    format!(
        "{} {threads} {seconds} 0 {}; true",
        phases_binary().display(),
        truth.display()
    )
}

/// The `<title>` of each frame of a flame graph, checking that it is well-formed XML.
fn svg_frame_titles(svg: &str) -> Vec<String> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true, // inferno declares the SVG 1.1 DTD
        ..roxmltree::ParsingOptions::default()
    };
    let document =
        roxmltree::Document::parse_with_options(svg, options).expect("the SVG is well-formed XML");
    document
        .descendants()
        .filter(|node| node.has_tag_name("title"))
        .filter_map(|node| node.text().map(str::to_owned))
        .collect()
}

fn report(dir: &Path) -> Value {
    read_json(&dir.join("report.json"))
}

/// Inclusive share of `name` in a report.
fn total_share(report: &Value, name: &str) -> f64 {
    entries_where(&report["cpu"]["functions"], "name", name)
        .first()
        .copied()
        .map_or(0.0, |function| function["total"].as_f64().unwrap())
}

#[test]
fn dominant_function_share_matches_the_workloads_thread_cpu_time() {
    let dir = scratch("dominant");
    let mut workload = start_phases(&dir, 2, 6.0, 0);
    let pid = workload.id().to_string();
    let (_, [before]) = cpu_ticks(&[workload.id()]);
    let launched = Instant::now();
    let output = run(&mut record(
        &dir,
        &["--pid", &pid, "--duration", "4", "-F", "199"],
    ));
    let outside_recording = launched.elapsed().as_secs_f64() - 4.0;
    let (_, [after]) = cpu_ticks(&[workload.id()]);
    assert_eq!(output.status.code(), Some(0));
    assert!(workload.wait().unwrap().success());

    let truth = Truth::read(&dir.join("truth.json"));
    let report = report(&dir);
    assert_hot_share(&report, &truth, 0.05);
    let expected = truth.hot_share();
    let cold = total_share(&report, "cold_phase");
    assert!(
        (cold - (1.0 - expected)).abs() <= 0.05,
        "cold_phase {cold:.3} vs {:.3}",
        1.0 - expected
    );
    // The samples cover the CPU time the two threads used while recording: no more than
    // they used from the profiler's launch to its exit, and no less than that minus
    // what they could have used outside the four seconds recorded, on a busy machine
    // too.
    let samples = report["cpu"]["samples"].as_f64().unwrap();
    let periods_around = (after - before) / TICKS_PER_S * 199.0;
    let periods_outside = outside_recording * 2.0 * 199.0;
    let bound = 3.0 * periods_around.sqrt() + 1.0;
    assert!(
        samples <= periods_around + bound && samples >= periods_around - periods_outside - bound,
        "{samples} samples; the threads used {periods_around:.0} periods from the launch to the \
         exit, at most {periods_outside:.0} of them outside the recording"
    );
    assert_eq!(report["cpu"]["lost"], 0);
}

#[test]
fn every_thread_is_sampled_including_threads_started_after_the_attach() {
    let dir = scratch("threads");
    // The workers start 700 ms after the process, so after the profiler attached.
    let mut workload = start_phases(&dir, 4, 2.0, 700);
    let pid = workload.id().to_string();
    let output = run(&mut record(&dir, &["--pid", &pid, "--duration", "10"]));
    assert!(workload.wait().unwrap().success());
    // The workload exited before the duration: that is reported, with everything written.
    assert_eq!(output.status.code(), Some(TARGET_EXITED));

    let truth = Truth::read(&dir.join("truth.json"));
    let report = report(&dir);
    let samples = report["cpu"]["samples"].as_u64().unwrap();
    for tid in truth.tids() {
        let thread_samples = thread_samples(&report, tid);
        // Four equal threads share two CPUs: each should hold about a quarter.
        assert!(
            thread_samples * 8 >= samples,
            "thread {tid} has {thread_samples} of {samples} samples"
        );
    }
    // The speedscope file has a profile per thread, each weighing what the report
    // counts for that thread.
    let weights = speedscope_weights(&speedscope(&speedscope_path(&dir)));
    assert_eq!(
        weights.iter().map(|(_, weight)| weight).sum::<u64>(),
        samples
    );
    for tid in truth.tids() {
        let (_, weight) = weights
            .iter()
            .find(|(name, _)| name.ends_with(&format!(" thread {tid}")))
            .unwrap_or_else(|| panic!("no speedscope profile for thread {tid}: {weights:?}"));
        assert_eq!(*weight, thread_samples(&report, tid), "thread {tid}");
    }
}

/// Each thread's samples stand for the CPU time it used, within the statistical bound of
/// its sample count (3 σ), next to a process that keeps both CPUs busy: no period is
/// counted twice, lost, or charged to another thread.
#[test]
fn each_thread_is_sampled_for_the_cpu_time_it_used_next_to_a_cpu_hog() {
    let dir = scratch("thread_cpu_time");
    let mut hog = Command::new(phases_binary())
        .args(["2", "6", "0"])
        .arg(dir.join("hog.json"))
        .spawn()
        .unwrap();
    // The workers start after the attach, so their own timers open while recording.
    let mut workload = start_phases(&dir, 3, 3.0, 500);
    let pid = workload.id().to_string();
    let output = run(&mut record(
        &dir,
        &["--pid", &pid, "--duration", "10", "-F", "99"],
    ));
    assert!(workload.wait().unwrap().success());
    hog.kill().unwrap();
    hog.wait().unwrap();
    assert_eq!(output.status.code(), Some(TARGET_EXITED));

    let truth = Truth::read(&dir.join("truth.json"));
    let report = report(&dir);
    let used_ns = truth.0["thread_ns"].as_array().unwrap();
    for (tid, used_ns) in truth.tids().into_iter().zip(used_ns) {
        assert_sampled_for_its_cpu_time("a worker", &report, tid, used_ns.as_f64().unwrap(), 99.0);
    }
}

#[test]
fn outputs_are_a_valid_svg_collapsed_stacks_and_a_json_report() {
    let dir = scratch("outputs");
    let phases = phases_binary().to_str().unwrap().to_owned();
    let truth = dir.join("truth.json");
    let output = run(&mut record(
        &dir,
        &["--", &phases, "2", "2", "0", truth.to_str().unwrap()],
    ));
    assert_eq!(output.status.code(), Some(0));

    let svg = fs::read_to_string(dir.join("flame.svg")).unwrap();
    let titles = svg_frame_titles(&svg);
    assert!(
        titles.iter().any(|title| title.starts_with("hot_phase ")),
        "no hot_phase frame"
    );
    assert!(
        titles.iter().any(|title| title.starts_with("cold_phase ")),
        "no cold_phase frame"
    );
    assert!(
        svg.contains("On-CPU flame graph: phases (pid "),
        "the title names the target"
    );

    let report = report(&dir);
    check_report_schema(&report);
    // The pprof profile, as the real `go tool pprof` reads it, holds the same samples.
    let (total, rows) = pprof_top(&dir.join("cpu.pb.gz"), "samples", "");
    assert_eq!(total, report["cpu"]["samples"].as_f64().unwrap());
    let hot = entries_where(&report["cpu"]["functions"], "name", "hot_phase")[0];
    assert_eq!(
        pprof_row(&rows, "hot_phase").cum,
        hot["total_samples"].as_f64().unwrap()
    );
    // Its mappings name the binary with its build id, as `file` prints it.
    let raw = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(dir.join("cpu.pb.gz"))
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw.stdout);
    let binary_mapping = raw
        .lines()
        .find(|line| line.contains(&format!("{phases} ")))
        .unwrap_or_else(|| panic!("no mapping of the binary: {raw}"));
    let build_id = binary_mapping.split_whitespace().nth(3).unwrap();
    assert!(build_id.len() == 40 && build_id.chars().all(|c| c.is_ascii_hexdigit()));
    let (cpu_ns, _) = pprof_top(&dir.join("cpu.pb.gz"), "cpu", "ns");
    let period_ns = 1e9 / 99.0;
    assert!(
        (cpu_ns / period_ns - total).abs() < 1.0,
        "cpu time is samples times the period"
    );
    let folded = fs::read_to_string(dir.join("stacks.folded")).unwrap();
    let folded_samples: u64 = folded
        .lines()
        .map(|line| line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(folded_samples, report["cpu"]["samples"].as_u64().unwrap());
    // spin() is a frameless leaf: its caller is there only because the unwinder put it back.
    assert!(
        folded
            .lines()
            .any(|line| line.contains(";worker;hot_phase;spin ")),
        "{folded}"
    );
}

/// The report has every field of the documented schema, with the right types.
fn check_report_schema(report: &Value) {
    assert!(report["duration_s"].as_f64().unwrap() > 0.0);
    // The start-up is reported apart, as part of the profiler's own CPU.
    let overhead = &report["overhead"];
    let start_cpu = overhead["start_cpu_s"].as_f64().unwrap();
    assert!(start_cpu > 0.0 && start_cpu <= overhead["profiler_cpu_s"].as_f64().unwrap());
    assert!(overhead["start_ms"].as_f64().unwrap() > 0.0);
    assert!(overhead["kernel_memory_bytes"].as_u64().unwrap() > 0);
    assert!(
        report["target"]["pids"]
            .as_array()
            .unwrap()
            .iter()
            .all(|pid| pid.is_u64())
    );
    let cpu = &report["cpu"];
    assert!(cpu["samples"].as_u64().unwrap() > 0);
    assert!(cpu["lost"].is_u64());
    assert!(cpu["frequency_hz"].as_u64().unwrap() == 99);
    let functions = cpu["functions"].as_array().unwrap();
    for function in functions {
        assert!(function["name"].is_string());
        for share in ["self", "total"] {
            assert!((0.0..=1.0).contains(&function[share].as_f64().unwrap()));
        }
        assert!(function["self"].as_f64() <= function["total"].as_f64());
    }
    let totals: Vec<f64> = functions
        .iter()
        .map(|f| f["total"].as_f64().unwrap())
        .collect();
    assert!(
        totals.windows(2).all(|pair| pair[0] >= pair[1]),
        "functions sorted by total"
    );
    for hotspot in cpu["hotspots"].as_array().unwrap() {
        assert!(hotspot["name"].is_string());
        assert!(hotspot["total"].as_f64() >= hotspot["threshold"].as_f64());
    }
    let frames = cpu["frames"].as_array().unwrap().len() as u64;
    let stacks = cpu["stacks"].as_array().unwrap();
    let stacked: u64 = stacks
        .iter()
        .map(|stack| stack["samples"].as_u64().unwrap())
        .sum();
    assert_eq!(
        stacked,
        cpu["samples"].as_u64().unwrap(),
        "the stacks hold every sample"
    );
    assert!(stacks.iter().all(|stack| {
        let indices = stack["frames"].as_array().unwrap();
        indices.iter().all(|index| index.as_u64().unwrap() < frames)
    }));
    assert!(report["rules"].is_array());
}

#[test]
fn fail_on_rules_exit_3_when_fired_and_0_when_not() {
    let dir = scratch("rules");
    let phases = phases_binary().to_str().unwrap().to_owned();
    let truth = dir.join("truth.json");
    let workload = ["--", &phases, "2", "1.5", "0", truth.to_str().unwrap()];

    let fired = run(record(
        &dir,
        &["--fail-on", "hot_phase>50%", "--fail-on", "cold_phase>90%"],
    )
    .args(workload));
    assert_eq!(fired.status.code(), Some(RULE_FIRED));
    assert!(stderr_line(&fired).contains("hot_phase>50%"));
    let rules = report(&dir)["rules"].clone();
    assert_eq!(rules[0]["rule"], "hot_phase>50%");
    assert_eq!(rules[0]["fired"], true);
    assert_eq!(rules[1]["fired"], false);
    assert!(
        dir.join("flame.svg").exists(),
        "outputs are written when a rule fires"
    );

    let quiet = run(record(&dir, &["--fail-on", "hot_phase>95%"]).args(workload));
    assert_eq!(quiet.status.code(), Some(0));
    assert_eq!(report(&dir)["rules"][0]["fired"], false);
}

#[test]
fn a_misspelt_rule_is_reported_unmatched_and_fails_the_run_when_strict() {
    let dir = scratch("rules-unmatched");
    let phases = phases_binary().to_str().unwrap().to_owned();
    let truth = dir.join("truth.json");
    let workload = ["--", &phases, "1", "0.5", "0", truth.to_str().unwrap()];
    let rules = ["--fail-on", "hot_phase>99%", "--fail-on", "hot_phsae>60%"];

    let lenient = run(record(&dir, &rules).args(workload));
    assert_eq!(lenient.status.code(), Some(0));
    let outcomes = report(&dir)["rules"].clone();
    assert_eq!(outcomes[0]["matched"], true);
    assert_eq!(outcomes[1]["matched"], false);
    assert_eq!(outcomes[1]["fired"], false);
    let summary = String::from_utf8_lossy(&lenient.stdout);
    assert!(
        summary.contains("UNMATCHED  hot_phsae>60%: no sampled function is named hot_phsae"),
        "{summary}"
    );

    let strict = run(record(&dir, &rules).arg("--strict-rules").args(workload));
    assert_eq!(strict.status.code(), Some(RULE_FIRED));
    assert!(stderr_line(&strict).contains("hot_phsae>60% (matched nothing)"));
    let outcomes = report(&dir)["rules"].clone();
    assert_eq!(outcomes[0]["fired"], false);
    assert_eq!(outcomes[1]["fired"], true);
    assert_eq!(outcomes[1]["matched"], false);
}

#[test]
fn a_malformed_rule_is_a_usage_error_before_anything_runs() {
    let dir = scratch("rules-malformed");
    for rule in [
        "predict>>60%",
        "predict>=60%",
        "operator<>5%",
        "io:.p99>5ms",
    ] {
        let output = run(profiler()
            .args(["record", "--fail-on", rule, "-o"])
            .arg(dir.join("flame.svg"))
            .args(["--", "true"]));
        assert_eq!(output.status.code(), Some(USAGE), "{rule}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr
                .lines()
                .next()
                .is_some_and(|line| line.contains(&format!("malformed rule `{rule}`"))),
            "{stderr}"
        );
        assert!(!dir.join("flame.svg").exists());
    }
}

#[test]
fn every_option_that_help_lists_is_in_the_reference() {
    let reference =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md"))
            .unwrap();
    let documented = |option: &str| {
        reference.match_indices(option).any(|(at, _)| {
            !reference[at + option.len()..]
                .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
        })
    };
    for command in ["record", "top", "diff"] {
        let help = run(profiler().args([command, "--help"]));
        let help = String::from_utf8_lossy(&help.stdout);
        let options: Vec<&str> = help
            .lines()
            .map(str::trim_start)
            .filter(|line| line.starts_with('-'))
            .flat_map(|line| line.split([' ', ',', '=', '<']))
            .filter(|word| word.starts_with("--") && word.len() > 2)
            .collect();
        assert!(options.len() > 3, "{command} --help: {help}");
        for option in options.into_iter().filter(|&option| option != "--help") {
            assert!(
                documented(option),
                "`profiler {command} {option}` is not in docs/reference.md"
            );
        }
    }
}

#[test]
fn a_pid_that_does_not_exist_fails_before_anything_is_loaded() {
    let dir = scratch("no-pid");
    let output = run(&mut record(
        &dir,
        &["--pid", "999999999", "--duration", "1"],
    ));
    assert_eq!(output.status.code(), Some(NO_TARGET));
    assert!(stderr_line(&output).contains("no process with pid 999999999"));
    assert!(!dir.join("flame.svg").exists());
}

#[test]
fn a_threads_id_is_refused_with_its_processs_before_anything_is_loaded() {
    let dir = scratch("thread-id");
    let mut workload = start_phases(&dir, 2, 2.0, 0);
    let pid = workload.id();
    sleep(Duration::from_millis(300));
    let thread = fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().to_str()?.parse::<u32>().ok())
        .find(|&tid| tid != pid)
        .expect("the workload runs threads");
    let output = run(&mut record(
        &dir,
        &["--pid", &thread.to_string(), "--duration", "1"],
    ));
    workload.wait().unwrap();
    assert_eq!(output.status.code(), Some(NO_TARGET));
    assert!(
        stderr_line(&output).contains(&format!("is a thread of process {pid}")),
        "{}",
        stderr_line(&output)
    );
    assert!(!dir.join("flame.svg").exists());
}

#[test]
fn a_command_that_cannot_be_started_fails_before_anything_is_loaded() {
    let dir = scratch("no-command");
    let output = run(&mut record(
        &dir,
        &["--", "/nonexistent/model-server", "--port", "8080"],
    ));
    assert_eq!(output.status.code(), Some(NO_TARGET));
    assert!(stderr_line(&output).contains("/nonexistent/model-server"));
    assert!(!dir.join("flame.svg").exists());
}

#[test]
fn an_unwritable_output_fails_before_recording() {
    let dir = scratch("unwritable");
    let mut workload = start_phases(&dir, 1, 3.0, 0);
    let started = Instant::now();
    let output = run(profiler()
        .args([
            "record",
            "--pid",
            &workload.id().to_string(),
            "--duration",
            "30",
        ])
        .args(["-o", "/nonexistent-folder/flame.svg"]));
    assert_eq!(output.status.code(), Some(OUTPUT));
    assert!(stderr_line(&output).contains("/nonexistent-folder/flame.svg"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it did not wait for the recording"
    );
    workload.kill().unwrap();
    workload.wait().unwrap();
}

/// The capabilities docs/reference.md documents as enough, for a Kubernetes securityContext.
const LEAST_CAPABILITIES: [&str; 5] = ["bpf", "perfmon", "sys_ptrace", "dac_read_search", "syslog"];

/// `profiler record` run as nobody with exactly `capabilities`, writing into `dir`.
fn record_with_capabilities(dir: &Path, capabilities: &[&str], args: &[&str]) -> Output {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    let set: Vec<String> = capabilities.iter().map(|cap| format!("+{cap}")).collect();
    let set = format!(
        "-all{}{}",
        if set.is_empty() { "" } else { "," },
        set.join(",")
    );
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(env!("CARGO_BIN_EXE_profiler"));
    let record = record(dir, args);
    setpriv.args(record.get_args());
    run(&mut setpriv)
}

#[test]
fn missing_privileges_name_the_capability() {
    let dir = scratch("privileges");
    let output = record_with_capabilities(&dir, &[], &["--duration", "1", "--", "true"]);
    assert_eq!(output.status.code(), Some(PRIVILEGES));
    assert!(stderr_line(&output).contains("CAP_BPF"));
    for dropped in LEAST_CAPABILITIES {
        let kept: Vec<&str> = LEAST_CAPABILITIES
            .into_iter()
            .filter(|&cap| cap != dropped)
            .collect();
        let output = record_with_capabilities(&dir, &kept, &["--duration", "1", "--", "true"]);
        assert_eq!(output.status.code(), Some(PRIVILEGES), "without {dropped}");
        let named = format!("CAP_{}", dropped.to_uppercase());
        assert!(stderr_line(&output).contains(&named), "without {dropped}");
    }
    // Holding a started command at its entry takes a uprobe, which the kernel places
    // only for CAP_SYS_ADMIN.
    let output = record_with_capabilities(&dir, &LEAST_CAPABILITIES, &["--", "true"]);
    assert_eq!(output.status.code(), Some(PRIVILEGES));
    assert!(stderr_line(&output).contains("CAP_SYS_ADMIN"));
}

#[test]
fn the_least_capabilities_profile_another_users_process_whole() {
    let dir = scratch("least-privilege");
    let mut workload = start_phases(&dir, 2, 4.0, 0);
    sleep(Duration::from_millis(300));
    let pid = workload.id().to_string();
    let output = record_with_capabilities(
        &dir,
        &LEAST_CAPABILITIES,
        // 499 Hz: at 99 the 2 s gave about 270 samples next to a CPU hog, whose spread
        // (3 points) made the bound 1.5 σ.
        &[
            "--pid",
            &pid,
            "--duration",
            "2",
            "--events",
            "cpu,offcpu",
            "-F",
            "499",
        ],
    );
    workload.wait().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let report = report(&dir);
    assert_hot_share(&report, &Truth::read(&dir.join("truth.json")), 0.05);
    // Kernel symbols are readable: the waits' kernel frames are named.
    let named_kernel_frames = report["offcpu"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|function| function["kernel"] == true && function["name"] != "[unknown]")
        .count();
    assert!(
        named_kernel_frames > 0,
        "{:#}",
        report["offcpu"]["functions"]
    );
}

#[test]
fn a_target_that_exits_mid_recording_keeps_what_was_gathered() {
    let dir = scratch("exits");
    let mut workload = start_phases(&dir, 2, 1.0, 0);
    let pid = workload.id().to_string();
    let started = Instant::now();
    let output = run(&mut record(&dir, &["--pid", &pid, "--duration", "30"]));
    assert!(workload.wait().unwrap().success());
    assert_eq!(output.status.code(), Some(TARGET_EXITED));
    assert!(stderr_line(&output).contains("target exited"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it stopped when the target exited"
    );
    let report = report(&dir);
    assert_eq!(report["stop_reason"], "targets_exited");
    assert!(report["cpu"]["samples"].as_u64().unwrap() > 50);
    // The process is gone, yet its frames still have names.
    assert!(total_share(&report, "hot_phase") > 0.5);
}

#[test]
fn command_mode_profiles_the_command_until_it_exits() {
    let dir = scratch("command");
    let phases = phases_binary().to_str().unwrap().to_owned();
    let truth = dir.join("truth.json");
    let started = Instant::now();
    let output = run(&mut record(
        &dir,
        &[
            "-F",
            "499",
            "--",
            &phases,
            "1",
            "1.5",
            "0",
            truth.to_str().unwrap(),
        ],
    ));
    assert_eq!(output.status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(10));
    let truth = Truth::read(&truth);
    let report = report(&dir);
    assert_eq!(report["target"]["names"][0], "phases");
    let threads = report["cpu"]["threads"].as_array().unwrap();
    assert!(
        threads
            .iter()
            .any(|thread| thread["tid"] == truth.tids()[0])
    );
    // About 750 samples: 5 points is three standard deviations of their share.
    assert_hot_share(&report, &truth, 0.05);
}

/// `-- sh -c '...'`: the shell starts the service in a process of its own, which the
/// recording follows from its fork.
#[test]
fn a_service_that_a_shell_starts_is_followed() {
    let dir = scratch("follow");
    let truth_path = dir.join("truth.json");
    let script = phases_in_shell(2, 3, &truth_path);
    let output = run(&mut record(&dir, &["-F", "199", "--", "sh", "-c", &script]));
    assert_eq!(output.status.code(), Some(0));
    assert_hot_share(&report(&dir), &Truth::read(&truth_path), 0.05);
}

/// Two services a shell starts: each is a process of its own in the report, and the
/// root frame of its stacks, with its measured share of the CPU time.
#[test]
fn processes_a_shell_starts_are_told_apart() {
    let dir = scratch("two-processes");
    let truths = [dir.join("first.json"), dir.join("second.json")];
    let script = format!(
        "{binary} 1 2 0 {first} & {binary} 2 2 0 {second}; wait",
        binary = phases_binary().display(),
        first = truths[0].display(),
        second = truths[1].display()
    );
    let output = run(&mut record(&dir, &["-F", "199", "--", "sh", "-c", &script]));
    assert_eq!(output.status.code(), Some(0));
    let process_ns: Vec<f64> = truths
        .iter()
        .map(|truth| Truth::read(truth).0["process_ns"].as_f64().unwrap())
        .collect();
    let report = report(&dir);
    let processes = report["cpu"]["processes"].as_array().unwrap();
    let phases: Vec<&Value> = processes
        .iter()
        .filter(|process| process["name"] == "phases")
        .collect();
    assert_eq!(phases.len(), 2, "{processes:?}");
    // The second service runs two threads to the first's one.
    let shares: Vec<f64> = phases
        .iter()
        .map(|process| process["share"].as_f64().unwrap())
        .collect();
    let measured_second = process_ns[1] / (process_ns[0] + process_ns[1]);
    let profiled_second = shares[0].max(shares[1]);
    assert!(
        (profiled_second - measured_second).abs() <= 0.05,
        "the busier service holds {profiled_second:.3} of the samples, it measured {measured_second:.3}"
    );
    let folded = fs::read_to_string(dir.join("stacks.folded")).unwrap();
    assert!(
        folded
            .lines()
            .all(|line| line.starts_with("phases [") || line.starts_with("sh [")),
        "a stack without its process's root frame: {folded}"
    );
}

#[test]
fn processes_that_end_before_they_are_looked_at_still_have_their_names() {
    let dir = scratch("short-processes");
    let truth = dir.join("truth.json");
    // Each run lasts 80 ms, less than a drain interval or two.
    let script = format!(
        "for run in 1 2 3 4; do {} 1 0.08 0 {}; done",
        phases_binary().display(),
        truth.display()
    );
    let output = run(&mut record(&dir, &["-F", "499", "--", "sh", "-c", &script]));
    assert_eq!(output.status.code(), Some(0));
    let report = report(&dir);
    let processes = report["cpu"]["processes"].as_array().unwrap();
    let names: Vec<&str> = processes
        .iter()
        .map(|process| process["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|&&name| name == "phases").count(),
        4,
        "{names:?}"
    );
    assert!(
        names.iter().all(|&name| name == "phases" || name == "sh"),
        "{names:?}"
    );
}

/// `--pid --children` on a shell whose child already runs the service: the child is
/// profiled with it.
#[test]
fn a_running_process_tree_is_profiled_with_its_children() {
    let dir = scratch("children");
    let truth_path = dir.join("truth.json");
    let script = phases_in_shell(2, 4, &truth_path);
    let mut shell = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    sleep(Duration::from_millis(300));
    let output = run(&mut record(
        &dir,
        &[
            "--pid",
            &shell.id().to_string(),
            "--children",
            "--duration",
            "2",
            "-F",
            "199",
        ],
    ));
    assert_eq!(output.status.code(), Some(0));
    assert!(shell.wait().unwrap().success());
    assert_hot_share(&report(&dir), &Truth::read(&truth_path), 0.05);
}

/// Records `phases 2 SECONDS` with hot_phase `hot_weight` times cold_phase's work into
/// `dir` at 999 Hz, and returns what the workload measured.
///
/// At 6 times cold_phase's work a round of both phases takes about one 99 Hz period of
/// CPU time, more so when a busy sibling CPU slows it: each thread's timer then fires
/// at nearly the same point of every round, and hot_phase's share came out anywhere
/// from 68 to 92 % against the 86 % the workload measured. Ten samples a round leave
/// that aliasing out of a test of what `diff` computes.
fn record_phases_weighted(dir: &Path, hot_weight: u32) -> Truth {
    let truth_path = dir.join("truth.json");
    let phases = phases_binary().to_str().unwrap().to_owned();
    let output = run(record(
        dir,
        &[
            "-F",
            "999",
            "--",
            &phases,
            "2",
            "3",
            "0",
            truth_path.to_str().unwrap(),
        ],
    )
    .env("PHASES_HOT_WEIGHT", hot_weight.to_string()));
    assert!(output.status.success());
    Truth::read(&truth_path)
}

#[test]
fn diff_measures_how_far_a_function_grew_and_gates_on_it() {
    let dir = scratch("diff_gate");
    let (base_dir, new_dir) = (dir.join("base"), dir.join("new"));
    fs::create_dir_all(&base_dir).unwrap();
    fs::create_dir_all(&new_dir).unwrap();
    let base_truth = record_phases_weighted(&base_dir, 1);
    let new_truth = record_phases_weighted(&new_dir, 6);
    let (base_json, new_json) = (base_dir.join("report.json"), new_dir.join("report.json"));
    let svg = dir.join("diff.svg");
    let diff = |base: &Path, new: &Path, rule: &str| {
        run(profiler()
            .arg("diff")
            .args([base, new])
            .arg("-o")
            .arg(&svg)
            .args(["--fail-on", rule]))
    };

    let grew = diff(&base_json, &new_json, "hot_phase>+10pt");
    assert_eq!(grew.status.code(), Some(RULE_FIRED));
    let expected = (new_truth.hot_share() - base_truth.hot_share()) * 100.0;
    let stdout = String::from_utf8_lossy(&grew.stdout);
    let line = stdout
        .lines()
        .find(|line| line.ends_with(" hot_phase"))
        .expect("hot_phase is in the table of moves");
    let measured: f64 = line.split("pt").next().unwrap().trim().parse().unwrap();
    assert!(
        (measured - expected).abs() <= 5.0,
        "hot_phase grew {measured:.1} points by the profiles, {expected:.1} by the workload"
    );
    assert!(stderr_line(&grew).contains("rule fired: hot_phase>+10pt"));
    let titles = svg_frame_titles(&fs::read_to_string(&svg).unwrap());
    assert!(titles.iter().any(|title| title.starts_with("hot_phase ")));

    // The same report against itself moves nothing; a shrinking function does not fire.
    assert_eq!(
        diff(&new_json, &new_json, "hot_phase>+0pt").status.code(),
        Some(0)
    );
    assert_eq!(
        diff(&new_json, &base_json, "hot_phase>+1pt").status.code(),
        Some(0)
    );
    let missing = diff(&dir.join("missing.json"), &new_json, "hot_phase>+1pt");
    assert_eq!(missing.status.code(), Some(INPUT));
    assert!(stderr_line(&missing).contains("missing.json"));
}

#[test]
fn interval_snapshots_cover_the_recording_and_add_up_to_it() {
    let dir = scratch("interval");
    let truth = dir.join("truth.json");
    let phases = phases_binary().to_str().unwrap().to_owned();
    let output = run(&mut record(
        &dir,
        &[
            "--interval",
            "1",
            "--",
            &phases,
            "2",
            "3.5",
            "0",
            truth.to_str().unwrap(),
        ],
    ));
    assert_eq!(output.status.code(), Some(0));
    let whole = report(&dir);
    let snapshots: Vec<Value> = (1..)
        .map(|index| dir.join(format!("report.{index:03}.json")))
        .take_while(|path| path.exists())
        .map(|path| read_json(&path))
        .collect();
    // One snapshot per whole second, and the last one, which ends with the recording.
    let duration = whole["duration_s"].as_f64().unwrap();
    assert_eq!(
        snapshots.len(),
        duration.floor() as usize + 1,
        "over {duration} s"
    );
    let samples = |report: &Value| report["cpu"]["samples"].as_u64().unwrap();
    let snapshot_samples: u64 = snapshots.iter().map(samples).sum();
    assert_eq!(snapshot_samples, samples(&whole));
    let mut start = 0.0;
    for (index, snapshot) in snapshots.iter().enumerate() {
        let interval = &snapshot["interval"];
        assert_eq!(interval["index"], index + 1);
        assert_eq!(interval["start_s"].as_f64().unwrap(), start);
        start = interval["end_s"].as_f64().unwrap();
        assert_eq!(snapshot["stop_reason"], "interval");
        let svg = fs::read_to_string(dir.join(format!("flame.{:03}.svg", index + 1))).unwrap();
        assert!(svg.contains(&format!("(interval {}: ", index + 1)));
        svg_frame_titles(&svg);
        // Every on-CPU output asked for has its snapshot, with the interval's samples.
        let numbered = format!("profile.speedscope.{:03}.json", index + 1);
        let weights = speedscope_weights(&speedscope(&dir.join(numbered)));
        let weight: u64 = weights.iter().map(|(_, weight)| weight).sum();
        assert_eq!(weight, samples(snapshot));
        for numbered in [
            format!("stacks.{:03}.folded", index + 1),
            format!("cpu.pb.{:03}.gz", index + 1),
        ] {
            assert!(dir.join(&numbered).exists(), "{numbered}");
        }
    }
    assert!(
        (start - duration).abs() < 1e-6,
        "the last interval ends with the recording"
    );
}

/// A Prometheus server, Debian's, scraping one target every second, stopped on drop.
struct Prometheus {
    server: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, target_port: u16) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: profiler\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let server = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (cargo xtask setup installs it)");
        let prometheus = Prometheus { server, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !prometheus.get("/-/ready").contains("Ready") {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// The body of an HTTP GET of `path`; HTTP/1.0, so that it comes whole.
    fn get(&self, path: &str) -> String {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut response = String::new();
        if stream.write_all(request.as_bytes()).is_err()
            || stream.read_to_string(&mut response).is_err()
        {
            return String::new();
        }
        response
            .split_once("\r\n\r\n")
            .map_or_else(String::new, |(_, body)| body.to_owned())
    }

    /// The single value a PromQL query returns.
    fn query(&self, promql: &str) -> f64 {
        let encoded: String = promql
            .bytes()
            .map(|byte| match byte {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (byte as char).to_string(),
                _ => format!("%{byte:02X}"),
            })
            .collect();
        let body = self.get(&format!("/api/v1/query?query={encoded}"));
        let response: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
        let result = &response["data"]["result"];
        assert_eq!(
            result.as_array().map(Vec::len),
            Some(1),
            "{promql}: {response}"
        );
        result[0]["value"][1].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_prometheus_server_scrapes_the_shares_while_recording() {
    let dir = scratch("metrics");
    let metrics_port = free_port();
    let prometheus = Prometheus::start(&dir, metrics_port);
    let truth_path = dir.join("truth.json");
    let phases = phases_binary().to_str().unwrap().to_owned();
    let address = format!("127.0.0.1:{metrics_port}");
    let output = run(&mut record(
        &dir,
        &[
            "--metrics-addr",
            &address,
            "--events",
            "cpu,syscalls",
            "--fail-on",
            "hot_phase>50%",
            "--",
            &phases,
            "2",
            "12",
            "0",
            truth_path.to_str().unwrap(),
        ],
    ));
    assert_eq!(output.status.code(), Some(RULE_FIRED));
    let truth = Truth::read(&truth_path);
    // Every refresh's window, as Prometheus stored it.
    let share = prometheus
        .query("avg_over_time(profiler_function_inclusive_cpu_ratio{function=\"hot_phase\"}[5m])");
    assert!(
        (share - truth.hot_share()).abs() <= 0.05,
        "hot_phase: {share:.3} in Prometheus, {:.3} by the workload",
        truth.hot_share()
    );
    let fired = prometheus.query("max_over_time(profiler_rule_fired{rule=\"hot_phase>50%\"}[5m])");
    assert_eq!(fired, 1.0);
    let matched =
        prometheus.query("max_over_time(profiler_rule_matched{rule=\"hot_phase>50%\"}[5m])");
    assert_eq!(matched, 1.0);
    let samples = prometheus.query("max_over_time(profiler_cpu_samples_total[5m])");
    assert!(samples > 0.0 && samples <= report(&dir)["cpu"]["samples"].as_f64().unwrap());
    let calls = prometheus.query(
        "max_over_time(profiler_syscall_duration_seconds_count{syscall=\"clock_gettime\"}[5m])",
    );
    assert!(calls > 100.0, "clock_gettime calls: {calls}");
}

/// The v2 hierarchy's mount point.
fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("a cgroup v2 hierarchy")
}

#[test]
fn a_cgroup_v1_path_is_refused_with_the_v2_path_to_pass() {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let Some(v1) = mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup")).then(|| fields[1].to_owned())
    }) else {
        eprintln!("no cgroup v1 hierarchy on this machine: nothing to refuse");
        return;
    };
    let dir = scratch("cgroup-v1");
    let output = run(&mut record(&dir, &["--cgroup", &v1, "-d", "1"]));
    assert_eq!(output.status.code(), Some(USAGE));
    let reason = stderr_line(&output);
    assert!(reason.contains("cgroup v1"), "{reason}");
    assert!(
        reason.contains(&cgroup2_root().display().to_string()),
        "{reason}"
    );
}

#[test]
fn a_cgroup_is_profiled_with_the_processes_that_join_it() {
    let dir = scratch("cgroup");
    let group = cgroup2_root().join(format!("profiler-test-{}", std::process::id()));
    fs::create_dir_all(&group).unwrap();
    let join =
        |child: &Child| fs::write(group.join("cgroup.procs"), child.id().to_string()).unwrap();
    let start = |name: &str, threads: &str| {
        Command::new(phases_binary())
            .args([threads, "5", "0"])
            .arg(dir.join(name))
            .spawn()
            .unwrap()
    };
    let mut inside = start("inside.json", "1");
    join(&inside);
    let mut joining = start("joining.json", "2");
    let mut outside = start("outside.json", "1");
    let recording = record(
        &dir,
        &["--cgroup", group.to_str().unwrap(), "-d", "4", "-F", "199"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    sleep(Duration::from_secs(1));
    join(&joining);
    let output = recording.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    for child in [&mut inside, &mut joining, &mut outside] {
        child.wait().unwrap();
    }
    fs::remove_dir(&group).unwrap();
    assert_eq!(output.status.code(), Some(0));

    let report = report(&dir);
    let sampled: Vec<u64> = report["cpu"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|process| process["pid"].as_u64().unwrap())
        .collect();
    assert!(sampled.contains(&u64::from(inside.id())), "{sampled:?}");
    assert!(
        sampled.contains(&u64::from(joining.id())),
        "the process that joined: {sampled:?}"
    );
    assert!(
        !sampled.contains(&u64::from(outside.id())),
        "a process outside: {sampled:?}"
    );
    assert_eq!(
        report["target"]["cgroup"],
        format!("/{}", group.file_name().unwrap().to_string_lossy())
    );
    // Both run hot_phase three quarters of the time, joined or not.
    assert_hot_share(&report, &Truth::read(&dir.join("joining.json")), 0.05);
}

#[test]
fn outputs_belong_to_the_user_who_ran_sudo() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = scratch("sudo");
    let output = run(record(&dir, &["--", "true"])
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65533"));
    assert_eq!(output.status.code(), Some(0));
    for file in ["flame.svg", "report.json", "stacks.folded", "cpu.pb.gz"] {
        let metadata = fs::metadata(dir.join(file)).unwrap();
        assert_eq!((metadata.uid(), metadata.gid()), (65534, 65533), "{file}");
    }
}

/// A process the tree starts after the profiler first lists it, but before the probe
/// that follows forks is in (while the programs load, a few hundred ms here), is
/// followed all the same: it was missed, and the container test above failed when its
/// service started in that window.
#[test]
fn a_process_the_tree_starts_while_the_programs_load_is_followed() {
    let dir = scratch("fork-while-loading");
    let mut shell = Command::new("bash")
        .args([
            "-c",
            "sleep 0.1; ( while :; do :; done ) & sleep 3; kill $!",
        ])
        .spawn()
        .unwrap();
    let pid = shell.id().to_string();
    let seconds = 1.5;
    let output = run(&mut record(
        &dir,
        &[
            "--pid",
            &pid,
            "--children",
            "--duration",
            &seconds.to_string(),
        ],
    ));
    assert!(shell.wait().unwrap().success());
    assert_eq!(output.status.code(), Some(0));
    // The child spins on a CPU from 0.1 s on, so through the whole recording.
    let samples = report(&dir)["cpu"]["samples"].as_f64().unwrap();
    let expected = seconds * 99.0;
    assert!(
        (samples / expected - 1.0).abs() <= 0.15,
        "{samples} samples, {expected} expected of a busy child"
    );
}

#[test]
fn a_service_in_a_container_is_profiled_whole_until_it_exits() {
    let dir = scratch("container");
    let root = dir.join("root");
    container_root(&root, phases_binary());
    // Two threads for 3 s; the recording outlasts it.
    let mut container = in_container(&root, &["2", "3", "300", "/truth.json"])
        .spawn()
        .unwrap();
    let unshare = container.id().to_string();
    let output = run(&mut record(
        &dir,
        &[
            "--pid",
            &unshare,
            "--children",
            "--duration",
            "8",
            "-F",
            "199",
        ],
    ));
    assert!(container.wait().unwrap().success());
    assert_eq!(output.status.code(), Some(TARGET_EXITED));
    let report = report(&dir);
    assert_hot_share(&report, &Truth::read(&root.join("truth.json")), 0.05);
    // As complete and as named as on the host, though the container's files are its
    // own copies, at paths (/app) that do not exist on the host.
    let stacks = &report["stacks"]["cpu"];
    assert!(stacks["complete"].as_f64().unwrap() >= 0.98, "{stacks}");
    let unnamed = &report["stacks"]["unnamed_addresses"];
    assert_eq!(
        unnamed["unreadable_file"].as_u64().unwrap_or(0),
        0,
        "{unnamed}"
    );
    assert!(!Path::new("/app").exists());
}

/// Clock ticks per second in `/proc`'s CPU times (`USER_HZ`).
const TICKS_PER_S: f64 = 100.0;

/// Busy CPU time of the whole machine, and of each process in `pids`, in clock ticks.
fn cpu_ticks<const N: usize>(pids: &[u32; N]) -> (f64, [f64; N]) {
    let stat = fs::read_to_string("/proc/stat").unwrap();
    let machine: Vec<f64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy = machine[0] + machine[1] + machine[2] + machine[5] + machine[6] + machine[7];
    let processes = pids.map(|pid| {
        let process = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        process[process.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|field| field.parse::<f64>().unwrap())
            .sum()
    });
    (busy, processes)
}

#[test]
fn the_whole_machine_is_profiled_each_process_at_its_share() {
    let dir = scratch("all");
    // Two services of different weights: on a quiet machine nothing else may run in
    // 3 s, so the second process is what proves that others are sampled too.
    let neighbour_dir = scratch("all-neighbour");
    let mut service = start_phases(&dir, 2, 6.0, 0);
    let mut neighbour = start_phases(&neighbour_dir, 1, 6.0, 0);
    sleep(Duration::from_millis(300));
    let pids = [service.id(), neighbour.id()];
    let (machine_before, before) = cpu_ticks(&pids);
    let output = run(&mut record(&dir, &["--all", "--duration", "3"]));
    let (machine_after, after) = cpu_ticks(&pids);
    service.wait().unwrap();
    neighbour.wait().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let report = report(&dir);
    assert_eq!(report["target"]["all"], true);
    // The profiler leaves itself out; so does the machine's measure.
    let profiler_ticks = report["overhead"]["profiler_cpu_s"].as_f64().unwrap() * TICKS_PER_S
        + report["overhead"]["naming_ms"].as_f64().unwrap() / 1e3 * TICKS_PER_S;
    let processes = report["cpu"]["processes"].as_array().unwrap();
    for (index, pid) in pids.into_iter().enumerate() {
        let measured =
            (after[index] - before[index]) / (machine_after - machine_before - profiler_ticks);
        let profiled = processes
            .iter()
            .find(|process| process["pid"] == pid)
            .map_or(0.0, |process| process["share"].as_f64().unwrap());
        eprintln!("process {pid}: {profiled:.3} of the samples, {measured:.3} of the busy CPU");
        assert!(
            (profiled - measured).abs() <= 0.05,
            "process {pid} holds {profiled:.3} of the samples and {measured:.3} of the machine's busy CPU: {processes:?}"
        );
    }
}

#[test]
fn ctrl_c_writes_everything_and_detaches_every_probe() {
    let dir = scratch("ctrl-c");
    let mut workload = start_phases(&dir, 1, 10.0, 0);
    let child = record(
        &dir,
        &["--pid", &workload.id().to_string(), "--events", "all"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    sleep(Duration::from_millis(2000));
    // SAFETY: plain syscall signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(output.status.code(), Some(INTERRUPTED));
    assert!(stderr_line(&output).contains("SIGINT"));
    let report = report(&dir);
    assert_eq!(report["stop_reason"], "sigint");
    assert!(report["cpu"]["samples"].as_u64().unwrap() > 50);

    // The kernel keeps the first 15 bytes of a program's name.
    let ours: Vec<&str> = [
        program_names::SAMPLE_CPU,
        program_names::SAMPLE_CPU_FILL,
        program_names::SYSCALL_ENTER,
        program_names::SYSCALL_EXIT,
        program_names::BLOCK_RQ_INSERT,
        program_names::BLOCK_RQ_ISSUE,
        program_names::BLOCK_RQ_COMPLETE,
        program_names::SCHED_SWITCH,
        program_names::MALLOC_ENTER,
        program_names::CALLOC_ENTER,
        program_names::REALLOC_ENTER,
        program_names::REALLOCARRAY_ENTER,
        program_names::MEMALIGN_ENTER,
        program_names::POSIX_MEMALIGN_ENTER,
        program_names::MMAP_ENTER,
        program_names::ALLOC_RETURN,
        program_names::FREE_ENTER,
        program_names::PROCESS_EXEC,
        program_names::PROCESS_FORK,
        program_names::PROCESS_EXIT,
        program_names::HOLD_AT_ENTRY,
    ]
    .iter()
    .map(|name| &name[..name.len().min(15)])
    .collect();
    let still_loaded = || -> Vec<String> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter_map(|program| program.name_as_str().map(str::to_owned))
            .filter(|name| ours.contains(&name.as_str()))
            .collect()
    };
    // Every link is closed when the profiler exits, but the kernel frees programs
    // attached to the (faultable) syscall tracepoints only after an RCU tasks-trace
    // grace period, which can take a moment.
    let detached_by = Instant::now() + Duration::from_secs(5);
    let mut leftover = still_loaded();
    while !leftover.is_empty() && Instant::now() < detached_by {
        sleep(Duration::from_millis(100));
        leftover = still_loaded();
    }
    assert!(
        leftover.is_empty(),
        "programs still loaded after the profiler exited: {leftover:?}"
    );
    workload.kill().unwrap();
    workload.wait().unwrap();
}

/// A tmux server of the test's own, on its own socket, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `command` in a detached 150 × 40 session named `top`.
    fn start(test: &str, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("profiler-test-{test}"),
        };
        let _ = tmux.run(&["kill-server"]);
        let output = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "150",
            "-y",
            "40",
            command,
        ]);
        assert!(output.status.success(), "tmux: {output:?}");
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux: `cargo xtask setup` installs it")
    }

    fn pane(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_the_function_at_its_measured_share_and_quits_cleanly() {
    let dir = scratch("top");
    let mut workload = start_phases(&dir, 2, 14.0, 0);
    let exit_file = dir.join("exit-code");
    let command = format!(
        "{} top -F 199 --pid {}; echo $? > {}; sleep 60",
        env!("CARGO_BIN_EXE_profiler"),
        workload.id(),
        exit_file.display()
    );
    let tmux = Tmux::start("top", &command);
    // The header says how long it has recorded: wait for a whole recent window.
    let recorded_for = |pane: &str| -> Option<u64> {
        let header = pane
            .lines()
            .find(|line| line.starts_with("profiler top: "))?;
        let (_, after) = header.split_once(")   ")?;
        after.split_once(" s, ")?.0.trim().parse().ok()
    };
    let started = Instant::now();
    let pane = loop {
        let pane = tmux.pane();
        if recorded_for(&pane).is_some_and(|seconds| seconds >= 7) {
            break pane;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no full window on the screen: {pane}"
        );
        sleep(Duration::from_millis(250));
    };
    // %SELF(5s) %TOTAL(5s) %SELF(all) %TOTAL(all) FUNCTION
    let row = pane
        .lines()
        .find(|line| line.trim_end().ends_with(" hot_phase"))
        .unwrap_or_else(|| panic!("no hot_phase row: {pane}"));
    let shares: Vec<f64> = row
        .split_whitespace()
        .filter_map(|field| field.strip_suffix('%')?.parse::<f64>().ok())
        .collect();
    assert_eq!(shares.len(), 4, "{row}");

    assert!(tmux.run(&["send-keys", "-t", "top", "q"]).status.success());
    let code = loop {
        if let Ok(code) = fs::read_to_string(&exit_file) {
            break code;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "top did not quit: {}",
            tmux.pane()
        );
        sleep(Duration::from_millis(100));
    };
    assert_eq!(code.trim(), "0", "top's exit code");
    let alternate = tmux.run(&["display", "-p", "-t", "top", "#{alternate_on}"]);
    assert_eq!(
        String::from_utf8_lossy(&alternate.stdout).trim(),
        "0",
        "the terminal is restored"
    );
    assert!(
        !tmux.pane().contains("%TOTAL(5s)"),
        "the view is gone: {}",
        tmux.pane()
    );

    // The workload ran the same mix throughout: the window's share is its whole run's.
    assert!(workload.wait().unwrap().success());
    let truth = Truth::read(&dir.join("truth.json")).hot_share();
    let recent_total = shares[1] / 100.0;
    assert!(
        (recent_total - truth).abs() <= 0.05,
        "hot_phase {recent_total:.3} over the last 5 s in top, {truth:.3} by the workload"
    );
}
