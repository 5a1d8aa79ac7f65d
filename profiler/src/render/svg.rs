//! The flame graphs, drawn by inferno from the collapsed stacks.

use std::io::{self, Write};

use inferno::flamegraph::{
    self,
    color::{MultiPalette, Palette},
};

use super::{Output, Written, folded, summary};
use crate::{attach::EventSet, report::ProfileKind};

/// The flame graph of one of a recording's profiles (`-o`, `--offcpu-output`,
/// `--leaks-output`).
#[derive(Clone, Copy, Debug)]
pub struct FlameGraph(pub ProfileKind);

impl Output for FlameGraph {
    fn applies_to(&self, events: EventSet) -> bool {
        self.0.recorded_in(events)
    }

    fn is_flame_graph(&self) -> bool {
        true
    }

    fn write(&self, written: &Written<'_>, mut writer: &mut dyn Write) -> io::Result<()> {
        let report = written.report;
        let (mut labels, unit) = match self.0 {
            ProfileKind::Cpu => (summary::flame_graph_labels(report), 1),
            // Blocked time is drawn in microseconds: nanoseconds would make every width
            // a ten-digit number.
            ProfileKind::OffCpu => (summary::offcpu_flame_graph_labels(report), 1000),
            ProfileKind::Leaks => (summary::leaks_flame_graph_labels(report), 1),
        };
        if let Some(interval) = written.interval {
            labels.title += &format!(
                " (interval {}: {:.1} s to {:.1} s)",
                interval.index,
                interval.start.as_secs_f64(),
                interval.end.as_secs_f64()
            );
        }
        match self.0 {
            ProfileKind::Cpu => draw(written.cpu_folded(), &labels, &mut writer),
            kind => draw(
                &folded::lines(&report.drawn_profile(kind), unit),
                &labels,
                &mut writer,
            ),
        }
    }
}

/// What the flame graph's title and legend say.
pub struct FlameGraphLabels {
    /// The title, naming the target.
    pub title: String,
    /// The line under the title: sample count, rate and duration.
    pub subtitle: String,
    /// What one unit of width is, such as "samples".
    pub count_name: String,
}

/// Draws the flame graph of `folded_lines`. With no samples at all it still writes a valid
/// SVG that says so, since inferno refuses empty input.
pub fn draw(
    folded_lines: &[String],
    labels: &FlameGraphLabels,
    writer: &mut impl Write,
) -> io::Result<()> {
    if folded_lines.is_empty() {
        return write!(
            writer,
            r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="600" y="24" text-anchor="middle" font-family="Verdana" font-size="17">{}</text><text x="600" y="48" text-anchor="middle" font-family="Verdana" font-size="12">No samples were recorded.</text></svg>"#,
            escape(&labels.title)
        );
    }
    let mut options = flamegraph::Options::default();
    options.title = labels.title.clone();
    options.subtitle = Some(labels.subtitle.clone());
    options.count_name = labels.count_name.clone();
    // This palette draws frames ending in `_[k]` in orange and `_[j]` in green, apart
    // from the other user frames.
    options.colors = Palette::Multi(MultiPalette::Perl);
    flamegraph::from_lines(
        &mut options,
        folded_lines.iter().map(String::as_str),
        writer,
    )
    .map_err(io::Error::other)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
