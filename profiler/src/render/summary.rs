//! The terminal summary, printed when a report ends, and the flame graph's labels.

use std::{io::Write as _, path::PathBuf};

use crate::{
    aggregate::UnwindMethod,
    analyze::{Analysis, Check, FunctionShare, LockTime, RuleOutcome},
    profile::{Frame, LockState},
    render::svg::FlameGraphLabels,
    report::{Report, StackQuality, StopReason, TargetProcess},
    runtime::python::PythonReport,
};

/// Prints the summary of a report to stdout.
pub fn print(report: &Report, written: &[PathBuf], top: usize) {
    // A closed stdout (`| head`) must not fail the report: the files are written.
    let _ = std::io::stdout().write_all(text(report, written, top).as_bytes());
}

/// The one-line reason for the report's non-zero exit code, if there is one.
pub fn exit_reason(report: &Report) -> Option<String> {
    let fired: Vec<String> = report
        .analysis
        .rules
        .iter()
        .filter(|outcome| outcome.fired)
        .map(|outcome| {
            if outcome.matched {
                format!("{} ({})", outcome.rule, observed(outcome))
            } else {
                format!("{} (matched nothing)", outcome.rule)
            }
        })
        .collect();
    if !fired.is_empty() {
        return Some(format!("rule fired: {}", fired.join(", ")));
    }
    match report.stop {
        StopReason::Interrupted => Some("interrupted by SIGINT; outputs written".to_owned()),
        StopReason::Terminated => Some("stopped by SIGTERM; outputs written".to_owned()),
        StopReason::TargetsExited(None) => {
            Some("the target exited before the recording's end; outputs written".to_owned())
        }
        StopReason::TargetsExited(Some(_)) | StopReason::Duration | StopReason::Quit => None,
    }
}

/// The summary as text: what was recorded; for each kind of event its tables; the rules,
/// what was lost, the profiler's own cost and the files written.
pub fn text(report: &Report, written: &[PathBuf], top: usize) -> String {
    let events = report.probes.events;
    let mut out = format!(
        "Recorded {} for {:.1} s ({}).\nStopped: {}.\n",
        target_label(report),
        report.duration.as_secs_f64(),
        events,
        stop_label(report.stop)
    );
    if events.cpu {
        out += &cpu_text(report, top);
    }
    if events.syscalls {
        out += &syscalls_text(report, top);
    }
    if events.io {
        out += &io_text(report);
    }
    if events.offcpu {
        out += &offcpu_text(report, top);
    }
    if events.cpu {
        out += &gil_text(report);
    }
    if events.alloc {
        out += &leaks_text(report, top);
    }
    out += &rules_text(report);
    out += &losses_text(report);
    out += &cost_text(report);
    let files: Vec<String> = written
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    out += &format!("Wrote {}.\n", files.join(", "));
    out
}

fn cost_text(report: &Report) -> String {
    let cost = &report.cost;
    let seconds = report.duration.as_secs_f64().max(1e-9);
    let own = cost.process_cpu.as_secs_f64();
    let recording = match cost.bpf {
        Some(bpf) => format!(
            "\nProfiler cost: {:.2} ms in BPF over {} runs, {own:.2} s of its own CPU ({:.2}% of one core)",
            bpf.run_time.as_secs_f64() * 1e3,
            bpf.run_count,
            (bpf.run_time.as_secs_f64() + own) / seconds * 100.0,
        ),
        None => format!(
            "\nProfiler cost: {own:.2} s of its own CPU ({:.2}% of one core; BPF time is not measured {})",
            own / seconds * 100.0,
            if report.probes.events.syscalls {
                "while syscalls are traced"
            } else {
                "without the kernel's run-time statistics, which need CAP_SYS_ADMIN"
            },
        ),
    };
    format!(
        "{recording}, {:.2} s of it to start in {:.0} ms, {:.1} MiB of kernel memory; then {:.0} ms to name the stacks of {} process{}.\n",
        cost.start_cpu.as_secs_f64(),
        cost.start_wall.as_secs_f64() * 1e3,
        cost.kernel_memory_bytes as f64 / f64::from(1 << 20),
        cost.naming.as_secs_f64() * 1e3,
        cost.named_processes,
        if cost.named_processes == 1 { "" } else { "es" }
    )
}

