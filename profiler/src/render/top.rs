//! `profiler top`'s screen, drawn from a [`TopState`]: a header, the processes when
//! there are several, the rules' live state, and the functions by share over the last
//! seconds and since the start. What fills the state is [`crate::record`]'s.

use std::time::Duration;

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row, Table},
};

use super::summary::{observed, verdict};
use crate::{analyze::RuleOutcome, report::ProcessShare};

/// Which column the functions are sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TopSort {
    /// Own samples over the recent window: where the time goes now, as `perf top` and
    /// `py-spy top` sort by default (by total, a service's outer frames lead at 100 %).
    #[default]
    RecentSelf,
    /// Samples with the function anywhere on the stack, over the recent window.
    RecentTotal,
    /// Own samples since the start.
    AllSelf,
    /// Samples with the function on the stack since the start.
    AllTotal,
}

impl TopSort {
    /// The columns in order, as the keys 1 to 4 pick them.
    pub const COLUMNS: [TopSort; 4] = [
        TopSort::RecentSelf,
        TopSort::RecentTotal,
        TopSort::AllSelf,
        TopSort::AllTotal,
    ];

    fn of(self, function: &TopFunction) -> f64 {
        match self {
            TopSort::RecentSelf => function.recent_self,
            TopSort::RecentTotal => function.recent_total,
            TopSort::AllSelf => function.all_self,
            TopSort::AllTotal => function.all_total,
        }
    }
}

/// One function's shares (0 to 1).
#[derive(Clone, Debug, PartialEq)]
pub struct TopFunction {
    /// As the summary names it.
    pub name: String,
    /// Its own share over the recent window.
    pub recent_self: f64,
    /// Its inclusive share over the recent window.
    pub recent_total: f64,
    /// Its own share since the start.
    pub all_self: f64,
    /// Its inclusive share since the start.
    pub all_total: f64,
}

/// Everything the screen shows.
#[derive(Clone, Debug, Default)]
pub struct TopState {
    /// What is profiled: `model-server (pid 4242)`.
    pub target: String,
    /// Since the start.
    pub elapsed: Duration,
    /// The recent window's length.
    pub recent: Duration,
    /// Samples in the recent window.
    pub recent_samples: u64,
    /// Samples since the start.
    pub all_samples: u64,
    /// The sampling rate.
    pub frequency_hz: u32,
    /// Functions, sorted by `sort`.
    pub functions: Vec<TopFunction>,
    /// Processes by share, when there are several.
    pub processes: Vec<ProcessShare>,
    /// The `--fail-on` rules, judged on everything so far.
    pub rules: Vec<RuleOutcome>,
    /// Records lost, by counter, where any were.
    pub losses: Vec<(String, u64)>,
    /// The sort column.
    pub sort: TopSort,
    /// Whether the screen is held (the recording goes on).
    pub paused: bool,
}

impl TopState {
    /// Sorts the functions by the chosen column, largest first.
    pub fn sort_functions(&mut self) {
        let sort = self.sort;
        self.functions.sort_by(|a, b| {
            sort.of(b)
                .total_cmp(&sort.of(a))
                .then_with(|| a.name.cmp(&b.name))
        });
    }
}

