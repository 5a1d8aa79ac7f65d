//! What every end-to-end test file needs: scratch folders, the workloads compiled from
//! `tests/workloads`, and running the real `profiler` binary.

// Each test file is its own crate and uses a part of this module.
#![allow(dead_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

/// Exit codes, as documented in docs/reference.md and `profiler record --help`.
pub const USAGE: i32 = 2;
pub const RULE_FIRED: i32 = 3;
pub const NO_TARGET: i32 = 4;
pub const PRIVILEGES: i32 = 5;
pub const OUTPUT: i32 = 7;
pub const TARGET_EXITED: i32 = 8;
pub const INPUT: i32 = 9;
pub const INTERRUPTED: i32 = 130;

/// A folder of its own for each test, under cargo's scratch space.
pub fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `tests/workloads/NAME.c` with frame pointers (gcc still leaves them out of
/// leaf functions, which the profiler must cope with) and returns the binary.
pub fn compile_workload(name: &str) -> PathBuf {
    compile_c(
        name,
        name,
        &[
            "-O1",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
        ],
    )
}

/// Compiles `tests/workloads/SOURCE.c` into the binary (or, with `-shared`, library)
/// `OUTPUT` with debug information, the pthread flags and `flags`.
pub fn compile_c(source: &str, output: &str, flags: &[&str]) -> PathBuf {
    let source = workload_source(&format!("{source}.c"));
    let binary = bin_dir().join(output);
    let status = Command::new("cc")
        .args(["-g", "-pthread"])
        .args(flags)
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .status()
        .expect("running cc");
    assert!(status.success(), "compiling {}", source.display());
    binary
}

/// Compiles `tests/workloads/NAME.rs` as cargo's release profile would, without frame
/// pointers, with the toolchain this workspace pins.
pub fn compile_rust(name: &str) -> PathBuf {
    let source = workload_source(&format!("{name}.rs"));
    let binary = bin_dir().join(format!("{name}-rs"));
    let status = Command::new("rustc")
        .args(["--edition", "2024", "-C", "opt-level=3"])
        .arg(&source)
        .arg("-o")
        .arg(&binary)
        .status()
        .expect("running rustc");
    assert!(status.success(), "compiling {}", source.display());
    binary
}

/// Builds `tests/workloads/NAME.go` with the machine's Go toolchain (Debian's
/// golang-go, which the setup installs) into the binary `OUTPUT`, with `flags` added
/// to `go build`.
pub fn compile_go(name: &str, output: &str, flags: &[&str]) -> PathBuf {
    let source = workload_source(&format!("{name}.go"));
    let binary = bin_dir().join(output);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache");
    let status = Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .env("GOCACHE", &cache)
        .env("GOPATH", cache.join("path"))
        .env("GOFLAGS", "-buildvcs=false")
        .status()
        .expect("running go");
    assert!(status.success(), "building {}", source.display());
    binary
}

pub fn workload_source(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/workloads")
        .join(file)
}

fn bin_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bin");
    fs::create_dir_all(&bin).unwrap();
    bin
}

pub fn profiler() -> Command {
    Command::new(env!("CARGO_BIN_EXE_profiler"))
}

/// `profiler record` writing every output into `dir`, with `args` added.
pub fn record(dir: &Path, args: &[&str]) -> Command {
    let mut command = profiler();
    command
        .arg("record")
        .arg("-o")
        .arg(dir.join("flame.svg"))
        .arg("--json")
        .arg(dir.join("report.json"))
        .arg("--folded")
        .arg(dir.join("stacks.folded"))
        .arg("--offcpu-output")
        .arg(dir.join("offcpu.svg"))
        .arg("--leaks-output")
        .arg(dir.join("leaks.svg"))
        .arg("--pprof")
        .arg(dir.join("cpu.pb.gz"))
        .arg("--speedscope")
        .arg(speedscope_path(dir))
        .args(args);
    command
}

/// The speedscope file `record` wrote in `dir`.
pub fn speedscope_path(dir: &Path) -> PathBuf {
    dir.join("profile.speedscope.json")
}

/// The speedscope `file`, once it has passed the file-format schema that the npm
/// speedscope package ships (`cargo xtask setup` fetches it, and a JSON Schema
/// validator).
pub fn speedscope(file: &Path) -> Value {
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-deps");
    let validate = "import json, sys, jsonschema; \
        jsonschema.validate(json.load(open(sys.argv[1])), json.load(open(sys.argv[2])))";
    let output = Command::new(deps.join("venv/bin/python"))
        .args(["-c", validate])
        .arg(file)
        .arg(deps.join("speedscope-schema.json"))
        .output()
        .expect("the tests' Python venv: `cargo xtask setup` makes it");
    assert!(
        output.status.success(),
        "{} does not pass speedscope's schema: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    read_json(file)
}

/// The sample weights of each profile of a speedscope document, by profile name.
pub fn speedscope_weights(document: &Value) -> Vec<(String, u64)> {
    document["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|profile| {
            let weights = profile["weights"].as_array().unwrap();
            (
                profile["name"].as_str().unwrap().to_owned(),
                weights.iter().map(|weight| weight.as_u64().unwrap()).sum(),
            )
        })
        .collect()
}

