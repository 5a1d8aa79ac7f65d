//! End-to-end tests of Python frames: real BPF programs profile the machine's own
//! CPython 3.10, 3.11, 3.12 and 3.13 (pyenv's shared-library builds) running
//! `tests/workloads/python_phases.py`, which measures its own phases.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::Duration,
};

use serde_json::Value;

mod common;
use common::{
    RULE_FIRED, TARGET_EXITED, assert_sampled_for_its_cpu_time, container_root, read_json, record,
    run, scratch, speedscope, speedscope_path, speedscope_weights, workload_source,
};

/// How far a function's share may be from its measured share, in points.
const TOLERANCE: f64 = 0.05;

/// The interpreters every test runs on.
const VERSIONS: [&str; 4] = ["3.10", "3.11", "3.12", "3.13"];

/// The newest installed pyenv interpreter of `version` (`3.12`).
fn python(version: &str) -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let mut installed: Vec<PathBuf> = fs::read_dir(root.join("versions"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_prefix(version))
                .is_some_and(|rest| rest.starts_with('.'))
        })
        .map(|path| path.join(format!("bin/python{version}")))
        .filter(|binary| binary.exists())
        .collect();
    installed.sort();
    installed.pop().unwrap_or_else(|| {
        panic!(
            "no pyenv CPython {version} under {}: the Python tests need pyenv's 3.10 to \
                 3.13 (`pyenv install {version}`; setup cannot, python.org being out of reach)",
            root.display()
        )
    })
}

/// A recording of `mode` on `version` for `seconds`, with `args`: its report, the
/// workload's own measurements and the collapsed stacks.
struct Run {
    dir: PathBuf,
    report: Value,
    truth: Value,
    folded: Vec<(String, u64)>,
    exit_code: Option<i32>,
}

impl Run {
    /// Samples whose collapsed stack `matches`.
    fn weight(&self, matches: impl Fn(&str) -> bool) -> u64 {
        self.folded
            .iter()
            .filter(|(stack, _)| matches(stack))
            .map(|(_, count)| count)
            .sum()
    }
}

fn profile(version: &str, mode: &str, seconds: &str, args: &[&str]) -> Run {
    profile_on(&python(version), version, mode, seconds, args)
}

/// [`profile`] on the interpreter `python`, its scratch directory told apart by `label`.
fn profile_on(python: &Path, label: &str, mode: &str, seconds: &str, args: &[&str]) -> Run {
    let dir = scratch(&format!("python-{mode}-{label}"));
    let truth_path = dir.join("truth.json");
    let output = run(record(&dir, args)
        .arg("--")
        .arg(python)
        .arg(workload_source("python_phases.py"))
        .args([mode, seconds])
        .arg(&truth_path));
    read_run(&dir, &truth_path, output.status.code())
}

/// The outputs `record` left in `dir`, and the workload's measurements.
fn read_run(dir: &Path, truth_path: &Path, exit_code: Option<i32>) -> Run {
    let folded = fs::read_to_string(dir.join("stacks.folded"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').unwrap();
            (stack.to_owned(), count.parse().unwrap())
        })
        .collect();
    Run {
        dir: dir.to_owned(),
        report: read_json(&dir.join("report.json")),
        truth: read_json(truth_path),
        folded,
        exit_code,
    }
}

/// The line of the workload that starts with `definition`, once indented or not.
fn definition_line(definition: &str) -> usize {
    let source = fs::read_to_string(workload_source("python_phases.py")).unwrap();
    source
        .lines()
        .position(|line| line.trim_start().starts_with(definition))
        .unwrap_or_else(|| panic!("python_phases.py has no `{definition}`"))
        + 1
}

/// The Python function whose qualified name is `qualname`, in a list of functions.
fn python_function<'r>(functions: &'r Value, version: &str, qualname: &str) -> Option<&'r Value> {
    let name = name_on(version, qualname);
    functions
        .as_array()
        .unwrap()
        .iter()
        .find(|function| function["language"] == "python" && function["function"] == name)
}

/// What `version` calls the function whose qualified name is `qualname`: 3.10's code
/// objects carry no qualified name, only the last part.
fn name_on<'q>(version: &str, qualname: &'q str) -> &'q str {
    match version {
        "3.10" => qualname.rsplit('.').next().unwrap(),
        _ => qualname,
    }
}

