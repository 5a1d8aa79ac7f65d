//! `profiler top`: the live, full-screen view of a recording, refreshed every second
//! from a window of the collector's samples, as the metrics are: no second
//! aggregation path. [`crate::render::top`] draws it.

use std::{
    collections::{HashMap, VecDeque},
    io::{self, Stdout},
    time::Duration,
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
        execute, terminal,
    },
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::{
    RecordOptions,
    collector::{Collector, LiveWindow},
    live::{METRICS_WINDOW, Tables},
};
use crate::{
    analyze::{Observations, analyze, function_shares},
    exit::Failure,
    profile::Profile,
    render::{
        summary::display_name,
        top::{TopFunction, TopSort, TopState, draw},
    },
    report::{Losses, process_shares},
};

/// How often the screen is refreshed.
pub(super) const REFRESH: Duration = Duration::from_secs(1);

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Key {
    /// `q`, Esc or Ctrl-C: end the recording.
    Quit,
    /// `p` or space: hold the screen, or let it go.
    Pause,
    /// `1` to `4`: sort by that column.
    Sort(TopSort),
}

/// Samples of one window, or of several added up: each function's own and inclusive
/// samples, by name.
#[derive(Default)]
struct Counts {
    samples: u64,
    functions: HashMap<String, (u64, u64)>,
}

impl Counts {
    /// The counts of a window's profile; process roots, which every sample passes
    /// through, are left out as the hotspots leave them.
    fn of(profile: &Profile) -> Counts {
        let mut counts = Counts {
            samples: profile.samples(),
            ..Counts::default()
        };
        for function in function_shares(profile)
            .iter()
            .filter(|function| function.frame.process.is_none() && !function.frame.is_entry_point())
        {
            let entry = counts
                .functions
                .entry(display_name(&function.frame))
                .or_default();
            entry.0 += function.self_samples;
            entry.1 += function.total_samples;
        }
        counts
    }

    fn add(&mut self, other: &Counts) {
        self.samples += other.samples;
        for (name, (own, total)) in &other.functions {
            let entry = self.functions.entry(name.clone()).or_default();
            entry.0 += own;
            entry.1 += total;
        }
    }

    fn share(&self, samples: u64) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            samples as f64 / self.samples as f64
        }
    }
}

/// The live view: the terminal it owns, the keys typed, and the windows it shows.
pub(super) struct TopView {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    keys: Option<UnboundedReceiver<Key>>,
    /// The last [`METRICS_WINDOW`]'s worth of one-second windows, oldest first.
    recent: VecDeque<Counts>,
    since_start: Counts,
    threads: HashMap<(u32, u32), u64>,
    process_names: HashMap<u32, String>,
    state: TopState,
}

