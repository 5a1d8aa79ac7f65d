//! Live metrics in the Prometheus exposition format (`--metrics-addr`), for a load
//! test's dashboards: what the recording has found so far, refreshed while it runs.
//!
//! Names follow Prometheus conventions: a `profiler_` prefix, the unit in the name,
//! `_total` on counters. Only the top functions get a series, so that the `function`
//! label's cardinality stays bounded.

use std::{sync::Mutex, time::Duration};

use profiler_common::LossCounter;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::{
    aggregate::SyscallSummary,
    analyze::{
        Analysis, Check, FunctionShare, ProcessLockTime, Rule, RuleOutcome, function_matches,
        matching_share,
    },
    profile::{LockState, Profile},
};

/// Upper bounds of the syscall latency histograms' buckets, in seconds.
const LATENCY_BUCKETS_S: [f64; 15] = [
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// What the metrics show, as of the last refresh.
#[derive(Clone, Debug, Default)]
pub struct MetricsState {
    /// CPU samples so far.
    pub samples: u64,
    /// Losses so far, by counter.
    pub losses: Vec<(LossCounter, u64)>,
    /// The span of the recent window the function shares cover.
    pub window: Duration,
    /// The functions with a series, and their shares over the recent window.
    pub functions: Vec<FunctionSeries>,
    /// Each `--fail-on` rule, judged on everything recorded so far.
    pub rules: Vec<RuleOutcome>,
    /// Syscall latency so far, with `--events syscalls`.
    pub syscalls: Vec<SyscallSummary>,
    /// Nanoseconds off the CPU so far, with `--events offcpu`.
    pub offcpu_ns: Option<u64>,
    /// With `--events alloc`, as of the last sweep of the live allocations.
    pub allocations: Option<HeldBytes>,
    /// The profiler's own CPU time.
    pub own_cpu: Duration,
    /// Each Python process's time with respect to its GIL so far.
    pub gil: Vec<ProcessLockTime>,
}

/// What the live allocations held at a sweep.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeldBytes {
    /// Bytes of the blocks old enough to be leak candidates.
    pub leak_candidates: u64,
    /// Bytes of every live block.
    pub live: u64,
}

/// One function's series: its shares of the recent window's samples.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionSeries {
    /// The `function` label.
    pub label: String,
    /// Share (0 to 1) of the samples with it on the stack.
    pub inclusive: f64,
    /// Share of the samples in it.
    pub self_share: f64,
}

impl MetricsState {
    /// The state with the function series of the recent `window`: every function a
    /// CPU rule names (as the rule matches it), then the `top` functions by self share
    /// and the `top` by inclusive share, process roots left out, one series per label.
    pub fn with_window(
        self,
        window: &Profile,
        window_analysis: &Analysis,
        rules: &[Rule],
        span: Duration,
        top: usize,
    ) -> Self {
        let mut functions: Vec<FunctionSeries> = rules
            .iter()
            .filter_map(|rule| match &rule.check {
                Check::CpuShare { function, .. } => Some(FunctionSeries {
                    label: function.clone(),
                    inclusive: matching_share(window, function),
                    self_share: window_analysis
                        .functions
                        .iter()
                        .filter(|share| function_matches(function, &share.frame))
                        .map(|share| share.self_share)
                        .sum(),
                }),
                _ => None,
            })
            .collect();
        let candidates = window_analysis
            .functions
            .iter()
            .filter(|share| share.frame.process.is_none() && !share.frame.is_entry_point());
        let mut by_self: Vec<&FunctionShare> = candidates.clone().collect();
        by_self.sort_by(|a, b| b.self_share.total_cmp(&a.self_share));
        let by_inclusive = candidates.take(top);
        for share in by_self.into_iter().take(top).chain(by_inclusive) {
            let label = function_label(share);
            if !functions.iter().any(|series| series.label == label) {
                functions.push(FunctionSeries {
                    label: label.to_owned(),
                    inclusive: share.total_share,
                    self_share: share.self_share,
                });
            }
        }
        MetricsState {
            functions,
            window: span,
            ..self
        }
    }
}

/// The live metrics, shared between the recording, which refreshes them, and the HTTP
/// server, which encodes them on each scrape.
#[derive(Debug, Default)]
pub struct LiveMetrics(Mutex<MetricsState>);

