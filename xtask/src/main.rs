//! Workspace tasks: `cargo xtask setup | build | test | demo | bench`.
//!
//! Every task that needs the toolchain runs set-up first; set-up installs only what is
//! missing, so running it again costs a few checks.

mod bench;
mod bench_alloc;
mod bench_loadtest;
mod bench_python;
mod bench_runtimes;
mod bench_slowdown;
mod bench_syscalls;
mod bench_unwind;
mod demo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use setup::Purpose;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set-up, build, test, demo and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing for the tests and everything else: pinned toolchains,
    /// rust-src, bpf-linker, C compiler, Go and Prometheus, speedscope's schema and a
    /// JSON Schema validator, and the tracefs, bpffs and debugfs mounts.
    Setup,
    /// Set up, then build everything in release mode (BPF object included).
    Build,
    /// Set up, then run the whole test suite as root.
    Test,
    /// Set up, build, start the bundled demo service and profile it.
    Demo {
        /// Seconds to record.
        #[arg(long, default_value_t = 5)]
        duration: u32,
    },
    /// Set up, build, and measure the profiler against perf, syscount, bpftrace,
    /// heaptrack and py-spy; writes target/bench/results.json.
    Bench {
        /// Seconds per measured run.
        #[arg(long, default_value_t = 30)]
        duration: u32,
        /// Runs of each configuration; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Run only this part.
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(Purpose::Test),
        Task::Build => {
            setup::run(Purpose::Build)?;
            build()
        }
        Task::Test => {
            setup::run(Purpose::Test)?;
            require_root("the tests load BPF programs")?;
            cargo(&["test", "--release", "--", "--test-threads=1"])
        }
        Task::Demo { duration } => {
            setup::run(Purpose::Build)?;
            build()?;
            demo::run(duration)
        }
        Task::Bench {
            duration,
            runs,
            only,
        } => {
            setup::run(Purpose::Bench)?;
            build()?;
            bench::run(duration, runs, only)
        }
    }
}

/// Builds everything in release mode; the compiler's output goes to target/build.log
/// and is shown only if the build fails.
fn build() -> anyhow::Result<()> {
    let log = root().join("target/build.log");
    println!("build: cargo build --release (output in {})", log.display());
    run_logged(
        &log,
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release"])
            .current_dir(root()),
    )
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The profiler binary that `build` leaves behind.
fn profiler_binary() -> PathBuf {
    root().join("target/release/profiler")
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run_checked(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(root()),
    )
}

/// Runs a command to completion, failing unless it succeeds.
pub fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command to completion with its output appended to `log`, failing unless it
/// succeeds; a failure shows the log's last lines and where the rest is.
pub fn run_logged(log: &Path, command: &mut Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(log.parent().unwrap_or(Path::new(".")))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let status = command
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(30)..] {
            eprintln!("  {line}");
        }
        bail!(
            "{command:?} failed: {status}; its output is in {}",
            log.display()
        );
    }
    Ok(())
}

/// Runs a command and returns its standard output, or None if it fails to run or succeed.
fn output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn require_root(why: &str) -> anyhow::Result<()> {
    let uid = output(Command::new("id").arg("-u")).unwrap_or_default();
    if uid.trim() != "0" {
        bail!("run this as root: {why}");
    }
    Ok(())
}

/// Compiler flags that keep frame pointers, in leaf functions too.
const FRAME_POINTERS: &[&str] = &["-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"];

/// Compiler flags that leave frame pointers out, as distributions build.
const NO_FRAME_POINTERS: &[&str] = &["-fomit-frame-pointer"];

/// Compiles `tests/workloads/NAME.c` with frame pointers into `dir`, and returns the
/// binary's path.
fn compile_workload(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let binary = dir.join(name);
    compile_c(
        &root().join(format!("tests/workloads/{name}.c")),
        &binary,
        FRAME_POINTERS,
    )?;
    Ok(binary)
}

/// Compiles a C program at -O2 with debug information and `frame_pointer_flags`.
fn compile_c(source: &Path, binary: &Path, frame_pointer_flags: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(binary.parent().unwrap())?;
    run_checked(
        Command::new("cc")
            .args(["-O2", "-g", "-pthread"])
            .args(frame_pointer_flags)
            .arg(source)
            .arg("-o")
            .arg(binary),
    )
}