/// Asserts that the Python function `qualname` holds `phase`'s measured share of the
/// process's CPU time.
fn assert_share(run: &Run, version: &str, qualname: &str, phase: &str) {
    let measured = run.truth[phase].as_f64().unwrap() / run.truth["process_ns"].as_f64().unwrap();
    let profiled = python_function(&run.report["cpu"]["functions"], version, qualname)
        .map_or(0.0, |function| function["total"].as_f64().unwrap());
    assert!(
        (profiled - measured).abs() <= TOLERANCE,
        "{version}: {qualname} holds {:.1}% in the profile, the workload measured {:.1}%",
        profiled * 100.0,
        measured * 100.0
    );
}

/// Asserts that the thread-per-request workload's samples that found a Python thread
/// state were walked to their first frame, and that those that found none came from
/// the request threads' time outside `handle_request`: starting, before the thread
/// state is bound, and ending, while it is torn down (5 to 10 % of a 1 ms thread here,
/// more when the host is busy).
fn assert_request_threads_walked(run: &Run, version: &str) {
    let python = &run.report["python"];
    let ends = python["cpu_stack_ends"].as_object().unwrap();
    let count = |end: &str| ends.get(end).and_then(Value::as_u64).unwrap_or(0) as f64;
    let total: f64 = ends
        .values()
        .map(|count| count.as_u64().unwrap() as f64)
        .sum();
    let unbound = count("no_thread_state");
    assert!(
        count("root") >= 0.98 * (total - unbound),
        "{version}: {} of {} Python stacks with a thread state walked: {python}",
        count("root"),
        total - unbound
    );
    let truth = |key: &str| run.truth[key].as_f64().unwrap();
    let outside =
        (truth("process_ns") - truth("main_thread_ns") - truth("request_ns")) / truth("process_ns");
    let bound = total * outside + 3.0 * (total * outside * (1.0 - outside)).sqrt();
    assert!(
        unbound <= bound,
        "{version}: {unbound} of {total} samples found no thread state; the request \
         threads spent {:.1}% of the CPU time outside handle_request",
        outside * 100.0
    );
}

/// Asserts that at least `share` of the CPU samples' Python stacks were walked to their
/// first frame.
fn assert_walked(run: &Run, version: &str, share: f64) {
    let python = &run.report["python"];
    assert_eq!(
        python["interpreters"][0]["version"].as_str().unwrap()[..4],
        *version,
        "{python}"
    );
    let ends = python["cpu_stack_ends"].as_object().unwrap();
    let total: u64 = ends.values().map(|count| count.as_u64().unwrap()).sum();
    let root = ends.get("root").and_then(Value::as_u64).unwrap_or(0);
    assert!(
        root as f64 >= share * total as f64,
        "{version}: {root} of {total} Python stacks walked: {python}"
    );
}

#[test]
fn predict_holds_its_measured_share_and_the_gate_fires() {
    for version in VERSIONS {
        let run = profile(
            version,
            "loop",
            "3",
            &["-F", "499", "--fail-on", "predict>40%"],
        );
        assert_walked(&run, version, 0.98);
        assert_share(&run, version, "Model.predict", "predict");
        assert_eq!(
            run.exit_code,
            Some(RULE_FIRED),
            "{version}: the gate did not fire"
        );
        let function =
            python_function(&run.report["cpu"]["functions"], version, "Model.predict").unwrap();
        assert!(
            function["file"]
                .as_str()
                .unwrap()
                .ends_with("python_phases.py")
        );
        let line = definition_line("def predict(");
        assert_eq!(function["line"], line, "{function}");
        assert_eq!(
            function["name"],
            format!(
                "{} (python_phases.py:{line})",
                name_on(version, "Model.predict")
            )
        );
        assert_eq!(function["module"], "python_phases", "{function}");
        // speedscope shows the same function by its qualified name, file and line.
        let document = speedscope(&speedscope_path(&run.dir));
        let frames = document["shared"]["frames"].as_array().unwrap();
        let predict = frames
            .iter()
            .find(|frame| frame["name"] == name_on(version, "Model.predict"))
            .unwrap_or_else(|| panic!("{version}: no Model.predict frame in speedscope"));
        assert!(
            predict["file"]
                .as_str()
                .unwrap()
                .ends_with("python_phases.py")
        );
        assert_eq!(predict["line"], line);
        let weights = speedscope_weights(&document);
        assert_eq!(
            weights.iter().map(|(_, weight)| weight).sum::<u64>(),
            run.report["cpu"]["samples"].as_u64().unwrap()
        );
        // The interpreter's own plumbing gives way to the Python frames, but where a
        // sample caught the walk at a frame being pushed.
        let plumbing = run.weight(|stack| stack.contains("_PyEval_EvalFrameDefault"));
        assert!(
            plumbing as f64 <= 0.01 * run.weight(|_| true) as f64,
            "{version}: {plumbing} samples show the eval loop"
        );
    }
}

