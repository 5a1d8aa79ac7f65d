//! Latency distributions: exact durations where they were streamed, and the kernel's
//! buckets for the rest, in one HDR histogram.

use hdrhistogram::Histogram;
use profiler_common::latency_bucket_range;

/// A latency distribution, in nanoseconds.
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
    max_ns: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            // Three significant digits: a percentile is off by at most 0.1 %. The
            // histogram grows with the largest value recorded.
            histogram: Histogram::new(3).expect("3 significant digits are supported"),
            max_ns: 0,
        }
    }
}

impl Latency {
    /// Records one exactly known duration.
    pub fn record(&mut self, ns: u64) {
        self.record_n(ns, 1);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Records `count` durations known only to fall in kernel bucket `index`, at the
    /// bucket's middle, which is within 1/16 of any value in it.
    pub fn record_bucket(&mut self, index: usize, count: u64) {
        if count == 0 {
            return;
        }
        let (low, high) = latency_bucket_range(index);
        let middle = low + (high - low) / 2;
        self.record_n(middle, count);
    }

    fn record_n(&mut self, ns: u64, count: u64) {
        // An auto-resizing histogram only refuses values above u64::MAX / 2, which no
        // latency reaches; clamping keeps even those in.
        let ns = ns.min(u64::MAX / 4);
        if self.histogram.record_n(ns, count).is_ok() {
            self.max_ns = self.max_ns.max(ns);
        }
    }

    /// Adds every duration of `other`, as one distribution of both.
    pub fn add(&mut self, other: &Latency) {
        // Both grow to what they hold, so adding cannot go out of range.
        let _ = self.histogram.add(&other.histogram);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Raises the maximum to one known from elsewhere (the kernel keeps the exact one).
    pub fn observe_max(&mut self, ns: u64) {
        self.max_ns = self.max_ns.max(ns);
    }

    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Durations recorded at or below `ns`.
    pub fn count_at_most(&self, ns: u64) -> u64 {
        self.histogram.count_between(0, ns)
    }

    /// The duration at `quantile` (0 to 1), never above the maximum.
    pub fn quantile(&self, quantile: f64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        self.histogram.value_at_quantile(quantile).min(self.max_ns)
    }

    /// The longest duration.
    pub fn max(&self) -> u64 {
        self.max_ns
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::latency_bucket;

    use super::*;

    #[test]
    fn exact_durations_give_percentiles_within_a_thousandth() {
        let mut latency = Latency::default();
        for ms in 1..=100u64 {
            latency.record(ms * 1_000_000);
        }
        let p50 = latency.quantile(0.5) as f64;
        assert!((p50 / 50e6 - 1.0).abs() < 1e-3, "{p50}");
        assert_eq!(latency.max(), 100_000_000);
        assert_eq!(latency.count(), 100);
        assert!((latency.quantile(0.99) as f64 / 99e6 - 1.0).abs() < 1e-3);
    }

    #[test]
    fn bucketed_durations_land_within_a_sixteenth_and_the_max_is_kept() {
        let mut latency = Latency::default();
        let true_ns = 87_000;
        latency.record_bucket(latency_bucket(true_ns), 1000);
        latency.observe_max(90_000);
        let p50 = latency.quantile(0.5) as f64;
        assert!((p50 / true_ns as f64 - 1.0).abs() < 1.0 / 16.0, "{p50}");
        assert_eq!(latency.max(), 90_000);
    }
}
