//! Writing a recording out: the flame graphs, collapsed stacks, the JSON report, pprof
//! profiles, speedscope files, each an [`Output`]; and the terminal summary and the
//! live metrics.
//!
//! Output files are opened before the recording starts ([`OutputFiles::create`]), so
//! that a path that can't be written fails at once instead of after the recording.

pub mod differential;
pub mod folded;
pub mod json;
pub mod pprof;
pub mod prometheus;
pub mod speedscope;
pub mod summary;
pub mod svg;
pub mod top;

use std::{
    cell::OnceCell,
    fmt,
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    attach::EventSet,
    exit::Failure,
    report::{ProfileKind, Report},
};

/// One way of writing a finished recording to a file. A new format is a new module
/// with one of these, and a line where the command line names its file.
pub trait Output: fmt::Debug + Send + Sync {
    /// Whether a recording of `events` gives this output anything to write.
    fn applies_to(&self, events: EventSet) -> bool;

    /// Whether this is a flame graph: those are written first, so that the JSON report
    /// can say how soon after the stop they were there.
    fn is_flame_graph(&self) -> bool {
        false
    }

    /// Writes `written.report` in this format.
    fn write(&self, written: &Written<'_>, writer: &mut dyn Write) -> io::Result<()>;
}

/// What an output is written from.
pub struct Written<'r> {
    /// The recording, or one `--interval` of it.
    pub report: &'r Report,
    /// How long after the stop the flame graphs were written; zero for an interval.
    pub stop_to_svg: Duration,
    /// Which interval the report covers, for `--interval` snapshots.
    pub interval: Option<Interval>,
    /// The on-CPU profile's collapsed lines, made once for the flame graph and
    /// `--folded`, which both need them.
    cpu_folded: OnceCell<Vec<String>>,
}

impl<'r> Written<'r> {
    fn new(report: &'r Report, interval: Option<Interval>) -> Written<'r> {
        Written {
            report,
            stop_to_svg: Duration::ZERO,
            interval,
            cpu_folded: OnceCell::new(),
        }
    }

    /// The on-CPU profile's collapsed lines ([`folded::lines`] of one sample each).
    pub fn cpu_folded(&self) -> &[String] {
        self.cpu_folded
            .get_or_init(|| folded::lines(&self.report.drawn_profile(ProfileKind::Cpu), 1))
    }
}

/// An `--interval` snapshot's place in the recording.
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    /// 1 for the first.
    pub index: u32,
    /// Its start, from the start of the recording.
    pub start: Duration,
    /// Its end, from the start of the recording.
    pub end: Duration,
}

/// An output and the file it goes to.
#[derive(Clone, Debug)]
pub struct OutputPath {
    /// The format.
    pub output: Arc<dyn Output>,
    /// The file.
    pub path: PathBuf,
}

impl OutputPath {
    /// `output` into `path`.
    pub fn new(output: impl Output + 'static, path: impl Into<PathBuf>) -> Self {
        OutputPath {
            output: Arc::new(output),
            path: path.into(),
        }
    }
}

/// The outputs asked for, in the order they are written.
#[derive(Clone, Debug)]
pub struct OutputPaths(pub Vec<OutputPath>);

impl OutputPaths {
    /// The flame graphs only, at their default paths, as `profiler record` with no
    /// output option writes them.
    pub fn flame_graphs() -> Self {
        OutputPaths(vec![
            OutputPath::new(svg::FlameGraph(ProfileKind::Cpu), "flamegraph.svg"),
            OutputPath::new(svg::FlameGraph(ProfileKind::OffCpu), "offcpu.svg"),
            OutputPath::new(svg::FlameGraph(ProfileKind::Leaks), "leaks.svg"),
        ])
    }

    /// The outputs of a recording of `events`: those with something to write.
    fn applying_to(&self, events: EventSet) -> impl Iterator<Item = &OutputPath> {
        self.0
            .iter()
            .filter(move |output| output.output.applies_to(events))
    }
}

impl Default for OutputPaths {
    fn default() -> Self {
        OutputPaths::flame_graphs()
    }
}

/// `path` with `.N` (three digits at least) before its extension: the file of the Nth
/// `--interval` snapshot (`flame.svg` → `flame.001.svg`).
pub fn numbered(path: &Path, index: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |stem| stem.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(extension) => format!("{stem}.{index:03}.{}", extension.to_string_lossy()),
        None => format!("{stem}.{index:03}"),
    };
    path.with_file_name(name)
}

