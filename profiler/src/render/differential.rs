//! `profiler diff`'s outputs: the differential flame graph and the table of the functions
//! whose share moved most.

use std::io::{self, Write};

use crate::{
    compare::Comparison,
    render::{folded, summary::display_name, svg},
};

/// Draws the differential flame graph: frames as wide as the new profile's samples,
/// red where a stack grew and blue where it shrank, after scaling the base to the new
/// profile's total so that recordings of different lengths compare.
pub fn write_svg(
    comparison: &Comparison,
    labels: &svg::FlameGraphLabels,
    writer: &mut impl Write,
) -> io::Result<()> {
    let base = folded::lines(&comparison.base, 1).join("\n");
    let new = folded::lines(&comparison.new, 1).join("\n");
    let options = inferno::differential::Options {
        normalize: true,
        ..Default::default()
    };
    let mut merged = Vec::new();
    inferno::differential::from_readers(options, base.as_bytes(), new.as_bytes(), &mut merged)?;
    let lines: Vec<String> = String::from_utf8_lossy(&merged)
        .lines()
        .map(str::to_owned)
        .collect();
    svg::draw(&lines, labels, writer)
}

/// The terminal table: the `top` largest moves in inclusive share, then the gates.
pub fn text(comparison: &Comparison, top: usize) -> String {
    let mut text = format!(
        "Samples: {} in the base, {} in the new recording.\n\nInclusive on-CPU share, largest moves first:\n   change     base      new  function\n",
        comparison.base.samples(),
        comparison.new.samples(),
    );
    let moved = comparison
        .movements
        .iter()
        .filter(|movement| movement.points().abs() >= 0.05)
        .take(top);
    for movement in moved {
        text += &format!(
            "{:+7.1}pt  {:5.1}%  {:5.1}%  {}\n",
            movement.points(),
            movement.base_share * 100.0,
            movement.new_share * 100.0,
            display_name(&movement.frame),
        );
    }
    if !comparison.rules.is_empty() {
        text += "\nRules:\n";
        for outcome in &comparison.rules {
            text += &format!("  {outcome}\n");
        }
    }
    text
}
