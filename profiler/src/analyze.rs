//! What a profile means: each function's share of on-CPU time, the hotspots above a
//! threshold, the hot path through them, the `--fail-on` rules of a load-test gate, and
//! time with respect to a runtime's global lock.

mod lock;
mod rules;

pub use lock::{FunctionLockTime, LOCK_FUNCTIONS, LockTime, LockTimes, ProcessLockTime};
pub use rules::{Check, Observations, Quantile, Rule, RuleOutcome, split_at_operator};

use std::collections::BTreeMap;

use crate::profile::{Frame, Profile};

/// Whether a frame's function is the one `function` names: the same name, or a path
/// (`model::predict`, `core.model.predict`) whose last segments are that name. A Python
/// frame also answers to its qualified name and its module path
/// ([`crate::profile::SourceFunction::is_named`]).
pub fn function_matches(function: &str, frame: &Frame) -> bool {
    if let Some(source) = &frame.source {
        return source.is_named(function);
    }
    // A process's root frame names a process, not a function.
    frame.process.is_none() && name_matches(function, &frame.name)
}

/// The share (0 to 1) of `profile`'s samples whose stacks hold a function that
/// `function` names ([`function_matches`]): its inclusive share, as rules judge it.
pub fn matching_share(profile: &Profile, function: &str) -> f64 {
    let samples = profile.samples();
    if samples == 0 {
        return 0.0;
    }
    let matching: u64 = profile
        .stacks
        .iter()
        .filter(|stack| {
            stack
                .frames
                .iter()
                .any(|&frame| function_matches(function, &profile.frames[frame]))
        })
        .map(|stack| stack.count)
        .sum();
    matching as f64 / samples as f64
}

/// [`function_matches`] on a native function's name.
fn name_matches(function: &str, frame_name: &str) -> bool {
    let name = strip_parameters(frame_name);
    name == function
        || name
            .strip_suffix(function)
            .is_some_and(|prefix| prefix.ends_with("::") || prefix.ends_with('.'))
}

/// `ns::f(int, char)` → `ns::f`: C++ names carry their parameter list.
fn strip_parameters(name: &str) -> &str {
    match name.find('(') {
        Some(open) if open > 0 && name.ends_with(')') => &name[..open],
        _ => name,
    }
}

/// Settings for [`analyze`].
#[derive(Clone, Debug)]
pub struct AnalysisOptions {
    /// Inclusive share (0 to 1) at or above which a function is a hotspot.
    pub hotspot_threshold: f64,
    /// Gates to evaluate.
    pub rules: Vec<Rule>,
    /// Whether a rule whose subject matched nothing recorded counts as fired
    /// (`--strict-rules`), so that a misspelt gate fails closed.
    pub strict_rules: bool,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions {
            hotspot_threshold: 0.6,
            rules: Vec::new(),
            strict_rules: false,
        }
    }
}

/// One function's share of the on-CPU samples.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionShare {
    /// The function.
    pub frame: Frame,
    /// Samples in which it was the innermost frame.
    pub self_samples: u64,
    /// Samples in which it was anywhere on the stack, once per sample even if it recurses.
    pub total_samples: u64,
    /// `self_samples` over all samples.
    pub self_share: f64,
    /// `total_samples` over all samples.
    pub total_share: f64,
}

/// A step of the hot path.
#[derive(Clone, Debug, PartialEq)]
pub struct PathStep {
    /// The frame.
    pub frame: Frame,
    /// Share of all samples whose stacks pass through the function, whatever their root:
    /// its inclusive share, as the rules count it.
    pub share: f64,
    /// Whether the function is a hotspot.
    pub hotspot: bool,
}

/// The analysis of a profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// Samples analysed.
    pub samples: u64,
    /// The threshold used for hotspots.
    pub hotspot_threshold: f64,
    /// Every function, by inclusive share, largest first.
    pub functions: Vec<FunctionShare>,
    /// Functions at or above the threshold, process roots left out, largest first
    /// (which, for nested calls, is root to leaf).
    pub hotspots: Vec<FunctionShare>,
    /// The heaviest path from the root down to the deepest hotspot on it.
    pub hot_path: Vec<PathStep>,
    /// The rules and whether they fired.
    pub rules: Vec<RuleOutcome>,
    /// The hottest source lines, at most [`HOT_LINES`], of the deepest hotspot that is
    /// a source function (a Python function): the one the verdict names, if it is.
    pub hot_lines: Vec<LineShare>,
}

