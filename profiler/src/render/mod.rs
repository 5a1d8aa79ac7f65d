//! Writing a recording out: the flame graph, collapsed stacks, the JSON report and the
//! terminal summary.
//!
//! Output files are opened before the recording starts ([`OutputFiles::create`]), so
//! that a path that can't be written fails at once instead of after the recording.

pub mod folded;
pub mod json;
pub mod summary;
pub mod svg;

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use crate::exit::Failure;

/// Where to write each output; `None` leaves that output out.
#[derive(Clone, Debug)]
pub struct OutputPaths {
    /// The flame graph SVG.
    pub svg: PathBuf,
    /// Collapsed stacks, as `flamegraph.pl` and inferno read them.
    pub folded: Option<PathBuf>,
    /// The machine-readable report.
    pub json: Option<PathBuf>,
}

impl Default for OutputPaths {
    fn default() -> Self {
        OutputPaths {
            svg: PathBuf::from("flamegraph.svg"),
            folded: None,
            json: None,
        }
    }
}

/// An output file opened for writing.
pub struct OutputFile {
    path: PathBuf,
    file: File,
}

impl OutputFile {
    fn create(path: &Path) -> Result<Self, Failure> {
        let file = File::create(path).map_err(|error| {
            Failure::Output(format!("cannot write {}: {error}", path.display()))
        })?;
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
    /// The flame graph SVG.
    pub svg: OutputFile,
    /// Collapsed stacks.
    pub folded: Option<OutputFile>,
    /// The JSON report.
    pub json: Option<OutputFile>,
}

impl OutputFiles {
    /// Opens (creating or truncating) every output, failing on the first that can't be.
    pub fn create(paths: &OutputPaths) -> Result<Self, Failure> {
        let optional = |path: &Option<PathBuf>| path.as_deref().map(OutputFile::create).transpose();
        Ok(OutputFiles {
            svg: OutputFile::create(&paths.svg)?,
            folded: optional(&paths.folded)?,
            json: optional(&paths.json)?,
        })
    }
}
