//! The machine-readable report, `--json FILE`.
//!
//! Shares are fractions from 0 to 1 of the target's on-CPU samples; `functions` is sorted
//! by `total`, largest first. The README documents every field.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    analyze::FunctionShare,
    record::{Recording, StopReason},
};

/// The report of a recording; `stop_to_svg` is the time from the stop to a written SVG.
pub fn report(recording: &Recording, stop_to_svg: Duration) -> Value {
    let analysis = &recording.analysis;
    let function = |share: &FunctionShare| {
        json!({
            "name": share.frame.name,
            "kernel": share.frame.kernel,
            "self": share.self_share,
            "total": share.total_share,
            "self_samples": share.self_samples,
            "total_samples": share.total_samples,
        })
    };
    json!({
        "duration_s": recording.duration.as_secs_f64(),
        "stop_reason": stop_reason(recording.stop),
        "target": {
            "pids": recording.targets.iter().map(|t| t.pid).collect::<Vec<_>>(),
            "names": recording.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            "command": recording.command,
            "exited": matches!(recording.stop, StopReason::TargetsExited(_)),
        },
        "cpu": {
            "samples": analysis.samples,
            "lost": recording.lost,
            "frequency_hz": recording.frequency_hz,
            "threads": recording.threads.iter().map(|&((pid, tid), samples)| {
                json!({"pid": pid, "tid": tid, "samples": samples})
            }).collect::<Vec<_>>(),
            "functions": analysis.functions.iter().map(function).collect::<Vec<_>>(),
            "hotspots": analysis.hotspots.iter().map(|hotspot| json!({
                "name": hotspot.frame.name,
                "total": hotspot.total_share,
                "threshold": analysis.hotspot_threshold,
            })).collect::<Vec<_>>(),
            "hot_path": analysis.hot_path.iter().map(|step| json!({
                "name": step.frame.name,
                "kernel": step.frame.kernel,
                "total": step.share,
                "hotspot": step.hotspot,
            })).collect::<Vec<_>>(),
        },
        "rules": analysis.rules.iter().map(|outcome| json!({
            "rule": outcome.rule.text,
            "share": outcome.share,
            "limit": outcome.rule.limit,
            "fired": outcome.fired,
        })).collect::<Vec<_>>(),
        "overhead": {
            "bpf_run_time_ns": recording.cost.bpf.run_time.as_nanos() as u64,
            "bpf_run_count": recording.cost.bpf.run_count,
            "profiler_cpu_s": recording.cost.process_cpu.as_secs_f64(),
            "stop_to_svg_ms": stop_to_svg.as_secs_f64() * 1e3,
        },
    })
}

fn stop_reason(stop: StopReason) -> Value {
    match stop {
        StopReason::Duration => json!("duration"),
        StopReason::Interrupted => json!("sigint"),
        StopReason::Terminated => json!("sigterm"),
        StopReason::TargetsExited(_) => json!("targets_exited"),
    }
}