/// Draws `state` over the whole frame.
pub fn draw(frame: &mut Frame<'_>, state: &TopState) {
    let mut header = vec![
        Line::from(format!(
            "profiler top: {}   {:.0} s, {} samples at {} Hz ({} in the last {:.0} s){}",
            state.target,
            state.elapsed.as_secs_f64(),
            state.all_samples,
            state.frequency_hz,
            state.recent_samples,
            state.recent.as_secs_f64(),
            if state.paused { "   [paused]" } else { "" },
        )),
        Line::from(if state.losses.is_empty() {
            "Lost: none".to_owned()
        } else {
            let lost: Vec<String> = state
                .losses
                .iter()
                .map(|(counter, count)| format!("{counter} {count}"))
                .collect();
            format!("Lost: {}", lost.join(", "))
        }),
    ];
    for outcome in &state.rules {
        header.push(Line::from(format!(
            "Rule {}: {} ({})",
            outcome.rule,
            verdict(outcome),
            observed(outcome)
        )));
    }
    let process_rows = if state.processes.len() > 1 {
        state.processes.len() as u16 + 1
    } else {
        0
    };
    let [header_area, processes_area, functions_area, keys_area] = Layout::vertical([
        Constraint::Length(header.len() as u16),
        Constraint::Length(process_rows),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header), header_area);
    if process_rows > 0 {
        frame.render_widget(processes(state), processes_area);
    }
    frame.render_widget(functions(state), functions_area);
    frame.render_widget(
        Paragraph::new("q quit   p pause   1-4 sort by that column")
            .style(Style::new().add_modifier(Modifier::DIM)),
        keys_area,
    );
}

fn processes(state: &TopState) -> Table<'_> {
    let samples: u64 = state.processes.iter().map(|process| process.samples).sum();
    let rows = state.processes.iter().map(move |process| {
        Row::new([
            format!(
                "{:>5.1}%",
                process.samples as f64 / samples.max(1) as f64 * 100.0
            ),
            process.pid.to_string(),
            process.threads.to_string(),
            process.name.clone(),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
    )
    .header(bold_row(["SHARE", "PID", "THREADS", "PROCESS"]))
}

fn functions(state: &TopState) -> Table<'_> {
    let recent = format!("{:.0}s", state.recent.as_secs_f64());
    let titles = [
        format!("%SELF({recent})"),
        format!("%TOTAL({recent})"),
        "%SELF(all)".to_owned(),
        "%TOTAL(all)".to_owned(),
        "FUNCTION".to_owned(),
    ];
    let sorted = TopSort::COLUMNS
        .iter()
        .position(|&sort| sort == state.sort)
        .unwrap_or(0);
    let header = bold_row(titles.into_iter().enumerate().map(|(column, title)| {
        if column == sorted {
            format!("{title}▼")
        } else {
            title
        }
    }));
    let rows = state.functions.iter().map(|function| {
        Row::new([
            percent(function.recent_self),
            percent(function.recent_total),
            percent(function.all_self),
            percent(function.all_total),
            function.name.clone(),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Fill(1),
        ],
    )
    .header(header)
}

fn bold_row<'a, T: Into<Cell<'a>>>(titles: impl IntoIterator<Item = T>) -> Row<'a> {
    Row::new(titles).style(Style::new().add_modifier(Modifier::BOLD))
}

fn percent(share: f64) -> String {
    format!("{:>6.1}%", share * 100.0)
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;

    fn function(name: &str, recent_total: f64, all_total: f64) -> TopFunction {
        TopFunction {
            name: name.to_owned(),
            recent_self: recent_total / 2.0,
            recent_total,
            all_self: all_total / 2.0,
            all_total,
        }
    }

    fn screen(state: &TopState) -> String {
        let mut terminal = Terminal::new(TestBackend::new(110, 16)).unwrap();
        terminal.draw(|frame| draw(frame, state)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn functions_are_sorted_by_the_chosen_column_and_shown_with_their_shares() {
        let mut state = TopState {
            target: "server (pid 7)".to_owned(),
            recent: Duration::from_secs(5),
            functions: vec![function("cold", 0.2, 0.6), function("hot", 0.7, 0.3)],
            ..TopState::default()
        };
        state.sort_functions();
        let text = screen(&state);
        let hot = text.find("hot").unwrap();
        assert!(hot < text.find("cold").unwrap(), "{text}");
        assert!(text.contains("%SELF(5s)▼"), "{text}");
        assert!(text.contains("  70.0%"), "{text}");

        state.sort = TopSort::AllTotal;
        state.sort_functions();
        let text = screen(&state);
        assert!(
            text.find("cold").unwrap() < text.find("hot").unwrap(),
            "{text}"
        );
        // One process: no process table.
        assert!(!text.contains("PROCESS"), "{text}");
    }
}
