//! Leak candidates: the blocks still live when the recording ends, grouped by the stack
//! that allocated them, with sampled blocks weighted back up to estimates of the whole.

use std::{collections::HashMap, time::Duration};

use profiler_common::{LiveAllocation, LiveAllocationKey};

/// How the live table is read.
#[derive(Clone, Copy, Debug)]
pub struct LeakOptions {
    /// Blocks at least this old are leak candidates.
    pub min_age: Duration,
    /// The sampling mean the probes used, 0 if every allocation was tracked.
    pub sample_bytes: u64,
}

/// Live blocks of one allocating stack that are old enough to be leak candidates.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakGroup {
    /// The allocating process.
    pub tgid: u32,
    /// The stack's id, 0 if it was not recorded.
    pub stack_id: u64,
    /// Estimated bytes held (exact when not sampling).
    pub bytes: f64,
    /// Estimated blocks held.
    pub count: f64,
    /// Age of the oldest block.
    pub oldest_age: Duration,
}

/// What the live table holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiveSummary {
    /// Estimated bytes of every live block, candidate or not.
    pub outstanding_bytes: f64,
    /// Estimated number of live blocks.
    pub outstanding_count: f64,
    /// The candidates per stack, most bytes first.
    pub candidates: Vec<LeakGroup>,
}

/// How many blocks a sampled block of `size` bytes stands for. A block is sampled with
/// probability `1 - exp(-size / mean)`, so weighting by the inverse makes the sums
/// unbiased, as in Go's and tcmalloc's heap profiles.
pub fn sample_weight(size: u64, sample_bytes: u64) -> f64 {
    if sample_bytes == 0 || size == 0 {
        return 1.0;
    }
    1.0 / -(-(size as f64) / sample_bytes as f64).exp_m1()
}

/// Sums the live table as of `now_ns` (CLOCK_MONOTONIC, as the probes stamp blocks).
///
/// Blocks of programs that are gone are left out: a block its process allocated before
/// its last `exec` (as `program_starts` gives them, by tgid, in the clock of the blocks'
/// timestamps) went with the old program's memory.
pub fn summarize_live(
    live: &[(LiveAllocationKey, LiveAllocation)],
    program_starts: &HashMap<u32, u64>,
    now_ns: u64,
    options: LeakOptions,
) -> LiveSummary {
    let min_age_ns = options.min_age.as_nanos() as u64;
    let mut summary = LiveSummary::default();
    let mut groups: foldhash::HashMap<(u32, u64), LeakGroup> = foldhash::HashMap::default();
    // The table comes in hash order, mostly from one process: a million blocks are
    // summed in tens of milliseconds, so the process's start is looked up once a run.
    let mut program_start: Option<(u32, Option<u64>)> = None;
    for (key, block) in live {
        let started = match program_start {
            Some((tgid, started)) if tgid == key.tgid => started,
            _ => {
                let started = program_starts.get(&key.tgid).copied();
                program_start = Some((key.tgid, started));
                started
            }
        };
        if started.is_some_and(|started| block.allocated_ns < started) {
            continue;
        }
        let weight = sample_weight(block.size, options.sample_bytes);
        let bytes = block.size as f64 * weight;
        summary.outstanding_bytes += bytes;
        summary.outstanding_count += weight;
        let age_ns = now_ns.saturating_sub(block.allocated_ns);
        if age_ns < min_age_ns {
            continue;
        }
        let age = Duration::from_nanos(age_ns);
        let group = groups
            .entry((key.tgid, block.stack_id))
            .or_insert_with(|| LeakGroup {
                tgid: key.tgid,
                stack_id: block.stack_id,
                bytes: 0.0,
                count: 0.0,
                oldest_age: age,
            });
        group.bytes += bytes;
        group.count += weight;
        group.oldest_age = group.oldest_age.max(age);
    }
    summary.candidates = groups.into_values().collect();
    summary.candidates.sort_by(|a, b| {
        b.bytes
            .total_cmp(&a.bytes)
            .then(a.stack_id.cmp(&b.stack_id))
    });
    summary
}

