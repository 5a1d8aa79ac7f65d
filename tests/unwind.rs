//! End-to-end tests of the kernel's unwinder: real BPF programs profile binaries built
//! without frame pointers, as distributions and Rust release builds ship them, and Go
//! binaries, which have no call-frame information but their function table.
//!
//! Every share is compared with the thread CPU time the workload measured itself, and
//! every stack is expected to reach the process's root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;
use common::{
    TARGET_EXITED, compile_c, compile_go, compile_rust, entries_where, read_json, record, run,
    scratch,
};

/// How far a function's share may be from its measured share, in points.
const TOLERANCE: f64 = 0.03;

/// The share of samples whose user stack must reach the process's root.
const COMPLETE_SHARE: f64 = 0.99;

/// The phases of `tests/workloads/frameless.c`, each a function of its own.
const FRAMELESS_PHASES: [&str; 6] = [
    "predict_phase",
    "sort_phase",
    "format_phase",
    "interrupted_phase",
    "library_phase",
    "loader_phase",
];

/// The `frameless` workload and its library, compiled once without frame pointers.
fn frameless() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let flags = ["-O2", "-fomit-frame-pointer", "-ldl"];
        let library_flags = ["-O2", "-fomit-frame-pointer", "-shared", "-fPIC"];
        (
            compile_c("frameless", "frameless", &flags),
            compile_c("frameless_lib", "libframeless.so", &library_flags),
        )
    })
}

/// A copy of `library` whose section headers point past its end: the dynamic loader,
/// which needs only the program headers, loads it; nothing can read its symbols.
fn unreadable_copy(library: &Path, dir: &Path) -> PathBuf {
    let mut bytes = fs::read(library).unwrap();
    // e_shoff, the section headers' offset, is 40 bytes into an ELF64 header.
    bytes[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
    let copy = dir.join("libbroken.so");
    fs::write(&copy, bytes).unwrap();
    copy
}

/// Inclusive share of the function named `name` in a report's CPU profile.
fn total_share(report: &Value, name: &str) -> f64 {
    entries_where(&report["cpu"]["functions"], "name", name)
        .first()
        .map_or(0.0, |function| function["total"].as_f64().unwrap())
}

/// Asserts that each of `functions` holds its measured share of the process's CPU
/// time, within [`TOLERANCE`].
fn assert_shares(report: &Value, truth: &Value, functions: &[&str]) {
    let named: Vec<(&str, &str)> = functions.iter().map(|name| (*name, *name)).collect();
    assert_shares_named(report, truth, &named);
}

/// Asserts that each function holds the share of the process's CPU time that the
/// workload measured under its key, within [`TOLERANCE`]: (key, function) pairs.
fn assert_shares_named(report: &Value, truth: &Value, functions: &[(&str, &str)]) {
    let process_ns = truth["process_ns"].as_f64().unwrap();
    for (key, function) in functions {
        let measured = truth[key].as_f64().unwrap() / process_ns;
        let profiled = total_share(report, function);
        assert!(
            (profiled - measured).abs() <= TOLERANCE,
            "{function}: the profile says {:.1}%, the workload measured {:.1}%",
            profiled * 100.0,
            measured * 100.0
        );
    }
}

fn assert_complete(report: &Value, share: f64) {
    let cpu = &report["stacks"]["cpu"];
    let complete = cpu["complete"].as_f64().unwrap();
    assert!(
        complete >= share,
        "{:.2}% of the user stacks reached the root: {cpu}",
        complete * 100.0
    );
}

/// The collapsed stacks of a recording, root first, with their counts.
fn folded(dir: &Path) -> Vec<(String, u64)> {
    fs::read_to_string(dir.join("stacks.folded"))
        .unwrap()
        .lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').unwrap();
            (stack.to_owned(), count.parse().unwrap())
        })
        .collect()
}