#[test]
fn the_demo_services_verdict_names_predict_and_its_tables_no_interpreter_internal() {
    for version in VERSIONS {
        let dir = scratch(&format!("python-demo-{version}"));
        let service = Command::new(python(version))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/model_service.py"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        sleep(Duration::from_millis(500));
        let pid = service.id().to_string();
        let output = run(&mut record(
            &dir,
            &["--pid", &pid, "--duration", "3", "-F", "499"],
        ));
        // SAFETY: a signal to the child this test started.
        unsafe { libc::kill(service.id() as i32, libc::SIGTERM) };
        let measured = String::from_utf8(service.wait_with_output().unwrap().stdout).unwrap();
        let predict_measured: f64 = measured
            .split("predict ")
            .nth(1)
            .and_then(|rest| rest.split('%').next())
            .and_then(|share| share.parse().ok())
            .unwrap_or_else(|| panic!("{version}: the service measured nothing: {measured}"));
        let summary = String::from_utf8_lossy(&output.stdout);
        let verdict = summary
            .lines()
            .find(|line| line.starts_with("Hotspot: "))
            .unwrap_or_else(|| panic!("{version}: no verdict in {summary}"));
        assert!(
            verdict.starts_with(&format!("Hotspot: {} (", name_on(version, "Model.predict")))
                || verdict.contains("<listcomp> (model_service.py:"),
            "{version}: {verdict}"
        );
        let report = read_json(&dir.join("report.json"));
        let functions = report["cpu"]["functions"].as_array().unwrap();
        // The service measures each phase's share of the three phases' time, not of all
        // its CPU time: the profile's shares are taken the same way.
        let total = |qualname: &str| {
            python_function(&report["cpu"]["functions"], version, qualname)
                .map_or(0.0, |function| function["total"].as_f64().unwrap())
        };
        let predict =
            total("Model.predict") / (total("Model.predict") + total("parse") + total("respond"));
        assert!(
            (predict * 100.0 - predict_measured).abs() <= TOLERANCE * 100.0,
            "{version}: Model.predict holds {:.1}%, the service measured {predict_measured}%",
            predict * 100.0
        );
        // The summary's tables: the top functions by self and by total time.
        for key in ["self", "total"] {
            let mut ranked: Vec<&Value> = functions.iter().collect();
            ranked.sort_by(|a, b| b[key].as_f64().partial_cmp(&a[key].as_f64()).unwrap());
            for function in ranked.iter().take(10) {
                let object = function["object"].as_str().unwrap_or("");
                assert!(
                    !object.contains("libpython") && !object.contains("/bin/python"),
                    "{version}: the interpreter's {} is among the top functions by {key} time",
                    function["name"]
                );
            }
        }
    }
}

#[test]
fn predict_keeps_its_share_while_it_runs_c_code_that_released_the_gil() {
    for version in VERSIONS {
        let run = profile(version, "released", "3", &["-F", "499"]);
        assert_walked(&run, version, 0.98);
        assert_share(&run, version, "predict_digest", "predict");
        assert_share(&run, version, "prepare", "prepare");
    }
}

/// A Python service in its own pid namespace, as in a container, where CPython knows
/// its threads by the namespace's ids: each thread's own thread state is still found.
#[test]
fn a_python_service_in_its_own_pid_namespace_is_walked() {
    for version in VERSIONS {
        let dir = scratch(&format!("python-pid-namespace-{version}"));
        let truth_path = dir.join("truth.json");
        let mut namespace = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child"])
            .arg(python(version))
            .arg(workload_source("python_phases.py"))
            .args(["loop", "3"])
            .arg(&truth_path)
            .spawn()
            .unwrap();
        let service = forked_child(namespace.id());
        sleep(Duration::from_millis(300));
        // Recorded until it exits: the profile then covers what its measurements do but
        // its first 0.3 s, at a rate that makes the share's sampling error small.
        let output = run(&mut record(
            &dir,
            &[
                "--pid",
                &service.to_string(),
                "--duration",
                "30",
                "-F",
                "999",
            ],
        ));
        assert!(namespace.wait().unwrap().success());
        let run = read_run(&dir, &truth_path, output.status.code());
        assert_eq!(run.exit_code, Some(TARGET_EXITED), "{version}");
        assert_walked(&run, version, 0.98);
        assert_share(&run, version, "Model.predict", "predict");
    }
}

