//! `cargo xtask demo`: profiles the bundled model-serving demo, as a new user's first run.

use std::{
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::Context as _;

use crate::{FRAME_POINTERS, compile_c, profiler_binary, require_root, root};

pub fn run(duration: u32) -> anyhow::Result<()> {
    require_root("the profiler loads BPF programs")?;
    let server = root().join("target/demo/model-server");
    compile_c(&root().join("demo/model_server.c"), &server, FRAME_POINTERS)?;
    let mut service = Command::new(&server)
        .arg("2")
        .stdout(Stdio::inherit())
        .spawn()?;
    // Let it warm up, as a service under load would be.
    sleep(Duration::from_millis(500));

    println!(
        "demo: profiling model-server for {duration} s: profiler record --pid {} ...",
        service.id()
    );
    let profiled = Command::new(profiler_binary())
        .args([
            "record",
            "--pid",
            &service.id().to_string(),
            "--duration",
            &duration.to_string(),
        ])
        .args([
            "-o",
            "flamegraph.svg",
            "--json",
            "report.json",
            "--fail-on",
            "predict>90%",
        ])
        .current_dir(root())
        .status()
        .context("running the profiler")?;

    let _ = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status();
    service.wait()?;
    println!(
        "demo: open {} in a browser; report.json has the same figures.",
        root().join("flamegraph.svg").display()
    );
    anyhow::ensure!(profiled.success(), "the profiler exited with {profiled}");
    python_demo(duration)
}

/// Profiles the bundled Python model service, whose `Model.predict` dominates, with a
/// gate that fires: `--fail-on 'predict>60%'` ends with exit code 3.
fn python_demo(duration: u32) -> anyhow::Result<()> {
    let mut service = Command::new("python3")
        .arg(root().join("demo/model_service.py"))
        .stdout(Stdio::inherit())
        .spawn()
        .context("starting demo/model_service.py with python3 (CPython 3.11 to 3.13)")?;
    sleep(Duration::from_millis(500));
    println!(
        "demo: profiling the Python model service for {duration} s: profiler record --pid {} --fail-on 'predict>60%' ...",
        service.id()
    );
    let profiled = Command::new(profiler_binary())
        .args([
            "record",
            "--pid",
            &service.id().to_string(),
            "--duration",
            &duration.to_string(),
            "-o",
            "python-flamegraph.svg",
            "--json",
            "python-report.json",
            "--fail-on",
            "predict>60%",
        ])
        .current_dir(root())
        .status()
        .context("running the profiler")?;
    let _ = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status();
    service.wait()?;
    println!(
        "demo: the gate fired as it should (exit code {:?}); open {}.",
        profiled.code(),
        root().join("python-flamegraph.svg").display()
    );
    // 3 is the documented code of a fired rule: here it is the expected outcome.
    anyhow::ensure!(
        profiled.code() == Some(3),
        "the profiler exited with {profiled}, not with the fired gate's code 3"
    );
    Ok(())
}