fn percent(share: f64) -> String {
    format!("{:5.1}%", share * 100.0)
}

/// A duration in the unit that reads best: `87 ns`, `1.23 us`, `20.1 ms`, `1.50 s`.
pub fn duration(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} us", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// What a rule measured, in its own unit.
pub fn observed(outcome: &RuleOutcome) -> String {
    match outcome.rule.check {
        Check::CpuShare { .. } => percent(outcome.observed).trim().to_owned(),
        Check::Latency { .. } | Check::BlockIo { .. } => duration(outcome.observed as u64),
        Check::Leak { .. } => bytes(outcome.observed as u64),
    }
}

/// A size in the binary unit that reads best: `512 B`, `1.2 KiB`, `3.4 MiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn leaks_text(report: &Report, top: usize) -> String {
    let leaks = &report.leaks;
    let sampling = match report.probes.alloc_sample_bytes {
        0 => String::new(),
        mean => format!(", sampled every {} on average", bytes(mean)),
    };
    let mut out = format!(
        "
Allocations: {} calls, {} frees{sampling}; {} in {} blocks still live, {} lost.
",
        leaks.alloc_calls,
        leaks.free_calls,
        bytes(leaks.outstanding_bytes),
        leaks.outstanding_count,
        report.losses.alloc(),
    );
    if leaks.candidates.is_empty() {
        out += &format!(
            "No leak candidates: nothing allocated during the report is still live after {:.1} s.
",
            leaks.min_age.as_secs_f64()
        );
        return out;
    }
    out += &format!(
        "Leak candidates (live for {:.1} s or more), by bytes held:
",
        leaks.min_age.as_secs_f64()
    );
    for candidate in leaks.candidates.iter().take(top) {
        let growth = candidate
            .growth_per_s
            .map(|rate| format!(", growing {}/s", bytes(rate.round() as u64)))
            .unwrap_or_default();
        out += &format!(
            "  {}: {} in {} block{}, oldest {:.1} s{growth}
",
            candidate.function,
            bytes(candidate.bytes),
            candidate.count,
            if candidate.count == 1 { "" } else { "s" },
            candidate.oldest_age.as_secs_f64(),
        );
    }
    out
}

/// The Python interpreters walked, how their CPU samples' Python stacks ended, and the
/// interpreters that could not be walked.
fn python_text(python: &PythonReport) -> String {
    let mut out = String::new();
    if !python.interpreters.is_empty() {
        let found: Vec<String> = python
            .interpreters
            .iter()
            .map(|found| format!("CPython {} (pid {})", found.version, found.pid))
            .collect();
        let total: u64 = python.ends.values().sum();
        let root = python.ends.get("root").copied().unwrap_or(0);
        out += &format!("Python frames: {}", found.join(", "));
        if total > 0 {
            out += &format!(
                "; {} of samples' Python stacks reached their first frame",
                percent(root as f64 / total as f64).trim()
            );
        }
        let unresolved: u64 = python.unresolved.values().sum();
        if unresolved > 0 {
            out += &format!("; {unresolved} code objects freed before they were named");
        }
        out += ".
";
    }
    for notice in &python.notices {
        out += &format!(
            "Python: {notice}.
"
        );
    }
    out
}