/// Runs `command`, echoing its output for the test log.
pub fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    output
}

pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The entries of a report's array whose `field` is `value`.
pub fn entries_where<'r>(array: &'r Value, field: &str, value: &str) -> Vec<&'r Value> {
    array
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter(|entry| entry[field] == value)
        .collect()
}

/// The single line the profiler printed to stderr.
pub fn stderr_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected a one-line reason, got: {stderr}"
    );
    stderr
}

/// Asserts that `measured` is within `tolerance` (a fraction) of the workload's `truth`.
pub fn assert_close(what: &str, measured: u64, truth: u64, tolerance: f64) {
    let error = (measured as f64 / truth as f64 - 1.0).abs();
    assert!(
        error <= tolerance,
        "{what}: the profiler says {measured}, the workload measured {truth} ({:.1}% off)",
        error * 100.0
    );
}

/// The CPU samples of thread `tid` in a report; 0 if it has none.
pub fn thread_samples(report: &Value, tid: u64) -> u64 {
    report["cpu"]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|thread| thread["tid"] == tid)
        .map_or(0, |thread| thread["samples"].as_u64().unwrap())
}

/// Asserts that thread `tid` of `report` (`what`, in the message), which used `used_ns`
/// of CPU time, was sampled for it within the statistical bound of the sample count
/// (3 σ, plus one for the count's granularity) at `frequency_hz`.
pub fn assert_sampled_for_its_cpu_time(
    what: &str,
    report: &Value,
    tid: u64,
    used_ns: f64,
    frequency_hz: f64,
) {
    let sampled = thread_samples(report, tid) as f64;
    let periods = used_ns * frequency_hz / 1e9;
    assert!(
        (sampled - periods).abs() <= 3.0 * periods.sqrt() + 1.0,
        "{what} (tid {tid}): {sampled} samples for {periods:.1} periods of CPU time"
    );
}

/// A function's row in `go tool pprof -top`: its own and its cumulative value.
#[derive(Debug)]
pub struct PprofRow {
    pub flat: f64,
    pub cum: f64,
}

/// `go tool pprof -top` of a pprof profile, every node, the values of `sample_index` in
/// `unit` (`ns`, `B`, or "" for counts), by function name; and the total it prints.
pub fn pprof_top(profile: &Path, sample_index: &str, unit: &str) -> (f64, Vec<(String, PprofRow)>) {
    let mut command = Command::new("go");
    command.args([
        "tool",
        "pprof",
        "-top",
        "-nodecount=100000",
        "-nodefraction=0",
    ]);
    command.arg(format!("-sample_index={sample_index}"));
    if !unit.is_empty() {
        command.arg(format!("-unit={unit}"));
    }
    let output = command
        .arg(profile)
        .output()
        .expect("running go tool pprof");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "go tool pprof: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = |text: &str| -> f64 { text.trim_end_matches(unit).parse().unwrap() };
    // "Showing nodes accounting for 393, 100% of 393 total"
    let total = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Showing nodes accounting for "))
        .and_then(|line| line.split(" of ").nth(1))
        .map(|total| value(total.trim_end_matches(" total")))
        .expect("a total line");
    let rows = stdout
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let row = PprofRow {
                flat: value(fields[0]),
                cum: value(fields[3]),
            };
            (fields[5..].join(" "), row)
        })
        .collect();
    (total, rows)
}

/// The row of `function` in `pprof_top`'s rows.
pub fn pprof_row<'r>(rows: &'r [(String, PprofRow)], function: &str) -> &'r PprofRow {
    rows.iter()
        .find(|(name, _)| name == function)
        .map(|(_, row)| row)
        .unwrap_or_else(|| panic!("no {function} in go tool pprof -top: {rows:?}"))
}

/// A root file system for a "container": `binary` at `/app` and the libraries `ldd`
/// lists for it, copied (new files, not the host's) to the same paths under `root`.
pub fn container_root(root: &Path, binary: &Path) -> PathBuf {
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("running ldd");
    let libraries = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect::<Vec<_>>();
    for library in libraries.iter().chain([&PathBuf::from("/bin/sh")]) {
        let inside = root.join(library.strip_prefix("/").unwrap());
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        fs::copy(library, &inside).unwrap();
    }
    fs::copy(binary, root.join("app")).unwrap();
    root.join("app")
}

/// `ARGS` run as `/app` in `root`, in new pid and mount namespaces: `unshare`'s child
/// is the container's pid 1.
pub fn in_container(root: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--mount", "--fork", "chroot"])
        .arg(root)
        .arg("/app")
        .args(args);
    command
}
