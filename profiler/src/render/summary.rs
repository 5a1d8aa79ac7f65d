//! The terminal summary, printed when a recording ends, and the flame graph's labels.

use std::path::PathBuf;

use crate::{
    analyze::FunctionShare,
    record::{Recording, StopReason},
    render::svg::FlameGraphLabels,
};

/// Prints the summary of a recording to stdout.
pub fn print(recording: &Recording, written: &[PathBuf], top: usize) {
    print!("{}", text(recording, written, top));
}

/// The summary as text: what was recorded, the top functions, the hot path, the rules,
/// the profiler's own cost and the files written.
pub fn text(recording: &Recording, written: &[PathBuf], top: usize) -> String {
    let analysis = &recording.analysis;
    let percent = |share: f64| format!("{:5.1}%", share * 100.0);
    let mut out = String::new();
    let threads = recording.threads.len();
    out += &format!(
        "Recorded {} for {:.1} s at {} Hz: {} samples from {} thread{}, {} lost.\n",
        target_label(recording),
        recording.duration.as_secs_f64(),
        recording.frequency_hz,
        analysis.samples,
        threads,
        if threads == 1 { "" } else { "s" },
        recording.lost,
    );
    out += &format!("Stopped: {}.\n", stop_label(recording.stop));
    if recording.lost > 0 {
        out += &format!(
            "Warning: {} samples were lost because the ring buffer was full; shares are computed from the samples kept.\n",
            recording.lost
        );
    }
    if analysis.samples == 0 {
        out += "No on-CPU samples: the target did not run on a CPU while it was recorded.\n";
    } else {
        let mut by_self: Vec<&FunctionShare> = analysis
            .functions
            .iter()
            .filter(|f| f.self_samples > 0)
            .collect();
        by_self.sort_by(|a, b| {
            b.self_samples
                .cmp(&a.self_samples)
                .then_with(|| a.frame.name.cmp(&b.frame.name))
        });
        out += "\nTop functions by self time:\n    self   total  function\n";
        for function in by_self.iter().take(top) {
            out += &format!(
                "  {}  {}  {}\n",
                percent(function.self_share),
                percent(function.total_share),
                display_name(function)
            );
        }
        out += "\nTop functions by total time:\n   total    self  function\n";
        for function in analysis.functions.iter().take(top) {
            out += &format!(
                "  {}  {}  {}\n",
                percent(function.total_share),
                percent(function.self_share),
                display_name(function)
            );
        }
    }
    let threshold = percent(analysis.hotspot_threshold).trim().to_owned();
    if analysis.hotspots.is_empty() {
        out += &format!("\nNo hotspot: no function holds {threshold} or more of on-CPU time.\n");
    } else {
        out += &format!(
            "\nHot path, root to leaf (> marks functions at or above the {threshold} hotspot threshold):\n"
        );
        for step in &analysis.hot_path {
            let mark = if step.hotspot { ">" } else { " " };
            let kernel = if step.frame.kernel { " [kernel]" } else { "" };
            out += &format!(
                "  {mark} {}  {}{kernel}\n",
                percent(step.share),
                step.frame.name
            );
        }
        // The deepest hotspot on the hot path is where the time is really spent; its
        // callers hold at least as much. Hotspots off the path are listed too.
        let deepest = analysis.hot_path.last().map(|step| &step.frame);
        let off_path = analysis.hotspots.iter().filter(|hotspot| {
            !analysis
                .hot_path
                .iter()
                .any(|step| step.frame == hotspot.frame)
        });
        for hotspot in analysis
            .hotspots
            .iter()
            .filter(|hotspot| Some(&hotspot.frame) == deepest)
            .chain(off_path)
        {
            out += &format!(
                "Hotspot: {} holds {} of on-CPU time, at or above the {threshold} limit.\n",
                hotspot.frame.name,
                percent(hotspot.total_share).trim()
            );
        }
    }
    if !analysis.rules.is_empty() {
        out += "\nRules:\n";
        for outcome in &analysis.rules {
            out += &format!(
                "  {}  {}: {} holds {} of on-CPU time, limit {}\n",
                if outcome.fired { "FIRED" } else { "ok   " },
                outcome.rule,
                outcome.rule.function,
                percent(outcome.share).trim(),
                percent(outcome.rule.limit).trim(),
            );
        }
    }
    let cost = &recording.cost;
    let seconds = recording.duration.as_secs_f64().max(1e-9);
    out += &format!(
        "\nProfiler cost: {:.2} ms in BPF over {} runs, {:.2} s of its own CPU ({:.2}% of one core).\n",
        cost.bpf.run_time.as_secs_f64() * 1e3,
        cost.bpf.run_count,
        cost.process_cpu.as_secs_f64(),
        (cost.bpf.run_time + cost.process_cpu).as_secs_f64() / seconds * 100.0,
    );
    let files: Vec<String> = written
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    out += &format!("Wrote {}.\n", files.join(", "));
    out
}

/// Title and subtitle of the flame graph.
pub fn flame_graph_labels(recording: &Recording) -> FlameGraphLabels {
    FlameGraphLabels {
        title: format!("On-CPU flame graph: {}", target_label(recording)),
        subtitle: format!(
            "{} samples at {} Hz over {:.1} s; kernel frames are orange and end in _[k]",
            recording.analysis.samples,
            recording.frequency_hz,
            recording.duration.as_secs_f64()
        ),
        count_name: "samples".to_owned(),
    }
}

fn target_label(recording: &Recording) -> String {
    match recording.targets.as_slice() {
        [one] => format!("{} (pid {})", one.name, one.pid),
        many => format!(
            "{} processes (pids {})",
            many.len(),
            many.iter()
                .map(|t| t.pid.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn stop_label(stop: StopReason) -> String {
    match stop {
        StopReason::Duration => "the duration elapsed".to_owned(),
        StopReason::Interrupted => {
            "interrupted by Ctrl-C (SIGINT); everything gathered was written".to_owned()
        }
        StopReason::Terminated => {
            "terminated by SIGTERM; everything gathered was written".to_owned()
        }
        StopReason::TargetsExited(Some(status)) => format!("the command exited ({status})"),
        StopReason::TargetsExited(None) => {
            "the target exited before the recording's end; everything gathered was written"
                .to_owned()
        }
    }
}

fn display_name(function: &FunctionShare) -> String {
    if function.frame.kernel {
        format!("{} [kernel]", function.frame.name)
    } else {
        function.frame.name.clone()
    }
}