#[test]
fn phases_of_a_binary_without_frame_pointers_hold_their_measured_cpu_time() {
    let dir = scratch("unwind-frameless");
    let (binary, library) = frameless();
    let broken = unreadable_copy(library, &dir);
    let truth_path = dir.join("truth.json");
    // The library is loaded 300 ms after the start, when the probes are in: its table
    // is loaded when the first stacks report an address the kernel has no mapping for.
    let output = run(record(&dir, &["-F", "499", "--"])
        .arg(binary)
        .args(["4", "300"])
        .arg(&broken)
        .arg(&truth_path));
    assert!(output.status.success());
    let report = read_json(&dir.join("report.json"));
    let truth = read_json(&truth_path);

    assert_shares(&report, &truth, &FRAMELESS_PHASES);
    assert_shares(&report, &truth, &["in_handler"]);
    assert_complete(&report, COMPLETE_SHARE);

    let stacks = folded(&dir);
    let weight = |matches: &dyn Fn(&str) -> bool| -> u64 {
        stacks
            .iter()
            .filter(|(stack, _)| matches(stack))
            .map(|(_, count)| count)
            .sum()
    };
    // A sample in the signal handler unwinds through the signal frame to the loop the
    // signal interrupted.
    let in_handler = weight(&|stack| stack.contains(";in_handler"));
    let through_signal_frame =
        weight(&|stack| stack.contains(";main;interrupted_phase;interrupted_loop;"));
    let handled_and_unwound = weight(&|stack| {
        stack.contains(";in_handler") && stack.contains(";main;interrupted_phase;interrupted_loop;")
    });
    assert!(in_handler > 50, "{in_handler} samples in the handler");
    assert!(through_signal_frame >= handled_and_unwound);
    assert!(
        handled_and_unwound as f64 >= 0.99 * in_handler as f64,
        "{handled_and_unwound} of {in_handler} handler samples unwound to interrupted_loop"
    );
    // Recursion through frames of 1 KiB, 100 deep, unwinds to main.
    let deepest = stacks
        .iter()
        .filter(|(stack, _)| stack.contains(";predict_phase;"))
        .map(|(stack, _)| stack.matches(";predict").count())
        .max()
        .unwrap();
    assert!(deepest >= 101, "predict() reached {deepest} frames deep");
    // glibc runs the comparator: its callers are found through glibc's tables.
    assert!(
        weight(&|stack| stack.contains(";sort_phase;") && stack.contains(";compare_scores")) > 0
    );

    // The library's names cannot be read: its own frames are labelled with its file,
    // the program's frames above and below it keep their names.
    assert!(
        weight(&|stack| stack.contains(";main;library_phase;[libbroken.so];library_callback;spin"))
            > 0
    );
    // (A sample taken inside the command's execve has a user address of the program
    // that was replaced; it is no frame of the workload's.)
    for (stack, _) in stacks.iter().filter(|(stack, _)| stack.contains(";main;")) {
        for frame in stack.split(';') {
            assert!(
                frame != "[unknown]" && frame != "[frameless]",
                "unnamed frame {frame} in {stack}"
            );
        }
    }
    let unnamed = &report["stacks"]["unnamed_addresses"];
    assert!(
        unnamed["unreadable_file"].as_u64().unwrap() >= 1,
        "{unnamed}"
    );
    let tables = &report["stacks"]["unwind_tables"];
    assert!(tables["files"].as_u64().unwrap() >= 4, "{tables}");
    assert!(tables["kernel_bytes"].as_u64().unwrap() > 0, "{tables}");
}

#[test]
fn a_rust_release_build_holds_its_measured_cpu_time() {
    let dir = scratch("unwind-rust");
    let binary = compile_rust("phases");
    let truth_path = dir.join("truth.json");
    let output = run(record(&dir, &["-F", "499", "--"])
        .arg(binary)
        .args(["2", "3"])
        .arg(&truth_path));
    assert!(output.status.success());
    let report = read_json(&dir.join("report.json"));
    let truth = read_json(&truth_path);
    assert_shares_named(
        &report,
        &truth,
        &[
            ("hot_phase", "phases::hot_phase"),
            ("cold_phase", "phases::cold_phase"),
        ],
    );
    assert_complete(&report, COMPLETE_SHARE);
}

