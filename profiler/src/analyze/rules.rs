//! The `--fail-on` rules of a load-test gate: how they are written, and how a recording
//! is judged by them. A gate that cannot fire is worse than none, so a rule that does
//! not parse is refused, and one whose subject matched nothing recorded says so.

use std::{fmt, str::FromStr};

use crate::{
    aggregate::{IoRow, Latency, SyscallSummary},
    profile::Profile,
};

use super::matching_share;

/// A load-test gate, as `--fail-on` takes it.
///
/// - `NAME>PCT%` fires when the functions named NAME hold more than PCT % of the on-CPU
///   samples, for example `predict>60%`.
/// - `SYSCALL.QUANTILE>DURATION` fires when that syscall's latency quantile (`p50`,
///   `p90`, `p99`, `p999` or `max`) is above DURATION (`ns`, `us`, `ms` or `s`), for
///   example `read.p99>50ms`.
/// - `io.QUANTILE>DURATION` and `io:DEVICE.QUANTILE>DURATION` do the same for the
///   block requests of every device, or of one (`io:vda.p99>50ms`).
/// - `leak>SIZE` fires when the leak candidates hold more than SIZE (`B`, `KiB`, `MiB`,
///   `GiB`, or `KB`, `MB`, `GB` in powers of ten), for example `leak>10MiB`.
///
/// The rule's `>` is the first one that does not close a `<` of NAME, so C++ templates
/// are written as they are printed (`std::vector<int>::push_back>5%`); a `<` or `>` of
/// NAME that pairs with nothing, as in `operator<` or `operator->`, is written `\<` or
/// `\>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The rule as the user wrote it.
    pub text: String,
    /// What it checks.
    pub check: Check,
}

/// What a [`Rule`] checks.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// A function's share of on-CPU samples.
    CpuShare {
        /// Function name, matched exactly or as the last segment of a path.
        function: String,
        /// The share (0 to 1) that the function must exceed for the rule to fire.
        limit: f64,
    },
    /// A syscall's latency.
    Latency {
        /// The syscall's name.
        syscall: String,
        /// Which point of the distribution.
        quantile: Quantile,
        /// The duration it must exceed for the rule to fire, in nanoseconds.
        limit_ns: u64,
    },
    /// The latency of block requests, issue to completion, over all their operations.
    BlockIo {
        /// The device (`vda`, or `MAJOR:MINOR` when sysfs does not name it); every
        /// device when `None`.
        device: Option<String>,
        /// Which point of the distribution.
        quantile: Quantile,
        /// The duration it must exceed for the rule to fire, in nanoseconds.
        limit_ns: u64,
    },
    /// The bytes held by leak candidates.
    Leak {
        /// The bytes they must exceed for the rule to fire.
        limit_bytes: u64,
    },
}

/// A point of a latency distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantile {
    /// The median.
    P50,
    /// The 90th percentile.
    P90,
    /// The 99th percentile.
    P99,
    /// The 99.9th percentile.
    P999,
    /// The longest.
    Max,
}

impl Quantile {
    fn parse(text: &str) -> Option<Quantile> {
        Some(match text {
            "p50" => Quantile::P50,
            "p90" => Quantile::P90,
            "p99" => Quantile::P99,
            "p999" | "p99.9" => Quantile::P999,
            "max" => Quantile::Max,
            _ => return None,
        })
    }

    /// The point of `latency` this quantile names.
    pub fn of(self, latency: &Latency) -> u64 {
        match self {
            Quantile::P50 => latency.quantile(0.5),
            Quantile::P90 => latency.quantile(0.9),
            Quantile::P99 => latency.quantile(0.99),
            Quantile::P999 => latency.quantile(0.999),
            Quantile::Max => latency.max(),
        }
    }
}

