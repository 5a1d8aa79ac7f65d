//! The slowdown part of `cargo xtask bench`: what sampling at 999 Hz costs the thread it
//! interrupts, ours against `perf record -g`, measured so that the difference can be
//! told from zero, or with the smallest difference this machine resolves.
//!
//! A service's throughput cannot tell them apart here: with the tool's own work on the
//! same CPUs, requests per second spread ±6 % between rounds. So the target is one
//! thread (`tests/workloads/spin_rate.c`, 24 frames deep) pinned to the last CPU and
//! the tools to the first: what a sampler costs the target shows as wall time per
//! iteration of its loop, and the tools' own work does not. Rounds interleave the
//! three cases; each round's slowdowns are taken against that round's unsampled run,
//! and the difference between the two tools is averaged over the rounds with its 95 %
//! confidence interval.
//!
//! That whole-run measure cannot resolve a few points here: the loop runs at one of two
//! speeds a factor of two apart, as the host's load comes and goes, switching from one
//! 100 ms to the next. So the bench also pools each case's 100 ms windows over the
//! rounds and compares the windows of the fast speed (within [`FAST_SPEED_BAND`] of
//! the fastest window of the bench), whose spread is a few percent.

use std::{path::Path, process::Command};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{bench_syscalls::run_loop, compile_workload, profiler_binary};

const FREQUENCY: &str = "999";
const SECONDS: &str = "3";
const DEPTH: &str = "24";

/// Windows this much slower than the bench's fastest still run at the fast speed: its
/// windows spread by about 5 % and a sampler slows them by a few, while the slow
/// speed is twice as slow.
const FAST_SPEED_BAND: f64 = 1.10;

/// The cases of a round, in the order they run.
#[derive(Clone, Copy)]
enum Sampler {
    None,
    Profiler,
    PerfFramePointers,
}

impl Sampler {
    const ALL: [Sampler; 3] = [Sampler::None, Sampler::Profiler, Sampler::PerfFramePointers];

    fn label(self) -> &'static str {
        match self {
            Sampler::None => "unsampled",
            Sampler::Profiler => "profiler -F 999",
            Sampler::PerfFramePointers => "perf record -g -F 999",
        }
    }
}

