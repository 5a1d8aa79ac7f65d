//! Per-syscall summaries: the kernel's exact counts and buckets, merged with the exact
//! durations of the slow calls that were streamed.

use std::collections::{BTreeMap, HashMap};

use profiler_common::SyscallStats;

use super::{Latency, StackKey};
use crate::syscall_names::{errno_name, syscall_name};

/// A syscall slower than the threshold, with the caller's stack.
#[derive(Clone, Debug)]
pub struct SlowCall {
    /// The syscall number.
    pub nr: u32,
    /// What it returned.
    pub ret: i64,
    /// From entry to return.
    pub duration_ns: u64,
    /// The caller's stack (its process and thread are `stack.tgid` and `stack.tid`).
    pub stack: StackKey,
}

/// Exact durations of streamed slow calls, per syscall number.
#[derive(Clone, Debug, Default)]
pub struct SyscallLatencies(HashMap<u32, Latency>);

impl SyscallLatencies {
    /// Records a streamed call's exact duration.
    pub fn record(&mut self, nr: u32, duration_ns: u64) {
        self.0.entry(nr).or_default().record(duration_ns);
    }
}

/// What one syscall did over the recording.
#[derive(Clone, Debug)]
pub struct SyscallSummary {
    /// The syscall's number.
    pub nr: u32,
    /// Its name.
    pub name: String,
    /// Calls that returned.
    pub count: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Failed calls per errno name, most frequent first.
    pub errnos: Vec<(String, u64)>,
    /// Time from entry to return, summed.
    pub total_ns: u64,
    /// The latency distribution.
    pub latency: Latency,
}

/// Builds the summaries from the kernel's per-syscall counters, its per-errno counts
/// (keyed by [`profiler_common::errno_key`]) and the streamed exact durations; largest
/// total time first.
pub fn summarize_syscalls(
    stats: Vec<(u32, SyscallStats)>,
    errnos: Vec<(u32, u64)>,
    mut exact: SyscallLatencies,
) -> Vec<SyscallSummary> {
    let mut errnos_by_nr: BTreeMap<u32, Vec<(String, u64)>> = BTreeMap::new();
    for (key, count) in errnos {
        errnos_by_nr
            .entry(key >> 16)
            .or_default()
            .push((errno_name(key & 0xffff), count));
    }
    let mut summaries: Vec<SyscallSummary> = stats
        .into_iter()
        .map(|(nr, stats)| {
            let mut latency = exact.0.remove(&nr).unwrap_or_default();
            for (index, &count) in stats.buckets.iter().enumerate() {
                latency.record_bucket(index, count);
            }
            latency.observe_max(stats.max_ns);
            let mut errnos = errnos_by_nr.remove(&nr).unwrap_or_default();
            errnos.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            SyscallSummary {
                nr,
                name: syscall_name(nr),
                count: stats.count,
                errors: stats.errors,
                errnos,
                total_ns: stats.total_ns,
                latency,
            }
        })
        .collect();
    summaries.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.nr.cmp(&b.nr)));
    summaries
}

#[cfg(test)]
mod tests {
    use profiler_common::{LATENCY_BUCKETS, errno_key, latency_bucket};

    use super::*;

    fn stats(count: u64, errors: u64, total_ns: u64, max_ns: u64) -> SyscallStats {
        SyscallStats {
            count,
            errors,
            total_ns,
            max_ns,
            buckets: [0; LATENCY_BUCKETS],
        }
    }

    #[test]
    fn kernel_buckets_and_streamed_calls_merge_into_one_distribution() {
        let mut read = stats(100, 3, 0, 20_000_000);
        read.buckets[latency_bucket(1_000)] = 90;
        read.total_ns = 90 * 1_000 + 10 * 20_000_000;
        let mut exact = SyscallLatencies::default();
        for _ in 0..10 {
            exact.record(0, 20_000_000);
        }
        let errnos = vec![(errno_key(0, 11), 2), (errno_key(0, 4), 1)];
        let summaries =
            summarize_syscalls(vec![(0, read), (110, stats(5, 0, 500, 100))], errnos, exact);
        let read = &summaries[0];
        assert_eq!(
            (read.name.as_str(), read.count, read.errors),
            ("read", 100, 3)
        );
        assert_eq!(read.latency.count(), 100);
        assert!(read.latency.quantile(0.5) < 1_100);
        assert_eq!(read.latency.quantile(0.95), 20_000_000);
        assert_eq!(read.latency.max(), 20_000_000);
        assert_eq!(
            read.errnos,
            vec![("EAGAIN".to_owned(), 2), ("EINTR".to_owned(), 1)]
        );
        assert_eq!(summaries[1].name, "getppid");
    }
}
