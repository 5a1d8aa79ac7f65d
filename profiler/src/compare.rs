//! What changed between two on-CPU profiles: each function's inclusive share before and
//! after, and the growth gates (`NAME>+Npt`) a staging pipeline applies to a new build.

use std::{collections::HashMap, fmt, str::FromStr};

use crate::{
    analyze::{AnalysisOptions, Observations, analyze, matching_share, split_at_operator},
    profile::{Frame, Profile, ProfileBuilder},
};

/// A gate on growth, as `profiler diff --fail-on` takes it: `NAME>+Npt` fires when the
/// functions named NAME (matched as `NAME>PCT%` rules match them) hold more than N
/// percentage points more of the on-CPU samples in the new profile than in the base.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthRule {
    /// The rule as the user wrote it.
    pub text: String,
    /// The function's name.
    pub function: String,
    /// The growth, in percentage points, that the rule must exceed to fire.
    pub limit_points: f64,
}

impl FromStr for GrowthRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || {
            format!(
                "malformed rule `{text}`: expected NAME>+Npt, like predict>+5pt; write a < or > of NAME that pairs with nothing as \\< or \\>"
            )
        };
        let (function, limit) = split_at_operator(text).ok_or_else(malformed)?;
        let limit = limit.trim().strip_prefix('+').ok_or_else(malformed)?;
        let limit = limit
            .strip_suffix("pts")
            .or_else(|| limit.strip_suffix("pt"))
            .ok_or_else(malformed)?;
        let limit_points: f64 = limit.trim().parse().map_err(|_| malformed())?;
        let function = function.trim().to_owned();
        if function.is_empty() || !(0.0..=100.0).contains(&limit_points) {
            return Err(malformed());
        }
        Ok(GrowthRule {
            text: text.to_owned(),
            function,
            limit_points,
        })
    }
}

/// How a [`GrowthRule`] came out.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthOutcome {
    /// The rule.
    pub rule: GrowthRule,
    /// The function's inclusive share (0 to 1) in the base profile.
    pub base_share: f64,
    /// Its inclusive share in the new profile.
    pub new_share: f64,
    /// Whether it grew by more than the rule's limit.
    pub fired: bool,
}

impl GrowthOutcome {
    /// The growth in percentage points (negative when it shrank).
    pub fn points(&self) -> f64 {
        (self.new_share - self.base_share) * 100.0
    }
}

/// One function's inclusive share before and after.
#[derive(Clone, Debug, PartialEq)]
pub struct Movement {
    /// The function.
    pub frame: Frame,
    /// Its inclusive share (0 to 1) in the base profile.
    pub base_share: f64,
    /// Its inclusive share in the new profile.
    pub new_share: f64,
}

impl Movement {
    /// The change in percentage points (negative when it shrank).
    pub fn points(&self) -> f64 {
        (self.new_share - self.base_share) * 100.0
    }
}

/// Two profiles compared.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The base profile, with process frames made comparable ([`comparable`]).
    pub base: Profile,
    /// The new profile, likewise.
    pub new: Profile,
    /// Every function in either profile, the largest change first.
    pub movements: Vec<Movement>,
    /// The gates and whether they fired.
    pub rules: Vec<GrowthOutcome>,
}

impl Comparison {
    /// Whether any gate fired.
    pub fn any_rule_fired(&self) -> bool {
        self.rules.iter().any(|outcome| outcome.fired)
    }
}

/// Compares `new` with `base` and judges `rules` on them.
pub fn compare(base: &Profile, new: &Profile, rules: &[GrowthRule]) -> Comparison {
    let (base, new) = (comparable(base), comparable(new));
    let inclusive_shares = |profile: &Profile| -> HashMap<Frame, f64> {
        analyze(
            profile,
            &Observations::default(),
            &AnalysisOptions::default(),
        )
        .functions
        .into_iter()
        .map(|function| (function.frame, function.total_share))
        .collect()
    };
    let base_shares = inclusive_shares(&base);
    let mut new_shares = inclusive_shares(&new);
    let mut movements: Vec<Movement> = base_shares
        .into_iter()
        .map(|(frame, base_share)| {
            let new_share = new_shares.remove(&frame).unwrap_or(0.0);
            Movement {
                frame,
                base_share,
                new_share,
            }
        })
        .collect();
    movements.extend(new_shares.into_iter().map(|(frame, new_share)| Movement {
        frame,
        base_share: 0.0,
        new_share,
    }));
    movements.sort_by(|a, b| {
        b.points()
            .abs()
            .total_cmp(&a.points().abs())
            .then_with(|| a.frame.name.cmp(&b.frame.name))
    });
    let rules = rules
        .iter()
        .map(|rule| {
            let base_share = matching_share(&base, &rule.function);
            let new_share = matching_share(&new, &rule.function);
            GrowthOutcome {
                rule: rule.clone(),
                base_share,
                new_share,
                fired: (new_share - base_share) * 100.0 > rule.limit_points,
            }
        })
        .collect();
    Comparison {
        base,
        new,
        movements,
        rules,
    }
}

