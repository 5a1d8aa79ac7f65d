//! Views of a recording while it runs: the `--interval` snapshots, and the
//! `--metrics-addr` endpoint that a Prometheus server scrapes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, http::header, routing::get};
use profiler_common::AllocCounter;

use super::{
    RecordOptions, View,
    collector::{Collector, LiveWindow},
    top::TopView,
};
use crate::{
    aggregate::{LeakOptions, summarize_live, summarize_syscalls},
    analyze::{Observations, analyze},
    attach::{AllocTables, LossCounters, SyscallTables},
    exit::Failure,
    render::{
        Interval,
        prometheus::{self, HeldBytes, LiveMetrics, MetricsState},
        write_interval,
    },
    report::{Losses, TargetProcess},
};

/// How often the metrics are refreshed: their function shares cover the samples of the
/// last refresh period.
pub(super) const METRICS_WINDOW: Duration = Duration::from_secs(5);

/// The live views a recording was asked for.
pub(super) struct Live {
    pub(super) snapshots: Option<Snapshots>,
    pub(super) metrics: Option<MetricsEndpoint>,
    pub(super) top: Option<TopView>,
}

impl Live {
    /// The windows of CPU samples the collector must keep for these views.
    pub(super) fn windows(options: &RecordOptions) -> Vec<LiveWindow> {
        let mut windows = Vec::new();
        if options.interval.is_some() {
            windows.push(LiveWindow::Interval);
        }
        if options.metrics_addr.is_some() {
            windows.push(LiveWindow::Metrics);
        }
        if options.view == View::Top {
            windows.push(LiveWindow::Top);
        }
        windows
    }
}

/// `--interval`: each interval's on-CPU outputs, in numbered files next to the
/// recording's.
pub(super) struct Snapshots {
    written: u32,
    /// When the current interval started, from the start of the recording.
    since: Duration,
}

impl Snapshots {
    pub(super) fn new(options: &RecordOptions) -> Option<Self> {
        options.interval.map(|_| Snapshots {
            written: 0,
            since: Duration::ZERO,
        })
    }

    /// Writes the snapshot of the interval that ends `elapsed` into the recording. A
    /// file that can't be written is reported and the recording goes on.
    pub(super) fn write(
        &mut self,
        collector: &mut Collector,
        options: &RecordOptions,
        targets: &[TargetProcess],
        elapsed: Duration,
    ) {
        self.written += 1;
        let span = elapsed.saturating_sub(self.since);
        let report = collector.interval_report(options, targets, span);
        let interval = Interval {
            index: self.written,
            start: self.since,
            end: elapsed,
        };
        write_interval(&options.outputs, &report, interval);
        self.since = elapsed;
    }
}

/// `--metrics-addr`: the HTTP endpoint, and what it shows.
pub(super) struct MetricsEndpoint {
    metrics: Arc<LiveMetrics>,
}

/// The in-kernel tables the metrics read.
pub(super) struct Tables<'t> {
    pub(super) losses: &'t LossCounters,
    pub(super) syscalls: &'t SyscallTables,
    pub(super) allocations: &'t AllocTables,
}

impl MetricsEndpoint {
    /// Listens on `address` and serves `/metrics` from then on; failing to listen
    /// fails the recording before anything is loaded.
    pub(super) async fn serve(address: SocketAddr) -> Result<Self, Failure> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| Failure::Output(format!("cannot listen on {address}: {error}")))?;
        let metrics = Arc::new(LiveMetrics::default());
        let shown = metrics.clone();
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let text = prometheus::text(&shown);
                async move { ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text) }
            }),
        );
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("profiler: warning: the metrics endpoint stopped: {error}");
            }
        });
        Ok(MetricsEndpoint { metrics })
    }

    /// Refreshes what the endpoint shows: the function shares of the samples since the
    /// last refresh, and everything else as of now.
    pub(super) fn refresh(
        &self,
        collector: &mut Collector,
        options: &RecordOptions,
        tables: &Tables<'_>,
        malformed: u64,
    ) {
        let events = options.probes.events;
        let (window, _) = collector.take_window(LiveWindow::Metrics);
        let window_analysis = analyze(&window, &Observations::default(), &options.analysis);
        let syscalls = if events.syscalls {
            summarize_syscalls(
                tables.syscalls.stats(),
                tables.syscalls.errnos(),
                collector.slow_latencies.clone(),
            )
        } else {
            Vec::new()
        };
        let allocations = events.alloc.then(|| {
            let live = summarize_live(
                &tables.allocations.live(),
                collector.program_starts(),
                super::session::monotonic_now_ns(),
                leak_options(options),
            );
            HeldBytes {
                leak_candidates: live.candidates.iter().map(|group| group.bytes).sum::<f64>()
                    as u64,
                live: live.outstanding_bytes as u64,
            }
        });
        // The rules' state covers the whole recording so far; the whole profile is built
        // for them alone, and only when there are some.
        let (samples, rules) = if options.analysis.rules.is_empty() {
            (collector.cpu_samples(), Vec::new())
        } else {
            let so_far = collector.cpu_so_far();
            let io = collector.io_rows();
            let observations = Observations {
                syscalls: &syscalls,
                io: &io,
                leaked_bytes: allocations.map_or(0, |held| held.leak_candidates),
                allocation_calls: if events.alloc {
                    tables.allocations.total(AllocCounter::Allocations)
                } else {
                    0
                },
            };
            let analysis = analyze(&so_far, &observations, &options.analysis);
            (analysis.samples, analysis.rules)
        };
        let state = MetricsState {
            samples,
            losses: Losses::read(tables.losses, malformed).counters,
            rules,
            offcpu_ns: events.offcpu.then(|| collector.offcpu_ns()),
            allocations,
            own_cpu: super::session::own_cpu_time(),
            syscalls,
            gil: collector.lock_times_so_far(options.probes.sample_interval_ns(), events.offcpu),
            ..MetricsState::default()
        };
        self.metrics.update(state.with_window(
            &window,
            &window_analysis,
            &options.analysis.rules,
            METRICS_WINDOW,
            options.top,
        ));
    }
}

/// How the live allocations are summed up into leak candidates.
pub(super) fn leak_options(options: &RecordOptions) -> LeakOptions {
    LeakOptions {
        min_age: options.leak_min_age,
        sample_bytes: options.probes.alloc_sample_bytes,
    }
}