#[test]
fn a_target_in_its_own_mount_namespace_that_exits_unwinds_and_is_named() {
    let dir = scratch("unwind-namespace");
    let (binary, library) = frameless();
    // Inside the namespace a tmpfs covers this empty folder and holds the program: its
    // path exists there only.
    let inside = dir.join("inside");
    fs::create_dir_all(&inside).unwrap();
    let truth_path = dir.join("truth.json");
    let script = format!(
        "mount -t tmpfs none {inside} && cp {binary} {inside}/app && cp {library} {inside}/lib.so \
         && exec {inside}/app 2.5 0 {inside}/lib.so {truth}",
        inside = inside.display(),
        binary = binary.display(),
        library = library.display(),
        truth = truth_path.display(),
    );
    let mut target = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = target.id();
    let app = inside.join("app");
    let started = Instant::now();
    while fs::read_link(format!("/proc/{pid}/exe")).ok().as_deref() != Some(app.as_path()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the target never started"
        );
        sleep(Duration::from_millis(10));
    }
    assert!(
        !app.exists(),
        "the program's path must not exist outside the namespace"
    );

    // The recording outlasts the target.
    let output = run(&mut record(
        &dir,
        &["--pid", &pid.to_string(), "--duration", "8", "-F", "499"],
    ));
    assert!(target.wait().unwrap().success());
    assert_eq!(output.status.code(), Some(TARGET_EXITED));
    let report = read_json(&dir.join("report.json"));
    assert_eq!(report["stop_reason"], "targets_exited");
    let truth = read_json(&truth_path);
    assert_shares(&report, &truth, &FRAMELESS_PHASES);
    assert_complete(&report, COMPLETE_SHARE);
    // Every file was read through the target's own view of it.
    let unnamed = &report["stacks"]["unnamed_addresses"];
    for reason in ["unreadable_file", "unknown_mapping"] {
        assert!(
            unnamed.get(reason).is_none(),
            "addresses left unnamed: {unnamed}"
        );
    }
    assert!(total_share(&report, "library_callback") > 0.1);
}

/// The folded stacks' share of samples that pass `keep`, given each stack's frames.
fn folded_share(stacks: &[(String, u64)], keep: impl Fn(&[&str]) -> bool) -> f64 {
    let samples: u64 = stacks.iter().map(|(_, count)| count).sum();
    let kept: u64 = stacks
        .iter()
        .filter(|(stack, _)| keep(&stack.split(';').collect::<Vec<_>>()))
        .map(|(_, count)| count)
        .sum();
    kept as f64 / samples as f64
}

/// The share of samples whose user stack must reach the root in a runtime's service (a
/// Go goroutine's or thread's, the script's).
const RUNTIME_COMPLETE_SHARE: f64 = 0.98;

/// The share of samples that must pass through `worker`, the function every working
/// goroutine or thread runs: a frameless leaf or JIT code must not hide it.
const WORKER_SHARE: f64 = 0.95;

#[test]
fn go_binaries_stripped_or_not_unwind_whole_name_inlined_calls_and_hold_their_measured_phases() {
    let built = compile_go("phases", "go-phases", &[]);
    let stripped = compile_go("phases", "go-phases-stripped", &["-ldflags=-s -w"]);
    for (binary, label) in [(built, "built"), (stripped, "stripped")] {
        let dir = scratch(&format!("unwind-go-{label}"));
        let truth_path = dir.join("truth.json");
        let output = run(record(&dir, &["-F", "499", "--"])
            .arg(binary)
            .args(["4", "2"])
            .arg(&truth_path));
        assert!(output.status.success(), "{label}");
        let report = read_json(&dir.join("report.json"));
        let truth = read_json(&truth_path);
        let stacks = folded(&dir);
        let rooted = folded_share(&stacks, |frames| {
            matches!(
                frames[0],
                "runtime.goexit" | "runtime.mstart" | "runtime.rt0_go"
            )
        });
        assert!(
            rooted >= RUNTIME_COMPLETE_SHARE,
            "{label}: {:.1}% of the stacks reached a Go root: {}",
            rooted * 100.0,
            report["stacks"]["cpu"]
        );
        let worker = folded_share(&stacks, |frames| frames.contains(&"main.worker"));
        assert!(
            worker >= WORKER_SHARE,
            "{label}: main.worker is on {:.1}% of the stacks",
            worker * 100.0
        );
        // Only the runtime's stack switches (`systemstack`) have no rows.
        let cpu = &report["stacks"]["cpu"];
        let by_rows = cpu["methods"]["dwarf"].as_f64().unwrap() / cpu["total"].as_f64().unwrap();
        assert!(
            by_rows >= RUNTIME_COMPLETE_SHARE,
            "{label}: {:.1}% of the stacks were unwound by rows alone: {cpu}",
            by_rows * 100.0
        );
        assert_shares(&report, &truth, &["main.preprocess", "main.predict"]);
        let predict = &entries_where(&report["cpu"]["functions"], "name", "main.predict")[0];
        assert_eq!(predict["language"], "go", "{label}: {predict}");
        // `weigh` is inlined into `predict`: a frame of its own, right under it.
        let under_predict = folded_share(&stacks, |frames| {
            frames
                .windows(2)
                .any(|pair| pair == ["main.predict", "main.weigh"])
        });
        let anywhere = folded_share(&stacks, |frames| frames.contains(&"main.weigh"));
        assert!(
            under_predict > 0.1 && under_predict == anywhere,
            "{label}: main.weigh under main.predict in {:.1}%, anywhere in {:.1}%",
            under_predict * 100.0,
            anywhere * 100.0
        );
    }
}

