//! `cargo xtask setup`: installs what is missing, and nothing that is already there;
//! each task asks for what it needs and no more ([`Purpose`]).
//!
//! Versions are pinned here and in rust-toolchain.toml, so that a fresh machine gets
//! exactly what the last green build had. Each step prints one line; what the
//! installers print goes to `target/setup.log`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{bench_unwind::which_python, output, root, run_logged};

/// What the set-up is for. Each purpose needs what [`Purpose::Build`] installs, and its
/// own on top.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Building the profiler and running the demo.
    Build,
    /// Running the test suite, which checks the outputs with their real consumers.
    Test,
    /// Running `cargo xtask bench`, which measures the peer tools beside the profiler.
    Bench,
}

impl Purpose {
    fn needs(self, installed_for: Purpose) -> bool {
        installed_for == Purpose::Build || installed_for == self
    }
}

/// The speedscope release whose file-format schema the tests check `--speedscope`
/// files against, from the npm registry, with the SHA-256 of its tarball.
const SPEEDSCOPE: (&str, &str) = (
    "1.25.0",
    "2831f1e0d26df914b477e522d78b8485511495a6af81a0b88158f8b48f9e0d03",
);

/// The JSON Schema validator the tests use, from PyPI.
const JSONSCHEMA_VERSION: &str = "4.23.0";

/// Where the tests find what [`Purpose::Test`] installs beside the packages.
pub fn test_deps() -> PathBuf {
    root().join("target/test-deps")
}

/// The log of what the installers printed.
fn setup_log() -> PathBuf {
    root().join("target/setup.log")
}

/// The bpf-linker release; it loads the LLVM of whichever rustc runs it, so it works with
/// the pinned nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.10.3";

/// Debian packages, by the command that shows each is there, and what needs them. The
/// tests check the profiler's outputs with the real consumers: `go tool pprof` reads
/// its pprof profiles and a Prometheus server scrapes its metrics, both at the versions
/// of Debian 12 pinned here.
const PACKAGES: &[(&str, &str, Purpose)] = &[
    ("cc", "gcc", Purpose::Build),
    ("setpriv", "util-linux", Purpose::Test),
    ("go", "golang-go=2:1.19~1", Purpose::Test),
    // The JIT runtimes the unwinding tests profile, where the machine has none.
    ("node", "nodejs=18.20.4+dfsg-1~deb12u2", Purpose::Test),
    (
        "jcmd",
        "openjdk-17-jdk-headless=17.0.19+10-1~deb12u2",
        Purpose::Test,
    ),
    // Debian's own CPython, linked statically and stripped, beside pyenv's shared ones.
    (
        "/usr/bin/python3.11",
        "python3.11-minimal=3.11.2-6+deb12u6",
        Purpose::Test,
    ),
    ("tmux", "tmux=3.3a-3", Purpose::Test),
    (
        "prometheus",
        "prometheus=2.42.0+ds-5+deb12u1",
        Purpose::Test,
    ),
    ("perf", "linux-perf=6.1.192-3", Purpose::Bench),
    ("go", "golang-go=2:1.19~1", Purpose::Bench),
    ("node", "nodejs=18.20.4+dfsg-1~deb12u2", Purpose::Bench),
    (
        "jcmd",
        "openjdk-17-jdk-headless=17.0.19+10-1~deb12u2",
        Purpose::Bench,
    ),
    ("/usr/bin/time", "time=1.9-0.2", Purpose::Bench),
    ("wrk", "wrk=4.1.0-3+b2", Purpose::Bench),
    ("tmux", "tmux=3.3a-3", Purpose::Bench),
    (
        "/usr/sbin/syscount",
        "libbpf-tools=0.26.0+ds-1",
        Purpose::Bench,
    ),
    (
        "redis-server",
        "redis-server=5:7.0.15-1~deb12u10",
        Purpose::Bench,
    ),
    (
        "redis-benchmark",
        "redis-tools=5:7.0.15-1~deb12u10",
        Purpose::Bench,
    ),
    ("bpftrace", "bpftrace=0.17.0-1", Purpose::Bench),
    ("heaptrack", "heaptrack=1.4.0-2", Purpose::Bench),
];

/// Kernel filesystems the probes use, with where they go.
const MOUNTS: &[(&str, &str)] = &[
    ("tracefs", "/sys/kernel/tracing"),
    ("bpf", "/sys/fs/bpf"),
    ("debugfs", "/sys/kernel/debug"),
];