/// A Python service in a container: its own root, in which the interpreter's files sit
/// at a path the host does not have (`/python`, bound from the pyenv install) next to
/// its own copies of libc and the rest, in its own pid and mount namespaces.
#[test]
fn a_python_service_in_a_container_is_walked() {
    for version in VERSIONS {
        let dir = scratch(&format!("python-container-{version}"));
        let root = dir.join("root");
        let interpreter = python(version);
        container_root(&root, &interpreter);
        let install = interpreter.parent().unwrap().parent().unwrap();
        fs::create_dir_all(root.join("python")).unwrap();
        fs::copy(workload_source("python_phases.py"), root.join("phases.py")).unwrap();
        let script = format!(
            "mount --bind {install} {root}/python && exec chroot {root} /python/bin/python{version} /phases.py loop 3 /truth.json",
            install = install.display(),
            root = root.display(),
        );
        let mut container = Command::new("unshare")
            .args([
                "--pid",
                "--mount",
                "--fork",
                "--propagation",
                "private",
                "sh",
                "-c",
            ])
            .arg(&script)
            .spawn()
            .unwrap();
        sleep(Duration::from_millis(500));
        let output = run(&mut record(
            &dir,
            &[
                "--pid",
                &container.id().to_string(),
                "--children",
                "--duration",
                "30",
                "-F",
                "999",
            ],
        ));
        assert!(container.wait().unwrap().success(), "{version}");
        let run = read_run(&dir, &root.join("truth.json"), output.status.code());
        assert_eq!(run.exit_code, Some(TARGET_EXITED), "{version}");
        assert_walked(&run, version, 0.98);
        assert_share(&run, version, "Model.predict", "predict");
    }
}

/// A worker forked from the service, as multiprocessing and gunicorn make them: its
/// stacks unwind, and its Python frames are walked, from its first sample, before
/// userspace has read its memory map.
#[test]
fn a_forked_worker_is_walked_from_its_first_sample() {
    for version in VERSIONS {
        let run = profile(version, "fork", "2", &["-F", "499"]);
        let processes = run.report["cpu"]["processes"].as_array().unwrap();
        assert_eq!(processes.len(), 2, "{version}: {processes:?}");
        let stacks = &run.report["stacks"]["cpu"];
        assert!(
            stacks["complete"].as_f64().unwrap() >= 0.98,
            "{version}: {stacks}"
        );
        assert_walked(&run, version, 0.98);
    }
}

/// The process `parent` forked, once it has.
fn forked_child(parent: u32) -> u32 {
    for _ in 0..100 {
        let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().unwrap();
        }
        sleep(Duration::from_millis(20));
    }
    panic!("process {parent} forked no child");
}

/// Threads of about 1 ms of CPU each, half the sampling period at 499 Hz (sampled that
/// fast for the shares' bound: about 2,900 samples): the samples still add up to the
/// process's CPU time, and each phase holds its share.
#[test]
fn short_lived_threads_of_a_thread_per_request_server_keep_their_frames() {
    const FREQUENCY_HZ: u32 = 499;
    for version in VERSIONS {
        let run = profile(version, "threads", "6", &["-F", &FREQUENCY_HZ.to_string()]);
        assert!(run.truth["threads_started"].as_u64().unwrap() >= 500);
        let sampled_s = run.report["cpu"]["samples"].as_f64().unwrap() / f64::from(FREQUENCY_HZ);
        let process_s = run.truth["process_ns"].as_f64().unwrap() / 1e9;
        assert!(
            (sampled_s - process_s).abs() <= 0.1 * process_s,
            "{version}: samples account for {sampled_s:.2} s of CPU, the process used {process_s:.2} s"
        );
        // The main thread starts each request's thread and hands it its CPU: it keeps
        // its own samples all the same, within the statistical bound of their count.
        let pid = run.report["target"]["pids"][0].as_u64().unwrap();
        let used_ns = run.truth["main_thread_ns"].as_f64().unwrap();
        assert_sampled_for_its_cpu_time(
            &format!("{version}: the main thread"),
            &run.report,
            pid,
            used_ns,
            f64::from(FREQUENCY_HZ),
        );
        assert_request_threads_walked(&run, version);
        assert_share(&run, version, "Model.predict", "predict");
        assert_share(&run, version, "parse", "parse");
    }
}

