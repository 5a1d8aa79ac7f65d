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
    Ok(())
}