/// `profile` with what differs between two runs of the same code left out of its
/// frames: each process's root frame is named by its command alone (`model-server
/// [4242]` must meet `model-server [5151]`), and native frames forget their file, whose
/// build id changes with each build.
pub fn comparable(profile: &Profile) -> Profile {
    let mut builder = ProfileBuilder::default();
    for stack in &profile.stacks {
        let frames = stack.frames.iter().map(|&index| {
            let frame = &profile.frames[index];
            let name = match frame.process {
                Some(pid) => {
                    let suffix = format!(" [{pid}]");
                    frame.name.strip_suffix(&suffix).unwrap_or(&frame.name)
                }
                None => &frame.name,
            };
            Frame {
                name: name.to_owned(),
                process: frame.process.map(|_| 0),
                object: None,
                ..frame.clone()
            }
        });
        builder.push_placed(
            stack.origin,
            stack.lock,
            frames.map(|frame| (frame, 0)),
            stack.count,
        );
    }
    builder.build()
}

impl fmt::Display for GrowthOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {} {}: {} went from {:.1}% to {:.1}% ({:+.1} points, limit +{} points)",
            self.rule.text,
            if self.fired { "fired" } else { "passed" },
            self.rule.function,
            self.base_share * 100.0,
            self.new_share * 100.0,
            self.points(),
            self.rule.limit_points,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(stacks: &[(&[&str], u64)]) -> Profile {
        let mut builder = ProfileBuilder::default();
        for (frames, count) in stacks {
            builder.push(
                frames.iter().map(|name| Frame::native(*name, false)),
                *count,
            );
        }
        builder.build()
    }

    #[test]
    fn growth_rules_parse_and_other_forms_are_refused() {
        let rule: GrowthRule = "model::predict>+5pt".parse().unwrap();
        assert_eq!(rule.function, "model::predict");
        assert_eq!(rule.limit_points, 5.0);
        let template: GrowthRule = "Cache<int>::get>+1pt".parse().unwrap();
        assert_eq!(template.function, "Cache<int>::get");
        assert_eq!(
            "predict > +2.5pts"
                .parse::<GrowthRule>()
                .unwrap()
                .limit_points,
            2.5
        );
        for malformed in [
            "predict>5pt",
            "predict>+5%",
            ">+5pt",
            "predict>+x pt",
            "predict",
            "predict>>+5pt",
        ] {
            assert!(malformed.parse::<GrowthRule>().is_err(), "{malformed}");
        }
    }

    #[test]
    fn shares_are_compared_by_function_and_gates_fire_on_growth_only() {
        let base = profile(&[(&["main", "predict"], 50), (&["main", "parse"], 50)]);
        let new = profile(&[(&["main", "predict"], 70), (&["main", "encode"], 30)]);
        let rules: Vec<GrowthRule> = ["predict>+15pt", "predict>+25pt", "parse>+0pt"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        let comparison = compare(&base, &new, &rules);
        let fired: Vec<bool> = comparison
            .rules
            .iter()
            .map(|outcome| outcome.fired)
            .collect();
        assert_eq!(fired, [true, false, false]);
        assert!((comparison.rules[0].points() - 20.0).abs() < 1e-9);
        let moved: Vec<(&str, i64)> = comparison
            .movements
            .iter()
            .map(|movement| {
                (
                    movement.frame.name.as_str(),
                    movement.points().round() as i64,
                )
            })
            .collect();
        assert_eq!(
            moved,
            [("parse", -50), ("encode", 30), ("predict", 20), ("main", 0)]
        );
        assert!(!compare(&new, &new, &rules).any_rule_fired());
    }

    #[test]
    fn process_frames_of_two_recordings_meet_whatever_their_pids() {
        let mut builder = ProfileBuilder::default();
        builder.push(
            [Frame::process(4242, "svc"), Frame::native("work", false)],
            3,
        );
        let base = builder.build();
        let mut builder = ProfileBuilder::default();
        builder.push(
            [Frame::process(5151, "svc"), Frame::native("work", false)],
            5,
        );
        let new = builder.build();
        let comparison = compare(&base, &new, &[]);
        assert!(
            comparison
                .movements
                .iter()
                .all(|movement| movement.points() == 0.0)
        );
        assert_eq!(comparison.base.frames[0].name, "svc");
    }
}