/// How many CPU samples' user stacks reached the process's root, why the others
/// stopped short, and what the unwind tables cost.
fn stack_quality_text(quality: &StackQuality) -> String {
    let Some(complete) = quality.cpu.complete_share() else {
        return String::new();
    };
    let truncated: Vec<String> = quality
        .cpu
        .truncated()
        .filter(|(_, count)| *count > 0)
        .map(|(reason, count)| format!("{count} {}", reason.replace('_', " ")))
        .collect();
    let mut out = format!(
        "User stacks: {} reached the process's root",
        percent(complete).trim()
    );
    if !truncated.is_empty() {
        out += &format!("; stopped short: {}", truncated.join(", "));
    }
    let hybrid = quality.cpu.method_count(UnwindMethod::Hybrid);
    if hybrid > 0 {
        out += &format!(
            "; {} walked by frame pointers across code without rows",
            percent(hybrid as f64 / quality.cpu.total() as f64).trim()
        );
    }
    let tables = &quality.tables;
    out += &format!(
        ".\nUnwind tables: {} files, {} rows, {:.1} MiB of kernel memory, built in {} ms",
        tables.files,
        tables.rows,
        tables.kernel_bytes as f64 / f64::from(1 << 20),
        tables.build_time.as_millis(),
    );
    if !tables.failed_files.is_empty() {
        let failed: Vec<String> = tables
            .failed_files
            .iter()
            .map(|(reason, count)| format!("{count} {}", reason.replace('_', " ")))
            .collect();
        out += &format!("; files without one: {}", failed.join(", "));
    }
    out += ".\n";
    for hint in &quality.jit_hints {
        out += &format!("JIT: {hint}.\n");
    }
    out
}

/// Each process's part of the samples, when there are several.
fn processes_text(report: &Report, samples: u64) -> String {
    let processes = report.processes();
    if processes.len() < 2 {
        return String::new();
    }
    let mut out = format!(
        "Processes: {}\n   share  samples  threads  process\n",
        processes.len()
    );
    for process in processes {
        out += &format!(
            "{:>8} {:>8} {:>8}  {} [{}]\n",
            percent(process.samples as f64 / samples.max(1) as f64),
            process.samples,
            process.threads,
            process.name,
            process.pid
        );
    }
    out
}

fn cpu_text(report: &Report, top: usize) -> String {
    let analysis = &report.analysis;
    let threads = report.threads.len();
    let lost = report.losses.cpu();
    let stolen = match report.steal_samples_left_out {
        0 => String::new(),
        left_out => format!("; {left_out} left out for time the hypervisor stole"),
    };
    let mut out = format!(
        "\nOn-CPU at {} Hz: {} samples from {} thread{}, {} lost{stolen}.\n",
        report.probes.frequency_hz,
        analysis.samples,
        threads,
        if threads == 1 { "" } else { "s" },
        lost,
    );
    if lost > 0 {
        out += &format!(
            "Warning: {lost} samples were lost because the ring buffer was full; shares are computed from the samples kept.\n",
        );
    }
    out += &processes_text(report, analysis.samples);
    out += &stack_quality_text(&report.stack_quality);
    out += &python_text(&report.python);
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
                display_name(&function.frame)
            );
        }
        // Entry points hold nearly everything and say nothing; the hot path shows them.
        out +=
            "\nTop functions by total time (entry points left out):\n   total    self  function\n";
        let working = analysis.functions.iter().filter(|function| {
            function.frame.process.is_none() && !function.frame.is_entry_point()
        });
        for function in working.take(top) {
            out += &format!(
                "  {}  {}  {}\n",
                percent(function.total_share),
                percent(function.self_share),
                display_name(&function.frame)
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
            out += &hot_lines_text(analysis, &hotspot.frame);
        }
    }
    out
}

/// The hottest lines of `frame`, if the analysis has them.
fn hot_lines_text(analysis: &Analysis, frame: &Frame) -> String {
    let lines: Vec<_> = analysis
        .hot_lines
        .iter()
        .filter(|line| &line.frame == frame)
        .collect();
    let Some(file) = frame.source.as_ref().map(|source| {
        std::path::Path::new(&source.file).file_name().map_or_else(
            || source.file.clone(),
            |name| name.to_string_lossy().into_owned(),
        )
    }) else {
        return String::new();
    };
    let mut out = String::new();
    if !lines.is_empty() {
        out += "  its hottest lines:\n";
    }
    for line in lines {
        out += &format!(
            "  {}  {}:{} (self {})\n",
            percent(line.total_share),
            file,
            line.line,
            percent(line.self_share).trim()
        );
    }
    out
}