/// Lines of the hottest source function the analysis keeps.
pub const HOT_LINES: usize = 3;

/// One source line's share of the samples, within one function.
#[derive(Clone, Debug, PartialEq)]
pub struct LineShare {
    /// The function.
    pub frame: Frame,
    /// The line.
    pub line: u32,
    /// Share of all samples in which the function was the innermost frame, at this line.
    pub self_share: f64,
    /// Share of all samples in which the function's innermost call was at this line.
    pub total_share: f64,
}

impl Analysis {
    /// Whether any rule fired.
    pub fn any_rule_fired(&self) -> bool {
        self.rules.iter().any(|outcome| outcome.fired)
    }
}

/// Computes shares, hotspots, the hot path and the rules' outcomes; latency and leak
/// rules are judged on `observations`.
pub fn analyze(
    profile: &Profile,
    observations: &Observations<'_>,
    options: &AnalysisOptions,
) -> Analysis {
    let samples = profile.samples();
    let share = |count: u64| share_of(count, samples);

    let functions = function_shares(profile);

    let is_hotspot = |function: &FunctionShare| {
        samples > 0
            && function.total_share >= options.hotspot_threshold
            && function.frame.process.is_none()
            && !function.frame.is_entry_point()
    };
    let hotspots: Vec<FunctionShare> = functions
        .iter()
        .filter(|f| is_hotspot(f))
        .cloned()
        .collect();
    let hot_path = hot_path(profile, &hotspots, &share);

    let rules = rules::judge(&options.rules, profile, observations, options.strict_rules);

    let deepest_on_path = hot_path
        .last()
        .filter(|step| step.hotspot)
        .map(|step| &step.frame);
    let hot_source = deepest_on_path
        .into_iter()
        .chain(hotspots.iter().rev().map(|hotspot| &hotspot.frame))
        .find(|frame| frame.source.is_some());
    let mut hot_lines = hot_source.map_or_else(Vec::new, |frame| line_shares(profile, frame));
    hot_lines.truncate(HOT_LINES);

    Analysis {
        samples,
        hotspot_threshold: options.hotspot_threshold,
        functions,
        hotspots,
        hot_path,
        rules,
        hot_lines,
    }
}

/// The source lines of the function `frame` by their share, most inclusive first: in
/// each stack through it, the line its innermost call was running.
pub fn line_shares(profile: &Profile, frame: &Frame) -> Vec<LineShare> {
    let Some(id) = profile
        .frames
        .iter()
        .position(|candidate| candidate == frame)
    else {
        return Vec::new();
    };
    let mut by_line: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for stack in &profile.stacks {
        let Some(depth) = stack.frames.iter().rposition(|&frame| frame == id) else {
            continue;
        };
        let Some(&line) = stack.lines.get(depth).filter(|&&line| line != 0) else {
            continue;
        };
        let counts = by_line.entry(line).or_default();
        counts.1 += stack.count;
        if depth + 1 == stack.frames.len() {
            counts.0 += stack.count;
        }
    }
    let samples = profile.samples();
    let mut lines: Vec<LineShare> = by_line
        .into_iter()
        .map(|(line, (own, total))| LineShare {
            frame: frame.clone(),
            line,
            self_share: share_of(own, samples),
            total_share: share_of(total, samples),
        })
        .collect();
    lines.sort_by(|a, b| b.total_share.total_cmp(&a.total_share));
    lines
}

