//! Naming the code objects the kernel reported: their qualified name, file and first
//! line, read from the live process, and the module path their file has below its
//! `sys.path` entry.

use std::{
    fs,
    os::unix::fs::FileExt as _,
    path::{Component, Path},
};

use profiler_common::PythonFrame;

use super::{
    interpreter::{Interpreter, ObjectLayout},
    lines::{Encoding, LineTable},
};
use crate::profile::{Language, SourceFunction};

/// Why a reported code object got no name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unresolved {
    /// The process's memory could not be read (it exited).
    ProcessGone,
    /// The address holds no code object any more.
    NotCode,
    /// A different code object lives there now.
    Replaced,
}

impl Unresolved {
    /// The reason as the report names it.
    pub fn name(self) -> &'static str {
        match self {
            Unresolved::ProcessGone => "process_gone",
            Unresolved::NotCode => "not_code",
            Unresolved::Replaced => "replaced",
        }
    }
}

/// Reads the function of a frame the kernel reported, checking that the code object is
/// still the one the kernel saw.
pub fn read_function(
    memory: &fs::File,
    interpreter: &Interpreter,
    frame: &PythonFrame,
) -> Result<SourceFunction, Unresolved> {
    let layout = &interpreter.objects;
    let read_u64 = |address| read_u64(memory, address).ok_or(Unresolved::ProcessGone);
    let object_type = read_u64(frame.code + 8)?;
    if object_type != interpreter.code_type {
        return Err(Unresolved::NotCode);
    }
    let fields = &interpreter.kernel.layout;
    let qualname = read_u64(frame.code + u64::from(fields.code_qualname))?;
    let first_line = read_u64(frame.code + u64::from(fields.code_first_line))? as u32;
    if qualname as u32 != frame.name_stamp || first_line != frame.first_line {
        return Err(Unresolved::Replaced);
    }
    let filename = read_u64(frame.code + layout.code_filename)?;
    Ok(SourceFunction {
        language: Language::Python,
        qualname: read_string(memory, layout, qualname)?,
        file: read_string(memory, layout, filename)?,
        line: first_line,
        module: None,
        entry: false,
        installed: false,
    })
}

/// Longest line table read, in bytes: a function of tens of thousands of lines.
const MAX_LINE_TABLE_BYTES: u64 = 1 << 16;

/// Offsets in a `bytes` object of its length and its data, the same from 3.10 to 3.13.
const BYTES_LENGTH: u64 = 16;
const BYTES_DATA: u64 = 32;

/// Reads the line table of the code object `frame` runs, which [`read_function`] found
/// to be the one the kernel saw.
pub fn read_line_table(
    memory: &fs::File,
    interpreter: &Interpreter,
    frame: &PythonFrame,
) -> Option<LineTable> {
    let read_u64 = |address| read_u64(memory, address);
    let table = read_u64(frame.code + interpreter.objects.code_line_table)?;
    let length = read_u64(table + BYTES_LENGTH)?.min(MAX_LINE_TABLE_BYTES);
    let mut bytes = vec![0; length as usize];
    memory.read_exact_at(&mut bytes, table + BYTES_DATA).ok()?;
    let encoding = match interpreter.version.minor {
        10 => Encoding::AddressLinePairs,
        _ => Encoding::Locations,
    };
    Some(LineTable::new(encoding, frame.first_line, &bytes))
}