fn syscalls_text(report: &Report, top: usize) -> String {
    let calls: u64 = report.syscalls.iter().map(|syscall| syscall.count).sum();
    let mut out = format!(
        "\nSyscalls: {calls} calls to {} syscalls; {} took {} or longer.\n",
        report.syscalls.len(),
        report.slow_call_count,
        duration(report.probes.slow_syscall.as_nanos() as u64),
    );
    if report.syscalls.is_empty() {
        return out;
    }
    out += &format!(
        "  {:<18} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "syscall", "count", "errors", "total", "p50", "p90", "p99", "max"
    );
    for syscall in report.syscalls.iter().take(top) {
        let latency = &syscall.latency;
        out += &format!(
            "  {:<18} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            syscall.name,
            syscall.count,
            syscall.errors,
            duration(syscall.total_ns),
            duration(latency.quantile(0.5)),
            duration(latency.quantile(0.9)),
            duration(latency.quantile(0.99)),
            duration(latency.max()),
        );
    }
    if !report.slow_calls.is_empty() {
        out += "Slowest calls (innermost user functions first):\n";
        for call in report.slow_calls.iter().take(top.min(5)) {
            let callers: Vec<&str> = call
                .stack
                .iter()
                .rev()
                .filter(|frame| !frame.kernel)
                .take(4)
                .map(|frame| frame.name.as_str())
                .collect();
            out += &format!(
                "  {:>10}  {} (tid {}) in {}\n",
                duration(call.duration_ns),
                call.name,
                call.tid,
                callers.join(" <- ")
            );
        }
    }
    out
}

fn io_text(report: &Report) -> String {
    let mut out = format!(
        "\nBlock IO issued by the target: {} requests.\n",
        report.io.iter().map(|row| row.stats.count).sum::<u64>()
    );
    if report.io.is_empty() {
        return out;
    }
    out += &format!(
        "  {:<10} {:<8} {:>8} {:>12} {:>10} {:>10} {:>10}\n",
        "device", "op", "count", "bytes", "p50", "p99", "max"
    );
    for row in &report.io {
        let latency = &row.stats.latency;
        out += &format!(
            "  {:<10} {:<8} {:>8} {:>12} {:>10} {:>10} {:>10}\n",
            row.device,
            row.op.to_string(),
            row.stats.count,
            row.stats.bytes,
            duration(latency.quantile(0.5)),
            duration(latency.quantile(0.99)),
            duration(latency.max()),
        );
    }
    out
}

fn offcpu_text(report: &Report, top: usize) -> String {
    let offcpu = &report.offcpu;
    let total = offcpu.profile.samples();
    let mut out = format!(
        "\nOff-CPU: {} in {} thread{}, counting waits of {} or longer.\n",
        duration(total),
        offcpu.threads.len(),
        if offcpu.threads.len() == 1 { "" } else { "s" },
        duration(report.probes.offcpu_min.as_nanos() as u64),
    );
    let waits: Vec<&FunctionShare> = offcpu
        .functions
        .iter()
        .filter(|function| !function.frame.kernel && !function.frame.is_entry_point())
        .take(top)
        .collect();
    if !waits.is_empty() {
        out += "Top user functions by blocked time (kernel frames are in the off-CPU flame graph):\n      blocked   share  function\n";
        for function in waits {
            out += &format!(
                "  {:>11}  {}  {}\n",
                duration(function.total_samples),
                percent(function.total_share),
                display_name(&function.frame)
            );
        }
    }
    out
}

