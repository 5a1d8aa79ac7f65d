//! `cargo xtask setup`: installs what is missing, and nothing that is already there.
//!
//! Versions are pinned here and in rust-toolchain.toml, so that a fresh machine gets
//! exactly what the last green build had.

use std::{fs, path::Path, process::Command};

use anyhow::Context as _;

use crate::{output, root, run_checked};

/// The bpf-linker release; it loads the LLVM of whichever rustc runs it, so it works with
/// the pinned nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian packages the build and the tests need, by the command that shows each is there.
/// The tests check the profiler's outputs with the real consumers: `go tool pprof` reads
/// its pprof profiles and a Prometheus server scrapes its metrics, both at the versions
/// of Debian 12 pinned here.
const PACKAGES: &[(&str, &str)] = &[
    ("cc", "gcc"),
    ("setpriv", "util-linux"),
    ("go", "golang-go=2:1.19~1"),
    ("prometheus", "prometheus=2.42.0+ds-5+deb12u1"),
];

/// Kernel filesystems the probes use, with where they go.
const MOUNTS: &[(&str, &str)] = &[
    ("tracefs", "/sys/kernel/tracing"),
    ("bpf", "/sys/fs/bpf"),
    ("debugfs", "/sys/kernel/debug"),
];

pub fn run() -> anyhow::Result<()> {
    ebpf_nightly()?;
    bpf_linker()?;
    packages()?;
    mounts();
    Ok(())
}

/// The nightly named in xtask/ebpf-nightly.txt, with rust-src for `-Z build-std=core`.
fn ebpf_nightly() -> anyhow::Result<()> {
    let nightly = fs::read_to_string(root().join("xtask/ebpf-nightly.txt"))?;
    let nightly = nightly.trim();
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{nightly}"))
            .args(["--print", "sysroot"]),
    );
    let has_rust_src = sysroot.is_some_and(|sysroot| {
        Path::new(sysroot.trim())
            .join("lib/rustlib/src/rust/library/core")
            .exists()
    });
    if !has_rust_src {
        println!("setup: installing {nightly} with rust-src");
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            nightly,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let installed = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !installed.contains(BPF_LINKER_VERSION) {
        println!("setup: installing bpf-linker {BPF_LINKER_VERSION}");
        run_checked(
            Command::new("cargo")
                .args([
                    "install",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--locked",
                    "--force",
                ])
                // Outside the workspace, so that its rust-toolchain.toml does not apply.
                .current_dir(std::env::temp_dir()),
        )?;
    }
    Ok(())
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(command, _)| {
            output(Command::new("sh").args(["-c", &format!("command -v {command}")])).is_none()
        })
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    Ok(())
}

/// Installs Debian packages; `apt-get update` first, since a fresh machine has no lists.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    println!("setup: installing {}", packages.join(" "));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install")
}

/// Mounts what a fresh boot may lack. A failure is only reported: the profiler itself
/// says which feature is missing if it needs it.
fn mounts() {
    let mounted = fs::read_to_string("/proc/mounts").unwrap_or_default();
    for (kind, target) in MOUNTS {
        let present = mounted.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next();
            fields.next() == Some(target) && fields.next() == Some(kind)
        });
        if !present {
            println!("setup: mounting {kind} at {target}");
            if let Err(error) = run_checked(Command::new("mount").args(["-t", kind, kind, target]))
            {
                eprintln!("setup: warning: {error}");
            }
        }
    }
}