impl TopView {
    /// Takes over the terminal (raw mode, the alternate screen) until dropped, and
    /// starts reading keys.
    pub(super) fn start(target: String, frequency_hz: u32) -> Result<Self, Failure> {
        let terminal_failure =
            |error: io::Error| Failure::Output(format!("cannot take over the terminal: {error}"));
        terminal::enable_raw_mode().map_err(terminal_failure)?;
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous_hook(info);
        }));
        let mut stdout = io::stdout();
        execute!(stdout, terminal::EnterAlternateScreen, cursor::Hide).map_err(terminal_failure)?;
        let terminal = Terminal::new(CrosstermBackend::new(stdout)).map_err(terminal_failure)?;
        let (sender, keys) = unbounded_channel();
        // Reading keys blocks; a thread of its own does it for the whole run.
        std::thread::spawn(move || {
            while let Ok(event) = event::read() {
                if let Some(key) = key_of(&event)
                    && sender.send(key).is_err()
                {
                    break;
                }
            }
        });
        let mut view = TopView {
            terminal,
            keys: Some(keys),
            recent: VecDeque::new(),
            since_start: Counts::default(),
            threads: HashMap::new(),
            process_names: HashMap::new(),
            state: TopState {
                target,
                frequency_hz,
                recent: METRICS_WINDOW,
                ..TopState::default()
            },
        };
        view.draw();
        Ok(view)
    }

    /// The keys typed from now on; taken once, by the loop that waits for them.
    pub(super) fn take_keys(&mut self) -> Option<UnboundedReceiver<Key>> {
        self.keys.take()
    }

    /// Acts on `key`; true when it asks to end the recording.
    pub(super) fn press(&mut self, key: Key) -> bool {
        match key {
            Key::Quit => return true,
            Key::Pause => self.state.paused = !self.state.paused,
            Key::Sort(sort) => {
                self.state.sort = sort;
                self.state.sort_functions();
            }
        }
        self.draw();
        false
    }

    /// Adds the samples since the last refresh, judges the rules on everything so
    /// far, and redraws unless paused.
    pub(super) fn refresh(
        &mut self,
        collector: &mut Collector,
        options: &RecordOptions,
        tables: &Tables<'_>,
        malformed: u64,
        elapsed: Duration,
    ) {
        let (window, threads) = collector.take_window(LiveWindow::Top);
        let counts = if options.lines {
            Counts::of(&window.by_line())
        } else {
            Counts::of(&window)
        };
        self.since_start.add(&counts);
        self.recent.push_back(counts);
        let kept = (METRICS_WINDOW.as_secs_f64() / REFRESH.as_secs_f64()).round() as usize;
        while self.recent.len() > kept {
            self.recent.pop_front();
        }
        for (thread, samples) in threads {
            *self.threads.entry(thread).or_default() += samples;
        }
        let mut recent = Counts::default();
        self.recent.iter().for_each(|window| recent.add(window));

        let state = &mut self.state;
        state.elapsed = elapsed;
        state.recent_samples = recent.samples;
        state.all_samples = self.since_start.samples;
        state.functions = self
            .since_start
            .functions
            .iter()
            .map(|(name, &(all_self, all_total))| {
                let (recent_self, recent_total) =
                    recent.functions.get(name).copied().unwrap_or_default();
                TopFunction {
                    name: name.clone(),
                    recent_self: recent.share(recent_self),
                    recent_total: recent.share(recent_total),
                    all_self: self.since_start.share(all_self),
                    all_total: self.since_start.share(all_total),
                }
            })
            .collect();
        state.sort_functions();
        let names = &mut self.process_names;
        state.processes = process_shares(
            self.threads
                .iter()
                .map(|(&thread, &samples)| (thread, samples)),
            |pid| {
                names
                    .entry(pid)
                    .or_insert_with(|| crate::target::process_name(pid))
                    .clone()
            },
        );
        if !options.analysis.rules.is_empty() {
            let so_far = collector.cpu_so_far();
            state.rules = analyze(&so_far, &Observations::default(), &options.analysis).rules;
        }
        state.losses = Losses::read(tables.losses, malformed)
            .counters
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(|(counter, count)| (format!("{counter:?}"), count))
            .collect();
        if !self.state.paused {
            self.draw();
        }
    }

    fn draw(&mut self) {
        // A screen that cannot be drawn is not worth stopping the recording for.
        let _ = self.terminal.draw(|frame| draw(frame, &self.state));
    }
}

impl Drop for TopView {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Gives the terminal back as it was: out of raw mode, the main screen, the cursor.
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

fn key_of(event: &Event) -> Option<Key> {
    let Event::Key(key) = event else {
        return None;
    };
    if key.kind != KeyEventKind::Press {
        return None;
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => Some(Key::Quit),
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Some(Key::Quit),
        KeyCode::Char('p' | ' ') => Some(Key::Pause),
        KeyCode::Char(digit @ '1'..='4') => {
            Some(Key::Sort(TopSort::COLUMNS[digit as usize - '1' as usize]))
        }
        _ => None,
    }
}