/// The 8 bytes of the process's memory at `address`.
fn read_u64(memory: &fs::File, address: u64) -> Option<u64> {
    let mut bytes = [0; 8];
    memory.read_exact_at(&mut bytes, address).ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Bits of a string's `state` field, the same from 3.11 to 3.13.
const KIND_SHIFT: u32 = 2;
const COMPACT_BIT: u32 = 1 << 5;
const ASCII_BIT: u32 = 1 << 6;

/// Longest name read, in characters; longer ones are cut.
const MAX_NAME_CHARS: u64 = 1024;

/// A `str` object's text. Names and file names are compact strings: their characters
/// follow the object header, one to four bytes each.
fn read_string(
    memory: &fs::File,
    layout: &ObjectLayout,
    address: u64,
) -> Result<String, Unresolved> {
    let mut header = [0u8; 36];
    memory
        .read_exact_at(&mut header, address)
        .map_err(|_| Unresolved::ProcessGone)?;
    let length = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
    let state = u32::from_le_bytes(header[32..36].try_into().unwrap_or_default());
    if state & COMPACT_BIT == 0 {
        return Err(Unresolved::NotCode);
    }
    let (data, width) = if state & ASCII_BIT != 0 {
        (layout.ascii_data, 1)
    } else {
        (layout.compact_data, u64::from((state >> KIND_SHIFT) & 7))
    };
    if !matches!(width, 1 | 2 | 4) {
        return Err(Unresolved::NotCode);
    }
    let length = length.min(MAX_NAME_CHARS);
    let mut bytes = vec![0u8; (length * width) as usize];
    memory
        .read_exact_at(&mut bytes, address + data)
        .map_err(|_| Unresolved::ProcessGone)?;
    Ok(match width {
        1 => bytes.iter().map(|&byte| char::from(byte)).collect(),
        2 => bytes
            .as_chunks::<2>()
            .0
            .iter()
            .map(|&pair| char::from_u32(u32::from(u16::from_le_bytes(pair))))
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
        _ => bytes
            .as_chunks::<4>()
            .0
            .iter()
            .map(|&quad| char::from_u32(u32::from_le_bytes(quad)))
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    })
}

/// Whether a directory of a source file's path is where installed code lives: a
/// package directory, or the standard library's (`lib/python3.12`).
fn is_installed_directory(part: &str) -> bool {
    part == "site-packages"
        || part == "dist-packages"
        || (part.starts_with("python3.") && part.len() <= "python3.99".len())
}

/// Whether the source file `file` is installed code, a package's or the standard
/// library's (frozen modules included), rather than the program's own.
pub fn is_installed(file: &str) -> bool {
    file.starts_with("<frozen ")
        || Path::new(file)
            .components()
            .any(|component| match component {
                Component::Normal(part) => is_installed_directory(&part.to_string_lossy()),
                _ => false,
            })
}

/// The module a source file is, as `import` would name it: the part of its path below
/// `site-packages` (or `dist-packages`, or the standard library's directory), or else
/// below the outermost directory that is no package (has no `__init__.py`). `root` is
/// the process's view of the file system (`/proc/PID/root`).
pub fn module_path(file: &Path, root: &Path) -> Option<String> {
    if !file.is_absolute() || file.extension()? != "py" {
        return None;
    }
    let parts: Vec<String> = file
        .with_extension("")
        .components()
        .filter_map(|component| match component {
            Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let installed = parts.iter().rposition(|part| is_installed_directory(part));
    let first = match installed {
        Some(index) => index + 1,
        None => {
            let mut first = parts.len() - 1;
            let mut directory = file.parent();
            while let Some(parent) = directory {
                let relative = parent.strip_prefix("/").unwrap_or(parent);
                if first == 0 || !root.join(relative).join("__init__.py").exists() {
                    break;
                }
                first -= 1;
                directory = parent.parent();
            }
            first
        }
    };
    let mut module: Vec<&str> = parts[first..].iter().map(String::as_str).collect();
    if module.len() > 1 && module.last() == Some(&"__init__") {
        module.pop();
    }
    (!module.is_empty()).then(|| module.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(qualname: &str, module: Option<&str>) -> SourceFunction {
        SourceFunction {
            language: Language::Python,
            qualname: qualname.to_owned(),
            file: "/srv/deepseek/core/model.py".to_owned(),
            line: 42,
            module: module.map(str::to_owned),
            entry: false,
            installed: false,
        }
    }

    #[test]
    fn packages_and_the_standard_library_are_installed_code_and_the_program_is_not() {
        for file in [
            "/venv/lib/python3.12/site-packages/numpy/_core/numeric.py",
            "/usr/lib/python3/dist-packages/flask/app.py",
            "/root/.pyenv/versions/3.12.1/lib/python3.12/threading.py",
            "<frozen importlib._bootstrap>",
        ] {
            assert!(is_installed(file), "{file}");
        }
        assert!(!is_installed("/srv/app/model_service.py"));
    }

    #[test]
    fn a_function_answers_to_its_name_its_qualified_name_and_its_module_path() {
        let method = function("Model.predict", Some("deepseek.core.model"));
        assert_eq!(method.label(), "Model.predict (model.py:42)");
        for name in [
            "predict",
            "Model.predict",
            "deepseek.core.model.Model.predict",
            "deepseek.core.model.predict",
        ] {
            assert!(method.is_named(name), "{name}");
        }
        for name in [
            "redict",
            "model.predict",
            "Model",
            "deepseek.core.predict_all",
        ] {
            assert!(!method.is_named(name), "{name}");
        }
        assert!(function("predict", None).is_named("predict"));
    }

    #[test]
    fn modules_are_named_from_their_place_below_an_import_root() {
        let root = std::env::temp_dir().join(format!("profiler-modules-{}", std::process::id()));
        let package = root.join("srv/app/deepseek/core");
        fs::create_dir_all(&package).unwrap();
        fs::write(root.join("srv/app/deepseek/__init__.py"), "").unwrap();
        fs::write(package.join("__init__.py"), "").unwrap();
        let module = |path: &str| module_path(Path::new(path), &root);
        assert_eq!(
            module("/srv/app/deepseek/core/model.py").as_deref(),
            Some("deepseek.core.model")
        );
        assert_eq!(
            module("/srv/app/deepseek/core/__init__.py").as_deref(),
            Some("deepseek.core")
        );
        assert_eq!(module("/srv/app/serve.py").as_deref(), Some("serve"));
        assert_eq!(
            module("/venv/lib/python3.11/site-packages/flask/app.py").as_deref(),
            Some("flask.app")
        );
        assert_eq!(
            module("/usr/lib/python3.11/json/decoder.py").as_deref(),
            Some("json.decoder")
        );
        assert_eq!(module("<frozen importlib._bootstrap>"), None);
        fs::remove_dir_all(root).unwrap();
    }
}