/// Runs `rounds` interleaved rounds and returns the results section.
pub fn run(dir: &Path, rounds: u32) -> anyhow::Result<Value> {
    let workload = compile_workload(dir, "spin_rate")?;
    let cpus = std::thread::available_parallelism()?.get();
    anyhow::ensure!(
        cpus >= 2,
        "the slowdown bench pins the target and the tools apart: it needs 2 CPUs"
    );
    let target_cpu = (cpus - 1).to_string();
    let mut rounds_measured: Vec<[SpinRate; 3]> = Vec::new();
    for round in 1..=rounds {
        let mut measured: [SpinRate; 3] = Default::default();
        for (index, sampler) in Sampler::ALL.into_iter().enumerate() {
            println!(
                "bench: slowdown, round {round} of {rounds}: {}",
                sampler.label()
            );
            measured[index] = spin_under(sampler, &workload, &target_cpu, dir)?;
        }
        rounds_measured.push(measured);
    }
    Ok(json!({
        "workload": format!("tests/workloads/spin_rate.c, one thread {DEPTH} frames deep pinned to CPU {target_cpu}, the tools to CPU 0; {SECONDS} s a run, {rounds} interleaved rounds"),
        "whole_run": compare_rounds(&rounds_measured),
        "fast_speed_windows": compare_fast_windows(&rounds_measured),
        "rounds_ns_per_million": rounds_measured.iter().map(|round| {
            Sampler::ALL.iter().zip(round).map(|(sampler, rate)| (sampler.label().to_owned(), json!(rate.whole_run))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
    }))
}

/// What spin_rate printed: wall nanoseconds per million iterations, over its run and
/// over each 100 ms window.
#[derive(Clone, Default)]
struct SpinRate {
    whole_run: f64,
    windows: Vec<f64>,
}

/// Both tools' slowdowns over whole runs, each round's against its unsampled run, and
/// their difference, with 95 % intervals over the rounds.
fn compare_rounds(rounds: &[[SpinRate; 3]]) -> Value {
    let slowdown = |case: usize| -> Vec<f64> {
        rounds
            .iter()
            .map(|round| (round[case].whole_run / round[0].whole_run - 1.0) * 100.0)
            .collect()
    };
    let (ours, perf) = (slowdown(1), slowdown(2));
    let difference: Vec<f64> = ours.iter().zip(&perf).map(|(a, b)| a - b).collect();
    comparison(
        mean_and_half_width(&ours),
        mean_and_half_width(&perf),
        mean_and_half_width(&difference),
    )
}

/// Both tools' slowdowns and their difference, each a mean and the half-width of its
/// 95 % interval.
fn comparison(ours: (f64, f64), perf: (f64, f64), difference: (f64, f64)) -> Value {
    json!({
        "profiler_slowdown_percent": ours.0,
        "profiler_slowdown_ci95_percent": ours.1,
        "perf_slowdown_percent": perf.0,
        "perf_slowdown_ci95_percent": perf.1,
        "difference_points": difference.0,
        "difference_ci95_points": difference.1,
        // Whether the interval around the difference leaves out zero; if not, the
        // half-width is the smallest difference these rounds could have shown.
        "difference_resolved": difference.0.abs() > difference.1,
    })
}

/// Both tools' slowdowns over the windows of the fast speed, pooled over the rounds,
/// against the unsampled ones, and their difference, with 95 % intervals (normal, over
/// the windows).
fn compare_fast_windows(rounds: &[[SpinRate; 3]]) -> Value {
    let fastest = rounds
        .iter()
        .flatten()
        .flat_map(|rate| rate.windows.iter().copied())
        .fold(f64::INFINITY, f64::min);
    // Each case's fast windows: their mean, the half-width of its 95 % interval, and
    // how many there were.
    let fast = |case: usize| -> (f64, f64, usize) {
        let windows: Vec<f64> = rounds
            .iter()
            .flat_map(|round| round[case].windows.iter().copied())
            .filter(|&window| window <= fastest * FAST_SPEED_BAND)
            .collect();
        let (mean, half) = mean_and_half_width(&windows);
        (mean, half, windows.len())
    };
    let [unsampled, ours, perf] = [fast(0), fast(1), fast(2)];
    // Slowdown in percent and its half-width, to first order.
    let slowdown = |(mean, half, _): (f64, f64, usize)| -> (f64, f64) {
        let ratio = mean / unsampled.0;
        let relative = ((half / mean).powi(2) + (unsampled.1 / unsampled.0).powi(2)).sqrt();
        ((ratio - 1.0) * 100.0, ratio * relative * 100.0)
    };
    let (ours_slowdown, perf_slowdown) = (slowdown(ours), slowdown(perf));
    // The unsampled windows are common to both slowdowns; counting their spread twice
    // only widens the interval.
    let difference = (
        ours_slowdown.0 - perf_slowdown.0,
        (ours_slowdown.1.powi(2) + perf_slowdown.1.powi(2)).sqrt(),
    );
    let mut compared = comparison(ours_slowdown, perf_slowdown, difference);
    compared["fastest_window_ns_per_million"] = json!(fastest);
    compared["windows_kept"] =
        json!({"unsampled": unsampled.2, "profiler": ours.2, "perf": perf.2});
    compared
}

/// The workload's wall nanoseconds per million iterations, over its run and over each
/// window, under `sampler`.
fn spin_under(
    sampler: Sampler,
    workload: &Path,
    target_cpu: &str,
    dir: &Path,
) -> anyhow::Result<SpinRate> {
    let mut command = Command::new("taskset");
    command.args(["-c", "0"]);
    match sampler {
        Sampler::None => {}
        Sampler::Profiler => {
            command
                .arg(profiler_binary())
                .args(["record", "-F", FREQUENCY, "-o"])
                .arg(dir.join("slowdown.svg"))
                .arg("--");
        }
        Sampler::PerfFramePointers => {
            command
                .args(["perf", "record", "-q", "-g", "-F", FREQUENCY, "-o"])
                .arg(dir.join("slowdown-perf.data"))
                .arg("--");
        }
    }
    command
        .args(["taskset", "-c", target_cpu])
        .arg(workload)
        .args([SECONDS, DEPTH]);
    let output = run_loop(&mut command)?;
    let whole_run = output
        .lines()
        .find_map(|line| line.trim().parse().ok())
        .with_context(|| format!("spin_rate printed no rate: {output}"))?;
    let windows = output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("window ")?.parse().ok())
        .collect();
    Ok(SpinRate { whole_run, windows })
}

/// The mean of `values` and the half-width of its 95 % confidence interval (Student's
/// t, as the rounds are few).
fn mean_and_half_width(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::INFINITY);
    }
    let variance = values
        .iter()
        .map(|value| (value - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    (
        mean,
        t_quantile_975(values.len() - 1) * (variance / n).sqrt(),
    )
}

/// The 97.5 % quantile of Student's t with `degrees` degrees of freedom.
fn t_quantile_975(degrees: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    TABLE.get(degrees.wrapping_sub(1)).copied().unwrap_or(1.96)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_narrows_with_more_rounds_of_the_same_spread() {
        let few = mean_and_half_width(&[1.0, 3.0, 1.0, 3.0]);
        let many = mean_and_half_width(&[1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0]);
        assert_eq!(few.0, 2.0);
        assert_eq!(many.0, 2.0);
        assert!(many.1 < few.1);
        // Four values of standard deviation 1.155: 3.182 * 1.155 / 2.
        assert!((few.1 - 1.8376).abs() < 1e-3, "{}", few.1);
    }
}
