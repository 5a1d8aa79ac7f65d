use std::path::Path;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// The nightly that builds the BPF object; `cargo xtask setup` installs the same one,
/// and bpf-linker must be built for its LLVM major.
const EBPF_NIGHTLY: &str = include_str!("../xtask/ebpf-nightly.txt");

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir)
        .parent()
        .context("workspace root")?
        .join("profiler-ebpf");
    let package = Package {
        name: "profiler-ebpf",
        root_dir: ebpf_dir.to_str().context("non-UTF-8 workspace path")?,
        no_default_features: false,
        features: &[],
    };
    aya_build::build_ebpf([package], Toolchain::Custom(EBPF_NIGHTLY.trim()))
}
