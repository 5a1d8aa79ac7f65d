//! `cargo xtask demo`: profiles the bundled model-serving demos, as a new user's first
//! run: a C service, then a Python one.

use std::{
    process::{Command, ExitStatus, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::Context as _;

use crate::{FRAME_POINTERS, compile_c, profiler_binary, require_root, root};

pub fn run(duration: u32) -> anyhow::Result<()> {
    require_root("the profiler loads BPF programs")?;
    let server = root().join("target/demo/model-server");
    compile_c(&root().join("demo/model_server.c"), &server, FRAME_POINTERS)?;
    let mut service = Command::new(&server);
    service.arg("2");
    let profiled = profile_service(
        "model-server",
        &mut service,
        duration,
        "predict>90%",
        ("flamegraph.svg", "report.json"),
    )?;
    anyhow::ensure!(profiled.success(), "the profiler exited with {profiled}");
    python_demo(duration)
}

/// Profiles the bundled Python model service, whose `Model.predict` dominates, with a
/// gate that fires: `--fail-on 'predict>60%'` ends with exit code 3.
fn python_demo(duration: u32) -> anyhow::Result<()> {
    let mut service = Command::new("python3");
    service.arg(root().join("demo/model_service.py"));
    let profiled = profile_service(
        "the Python model service (python3, CPython 3.10 to 3.13)",
        &mut service,
        duration,
        "predict>60%",
        ("python-flamegraph.svg", "python-report.json"),
    )?;
    // 3 is the documented code of a fired rule: here it is the expected outcome.
    anyhow::ensure!(
        profiled.code() == Some(3),
        "the profiler exited with {profiled}, not with the fired gate's code 3"
    );
    println!("demo: the gate fired, as it should (exit code 3).");
    Ok(())
}

/// Starts `service`, lets it warm up as a service under load would be, records it for
/// `duration` seconds with the gate `rule` into the flame graph and report `outputs`,
/// stops it with SIGTERM (it then prints its own measure of its phases) and returns how
/// the profiler exited.
fn profile_service(
    name: &str,
    service: &mut Command,
    duration: u32,
    rule: &str,
    (svg, json): (&str, &str),
) -> anyhow::Result<ExitStatus> {
    let mut service = service
        .stdout(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    sleep(Duration::from_millis(500));
    println!(
        "demo: profiling {name} for {duration} s: profiler record --pid {} --fail-on '{rule}' ...",
        service.id()
    );
    let profiled = Command::new(profiler_binary())
        .args(["record", "--pid", &service.id().to_string()])
        .args(["--duration", &duration.to_string()])
        .args(["-o", svg, "--json", json, "--fail-on", rule])
        .current_dir(root())
        .status()
        .context("running the profiler")?;
    let _ = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status();
    service.wait()?;
    println!(
        "demo: open {} in a browser; {json} has the same figures.",
        root().join(svg).display()
    );
    Ok(profiled)
}
