//! Allocation probes for the processes the targets start while recording. CPU samples,
//! syscalls and waits follow new processes in the kernel; allocation probes are placed
//! per process, so each new one, and each program it `exec`s, gets its own.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::PathBuf,
};

use crate::{
    allocators::{self, ProbePoint},
    attach::{AllocatorLink, Probes},
};

/// The followed processes' allocation probes.
#[derive(Default)]
pub(super) struct FollowedAllocators {
    probed: HashMap<u32, Probed>,
    /// Processes that could not be probed, with why, for the report.
    pub(super) failures: Vec<String>,
}

/// One followed process's probes.
struct Probed {
    /// Its program when last probed: an `exec` may bring another allocator.
    program: Option<PathBuf>,
    /// Where its probes are, so that none is placed twice.
    points: HashSet<(PathBuf, u64)>,
    links: Vec<AllocatorLink>,
}

impl FollowedAllocators {
    /// Probes the followed processes that are new or have run another program since
    /// they were last looked at, and takes out the probes of those that exited.
    pub(super) fn update(&mut self, probes: &mut Probes) {
        let followed = probes.followed_targets();
        let gone: Vec<u32> = self
            .probed
            .keys()
            .copied()
            .filter(|pid| !followed.contains(pid))
            .collect();
        for pid in gone {
            if let Some(probed) = self.probed.remove(&pid) {
                // Its probes went with its memory; only the links are left to close.
                let _ = probes.detach_allocator(probed.links);
            }
        }
        for pid in followed {
            let program = fs::read_link(format!("/proc/{pid}/exe")).ok();
            let probed = self.probed.entry(pid).or_insert_with(|| Probed {
                program: None,
                points: HashSet::new(),
                links: Vec::new(),
            });
            if probed.program.is_some() && probed.program == program {
                continue;
            }
            probed.program = program;
            let points: Vec<ProbePoint> = match allocators::probe_points(pid, None) {
                Ok(points) => points,
                // Gone already, or a program with no allocator: nothing to probe.
                Err(_) => continue,
            };
            let new: Vec<ProbePoint> = points
                .into_iter()
                .filter(|point| {
                    !probed
                        .points
                        .contains(&(point.file.clone(), point.file_offset))
                })
                .collect();
            match probes.attach_allocator(pid, &new) {
                Ok(links) => {
                    probed.links.extend(links);
                    probed.points.extend(
                        new.iter()
                            .map(|point| (point.file.clone(), point.file_offset)),
                    );
                }
                Err(error) if fs::metadata(format!("/proc/{pid}")).is_ok() => {
                    self.failures.push(format!("pid {pid}: {error}"));
                }
                Err(_) => {}
            }
        }
    }
}
