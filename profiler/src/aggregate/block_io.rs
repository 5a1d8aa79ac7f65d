//! Block requests per device and operation.

use std::{collections::BTreeMap, fmt, fs};

use profiler_common::BlockIo;

use super::Latency;

/// What a block request does, from its blktrace `rwbs` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IoOp {
    /// Reads data.
    Read,
    /// Writes data (possibly with a cache flush before or a FUA write after).
    Write,
    /// Only flushes the device's write cache.
    Flush,
    /// Discards or erases sectors.
    Discard,
    /// Anything else.
    Other,
}

impl IoOp {
    /// Reads `rwbs` as blktrace writes it: an optional `F` (flush first), then the
    /// operation, `R`, `W`, `D`, `E` or `N` (none), then modifier letters.
    pub fn from_rwbs(rwbs: &[u8]) -> IoOp {
        let (flush, rest) = match rwbs.split_first() {
            Some((b'F', rest)) => (true, rest),
            _ => (false, rwbs),
        };
        match rest.first() {
            Some(b'R') => IoOp::Read,
            Some(b'W') => IoOp::Write,
            Some(b'D' | b'E') => IoOp::Discard,
            _ if flush => IoOp::Flush,
            _ => IoOp::Other,
        }
    }
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::Discard => "discard",
            IoOp::Other => "other",
        })
    }
}

/// Requests of one operation on one device.
#[derive(Clone, Debug, Default)]
pub struct IoStats {
    /// Requests completed.
    pub count: u64,
    /// Bytes they carried.
    pub bytes: u64,
    /// Requests that completed with an error.
    pub errors: u64,
    /// Issue-to-completion latency.
    pub latency: Latency,
}

/// A row of the IO table.
#[derive(Clone, Debug)]
pub struct IoRow {
    /// Device name, such as `vda`, or `MAJOR:MINOR` when sysfs does not know it.
    pub device: String,
    /// The operation.
    pub op: IoOp,
    /// Its counts and latency.
    pub stats: IoStats,
}

/// Requests per (device, operation).
#[derive(Debug, Default)]
pub struct IoTable(BTreeMap<(u32, IoOp), IoStats>);

impl IoTable {
    /// Adds a completed request.
    pub fn add(&mut self, io: &BlockIo) {
        let stats = self
            .0
            .entry((io.dev, IoOp::from_rwbs(&io.rwbs)))
            .or_default();
        stats.count += 1;
        stats.bytes += u64::from(io.bytes);
        stats.errors += u64::from(io.error != 0);
        stats.latency.record(io.duration_ns);
    }

    /// Every (device, operation) seen, most requests first.
    pub fn rows(&self) -> Vec<IoRow> {
        let mut rows: Vec<IoRow> = self
            .0
            .iter()
            .map(|(&(dev, op), stats)| IoRow {
                device: device_name(dev),
                op,
                stats: stats.clone(),
            })
            .collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.stats.count));
        rows
    }
}

/// The kernel's name of a device given as its internal `dev_t` (major << 20 | minor).
fn device_name(dev: u32) -> String {
    let (major, minor) = (dev >> 20, dev & 0xf_ffff);
    fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|uevent| {
            uevent
                .lines()
                .find_map(|line| line.strip_prefix("DEVNAME=").map(str::to_owned))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_read_from_rwbs() {
        for (rwbs, op) in [
            (&b"R\0\0"[..], IoOp::Read),
            (b"RA", IoOp::Read),
            (b"WS", IoOp::Write),
            (b"FWS", IoOp::Write),
            (b"WFS", IoOp::Write),
            (b"FN", IoOp::Flush),
            (b"F", IoOp::Flush),
            (b"D", IoOp::Discard),
            (b"N", IoOp::Other),
            (b"", IoOp::Other),
        ] {
            assert_eq!(IoOp::from_rwbs(rwbs), op, "{rwbs:?}");
        }
    }

    #[test]
    fn unknown_devices_are_named_by_number() {
        assert_eq!(device_name(4095 << 20 | 7), "4095:7");
    }
}