#[test]
fn a_blocked_thread_shows_the_python_function_that_waits() {
    for version in VERSIONS {
        let run = profile(version, "blocked", "2", &["--events", "cpu,offcpu"]);
        let functions = &run.report["offcpu"]["functions"];
        for (qualname, phase) in [
            ("wait_for_tick", "wait_for_tick_ns"),
            ("read_request", "read_request_ns"),
        ] {
            let blocked =
                python_function(functions, version, qualname)
                    .unwrap_or_else(|| panic!("{version}: {qualname} not in the off-CPU profile"))
                    ["total_ns"]
                    .as_f64()
                    .unwrap();
            let measured = run.truth[phase].as_f64().unwrap();
            assert!(
                (blocked / measured - 1.0).abs() <= 0.1,
                "{version}: {qualname} blocked {blocked} ns, the workload measured {measured} ns"
            );
        }
    }
}

#[test]
fn the_python_function_that_keeps_allocating_is_the_leak_candidate() {
    for version in VERSIONS {
        // Attached to the running service, as on call; the workload leaks 1 MiB every
        // 50 ms or so, and measures its own rate.
        let dir = scratch(&format!("python-leak-{version}"));
        let truth_path = dir.join("truth.json");
        let mut service = Command::new(python(version))
            .arg(workload_source("python_phases.py"))
            .args(["leak", "7"])
            .arg(&truth_path)
            .spawn()
            .unwrap();
        sleep(Duration::from_millis(700));
        let pid = service.id().to_string();
        let output = run(&mut record(
            &dir,
            &[
                "--pid",
                &pid,
                "--duration",
                "2",
                "--events",
                "cpu,alloc",
                "--leak-min-age",
                "0.5",
            ],
        ));
        assert!(output.status.success());
        assert!(service.wait().unwrap().success());
        let report = read_json(&dir.join("report.json"));
        let truth = read_json(&truth_path);
        let rate = truth["leaked_bytes"].as_f64().unwrap() / truth["seconds"].as_f64().unwrap();
        let recorded = report["duration_s"].as_f64().unwrap();
        let candidates = report["leaks"]["candidates"].as_array().unwrap();
        let load_model: f64 = candidates
            .iter()
            .filter(|candidate| {
                candidate["function"]
                    .as_str()
                    .unwrap()
                    .starts_with("load_model (")
            })
            .map(|candidate| candidate["bytes"].as_f64().unwrap())
            .sum();
        // Blocks younger than the minimum age at the end are no candidates yet; the
        // probes stay attached a little past the duration while they are taken out.
        let (least, most) = (rate * (2.0 - 0.5) * 0.85, rate * recorded);
        assert!(
            least <= load_model && load_model <= most,
            "{version}: load_model holds {load_model} bytes; at the workload's rate, \
             {least} to {most} were expected"
        );
        for candidate in candidates {
            let function = candidate["function"].as_str().unwrap();
            assert!(!function.starts_with("score ("), "{version}: {function}");
        }
    }
}

/// The test venv of `version` with numpy (`cargo xtask setup` makes it), its python.
fn python_with_numpy(version: &str) -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/test-deps/numpy-{version}/bin/python"));
    assert!(
        python.exists(),
        "{}: no venv with numpy; `cargo xtask setup` makes it",
        python.display()
    );
    python
}