impl LiveMetrics {
    /// Replaces what the metrics show.
    pub fn update(&self, state: MetricsState) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
    }

    fn state(&self) -> MetricsState {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// The exposition text of `metrics`, in the OpenMetrics format that Prometheus asks for.
pub fn text(metrics: &std::sync::Arc<LiveMetrics>) -> String {
    let mut registry = Registry::with_prefix("profiler");
    registry.register_collector(Box::new(metrics.clone()));
    let mut text = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// The content type of [`text`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `function` label of a function: a Python function's qualified name, or the
/// native name.
fn function_label(function: &FunctionShare) -> &str {
    match &function.frame.source {
        Some(python) => &python.qualname,
        None => &function.frame.name,
    }
}

impl Collector for LiveMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.state();
        let seconds = |duration: Duration| duration.as_secs_f64();
        counter(
            &mut encoder,
            "cpu_samples",
            "On-CPU samples recorded.",
            state.samples,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "lost_records",
                "Records the BPF programs had to drop, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, count) in &state.losses {
                let reason = format!("{reason:?}");
                let labels = [("reason", reason.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
        }
        gauge(
            &mut encoder,
            "cpu_window_seconds",
            "The recent window the function shares cover.",
            seconds(state.window),
        )?;
        for (name, help, share) in [
            (
                "function_inclusive_cpu_ratio",
                "Share of the recent window's on-CPU samples with the function on the stack.",
                (|f: &FunctionSeries| f.inclusive) as fn(&FunctionSeries) -> f64,
            ),
            (
                "function_self_cpu_ratio",
                "Share of the recent window's on-CPU samples in the function itself.",
                |f: &FunctionSeries| f.self_share,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for function in &state.functions {
                let labels = [("function", function.label.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_gauge(&share(function))?;
            }
        }
        for (name, help, state_of) in [
            (
                "rule_fired",
                "1 if the --fail-on rule would fire on everything recorded so far.",
                (|outcome: &RuleOutcome| outcome.fired) as fn(&RuleOutcome) -> bool,
            ),
            (
                "rule_matched",
                "1 if the --fail-on rule's subject (function, syscall, device, allocations) was recorded so far; a rule at 0 cannot fire but under --strict-rules.",
                |outcome: &RuleOutcome| outcome.matched,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for outcome in &state.rules {
                let labels = [("rule", outcome.rule.text.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_gauge(&u64::from(state_of(outcome)))?;
            }
        }
        if !state.syscalls.is_empty() {
            let mut family = encoder.encode_descriptor(
                "syscall_duration_seconds",
                "Syscall latency, from entry to return.",
                None,
                MetricType::Histogram,
            )?;
            for syscall in &state.syscalls {
                // The encoder sums the buckets up itself: each holds the calls between
                // the bound before it and its own.
                let mut below = 0;
                let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_S
                    .iter()
                    .map(|&bound| (bound, syscall.latency.count_at_most((bound * 1e9) as u64)))
                    .chain([(f64::INFINITY, syscall.latency.count())])
                    .map(|(bound, at_most)| {
                        let in_bucket = at_most - below;
                        below = at_most;
                        (bound, in_bucket)
                    })
                    .collect();
                let labels = [("syscall", syscall.name.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        syscall.total_ns as f64 / 1e9,
                        syscall.latency.count(),
                        &buckets,
                        None,
                    )?;
            }
        }
        if let Some(ns) = state.offcpu_ns {
            let help = "Time the target threads spent off the CPU, in waits above --offcpu-min-us.";
            counter(&mut encoder, "offcpu_seconds", help, ns as f64 / 1e9)?;
        }
        if !state.gil.is_empty() {
            let mut family = encoder.encode_descriptor(
                "python_gil_ratio",
                "Share of a Python process's threads' time so far on a CPU holding the GIL (held), on a CPU without it (released), and waiting for it (waiting, with --events offcpu).",
                None,
                MetricType::Gauge,
            )?;
            for process in &state.gil {
                let pid = process.pid.to_string();
                for lock in LockState::ALL {
                    if let Some(share) = process.time.share(lock) {
                        let labels = [("pid", pid.as_str()), ("state", lock.name())];
                        family.encode_family(&labels)?.encode_gauge(&share)?;
                    }
                }
            }
        }
        if let Some(held) = state.allocations {
            let help = "Bytes held by leak candidates: live blocks older than --leak-min-age.";
            gauge(
                &mut encoder,
                "leak_candidate_bytes",
                help,
                held.leak_candidates,
            )?;
            let help = "Bytes of every live block the allocator probes track.";
            gauge(&mut encoder, "live_allocation_bytes", help, held.live)?;
        }
        counter(
            &mut encoder,
            "own_cpu_seconds",
            "The profiler's own CPU time, user and system.",
            seconds(state.own_cpu),
        )?;
        Ok(())
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeCounterValue,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analyze::{AnalysisOptions, Observations, analyze},
        profile::{Frame, ProfileBuilder},
    };

    #[test]
    fn rule_functions_and_the_top_by_self_and_inclusive_share_get_series() {
        let frame = |name: &str| Frame::native(name, false);
        let mut builder = ProfileBuilder::default();
        builder.push([frame("main"), frame("serve"), frame("model::predict")], 6);
        builder.push([frame("main"), frame("serve"), frame("parse")], 3);
        builder.push([frame("main"), frame("serve"), frame("log")], 1);
        let window = builder.build();
        let analysis = analyze(
            &window,
            &Observations::default(),
            &AnalysisOptions::default(),
        );
        let rules = [
            "predict>60%".parse().unwrap(),
            "read.p99>1ms".parse().unwrap(),
        ];
        let state =
            MetricsState::default().with_window(&window, &analysis, &rules, Duration::ZERO, 1);
        let series: Vec<(&str, f64, f64)> = state
            .functions
            .iter()
            .map(|f| (f.label.as_str(), f.inclusive, f.self_share))
            .collect();
        // `main` is a process root; `serve` is first by inclusive share.
        assert_eq!(
            series,
            [
                ("predict", 0.6, 0.6),
                ("model::predict", 0.6, 0.6),
                ("serve", 1.0, 0.0)
            ]
        );
    }
}