/// Each function's own and inclusive samples and shares, most inclusive first (then
/// most own, then by name); a function that recurses counts once per stack.
pub fn function_shares(profile: &Profile) -> Vec<FunctionShare> {
    let samples = profile.samples();
    let share = |count: u64| share_of(count, samples);
    let mut self_samples = vec![0u64; profile.frames.len()];
    let mut total_samples = vec![0u64; profile.frames.len()];
    let mut seen = vec![usize::MAX; profile.frames.len()];
    for (stack_index, stack) in profile.stacks.iter().enumerate() {
        if let Some(&leaf) = stack.frames.last() {
            self_samples[leaf] += stack.count;
        }
        for &frame in &stack.frames {
            // Recursion: count a function once per stack.
            if seen[frame] != stack_index {
                seen[frame] = stack_index;
                total_samples[frame] += stack.count;
            }
        }
    }
    let mut functions: Vec<FunctionShare> = profile
        .frames
        .iter()
        .enumerate()
        .map(|(id, frame)| FunctionShare {
            frame: frame.clone(),
            self_samples: self_samples[id],
            total_samples: total_samples[id],
            self_share: share(self_samples[id]),
            total_share: share(total_samples[id]),
        })
        .collect();
    functions.sort_by(|a, b| {
        b.total_samples
            .cmp(&a.total_samples)
            .then(b.self_samples.cmp(&a.self_samples))
            .then_with(|| a.frame.name.cmp(&b.frame.name))
    });
    functions
}

/// `count` as a share (0 to 1) of `samples`; 0 of none.
fn share_of(count: u64, samples: u64) -> f64 {
    if samples == 0 {
        0.0
    } else {
        count as f64 / samples as f64
    }
}

/// Where a function sits in one stack of the profile, for the hot path.
#[derive(Clone, Copy)]
struct Place {
    /// The stack's index.
    stack: u32,
    /// The frame its deepest call there calls, or [`Place::NO_CALLEE`] at the leaf.
    callee: u32,
    /// The stack's weight.
    count: u64,
}

impl Place {
    const NO_CALLEE: u32 = u32::MAX;

    fn callee(frame: Option<&usize>) -> u32 {
        frame.map_or(Place::NO_CALLEE, |&frame| frame as u32)
    }
}