#[test]
fn a_leak_through_numpy_and_bytearray_is_its_python_functions_in_the_python_view() {
    for version in VERSIONS {
        let dir = scratch(&format!("python-model-leak-{version}"));
        let truth_path = dir.join("truth.json");
        let mut service = Command::new(python_with_numpy(version))
            .arg(workload_source("python_phases.py"))
            .args(["model_leak", "7"])
            .arg(&truth_path)
            .spawn()
            .unwrap();
        sleep(Duration::from_millis(500));
        let pid = service.id().to_string();
        let output = run(&mut record(
            &dir,
            &[
                "--pid",
                &pid,
                "--duration",
                "5",
                "--events",
                "alloc",
                "--leak-min-age",
                "1",
            ],
        ));
        assert!(output.status.success(), "{version}");
        assert!(service.wait().unwrap().success());
        let report = read_json(&dir.join("report.json"));
        let leaked = read_json(&truth_path)["leaked_bytes"].as_f64().unwrap();
        let candidates = report["leaks"]["candidates"].as_array().unwrap();
        let of = |function: &str| -> Vec<&Value> {
            candidates
                .iter()
                .filter(|candidate| {
                    candidate["function"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("{function} ("))
                })
                .collect()
        };
        let held: f64 = of("load_model_parts")
            .iter()
            .map(|candidate| candidate["bytes"].as_f64().unwrap())
            .sum();
        assert!(
            (held / leaked - 1.0).abs() <= 0.02,
            "{version}: load_model_parts holds {held} bytes, the workload leaked {leaked}: \
             {candidates:#?}"
        );
        // The churn frees what it allocates but for the few hundred bytes of array
        // dimensions numpy keeps in a cache of its own.
        let churned: f64 = of("serve_request")
            .iter()
            .map(|candidate| candidate["bytes"].as_f64().unwrap())
            .sum();
        assert!(churned <= 1024.0, "{version}: {candidates:#?}");
        // Each stack ends in the call that allocated, without the interpreter's
        // allocator plumbing.
        for candidate in of("load_model_parts") {
            let stack: Vec<&str> = candidate["stack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|frame| frame.as_str().unwrap())
                .collect();
            for internal in [
                "_PyObject_Malloc",
                "PyByteArray_Resize",
                "bytearray___init__",
            ] {
                assert!(
                    !stack.iter().any(|frame| frame.contains(internal)),
                    "{version}: {stack:?}"
                );
            }
        }
    }
}

#[test]
fn a_builtin_calling_back_into_python_keeps_the_order_of_its_frames() {
    for version in VERSIONS {
        // With the interpreter's frames, sorted sits between rank and its key.
        let rule = "builtin_sorted>1%";
        let run = profile(
            version,
            "callback",
            "2",
            &["-F", "499", "--python-internals", "--fail-on", rule],
        );
        assert_eq!(run.exit_code, Some(RULE_FIRED), "{version}");
        assert_eq!(run.report["rules"][0]["matched"], true, "{version}");
        assert_walked(&run, version, 0.98);
        assert_share(&run, version, "rank", "rank");
        let mixed = run.weight(|stack| {
            let rank = stack.find(";rank (").unwrap_or(usize::MAX);
            let sorted = stack.find(";builtin_sorted;").unwrap_or(usize::MAX);
            let key = stack.find(";key_score (").unwrap_or(usize::MAX);
            rank < sorted && sorted < key && key != usize::MAX
        });
        let in_key = run.weight(|stack| stack.contains(";key_score ("));
        assert!(
            in_key > 100 && mixed as f64 >= 0.95 * in_key as f64,
            "{version}: {mixed} of {in_key} key_score samples under rank;builtin_sorted"
        );
        // In the Python view, the key function is called from rank, and a rule naming
        // the builtin the view folds away matches nothing.
        let run = profile(version, "callback", "2", &["-F", "499", "--fail-on", rule]);
        assert_eq!(run.exit_code, Some(0), "{version}");
        assert_eq!(run.report["rules"][0]["matched"], false, "{version}");
        assert_share(&run, version, "rank", "rank");
        let called =
            run.weight(|stack| stack.contains(";rank (") && stack.contains(";key_score ("));
        let direct = run.weight(|stack| {
            stack.split_once(";rank (").is_some_and(|(_, below)| {
                below
                    .split(';')
                    .nth(1)
                    .is_some_and(|callee| callee.starts_with("key_score ("))
            })
        });
        assert!(
            called > 100 && direct as f64 >= 0.95 * called as f64,
            "{version}: {direct} of {called} key_score samples right under rank"
        );
        // A sample whose Python stack was not found keeps its native frames.
        let internals =
            run.weight(|stack| stack.contains(".py:") && stack.contains("builtin_sorted"));
        assert_eq!(internals, 0, "{version}: sorted shows in the Python view");
    }
}

/// A run's collapsed stacks with their user frames only (the kernel's differ from run
/// to run), and the share of the samples each holds.
fn user_stacks(run: &Run) -> BTreeMap<String, f64> {
    let mut user: BTreeMap<String, f64> = BTreeMap::new();
    for (stack, count) in &run.folded {
        let frames: Vec<&str> = stack
            .split(';')
            .filter(|frame| !frame.ends_with("_[k]"))
            .collect();
        *user.entry(frames.join(";")).or_default() += *count as f64;
    }
    let total: f64 = user.values().sum();
    user.values_mut().for_each(|share| *share /= total);
    user
}

#[test]
fn a_static_interpreter_and_a_shared_one_give_the_same_python_view_stacks() {
    // Debian's python3.11 has the interpreter linked in and stripped; pyenv's 3.12
    // loads it from libpython3.12.so.
    let statically = profile_on(
        Path::new("/usr/bin/python3.11"),
        "debian-3.11",
        "plain",
        "3",
        &["-F", "499"],
    );
    let shared = profile("3.12", "plain", "3", &["-F", "499"]);
    let (statically, shared) = (user_stacks(&statically), user_stacks(&shared));
    assert!(
        statically.keys().any(|stack| stack.contains(";tally (")),
        "{statically:#?}"
    );
    // Every stack that holds 3 % of one run is one of the other's.
    for (one, other) in [(&statically, &shared), (&shared, &statically)] {
        for (stack, share) in one.iter().filter(|(_, share)| **share >= 0.03) {
            assert!(
                other.contains_key(stack),
                "{stack} holds {:.1}% of one run and is not in the other: {other:#?}",
                share * 100.0
            );
        }
    }
}

/// `go tool pprof -list FUNCTION` of a pprof profile: each listed line's cumulative
/// samples, by line number.
fn pprof_list(profile: &Path, function: &str) -> BTreeMap<usize, f64> {
    let output = Command::new("go")
        .args(["tool", "pprof", "-sample_index=samples", "-list"])
        .arg(format!("^{function}$"))
        .arg(profile)
        .output()
        .expect("running go tool pprof");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = |text: &str| {
        if text == "." {
            0.0
        } else {
            text.parse().unwrap()
        }
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = fields.get(2)?.strip_suffix(':')?.parse().ok()?;
            Some((number, value(fields[1])))
        })
        .collect()
}