/// The shares of time Python threads held the GIL, ran without it and waited for it, per
/// process and for the functions with the most time.
fn gil_text(report: &Report) -> String {
    let times = &report.lock_times;
    if times.processes.is_empty() {
        return String::new();
    }
    let row = |time: &LockTime, name: String| {
        let columns: String = LockState::ALL
            .iter()
            .map(|&state| match time.share(state) {
                Some(share) => format!("  {:>7}", percent(share)),
                None => format!("  {:>7}", "-"),
            })
            .collect();
        format!("{columns}  {:>9}  {name}\n", duration(time.total_ns()))
    };
    let header = "     held  released  waiting       time";
    let mut out = format!(
        "\nGIL: shares of the time Python threads ran on a CPU or waited for it.\n{header}  process\n"
    );
    for process in &times.processes {
        let name = report
            .process_names
            .get(&process.pid)
            .map_or("?", String::as_str);
        out += &row(&process.time, format!("{name} [{}]", process.pid));
    }
    if !times.functions.is_empty() {
        out += &format!("{header}  function\n");
        for function in &times.functions {
            out += &row(&function.time, display_name(&function.frame));
        }
    }
    out += &if report.probes.events.offcpu {
        format!(
            "Released: on a CPU in C code that let go of the GIL. Waits shorter than {} are left out (--offcpu-min-us).\n",
            duration(report.probes.offcpu_min.as_nanos() as u64)
        )
    } else {
        "Released: on a CPU in C code that let go of the GIL. Waiting for it is recorded with --events cpu,offcpu.\n".to_owned()
    };
    out
}

fn rules_text(report: &Report) -> String {
    let rules = &report.analysis.rules;
    if rules.is_empty() {
        return String::new();
    }
    let mut out = "\nRules:\n".to_owned();
    for outcome in rules {
        let verdict = verdict(outcome);
        let finding = match (outcome.matched, outcome.fired) {
            (true, _) => measured(outcome),
            (false, false) => unmatched(&outcome.rule.check),
            (false, true) => format!("{} (--strict-rules)", unmatched(&outcome.rule.check)),
        };
        out += &format!("  {verdict:<9}  {}: {finding}\n", outcome.rule);
    }
    if rules
        .iter()
        .any(|outcome| !outcome.matched && !outcome.fired)
    {
        out += "  A rule that matched nothing cannot fire: check its name, or make it fail the run with --strict-rules.\n";
    }
    out
}

/// A rule's state in a word: `FIRED`, `ok`, or `UNMATCHED` when its subject was not
/// recorded (and it did not fire under `--strict-rules`).
pub fn verdict(outcome: &RuleOutcome) -> &'static str {
    match (outcome.fired, outcome.matched) {
        (true, _) => "FIRED",
        (false, true) => "ok",
        (false, false) => "UNMATCHED",
    }
}

/// What a matched rule measured, against its limit.
fn measured(outcome: &RuleOutcome) -> String {
    let observed = observed(outcome);
    match &outcome.rule.check {
        Check::CpuShare { function, limit } => format!(
            "{function} holds {observed} of on-CPU time, limit {}",
            percent(*limit).trim()
        ),
        Check::Latency {
            syscall, limit_ns, ..
        } => format!(
            "{syscall} measured {observed}, limit {}",
            duration(*limit_ns)
        ),
        Check::BlockIo {
            device, limit_ns, ..
        } => format!(
            "block requests {} measured {observed}, limit {}",
            device
                .as_ref()
                .map_or("of every device".to_owned(), |device| format!(
                    "to {device}"
                )),
            duration(*limit_ns)
        ),
        Check::Leak { limit_bytes } => format!(
            "leak candidates hold {observed}, limit {}",
            bytes(*limit_bytes)
        ),
    }
}

