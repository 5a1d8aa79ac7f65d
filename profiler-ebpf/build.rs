use which::which;

/// Rebuilds the BPF object when bpf-linker changes, for example after `cargo xtask setup`
/// installed another version.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
    // Kept global, so that the verifier checks it once by itself (see its comment).
    println!("cargo:rustc-link-arg=--export=find_unwind_row");
}
