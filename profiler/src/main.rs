//! The `profiler` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(profiler::cli::run())
}