/// How fast a stack's candidates grew, in bytes per second: blocks younger than the
/// minimum age can't be candidates yet, so they grew over the recording less that age.
pub fn growth_per_second(bytes: f64, recorded: Duration, min_age: Duration) -> Option<f64> {
    let window = recorded.checked_sub(min_age)?.as_secs_f64();
    (window > 0.0).then(|| bytes / window)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(
        address: u64,
        size: u64,
        allocated_ns: u64,
        stack_id: u64,
    ) -> (LiveAllocationKey, LiveAllocation) {
        (
            LiveAllocationKey {
                address,
                tgid: 7,
                _padding: 0,
            },
            LiveAllocation {
                size,
                allocated_ns,
                stack_id,
            },
        )
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn old_blocks_group_by_stack_and_young_ones_only_count_as_outstanding() {
        let live = [
            block(1, 100, 0, 11),
            block(2, 300, 2 * SECOND, 11),
            block(3, 50, SECOND, 22),
            block(4, 1000, 9 * SECOND, 11),
        ];
        let options = LeakOptions {
            min_age: Duration::from_secs(5),
            sample_bytes: 0,
        };
        let summary = summarize_live(&live, &HashMap::new(), 10 * SECOND, options);
        assert_eq!(summary.outstanding_bytes, 1450.0);
        assert_eq!(summary.outstanding_count, 4.0);
        assert_eq!(summary.candidates.len(), 2);
        let first = &summary.candidates[0];
        assert_eq!((first.stack_id, first.bytes, first.count), (11, 400.0, 2.0));
        assert_eq!(first.oldest_age, Duration::from_secs(10));
        assert_eq!(summary.candidates[1].bytes, 50.0);
    }

    #[test]
    fn sampled_blocks_weigh_by_the_inverse_of_their_chance() {
        // Large blocks are always sampled; small ones stand for many.
        assert!((sample_weight(100 << 20, 512 << 10) - 1.0).abs() < 1e-9);
        let weight = sample_weight(512, 512 << 10);
        assert!((weight - 1024.5).abs() < 0.01, "{weight}");
        assert_eq!(sample_weight(512, 0), 1.0);
    }

    #[test]
    fn sampling_with_these_weights_is_unbiased() {
        // Sample blocks with the probability the BPF side samples them; the weighted sum
        // must come back to the truth.
        let (size, mean) = (4096u64, 65536u64);
        let chance = 1.0 / sample_weight(size, mean);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut estimate = 0.0;
        let blocks = 200_000;
        for _ in 0..blocks {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if (state >> 11) as f64 / (1u64 << 53) as f64 <= chance {
                estimate += size as f64 * sample_weight(size, mean);
            }
        }
        let truth = (blocks * size) as f64;
        assert!(
            (estimate / truth - 1.0).abs() < 0.02,
            "{estimate} vs {truth}"
        );
    }

    #[test]
    fn growth_is_spread_over_the_time_blocks_could_become_candidates() {
        let rate = growth_per_second(1000.0, Duration::from_secs(15), Duration::from_secs(5));
        assert_eq!(rate, Some(100.0));
        assert_eq!(
            growth_per_second(1000.0, Duration::from_secs(3), Duration::from_secs(5)),
            None
        );
    }
}

#[cfg(test)]
mod replaced_program_tests {
    use super::*;

    #[test]
    fn blocks_from_before_an_exec_are_left_out() {
        let block = |tgid: u32, allocated_ns: u64| {
            (
                LiveAllocationKey {
                    address: allocated_ns,
                    tgid,
                    _padding: 0,
                },
                LiveAllocation {
                    size: 8,
                    allocated_ns,
                    stack_id: 1,
                },
            )
        };
        let live = vec![block(1, 10), block(1, 30), block(2, 10)];
        let options = LeakOptions {
            min_age: Duration::ZERO,
            sample_bytes: 0,
        };
        let summary = summarize_live(&live, &HashMap::from([(1, 20)]), 40, options);
        let mut kept: Vec<(u32, Duration)> = summary
            .candidates
            .iter()
            .map(|group| (group.tgid, group.oldest_age))
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [(1, Duration::from_nanos(10)), (2, Duration::from_nanos(30))]
        );
    }
}