/// Splits `NAME>LIMIT` at the rule's `>`: the first one that neither closes a `<` of
/// NAME nor is written `\>`. Returns NAME with its escapes taken out, and LIMIT; `None`
/// when there is no such `>`.
pub fn split_at_operator(text: &str) -> Option<(String, &str)> {
    let mut name = String::new();
    let mut open_angles = 0usize;
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => name.push(chars.next()?.1),
            '<' => {
                open_angles += 1;
                name.push(c);
            }
            '>' if open_angles > 0 => {
                open_angles -= 1;
                name.push(c);
            }
            '>' => return Some((name, &text[at + 1..])),
            _ => name.push(c),
        }
    }
    None
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || {
            format!(
                "malformed rule `{text}`: expected NAME>PCT% (like predict>60%), SYSCALL.QUANTILE>DURATION (like read.p99>50ms), io.QUANTILE>DURATION (like io:vda.p99>50ms) or leak>SIZE (like leak>10MiB); write a < or > of NAME that pairs with nothing as \\< or \\>"
            )
        };
        let (subject, limit) = split_at_operator(text).ok_or_else(malformed)?;
        let (subject, limit) = (subject.trim(), limit.trim());
        if subject.is_empty() {
            return Err(malformed());
        }
        let latency = subject
            .rsplit_once('.')
            .and_then(|(name, quantile)| Some((name, Quantile::parse(quantile)?)));
        let leak_limit = (subject == "leak").then(|| parse_bytes(limit)).flatten();
        let check = match (latency, parse_duration_ns(limit)) {
            _ if leak_limit.is_some() => Check::Leak {
                limit_bytes: leak_limit.unwrap_or_default(),
            },
            (Some((name, quantile)), Some(limit_ns)) if name == "io" || name.starts_with("io:") => {
                let device = name.strip_prefix("io:").map(str::trim);
                if device.is_some_and(str::is_empty) {
                    return Err(malformed());
                }
                Check::BlockIo {
                    device: device.map(str::to_owned),
                    quantile,
                    limit_ns,
                }
            }
            (Some((syscall, quantile)), Some(limit_ns)) if !syscall.is_empty() => Check::Latency {
                syscall: syscall.to_owned(),
                quantile,
                limit_ns,
            },
            _ => {
                let percent: f64 = limit
                    .strip_suffix('%')
                    .unwrap_or(limit)
                    .trim()
                    .parse()
                    .map_err(|_| malformed())?;
                if !(0.0..=100.0).contains(&percent) {
                    return Err(malformed());
                }
                Check::CpuShare {
                    function: subject.to_owned(),
                    limit: percent / 100.0,
                }
            }
        };
        Ok(Rule {
            text: text.to_owned(),
            check,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `50ms`, `1.5s`, `200us`, `800ns` → nanoseconds.
fn parse_duration_ns(text: &str) -> Option<u64> {
    scaled_number(text, |unit| match unit {
        "ns" => Some(1.0),
        "us" | "µs" => Some(1e3),
        "ms" => Some(1e6),
        "s" => Some(1e9),
        _ => None,
    })
}

/// `10MiB`, `512KB`, `4096` → bytes; binary and decimal units both, as `ls` and `free`
/// print them.
fn parse_bytes(text: &str) -> Option<u64> {
    scaled_number(text, |unit| match unit {
        "" | "B" => Some(1.0),
        "K" | "KiB" => Some(1024.0),
        "M" | "MiB" => Some(1024.0 * 1024.0),
        "G" | "GiB" => Some(1024.0 * 1024.0 * 1024.0),
        "KB" | "kB" => Some(1e3),
        "MB" => Some(1e6),
        "GB" => Some(1e9),
        _ => None,
    })
}

/// A non-negative number followed by a unit, times the scale `unit_scale` gives that
/// unit (`None` for a unit it does not know), rounded.
fn scaled_number(text: &str, unit_scale: impl Fn(&str) -> Option<f64>) -> Option<u64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = unit_scale(unit.trim())?;
    let value: f64 = number.parse().ok()?;
    (value >= 0.0).then(|| (value * scale).round() as u64)
}

/// What rules other than CPU shares are judged on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observations<'a> {
    /// Every syscall traced, for latency rules.
    pub syscalls: &'a [SyscallSummary],
    /// Block requests per device and operation, for IO rules.
    pub io: &'a [IoRow],
    /// Bytes held by leak candidates, for leak rules.
    pub leaked_bytes: u64,
    /// Calls to allocating functions the probes saw: a leak rule judged on none judged
    /// nothing.
    pub allocation_calls: u64,
}

