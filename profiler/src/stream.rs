//! Reading the records that the BPF programs stream over ring buffers.
//!
//! The BPF side submits without waking us unless the ring is filling up, so the reader
//! wakes on that signal or on the recording's timer tick, whichever comes first, and
//! then drains everything that is there.

use std::{io, mem::size_of, ptr};

use aya::maps::{MapData, RingBuf};
use profiler_common::CpuSample;
use tokio::io::{Interest, unix::AsyncFd};

/// The CPU sample ring buffer, registered with the tokio reactor.
pub struct SampleStream {
    ring: AsyncFd<RingBuf<MapData>>,
    malformed: u64,
}

impl SampleStream {
    /// Registers the ring buffer for readiness notifications.
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the
        // AsyncFd (and with it the RingBuf) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|error| error.into_parts().1)?;
        Ok(SampleStream { ring, malformed: 0 })
    }

    /// Resolves when the BPF side forced a wake-up because the ring is filling up.
    pub async fn wakeup(&mut self) {
        if let Ok(mut guard) = self.ring.readable_mut().await {
            guard.clear_ready();
        }
    }

    /// Hands every sample waiting in the ring to `sink`, and returns how many there were.
    pub fn drain(&mut self, mut sink: impl FnMut(&CpuSample)) -> u64 {
        let ring = self.ring.get_mut();
        let mut drained = 0;
        while let Some(record) = ring.next() {
            if record.len() < size_of::<CpuSample>() {
                self.malformed += 1;
                continue;
            }
            // SAFETY: the record holds at least a CpuSample's bytes, every bit pattern is
            // a valid CpuSample, and read_unaligned makes no alignment assumption.
            let sample = unsafe { ptr::read_unaligned(record.as_ptr().cast::<CpuSample>()) };
            sink(&sample);
            drained += 1;
        }
        drained
    }

    /// Records too short to be a sample; always 0 unless the two sides disagree on layout.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}