#[test]
fn each_line_of_a_function_holds_its_measured_share() {
    let first = definition_line("for i in range(count): total += i * i");
    let second = definition_line("for i in range(count): total += (i % 7)");
    for version in VERSIONS {
        let run = profile(version, "lines", "4", &["-F", "999"]);
        assert_walked(&run, version, 0.98);
        let process_ns = run.truth["process_ns"].as_f64().unwrap();
        let cpu = &run.report["cpu"];
        let frames = cpu["frames"].as_array().unwrap();
        let two_loops = frames
            .iter()
            .position(|frame| frame["function"] == "two_loops")
            .unwrap_or_else(|| panic!("{version}: no two_loops frame"));
        let samples = cpu["samples"].as_f64().unwrap();
        let mut by_line: BTreeMap<usize, f64> = BTreeMap::new();
        for stack in cpu["stacks"].as_array().unwrap() {
            let ids = stack["frames"].as_array().unwrap();
            let Some(depth) = ids.iter().rposition(|id| id == two_loops) else {
                continue;
            };
            let line = stack["lines"][depth].as_u64().unwrap_or(0) as usize;
            *by_line.entry(line).or_default() += stack["samples"].as_f64().unwrap() / samples;
        }
        let listed = pprof_list(&run.dir.join("cpu.pb.gz"), "two_loops");
        for (line, phase) in [(first, "first_loop"), (second, "second_loop")] {
            let measured = run.truth[phase].as_f64().unwrap() / process_ns;
            let profiled = by_line.get(&line).copied().unwrap_or(0.0);
            assert!(
                (profiled - measured).abs() <= 0.03,
                "{version}: line {line} holds {:.1}% in the profile, the workload measured \
                 {:.1}%: {by_line:?}",
                profiled * 100.0,
                measured * 100.0
            );
            let in_pprof = listed.get(&line).copied().unwrap_or(0.0) / samples;
            assert!(
                (in_pprof - profiled).abs() <= 0.005,
                "{version}: go tool pprof -list gives line {line} {:.1}%, the report {:.1}%",
                in_pprof * 100.0,
                profiled * 100.0
            );
        }
    }
}

#[test]
fn the_collectors_work_is_one_gc_frame_that_holds_its_measured_share() {
    for version in VERSIONS {
        let run = profile(version, "gc", "3", &["-F", "499"]);
        let measured =
            run.truth["gc"].as_f64().unwrap() / run.truth["process_ns"].as_f64().unwrap();
        let functions = run.report["cpu"]["functions"].as_array().unwrap();
        let collector = functions
            .iter()
            .find(|function| function["name"] == "[gc]")
            .unwrap_or_else(|| panic!("{version}: no [gc] frame"));
        let profiled = collector["total"].as_f64().unwrap();
        assert!(
            (profiled - measured).abs() <= TOLERANCE,
            "{version}: [gc] holds {:.1}% in the profile, the workload measured {:.1}%",
            profiled * 100.0,
            measured * 100.0
        );
        // At exit, with no Python frame left, the interpreter's frames are all there is.
        let internals = run.weight(|stack| {
            stack.contains(".py:")
                && (stack.contains("gc_collect_main") || stack.contains("visit_decref"))
        });
        assert_eq!(
            internals, 0,
            "{version}: the collector's own functions show"
        );
    }
}

