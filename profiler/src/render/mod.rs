//! Writing a recording out: the flame graph, collapsed stacks, the JSON report, pprof
//! profiles and the terminal summary.
//!
//! Output files are opened before the recording starts ([`OutputFiles::create`]), so
//! that a path that can't be written fails at once instead of after the recording.

pub mod differential;
pub mod folded;
pub mod json;
pub mod pprof;
pub mod prometheus;
pub mod summary;
pub mod svg;

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use crate::{attach::EventSet, exit::Failure, render::pprof::PprofKind};

/// Where to write each output; `None` leaves that output out.
#[derive(Clone, Debug)]
pub struct OutputPaths {
    /// The on-CPU flame graph SVG, written when CPU samples are recorded.
    pub svg: PathBuf,
    /// The off-CPU flame graph SVG, written when off-CPU time is recorded.
    pub offcpu_svg: PathBuf,
    /// The flame graph of leaked bytes, written when allocations are tracked.
    pub leaks_svg: PathBuf,
    /// Collapsed stacks, as `flamegraph.pl` and inferno read them.
    pub folded: Option<PathBuf>,
    /// The machine-readable report.
    pub json: Option<PathBuf>,
    /// The pprof profiles: the on-CPU one here, the others next to it
    /// ([`pprof::PprofKind::path`]).
    pub pprof: Option<PathBuf>,
}

impl Default for OutputPaths {
    fn default() -> Self {
        OutputPaths {
            svg: PathBuf::from("flamegraph.svg"),
            offcpu_svg: PathBuf::from("offcpu.svg"),
            leaks_svg: PathBuf::from("leaks.svg"),
            folded: None,
            json: None,
            pprof: None,
        }
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
        write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
    ) -> anyhow::Result<PathBuf> {
        let mut writer = BufWriter::new(self.file);
        write(&mut writer)
            .and_then(|()| writer.flush())
            .map_err(|error| anyhow::anyhow!("writing {}: {error}", self.path.display()))?;
        Ok(self.path)
    }
}

/// Every output file, opened.
pub struct OutputFiles {
    /// The on-CPU flame graph SVG.
    pub svg: Option<OutputFile>,
    /// The off-CPU flame graph SVG.
    pub offcpu_svg: Option<OutputFile>,
    /// The leaked-bytes flame graph SVG.
    pub leaks_svg: Option<OutputFile>,
    /// Collapsed stacks.
    pub folded: Option<OutputFile>,
    /// The JSON report.
    pub json: Option<OutputFile>,
    /// The pprof profile of each recorded kind.
    pub pprof: Vec<(PprofKind, OutputFile)>,
}

impl OutputFiles {
    /// Opens (creating or truncating) every output that `events` calls for, failing on
    /// the first that can't be.
    pub fn create(paths: &OutputPaths, events: EventSet) -> Result<Self, Failure> {
        let optional = |path: &Option<PathBuf>| path.as_deref().map(OutputFile::create).transpose();
        let when = |wanted: bool, path: &Path| wanted.then(|| OutputFile::create(path)).transpose();
        Ok(OutputFiles {
            svg: when(events.cpu, &paths.svg)?,
            offcpu_svg: when(events.offcpu, &paths.offcpu_svg)?,
            leaks_svg: when(events.alloc, &paths.leaks_svg)?,
            folded: optional(&paths.folded)?,
            json: optional(&paths.json)?,
            pprof: match &paths.pprof {
                Some(path) => PprofKind::recorded(events)
                    .map(|kind| Ok((kind, OutputFile::create(&kind.path(path))?)))
                    .collect::<Result<_, Failure>>()?,
                None => Vec::new(),
            },
        })
    }
}

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
