//! tracefs: where the kernel describes its tracepoints.
//!
//! Tracepoint programs are attached by the ids tracefs gives, and the layout of each
//! tracepoint's record differs between kernels, so the offsets of the fields the BPF
//! programs read are taken from tracefs's format files at run time.

use std::{
    fs,
    path::{Path, PathBuf},
};

use profiler_common::TracepointField;

use crate::exit::Failure;

const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs mount, mounting it at `/sys/kernel/tracing` if it is not mounted yet:
/// a fresh boot often leaves it out.
pub fn ensure_mounted() -> Result<PathBuf, Failure> {
    if let Some(root) = mounted() {
        return Ok(root);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: plain syscall with valid NUL-terminated strings.
    let result = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        return Err(Failure::KernelFeature(format!(
            "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({error}): \
             run `mount -t tracefs tracefs /sys/kernel/tracing`"
        )));
    }
    mounted().ok_or_else(|| {
        Failure::KernelFeature("tracefs is mounted but has no events/ folder".to_owned())
    })
}

fn mounted() -> Option<PathBuf> {
    MOUNT_POINTS
        .iter()
        .map(PathBuf::from)
        .find(|root| root.join("events").is_dir())
}

/// The offsets of every [`TracepointField`], indexed by it, read from `root`'s format
/// files.
pub fn field_offsets(root: &Path) -> Result<[u32; TracepointField::COUNT], Failure> {
    use TracepointField::*;
    // block_rq_insert has the same event class, and so the same layout, as block_rq_issue.
    let events: [(&str, &[(TracepointField, &str)]); 2] = [
        (
            "block/block_rq_issue",
            &[
                (BlockRqDev, "dev"),
                (BlockRqSector, "sector"),
                (BlockRqBytes, "bytes"),
                (BlockRqRwbs, "rwbs"),
            ],
        ),
        (
            "block/block_rq_complete",
            &[
                (BlockCompleteDev, "dev"),
                (BlockCompleteSector, "sector"),
                (BlockCompleteError, "error"),
            ],
        ),
    ];
    let mut offsets = [0; TracepointField::COUNT];
    for (event, fields) in events {
        let path = root.join("events").join(event).join("format");
        let format = fs::read_to_string(&path).map_err(|error| {
            Failure::KernelFeature(format!(
                "the kernel has no tracepoint {event} ({}: {error})",
                path.display()
            ))
        })?;
        for &(field, name) in fields {
            offsets[field as usize] = field_offset(&format, name).ok_or_else(|| {
                Failure::KernelFeature(format!("tracepoint {event} has no field `{name}`"))
            })?;
        }
    }
    Ok(offsets)
}

/// The offset of field `name` in a tracepoint format file, whose lines read like
/// `field:unsigned int bytes; offset:28; size:4; signed:0;` (tab-separated).
fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';');
        let declaration = parts.next()?.strip_prefix("field:")?;
        let declared = declaration
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()?;
        let declared = declared.split('[').next()?;
        if declared != name {
            return None;
        }
        parts.find_map(|part| part.trim().strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK_RQ_ISSUE: &str = "name: block_rq_issue
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
\tfield:unsigned int bytes;\toffset:28;\tsize:4;\tsigned:0;
\tfield:char rwbs[10];\toffset:34;\tsize:10;\tsigned:0;
\tfield:__data_loc char[] cmd;\toffset:60;\tsize:4;\tsigned:0;
";

    #[test]
    fn offsets_are_read_by_field_name_including_arrays() {
        assert_eq!(field_offset(BLOCK_RQ_ISSUE, "dev"), Some(8));
        assert_eq!(field_offset(BLOCK_RQ_ISSUE, "bytes"), Some(28));
        assert_eq!(field_offset(BLOCK_RQ_ISSUE, "rwbs"), Some(34));
        assert_eq!(field_offset(BLOCK_RQ_ISSUE, "sector"), Some(16));
        assert_eq!(field_offset(BLOCK_RQ_ISSUE, "nr"), None);
    }

    #[test]
    fn this_kernel_describes_every_field() {
        let root = ensure_mounted().unwrap();
        let offsets = field_offsets(&root).unwrap();
        assert!(offsets.iter().all(|&offset| offset >= 8), "{offsets:?}");
    }
}