#[test]
fn a_node_service_unwinds_through_its_jit_code_and_names_its_functions() {
    // V8 names its code in a perf map (`--perf-basic-prof`) or a jitdump file
    // (`--perf-prof`, written to the working folder).
    for (label, flag) in [
        ("perf-map", "--perf-basic-prof"),
        ("jitdump", "--perf-prof"),
    ] {
        let dir = scratch(&format!("unwind-node-{label}"));
        let truth_path = dir.join("truth.json");
        // V8 inlines small functions into their callers, where no perf map can see
        // them; the workload's phases must stay functions of their own to be measured.
        let output = run(record(&dir, &["-F", "499", "--", "node"])
            .args([
                flag,
                "--interpreted-frames-native-stack",
                "--no-turbo-inlining",
            ])
            .arg(common::workload_source("phases.js"))
            .arg("5")
            .arg(&truth_path)
            .current_dir(&dir));
        assert!(output.status.success(), "{label}");
        assert_jit_service(
            &dir,
            &truth_path,
            "js",
            "worker (phases.js:33)",
            &[
                ("preprocess", "preprocess (phases.js:12)"),
                ("predict", "predict (phases.js:20)"),
            ],
        );
    }
}

/// Asserts that a JIT-compiled service recorded into `dir` was walked whole, that its
/// `worker` is on the stacks it should be, and that its phases, named in `language`,
/// hold the shares the service measured into `truth_path`.
fn assert_jit_service(
    dir: &Path,
    truth_path: &Path,
    language: &str,
    worker: &str,
    phases: &[(&str, &str)],
) {
    let report = read_json(&dir.join("report.json"));
    let truth = read_json(truth_path);
    assert_complete(&report, RUNTIME_COMPLETE_SHARE);
    let worker_frame = format!("{worker}_[j]");
    let worker_share = folded_share(&folded(dir), |frames| {
        frames.contains(&worker_frame.as_str())
    });
    assert!(
        worker_share >= WORKER_SHARE,
        "{}: {worker} is on {:.1}% of the stacks",
        dir.display(),
        worker_share * 100.0
    );
    assert_shares_named(&report, &truth, phases);
    for (_, name) in phases {
        let function = &entries_where(&report["cpu"]["functions"], "name", name)[0];
        assert_eq!(function["language"], language, "{function}");
    }
}

#[test]
fn a_java_service_unwinds_through_its_compiled_methods_and_names_them() {
    let dir = scratch("unwind-java");
    let truth_path = dir.join("truth.json");
    // Three seconds of warm-up, then five measured. Inlining would make the phases the
    // worker's own code; `main` stays interpreted, so that no method is compiled after
    // the perf map's snapshot.
    let mut service = Command::new("java")
        .args([
            "-XX:+PreserveFramePointer",
            "-XX:CompileCommand=quiet",
            "-XX:CompileCommand=dontinline,Phases::*",
            "-XX:CompileCommand=exclude,Phases::main",
        ])
        .arg(common::workload_source("Phases.java"))
        .args(["3", "5"])
        .arg(&truth_path)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = service.id().to_string();
    sleep(Duration::from_millis(2500));
    let snapshot = run(Command::new("jcmd").args([&pid, "Compiler.perfmap"]));
    assert!(snapshot.status.success(), "{snapshot:?}");
    let output = run(&mut record(
        &dir,
        &["--pid", &pid, "--duration", "15", "-F", "499"],
    ));
    assert!(service.wait().unwrap().success());
    assert_eq!(output.status.code(), Some(TARGET_EXITED));
    assert_jit_service(
        &dir,
        &truth_path,
        "java",
        "Phases.worker",
        &[
            ("preprocess", "Phases.preprocess"),
            ("predict", "Phases.predict"),
        ],
    );
}