/// Why a rule that matched nothing had nothing to judge.
fn unmatched(check: &Check) -> String {
    match check {
        Check::CpuShare { function, .. } => format!("no sampled function is named {function}"),
        Check::Latency { syscall, .. } => format!("{syscall} was not called"),
        Check::BlockIo {
            device: Some(device),
            ..
        } => format!("no block request went to {device}"),
        Check::BlockIo { device: None, .. } => "no block request was made".to_owned(),
        Check::Leak { .. } => "no allocation was traced".to_owned(),
    }
}

fn losses_text(report: &Report) -> String {
    let lost: Vec<String> = report
        .losses
        .counters
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|(counter, count)| format!("{counter:?} {count}"))
        .collect();
    if lost.is_empty() && report.losses.malformed == 0 {
        return String::new();
    }
    format!(
        "\nWarning: records were lost ({}, malformed {}); the counts above leave them out.\n",
        lost.join(", "),
        report.losses.malformed
    )
}

/// Title and subtitle of the flame graph.
pub fn flame_graph_labels(report: &Report) -> FlameGraphLabels {
    FlameGraphLabels {
        title: format!("On-CPU flame graph: {}", target_label(report)),
        subtitle: format!(
            "{} samples at {} Hz over {:.1} s; kernel frames are orange and end in _[k], JIT-compiled ones green in _[j]",
            report.analysis.samples,
            report.probes.frequency_hz,
            report.duration.as_secs_f64()
        ),
        count_name: "samples".to_owned(),
    }
}

/// Title and subtitle of the off-CPU flame graph.
pub fn offcpu_flame_graph_labels(report: &Report) -> FlameGraphLabels {
    FlameGraphLabels {
        title: format!("Off-CPU flame graph: {}", target_label(report)),
        subtitle: format!(
            "{} blocked over {:.1} s, waits of {} or longer; stacks at switch-out, kernel frames end in _[k]",
            duration(report.offcpu.profile.samples()),
            report.duration.as_secs_f64(),
            duration(report.probes.offcpu_min.as_nanos() as u64),
        ),
        count_name: "us".to_owned(),
    }
}

/// Title and subtitle of the leaked-bytes flame graph.
pub fn leaks_flame_graph_labels(report: &Report) -> FlameGraphLabels {
    let leaks = &report.leaks;
    FlameGraphLabels {
        title: format!("Leak candidates: {}", target_label(report)),
        subtitle: format!(
            "{} live for {:.1} s or more at the end of {:.1} s, by allocating stack",
            bytes(leaks.candidate_bytes()),
            leaks.min_age.as_secs_f64(),
            report.duration.as_secs_f64(),
        ),
        count_name: "bytes".to_owned(),
    }
}

fn target_label(report: &Report) -> String {
    targets_label(report.probes.all, report.cgroup.as_deref(), &report.targets)
}

/// What was profiled, in a few words: `model-server (pid 4242)`, `3 processes (pids
/// ...)`, a cgroup, or the whole machine.
pub fn targets_label(all: bool, cgroup: Option<&str>, targets: &[TargetProcess]) -> String {
    if all {
        return "the whole machine".to_owned();
    }
    if let Some(cgroup) = cgroup {
        return format!("cgroup {cgroup} ({} processes at the start)", targets.len());
    }
    match targets {
        [one] => match one.namespace_pid {
            Some(inner) => format!(
                "{} (pid {}, {inner} in its pid namespace)",
                one.name, one.pid
            ),
            None => format!("{} (pid {})", one.name, one.pid),
        },
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
        StopReason::Quit => "quit from profiler top".to_owned(),
        StopReason::TargetsExited(Some(status)) => format!("the command exited ({status})"),
        StopReason::TargetsExited(None) => {
            "the target exited before the report's end; everything gathered was written".to_owned()
        }
    }
}

/// A frame's name as tables print it, kernel functions marked.
pub fn display_name(frame: &Frame) -> String {
    if frame.kernel {
        format!("{} [kernel]", frame.name)
    } else {
        frame.name.clone()
    }
}