/// How a rule came out.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleOutcome {
    /// The rule.
    pub rule: Rule,
    /// What was measured: the share (0 to 1) of samples with a matching frame, the
    /// latency in nanoseconds, or the bytes leak candidates hold.
    pub observed: f64,
    /// Whether the rule's subject was in the recording at all: a sampled function of
    /// that name, a call of that syscall, a request to that device, an allocation. A
    /// misspelt name matches nothing, and its rule cannot fire on what it measures.
    pub matched: bool,
    /// Whether `observed` is above the rule's limit, or, under `--strict-rules`, the
    /// rule matched nothing.
    pub fired: bool,
}

/// Each rule's outcome on `profile` and `observations`; under `strict`, a rule that
/// matched nothing fires.
pub(super) fn judge(
    rules: &[Rule],
    profile: &Profile,
    observations: &Observations<'_>,
    strict: bool,
) -> Vec<RuleOutcome> {
    rules
        .iter()
        .map(|rule| {
            let (observed, limit, matched) = match &rule.check {
                Check::CpuShare { function, limit } => {
                    let share = matching_share(profile, function);
                    (share, *limit, share > 0.0)
                }
                Check::Latency {
                    syscall,
                    quantile,
                    limit_ns,
                } => {
                    let called = observations
                        .syscalls
                        .iter()
                        .find(|summary| summary.name == *syscall && summary.count > 0);
                    let observed = called.map_or(0, |summary| quantile.of(&summary.latency));
                    (observed as f64, *limit_ns as f64, called.is_some())
                }
                Check::BlockIo {
                    device,
                    quantile,
                    limit_ns,
                } => {
                    let mut latency = Latency::default();
                    observations
                        .io
                        .iter()
                        .filter(|row| device.as_ref().is_none_or(|device| row.device == *device))
                        .for_each(|row| latency.add(&row.stats.latency));
                    let matched = latency.count() > 0;
                    (quantile.of(&latency) as f64, *limit_ns as f64, matched)
                }
                Check::Leak { limit_bytes } => (
                    observations.leaked_bytes as f64,
                    *limit_bytes as f64,
                    observations.allocation_calls > 0,
                ),
            };
            RuleOutcome {
                rule: rule.clone(),
                observed,
                matched,
                fired: observed > limit || (strict && !matched),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{IoOp, IoStats};

    fn check(text: &str) -> Check {
        text.parse::<Rule>().unwrap().check
    }

    fn share(function: &str, limit: f64) -> Check {
        Check::CpuShare {
            function: function.to_owned(),
            limit,
        }
    }

    #[test]
    fn rules_parse_and_reject_malformed_text() {
        assert_eq!(check("predict>60%"), share("predict", 0.6));
        assert_eq!(check("a::b > 5"), share("a::b", 0.05));
        assert_eq!(
            check("core.model.predict>60%"),
            share("core.model.predict", 0.6)
        );
        assert_eq!(
            check("read.p99>50ms"),
            Check::Latency {
                syscall: "read".to_owned(),
                quantile: Quantile::P99,
                limit_ns: 50_000_000,
            }
        );
        assert!(matches!(
            check("fdatasync.max > 1.5s"),
            Check::Latency {
                quantile: Quantile::Max,
                limit_ns: 1_500_000_000,
                ..
            }
        ));
        assert!(matches!(
            check("futex.p999>200us"),
            Check::Latency {
                quantile: Quantile::P999,
                limit_ns: 200_000,
                ..
            }
        ));
        assert_eq!(
            check("leak>10MiB"),
            Check::Leak {
                limit_bytes: 10 << 20
            }
        );
        assert_eq!(
            check("leak > 1.5MB"),
            Check::Leak {
                limit_bytes: 1_500_000
            }
        );
        // A function called `leak` can still have a CPU rule.
        assert_eq!(check("leak>50%"), share("leak", 0.5));
        for bad in [
            "predict",
            ">60%",
            "predict>abc",
            "predict>150%",
            "read.p99>50parsecs",
            ".p99>5ms",
            // A doubled operator is a typo, not a function named `predict>`.
            "predict>>60%",
            "predict>=60%",
            "io:.p99>5ms",
            "operator<>5%",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_with_angle_brackets_pair_them_or_escape_them() {
        assert_eq!(
            check("std::vector<int>::push_back>5%"),
            share("std::vector<int>::push_back", 0.05)
        );
        assert_eq!(
            check("std::map<int, std::vector<int>>::find>5%"),
            share("std::map<int, std::vector<int>>::find", 0.05)
        );
        assert_eq!(check("Foo<int>>50%"), share("Foo<int>", 0.5));
        assert_eq!(
            check("<impl Hash for Key>::hash>5%"),
            share("<impl Hash for Key>::hash", 0.05)
        );
        assert_eq!(check(r"operator\<>5%"), share("operator<", 0.05));
        assert_eq!(
            check(r"Iter::operator-\>>5%"),
            share("Iter::operator->", 0.05)
        );
        assert_eq!(check(r"operator\>\>>5%"), share("operator>>", 0.05));
    }

    #[test]
    fn io_rules_name_every_device_or_one() {
        assert_eq!(
            check("io.p99>50ms"),
            Check::BlockIo {
                device: None,
                quantile: Quantile::P99,
                limit_ns: 50_000_000,
            }
        );
        assert_eq!(
            check("io:nvme0n1.max>1s"),
            Check::BlockIo {
                device: Some("nvme0n1".to_owned()),
                quantile: Quantile::Max,
                limit_ns: 1_000_000_000,
            }
        );
    }

    fn io_row(device: &str, op: IoOp, ms: &[u64]) -> IoRow {
        let mut stats = IoStats::default();
        for &ms in ms {
            stats.count += 1;
            stats.latency.record(ms * 1_000_000);
        }
        IoRow {
            device: device.to_owned(),
            op,
            stats,
        }
    }

    fn judged(texts: &[&str], observations: &Observations<'_>, strict: bool) -> Vec<RuleOutcome> {
        let rules: Vec<Rule> = texts.iter().map(|text| text.parse().unwrap()).collect();
        judge(&rules, &Profile::default(), observations, strict)
    }

    #[test]
    fn io_rules_judge_the_requests_of_every_device_or_of_one() {
        let io = [
            io_row("vda", IoOp::Write, &[10; 99]),
            io_row("vda", IoOp::Flush, &[80]),
            io_row("vdb", IoOp::Read, &[200; 10]),
        ];
        let observations = Observations {
            io: &io,
            ..Default::default()
        };
        let outcomes = judged(
            &[
                "io:vda.max>50ms",
                "io:vda.p50>50ms",
                "io.p99>150ms",
                "io:vdc.p99>1ns",
            ],
            &observations,
            false,
        );
        let fired: Vec<bool> = outcomes.iter().map(|outcome| outcome.fired).collect();
        assert_eq!(fired, vec![true, false, true, false]);
        // vda's write and flush are one distribution: the flush is its maximum.
        assert!((outcomes[0].observed / 80e6 - 1.0).abs() < 1e-3);
        let matched: Vec<bool> = outcomes.iter().map(|outcome| outcome.matched).collect();
        assert_eq!(matched, vec![true, true, true, false]);
    }

    #[test]
    fn a_rule_that_matched_nothing_says_so_and_fires_only_when_strict() {
        let texts = ["predcit>60%", "raed.p99>1ms", "io.p99>1ms", "leak>1B"];
        for strict in [false, true] {
            let outcomes = judged(&texts, &Observations::default(), strict);
            for outcome in outcomes {
                assert!(!outcome.matched, "{}", outcome.rule);
                assert_eq!(outcome.fired, strict, "{}", outcome.rule);
            }
        }
        // A leak rule on a process whose allocations were seen matched, though it
        // holds nothing.
        let observations = Observations {
            allocation_calls: 5,
            ..Default::default()
        };
        let outcome = &judged(&["leak>1B"], &observations, true)[0];
        assert!(outcome.matched && !outcome.fired);
    }
}