#[test]
fn a_python_stack_150_frames_deep_is_walked_to_its_first_frame() {
    for version in VERSIONS {
        let run = profile(version, "deep", "2", &["-F", "499"]);
        assert_walked(&run, version, 0.98);
        let deepest = run
            .folded
            .iter()
            // On 3.10 every Python call recurses in C too: the native stack is cut at
            // its depth limit, and `<module>` is the root that is left.
            .filter(|(stack, _)| stack.contains("<module> ("))
            .map(|(stack, _)| stack.matches(";recurse (").count())
            .max()
            .unwrap();
        assert!(deepest > 150, "{version}: recurse reached {deepest} frames");
    }
}

/// The last exposition text scraped from `address` while `recording` runs, every half
/// second.
fn scrape_while(address: &str, mut recording: std::process::Child) -> (String, Option<i32>) {
    use std::io::{Read as _, Write as _};
    let mut last = String::new();
    loop {
        if let Some(status) = recording.try_wait().unwrap() {
            return (last, status.code());
        }
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let mut text = String::new();
            let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
            if stream.read_to_string(&mut text).is_ok() && text.contains("profiler_") {
                last = text;
            }
        }
        sleep(Duration::from_millis(500));
    }
}

/// The value of the series `name{labels}` in exposition `text`.
fn series(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}{{{labels}}} ")))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn gil_held_released_and_waiting_shares_match_what_the_threads_measure() {
    for (index, version) in VERSIONS.iter().enumerate() {
        let dir = scratch(&format!("python-gil-{version}"));
        let truth_path = dir.join("truth.json");
        let address = format!("127.0.0.1:{}", 19460 + index);
        let recording = record(
            &dir,
            &[
                "--events",
                "cpu,offcpu",
                "-F",
                "499",
                "--metrics-addr",
                &address,
            ],
        )
        .arg("--")
        .arg(python_with_numpy(version))
        .arg(workload_source("python_phases.py"))
        .args(["gil", "8"])
        .arg(&truth_path)
        .spawn()
        .unwrap();
        let (metrics, code) = scrape_while(&address, recording);
        let run = read_run(&dir, &truth_path, code);
        assert_eq!(run.exit_code, Some(0), "{version}");
        let truth = |key: &str| run.truth[key].as_f64().unwrap();
        let measured_total =
            truth("gil_held_ns") + truth("gil_released_ns") + truth("gil_waiting_ns");
        let gil = &run.report["python"]["gil"];
        // Every phase the threads time runs inside gil_section.
        let section = gil["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|function| function["function"] == "gil_section")
            .unwrap_or_else(|| panic!("{version}: no gil_section in python.gil: {gil}"));
        for state in ["held", "released", "waiting"] {
            let measured = truth(&format!("gil_{state}_ns")) / measured_total;
            let profiled = section[format!("{state}_share")].as_f64().unwrap();
            assert!(
                (profiled - measured).abs() <= TOLERANCE,
                "{version}: gil_section {state} {:.1}% in the profile, the threads measured \
                 {:.1}%: {section}",
                profiled * 100.0,
                measured * 100.0
            );
        }
        let process = &gil["processes"][0];
        let pid = process["pid"].as_u64().unwrap();
        for state in ["held", "released", "waiting"] {
            let labels = format!("pid=\"{pid}\",state=\"{state}\"");
            let gauge = series(&metrics, "profiler_python_gil_ratio", &labels)
                .unwrap_or_else(|| panic!("{version}: no GIL gauge {labels} in:\n{metrics}"));
            let reported = process[format!("{state}_share")].as_f64().unwrap();
            assert!(
                (gauge - reported).abs() <= TOLERANCE,
                "{version}: the {state} gauge read {gauge:.3} at the last scrape, the report \
                 {reported:.3}"
            );
        }
        // The threads' waits are one wait reason of their own, in the Python view.
        let offcpu = &run.report["offcpu"]["functions"];
        let waited = offcpu
            .as_array()
            .unwrap()
            .iter()
            .any(|function| function["name"] == "[GIL wait]");
        assert!(waited, "{version}: no [GIL wait] off-CPU frame: {offcpu}");
    }
}
