//! `profiler diff`: compares the on-CPU profiles of two JSON reports, writes the
//! differential flame graph, prints the largest moves and judges the growth gates.

use std::{fs, path::Path, path::PathBuf};

use crate::{
    compare::{Comparison, GrowthRule, compare},
    exit::Failure,
    profile::Profile,
    render::{OutputFile, differential, json, svg::FlameGraphLabels},
};

/// Everything `profiler diff` needs to know.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    /// The report of the base recording (the last good build).
    pub base: PathBuf,
    /// The report of the new recording.
    pub new: PathBuf,
    /// Where to write the differential flame graph.
    pub svg: PathBuf,
    /// The growth gates.
    pub rules: Vec<GrowthRule>,
    /// Rows of the table of moves.
    pub top: usize,
}

/// Reads both reports, writes the differential flame graph, prints the moves and the
/// gates, and returns the comparison.
pub fn diff(options: &DiffOptions) -> Result<Comparison, Failure> {
    let base = read_profile(&options.base)?;
    let new = read_profile(&options.new)?;
    let output = OutputFile::create(&options.svg)?;
    let comparison = compare(&base, &new, &options.rules);
    let labels = FlameGraphLabels {
        title: "Differential on-CPU flame graph".to_owned(),
        subtitle: format!(
            "{} → {}: widths are the new samples, red grew and blue shrank (base scaled to the new total)",
            options.base.display(),
            options.new.display(),
        ),
        count_name: "samples".to_owned(),
    };
    let written =
        output.write_with(|writer| differential::write_svg(&comparison, &labels, writer))?;
    print!("{}", differential::text(&comparison, options.top));
    println!("\nWrote {}", written.display());
    Ok(comparison)
}

fn read_profile(path: &Path) -> Result<Profile, Failure> {
    let unreadable =
        |reason: String| Failure::Input(format!("cannot read {}: {reason}", path.display()));
    let text = fs::read_to_string(path).map_err(|error| unreadable(error.to_string()))?;
    let document = serde_json::from_str(&text).map_err(|error| unreadable(error.to_string()))?;
    json::cpu_profile(&document).map_err(unreadable)
}