pub fn run(purpose: Purpose) -> anyhow::Result<()> {
    ebpf_nightly()?;
    bpf_linker()?;
    packages(purpose)?;
    if purpose == Purpose::Test {
        speedscope_schema()?;
        python_venv(
            &which_python(),
            &test_deps().join("venv"),
            &[format!("jsonschema=={JSONSCHEMA_VERSION}")],
        )?;
        numpy_venvs()?;
    }
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
        run_logged(
            &setup_log(),
            Command::new("rustup").args([
                "toolchain",
                "install",
                nightly,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
        )?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let installed = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !installed.contains(BPF_LINKER_VERSION) {
        println!("setup: installing bpf-linker {BPF_LINKER_VERSION}");
        run_logged(
            &setup_log(),
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

fn packages(purpose: Purpose) -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(command, _, needed_for)| {
            purpose.needs(*needed_for)
                && output(Command::new("sh").args(["-c", &format!("command -v {command}")]))
                    .is_none()
        })
        .map(|(_, package, _)| *package)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    Ok(())
}

/// Installs Debian packages; `apt-get update` first, since a fresh machine has no lists.
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    println!("setup: installing {}", packages.join(" "));
    run_logged(
        &setup_log(),
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    run_logged(
        &setup_log(),
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
            if let Err(error) = run_logged(
                &setup_log(),
                Command::new("mount").args(["-t", kind, kind, target]),
            ) {
                eprintln!("setup: warning: {error}");
            }
        }
    }
}

/// The CPython versions the Python tests run on, from pyenv.
const TEST_PYTHONS: [&str; 4] = ["3.10", "3.11", "3.12", "3.13"];

/// numpy for the Python tests' workloads that allocate through it: 2.2 is the last
/// release for all of 3.10 to 3.13.
const NUMPY: &str = "numpy==2.2.6";

/// A venv with numpy per pyenv CPython the tests run on, at `test_deps()/numpy-3.X`.
/// A version pyenv does not have is left out: its tests say what is missing.
fn numpy_venvs() -> anyhow::Result<()> {
    for version in TEST_PYTHONS {
        if let Some(python) = pyenv_python(version) {
            let venv = test_deps().join(format!("numpy-{version}"));
            python_venv(&python, &venv, &[NUMPY.to_owned()])?;
        }
    }
    Ok(())
}

/// The newest pyenv CPython of `version` (`3.12`), under `$PYENV_ROOT`, else
/// `/root/.pyenv`.
fn pyenv_python(version: &str) -> Option<PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let mut installed: Vec<PathBuf> = fs::read_dir(root.join("versions"))
        .ok()?
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
    installed.pop()
}

/// A virtual environment of `python` at `venv` with `packages` (pinned, as pip takes
/// them), installed from PyPI unless they are already there.
pub fn python_venv(python: &Path, venv: &Path, packages: &[String]) -> anyhow::Result<()> {
    let marker = venv.join("installed.txt");
    let wanted = packages.join(" ");
    if fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    println!(
        "setup: installing {wanted} from PyPI into {}",
        venv.display()
    );
    run_logged(
        &setup_log(),
        Command::new(python).args(["-m", "venv"]).arg(venv),
    )?;
    run_logged(
        &setup_log(),
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(packages),
    )?;
    fs::write(&marker, &wanted)?;
    Ok(())
}

/// speedscope's file-format schema, from the pinned npm tarball, checked against its
/// hash, at `test_deps()/speedscope-schema.json`.
fn speedscope_schema() -> anyhow::Result<()> {
    let (version, sha256) = SPEEDSCOPE;
    let schema = test_deps().join("speedscope-schema.json");
    let marker = test_deps().join("speedscope-version.txt");
    if schema.exists() && fs::read_to_string(&marker).ok().as_deref() == Some(version) {
        return Ok(());
    }
    println!("setup: fetching speedscope {version}'s file-format schema from the npm registry");
    fs::create_dir_all(test_deps())?;
    // Python's standard library fetches, hashes and unpacks: no curl or npm needed.
    let fetch = format!(
        r#"
import hashlib, io, sys, tarfile, urllib.request
data = urllib.request.urlopen("https://registry.npmjs.org/speedscope/-/speedscope-{version}.tgz").read()
if hashlib.sha256(data).hexdigest() != "{sha256}":
    sys.exit("speedscope-{version}.tgz: unexpected SHA-256")
member = tarfile.open(fileobj=io.BytesIO(data)).extractfile("package/dist/release/file-format-schema.json")
open(sys.argv[1], "wb").write(member.read())
"#
    );
    run_logged(
        &setup_log(),
        Command::new(which_python())
            .args(["-c", &fetch])
            .arg(&schema),
    )
    .context("fetching speedscope's schema")?;
    fs::write(&marker, version)?;
    Ok(())
}