/// Follows the heaviest callee from the heaviest root, and keeps the path down to its
/// deepest hotspot; empty when there is no hotspot on it.
///
/// Each step is taken on the view where a function's share is its share over all roots,
/// as the rules and the hotspots count it: after a step, the stacks followed are every
/// stack through that function (from its deepest occurrence, so that recursion does not
/// repeat it), not only those under the steps before it. With a main thread and worker
/// threads running the same `handle_request`, the path reaches it from the heavier root
/// and shows it at its whole share.
fn hot_path(
    profile: &Profile,
    hotspots: &[FunctionShare],
    share: &dyn Fn(u64) -> f64,
) -> Vec<PathStep> {
    let mut path: Vec<PathStep> = Vec::new();
    // The path is cut after its deepest hotspot: without one, it is empty.
    if hotspots.is_empty() {
        return path;
    }
    // The stacks each function is in, each with the frame below its deepest call there
    // and the stack's weight, by frame id: one pass, where looking for each step's
    // function in every stack was a pass per step (6 % of the profiler's steady CPU in
    // a load test), and each step reads its list alone.
    let mut places_of: Vec<Vec<Place>> = vec![Vec::new(); profile.frames.len()];
    for (index, stack) in profile.stacks.iter().enumerate() {
        for (position, &frame) in stack.frames.iter().enumerate() {
            let callee = Place::callee(stack.frames.get(position + 1));
            let places = &mut places_of[frame];
            match places.last_mut() {
                Some(last) if last.stack == index as u32 => last.callee = callee,
                _ => places.push(Place {
                    stack: index as u32,
                    callee,
                    count: stack.count,
                }),
            }
        }
    }
    let mut hotspots_left = hotspots.len();
    let mut on_path = vec![false; profile.frames.len()];
    // The weight under each callee of the current step, and which callees have one.
    let mut callee_weights = vec![0u64; profile.frames.len()];
    let mut callees: Vec<usize> = Vec::new();
    // The roots, then the places of the last function on the path.
    let mut followed: Vec<Place> = profile
        .stacks
        .iter()
        .enumerate()
        .map(|(index, stack)| Place {
            stack: index as u32,
            callee: Place::callee(stack.frames.first()),
            count: stack.count,
        })
        .collect();
    // Each step adds a function not on the path yet, so the walk ends.
    loop {
        for place in &followed {
            let callee = place.callee as usize;
            if place.callee != Place::NO_CALLEE && !on_path[callee] {
                if callee_weights[callee] == 0 {
                    callees.push(callee);
                }
                callee_weights[callee] += place.count;
            }
        }
        let heaviest = callees
            .iter()
            .copied()
            .max_by(|&a, &b| callee_weights[a].cmp(&callee_weights[b]).then(b.cmp(&a)));
        callees
            .drain(..)
            .for_each(|callee| callee_weights[callee] = 0);
        let Some(next) = heaviest else {
            break;
        };
        // A function joins the path once, so its places are needed once.
        followed = std::mem::take(&mut places_of[next]);
        let count = followed.iter().map(|place| place.count).sum();
        let frame = &profile.frames[next];
        let hotspot = hotspots.iter().any(|hotspot| hotspot.frame == *frame);
        path.push(PathStep {
            frame: frame.clone(),
            share: share(count),
            hotspot,
        });
        on_path[next] = true;
        hotspots_left -= usize::from(hotspot);
        // No step after the last hotspot is kept.
        if hotspots_left == 0 {
            break;
        }
    }
    let deepest_hotspot = path.iter().rposition(|step| step.hotspot);
    path.truncate(deepest_hotspot.map_or(0, |last| last + 1));
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::{Latency, SyscallSummary},
        profile::ProfileBuilder,
    };

    fn profile(stacks: &[(&str, u64)]) -> Profile {
        let mut builder = ProfileBuilder::default();
        for (stack, count) in stacks {
            builder.push(
                stack.split(';').map(|name| Frame::native(name, false)),
                *count,
            );
        }
        builder.build()
    }

    fn function<'a>(analysis: &'a Analysis, name: &str) -> &'a FunctionShare {
        analysis
            .functions
            .iter()
            .find(|f| f.frame.name == name)
            .unwrap()
    }

    #[test]
    fn shares_are_exclusive_and_inclusive_and_recursion_counts_once() {
        let profile = profile(&[
            ("main;serve;model::predict;matmul", 6),
            ("main;serve;model::predict;model::predict", 1),
            ("main;serve;tokenize", 3),
        ]);
        let analysis = analyze(
            &profile,
            &Observations::default(),
            &AnalysisOptions::default(),
        );
        assert_eq!(analysis.samples, 10);
        let predict = function(&analysis, "model::predict");
        assert_eq!((predict.self_samples, predict.total_samples), (1, 7));
        assert!((predict.total_share - 0.7).abs() < 1e-9);
        assert_eq!(function(&analysis, "matmul").self_share, 0.6);
        assert_eq!(analysis.functions[0].frame.name, "main");
        let totals: Vec<u64> = analysis.functions.iter().map(|f| f.total_samples).collect();
        assert!(totals.windows(2).all(|pair| pair[0] >= pair[1]));
    }

    #[test]
    fn hotspots_leave_out_process_roots_and_the_hot_path_ends_at_the_deepest() {
        let profile = profile(&[
            ("_start;main;serve;predict;matmul", 64),
            ("_start;main;serve;io", 36),
        ]);
        let analysis = analyze(
            &profile,
            &Observations::default(),
            &AnalysisOptions::default(),
        );
        let names: Vec<&str> = analysis
            .hotspots
            .iter()
            .map(|f| f.frame.name.as_str())
            .collect();
        assert_eq!(names, vec!["serve", "matmul", "predict"]);
        let path: Vec<(&str, bool)> = analysis
            .hot_path
            .iter()
            .map(|step| (step.frame.name.as_str(), step.hotspot))
            .collect();
        assert_eq!(
            path,
            vec![
                ("_start", false),
                ("main", false),
                ("serve", true),
                ("predict", true),
                ("matmul", true)
            ]
        );
    }

    #[test]
    fn the_hot_path_gives_each_function_its_share_over_all_roots() {
        // A main thread and two workers run the same request handler.
        let profile = profile(&[
            ("_start;main;serve;handle_request;predict;matmul", 30),
            ("_start;main;serve;handle_request;parse", 19),
            (
                "clone3;start_thread;worker;handle_request;predict;matmul",
                40,
            ),
            ("clone3;start_thread;worker;handle_request;parse", 11),
        ]);
        let analysis = analyze(
            &profile,
            &Observations::default(),
            &AnalysisOptions::default(),
        );
        let path: Vec<(&str, f64, bool)> = analysis
            .hot_path
            .iter()
            .map(|step| (step.frame.name.as_str(), step.share, step.hotspot))
            .collect();
        assert_eq!(
            path,
            vec![
                ("clone3", 0.51, false),
                ("start_thread", 0.51, false),
                ("worker", 0.51, false),
                ("handle_request", 1.0, true),
                ("predict", 0.7, true),
                ("matmul", 0.7, true),
            ]
        );
        // Every share the path shows is the one the functions' table and the rules use.
        for step in &analysis.hot_path {
            assert_eq!(
                step.share,
                function(&analysis, &step.frame.name).total_share
            );
        }
    }

    #[test]
    fn recursion_is_one_step_of_the_hot_path() {
        let profile = profile(&[
            ("main;predict;predict;predict;matmul", 70),
            ("main;predict;io", 30),
        ]);
        let analysis = analyze(
            &profile,
            &Observations::default(),
            &AnalysisOptions::default(),
        );
        let names: Vec<&str> = analysis
            .hot_path
            .iter()
            .map(|step| step.frame.name.as_str())
            .collect();
        assert_eq!(names, vec!["main", "predict", "matmul"]);
    }

    #[test]
    fn no_hotspot_means_no_hot_path() {
        let profile = profile(&[("main;a", 50), ("main;b", 50)]);
        let analysis = analyze(
            &profile,
            &Observations::default(),
            &AnalysisOptions::default(),
        );
        assert!(analysis.hotspots.is_empty());
        assert!(analysis.hot_path.is_empty());
    }

    #[test]
    fn rule_names_match_exactly_or_as_the_last_path_segment() {
        for name in [
            "predict",
            "model::predict",
            "deepseek.core.model.predict",
            "ns::predict(float*)",
        ] {
            assert!(name_matches("predict", name), "{name}");
        }
        for name in ["mypredict", "predict_batch", "predict::inner"] {
            assert!(!name_matches("predict", name), "{name}");
        }
    }

    #[test]
    fn latency_rules_fire_on_the_named_quantile() {
        let mut latency = Latency::default();
        for ms in 1..=100 {
            latency.record(ms * 1_000_000);
        }
        let read = SyscallSummary {
            nr: 0,
            name: "read".to_owned(),
            count: 100,
            errors: 0,
            errnos: Vec::new(),
            total_ns: 0,
            latency,
        };
        let rules = ["read.p50>60ms", "read.p99>60ms", "write.p99>1ns"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        let options = AnalysisOptions {
            rules,
            ..Default::default()
        };
        let observations = Observations {
            syscalls: &[read],
            ..Default::default()
        };
        let analysis = analyze(&Profile::default(), &observations, &options);
        let fired: Vec<bool> = analysis.rules.iter().map(|outcome| outcome.fired).collect();
        assert_eq!(fired, vec![false, true, false]);
        assert!((analysis.rules[1].observed / 99e6 - 1.0).abs() < 1e-3);
    }

    #[test]
    fn rules_fire_only_above_their_limit() {
        let profile = profile(&[("main;model::predict", 64), ("main;io", 36)]);
        let rules = ["predict>60%", "predict>64%", "io>50%"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        let analysis = analyze(
            &profile,
            &Observations::default(),
            &AnalysisOptions {
                rules,
                ..Default::default()
            },
        );
        let fired: Vec<bool> = analysis.rules.iter().map(|outcome| outcome.fired).collect();
        assert_eq!(fired, vec![true, false, false]);
        assert!(analysis.any_rule_fired());
        assert!((analysis.rules[0].observed - 0.64).abs() < 1e-9);
    }

    #[test]
    fn leak_rules_fire_above_the_candidate_bytes() {
        let rules = ["leak>1MiB", "leak>2MiB"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        let observations = Observations {
            leaked_bytes: 1536 << 10,
            ..Default::default()
        };
        let options = AnalysisOptions {
            rules,
            ..Default::default()
        };
        let analysis = analyze(&Profile::default(), &observations, &options);
        let fired: Vec<bool> = analysis.rules.iter().map(|outcome| outcome.fired).collect();
        assert_eq!(fired, vec![true, false]);
    }
}
