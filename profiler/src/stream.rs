//! Reading the records that the BPF programs stream over the ring buffer.
//!
//! The BPF side submits without waking us unless the ring is filling up, so the reader
//! wakes on that signal or on the recording's timer tick, whichever comes first, and
//! then drains everything that is there.

use std::{io, mem::size_of, ptr};

use aya::maps::{MapData, RingBuf};
use profiler_common::{
    AllocStack, BlockIo, CpuSample, EventHeader, EventKind, OffCpuSpan, ProcessStart, SlowSyscall,
};
use tokio::io::{Interest, unix::AsyncFd};

/// A record from the ring buffer, decoded by its header's kind.
pub enum Event {
    /// An on-CPU sample.
    Cpu(Box<CpuSample>),
    /// A syscall slower than the threshold.
    SlowSyscall(Box<SlowSyscall>),
    /// A span off the CPU.
    OffCpu(Box<OffCpuSpan>),
    /// A completed block request.
    BlockIo(BlockIo),
    /// An allocating stack seen for the first time.
    AllocStack(Box<AllocStack>),
    /// A followed process started, or a target exec'd.
    ProcessStart(ProcessStart),
}

/// The ring buffer, registered with the tokio reactor.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    malformed: u64,
}

impl EventStream {
    /// Registers the ring buffer for readiness notifications.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the
        // AsyncFd (and with it the RingBuf) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|error| error.into_parts().1)?;
        Ok(EventStream { ring, malformed: 0 })
    }

    /// Resolves when the BPF side forced a wake-up because the ring is filling up.
    pub async fn wakeup(&mut self) {
        if let Ok(mut guard) = self.ring.readable_mut().await {
            guard.clear_ready();
        }
    }

    /// Hands every record waiting in the ring to `sink`.
    pub fn drain(&mut self, mut sink: impl FnMut(Event)) {
        let ring = self.ring.get_mut();
        while let Some(record) = ring.next() {
            match decode(&record) {
                Some(event) => sink(event),
                None => self.malformed += 1,
            }
        }
    }

    /// Records of an unknown kind or too short for theirs; always 0 unless the two sides
    /// disagree on layout.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

fn decode(record: &[u8]) -> Option<Event> {
    let header: EventHeader = read(record)?;
    Some(match EventKind::from_raw(header.kind)? {
        EventKind::CpuSample => Event::Cpu(Box::new(read(record)?)),
        EventKind::SlowSyscall => Event::SlowSyscall(Box::new(read(record)?)),
        EventKind::OffCpuSpan => Event::OffCpu(Box::new(read(record)?)),
        EventKind::BlockIo => Event::BlockIo(read(record)?),
        EventKind::AllocStack => Event::AllocStack(Box::new(read(record)?)),
        EventKind::ProcessStart => Event::ProcessStart(read(record)?),
    })
}

/// Reads a `T` from the start of `record`, if it is long enough.
///
/// Only instantiated with the `#[repr(C)]` integer records of `profiler_common`, for
/// which every bit pattern is valid.
fn read<T: Copy>(record: &[u8]) -> Option<T> {
    (record.len() >= size_of::<T>())
        // SAFETY: the record holds at least a T's bytes, every bit pattern is a valid T
        // (see above), and read_unaligned makes no alignment assumption.
        .then(|| unsafe { ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_by_kind_and_short_or_unknown_ones_do_not() {
        // SAFETY: all-zero is a valid BlockIo.
        let mut io: BlockIo = unsafe { std::mem::zeroed() };
        io.header.kind = EventKind::BlockIo as u32;
        io.bytes = 4096;
        // SAFETY: viewing a plain struct's bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const io).cast::<u8>(), size_of::<BlockIo>())
        };
        assert!(matches!(decode(bytes), Some(Event::BlockIo(io)) if io.bytes == 4096));
        assert!(decode(&bytes[..size_of::<BlockIo>() - 1]).is_none());
        let mut unknown = bytes.to_vec();
        unknown[0] = 99;
        assert!(decode(&unknown).is_none());
        // A CPU sample's kind on a record too short for one.
        unknown[0] = EventKind::CpuSample as u8;
        assert!(decode(&unknown).is_none());
    }
}
