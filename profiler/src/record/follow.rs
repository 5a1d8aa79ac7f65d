//! The processes the targets start while recording, as userspace follows them. CPU
//! samples, syscalls and waits follow new processes in the kernel; what userspace adds
//! is watching each new program map its libraries, so that their unwind tables load
//! while it starts rather than after its first stacks come back truncated, and placing
//! allocation probes, which go in per process, in each allocator it maps.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use profiler_common::DRAIN_INTERVAL_MS;

use crate::{
    allocators::{self, ProbePoint},
    attach::Probes,
    memory_map,
};

/// For this long after it starts a program, a process's map is looked at every drain
/// interval (every 5 ms while it settles): a new program maps its libraries (its
/// allocator among them) in its first moments.
const YOUNG_PROCESS: Duration = Duration::from_secs(2);

/// How often an older process's map is looked at, for allocators loaded later.
const OLD_PROCESS_INTERVAL: Duration = Duration::from_secs(2);

/// How often the followed processes are looked at while one is young.
const LOOK_INTERVAL: Duration = Duration::from_millis(DRAIN_INTERVAL_MS);

/// How often they are looked at while one is settling: a program that `exec`ed maps
/// its libraries (its allocator among them) within milliseconds, and runs from them.
pub(super) const WAITING_LOOK_INTERVAL: Duration = Duration::from_millis(5);

/// A new program settles for this long after it starts.
const SETTLING: Duration = Duration::from_millis(100);

/// The followed processes, and their allocation probes.
#[derive(Default)]
pub(super) struct FollowedProcesses {
    /// Whether allocation probes go in (`--events alloc`).
    probe_allocators: bool,
    processes: HashMap<u32, Followed>,
    looked_at: Option<Instant>,
    /// Processes that could not be probed, with why, for the report.
    pub(super) failures: Vec<String>,
}

/// One followed process. A probe placed in a process stays across its `exec`
/// when the new program maps the same file (its libc, mostly): the kernel places it in
/// whatever memory of the process maps that file. So a file is probed once per
/// process, and a new program's other allocators are probed when they are mapped.
struct Followed {
    /// The files its current program mapped that were already looked at.
    seen: HashSet<PathBuf>,
    /// The files with its allocation probes in them.
    probed: HashSet<PathBuf>,
    /// When it was forked, or last `exec`ed.
    started: Instant,
    looked_at: Option<Instant>,
}

impl Followed {
    /// Whether it is settling, or young without an allocation probe when it needs one.
    fn is_waiting(&self, probe_allocators: bool) -> bool {
        let age = self.started.elapsed();
        age < SETTLING || (probe_allocators && self.probed.is_empty() && age < YOUNG_PROCESS)
    }

    /// How long after its last look it is looked at again.
    fn look_interval(&self, probe_allocators: bool) -> Duration {
        if self.is_waiting(probe_allocators) {
            Duration::ZERO
        } else if self.started.elapsed() < YOUNG_PROCESS {
            LOOK_INTERVAL
        } else {
            OLD_PROCESS_INTERVAL
        }
    }
}

impl FollowedProcesses {
    /// Follows the processes, placing allocation probes if `probe_allocators`.
    pub(super) fn new(probe_allocators: bool) -> Self {
        FollowedProcesses {
            probe_allocators,
            ..FollowedProcesses::default()
        }
    }

    /// Process `pid` started a program (or was forked): it settles again.
    pub(super) fn started(&mut self, pid: u32) {
        if let Some(followed) = self.processes.get_mut(&pid) {
            followed.started = Instant::now();
            followed.looked_at = None;
            followed.seen.clear();
        }
    }

    /// Whether a process is settling, or is young and has no allocation probe yet.
    pub(super) fn waiting(&self) -> bool {
        self.processes
            .values()
            .any(|followed| followed.is_waiting(self.probe_allocators))
    }

    /// Whether the processes are due for a look. Once all are old, that is only as often
    /// as each is looked at: a process the targets start is announced by its own record,
    /// which brings a look at once, and reading the targets' table every drain interval
    /// took a twentieth of the profiler's steady time on a load-tested service.
    pub(super) fn due(&self) -> bool {
        let interval = if self.waiting() {
            WAITING_LOOK_INTERVAL
        } else {
            self.processes
                .values()
                .map(|followed| followed.look_interval(self.probe_allocators))
                .min()
                .unwrap_or(OLD_PROCESS_INTERVAL)
        };
        self.looked_at.is_none_or(|at| at.elapsed() >= interval)
    }

    /// Probes the allocators the followed processes mapped since they were last looked
    /// at, and takes out the probes of those that exited. Returns the processes that
    /// mapped new files, whose unwind tables are then best loaded at once.
    pub(super) fn update(&mut self, probes: &mut Probes) -> Vec<u32> {
        let mut remapped = Vec::new();
        self.looked_at = Some(Instant::now());
        let followed = probes.followed_targets();
        let gone: Vec<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|pid| !followed.contains(pid))
            .collect();
        for pid in gone {
            if self.processes.remove(&pid).is_some() {
                // Its probes went with its memory; only the links are left to close.
                probes.detach_allocators(pid);
            }
        }
        for pid in followed {
            let followed = self.processes.entry(pid).or_insert_with(|| Followed {
                seen: HashSet::new(),
                probed: HashSet::new(),
                started: Instant::now(),
                looked_at: None,
            });
            let interval = followed.look_interval(self.probe_allocators);
            if followed.looked_at.is_some_and(|at| at.elapsed() < interval) {
                continue;
            }
            followed.looked_at = Some(Instant::now());
            let Ok(mapped) = memory_map::executable_files(pid) else {
                continue;
            };
            let new: Vec<(PathBuf, PathBuf)> = mapped
                .into_iter()
                .filter_map(|mapping| {
                    let reachable = mapping.reachable_path(pid);
                    let path = mapping.path?;
                    (!followed.seen.contains(&path)).then_some((path, reachable))
                })
                .collect();
            if new.is_empty() {
                continue;
            }
            remapped.push(pid);
            followed
                .seen
                .extend(new.iter().map(|(path, _)| path.clone()));
            if !self.probe_allocators {
                continue;
            }
            let program = fs::read_link(format!("/proc/{pid}/exe")).ok();
            let to_probe: Vec<(PathBuf, PathBuf)> = new
                .into_iter()
                .filter(|(file, _)| !followed.probed.contains(file))
                .collect();
            let mut allocator_files = Vec::new();
            let mut points: Vec<ProbePoint> = Vec::new();
            for (file, reachable) in to_probe {
                let is_program = Some(&file) == program.as_ref();
                let in_file = allocators::file_probe_points(&reachable, is_program);
                if !in_file.is_empty() {
                    points.extend(in_file);
                    allocator_files.push(file);
                }
            }
            if points.is_empty() {
                continue;
            }
            match probes.attach_allocator(pid, &points) {
                Ok(()) => followed.probed.extend(allocator_files),
                Err(error) if fs::metadata(format!("/proc/{pid}")).is_ok() => {
                    self.failures.push(format!("pid {pid}: {error}"));
                }
                Err(_) => {}
            }
        }
        remapped
    }
}