/// The user and group who ran `sudo`, when the profiler runs as root under it.
fn sudo_user() -> Option<(u32, u32)> {
    // SAFETY: no arguments, no side effects.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |name: &str| std::env::var(name).ok()?.parse::<u32>().ok();
    Some((id("SUDO_UID")?, id("SUDO_GID")?))
}

/// An output file opened for writing.
pub struct OutputFile {
    path: PathBuf,
    file: File,
}

impl OutputFile {
    /// Opens `path` for writing, creating or truncating it. Under `sudo` it belongs to
    /// the user who ran sudo, as perf's data file does.
    pub fn create(path: &Path) -> Result<Self, Failure> {
        let file = File::create(path).map_err(|error| {
            Failure::Output(format!("cannot write {}: {error}", path.display()))
        })?;
        if let Some((uid, gid)) = sudo_user() {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|error| {
                Failure::Output(format!(
                    "cannot give {} to uid {uid}: {error}",
                    path.display()
                ))
            })?;
        }
        Ok(OutputFile {
            path: path.to_owned(),
            file,
        })
    }

    /// Writes the whole file through `write` and flushes it.
    pub fn write_with(
        self,
        write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
    ) -> anyhow::Result<PathBuf> {
        let mut writer = BufWriter::new(self.file);
        write(&mut writer)
            .and_then(|()| writer.flush())
            .map_err(|error| anyhow::anyhow!("writing {}: {error}", self.path.display()))?;
        Ok(self.path)
    }
}

/// Every output file of a recording, opened, in the order they are written.
pub struct OutputFiles(Vec<(Arc<dyn Output>, OutputFile)>);

impl OutputFiles {
    /// Opens (creating or truncating) every output that `events` calls for, failing on
    /// the first that can't be.
    pub fn create(paths: &OutputPaths, events: EventSet) -> Result<Self, Failure> {
        paths
            .applying_to(events)
            .map(|output| Ok((output.output.clone(), OutputFile::create(&output.path)?)))
            .collect::<Result<_, Failure>>()
            .map(OutputFiles)
    }

    /// Writes every output of `report`, the flame graphs first, and returns the paths
    /// written. The time from `stopped` to the flame graphs on disk goes into the
    /// outputs written after them.
    pub fn write(self, report: &Report, stopped: Instant) -> anyhow::Result<Vec<PathBuf>> {
        let (flame_graphs, others): (Vec<_>, Vec<_>) = self
            .0
            .into_iter()
            .partition(|(output, _)| output.is_flame_graph());
        let mut written = Written::new(report, None);
        let mut paths = Vec::new();
        for (output, file) in flame_graphs {
            paths.push(file.write_with(|writer| output.write(&written, writer))?);
        }
        written.stop_to_svg = stopped.elapsed();
        for (output, file) in others {
            paths.push(file.write_with(|writer| output.write(&written, writer))?);
        }
        Ok(paths)
    }
}

/// Writes each output of `paths` that an interval's report has something for, to its
/// numbered file ([`numbered`]). A file that can't be written is reported and the others
/// are still written.
pub fn write_interval(paths: &OutputPaths, report: &Report, interval: Interval) {
    let written = Written::new(report, Some(interval));
    for output in paths.applying_to(INTERVAL_EVENTS) {
        let result = OutputFile::create(&numbered(&output.path, interval.index))
            .map_err(anyhow::Error::from)
            .and_then(|file| file.write_with(|writer| output.output.write(&written, writer)));
        if let Err(error) = result {
            eprintln!("profiler: warning: interval {}: {error:#}", interval.index);
        }
    }
}

/// What an interval's report holds: its CPU samples, and nothing else is gathered per
/// interval.
const INTERVAL_EVENTS: EventSet = EventSet {
    cpu: true,
    syscalls: false,
    io: false,
    offcpu: false,
    alloc: false,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_numbered_before_the_extension() {
        assert_eq!(
            numbered(Path::new("out/flame.svg"), 7),
            Path::new("out/flame.007.svg")
        );
        assert_eq!(
            numbered(Path::new("report"), 1234),
            Path::new("report.1234")
        );
    }
}
