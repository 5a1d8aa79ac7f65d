//! Where threads spent their time with respect to their runtime's global lock
//! (CPython's GIL): on a CPU holding it, on a CPU without it (native code that released
//! it), and waiting to take it. Per process, and for the source functions that account
//! for the most of that time.

use std::collections::BTreeMap;

use crate::profile::{Frame, LockState, Profile};

/// Functions [`LockTimes::functions`] keeps.
pub const LOCK_FUNCTIONS: usize = 5;

/// Nanoseconds in each [`LockState`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockTime {
    /// On a CPU, holding the lock.
    pub held_ns: u64,
    /// On a CPU, without it.
    pub released_ns: u64,
    /// Waiting to take it: off the CPU (with `--events offcpu`), or on it inside the
    /// wait. `None` when off-CPU time was not recorded.
    pub waiting_ns: Option<u64>,
}

impl LockTime {
    /// No time yet, waiting included when `waiting_recorded`.
    pub fn empty(waiting_recorded: bool) -> Self {
        LockTime {
            waiting_ns: waiting_recorded.then_some(0),
            ..LockTime::default()
        }
    }

    /// Adds `ns` in `state`; waiting time is left out where waits are not recorded,
    /// since the few a CPU sample catches would pass for all of them.
    pub fn add(&mut self, state: LockState, ns: u64) {
        match state {
            LockState::Held => self.held_ns += ns,
            LockState::Released => self.released_ns += ns,
            LockState::Waiting => {
                if let Some(waiting) = &mut self.waiting_ns {
                    *waiting += ns;
                }
            }
        }
    }

    /// All of it.
    pub fn total_ns(&self) -> u64 {
        self.held_ns + self.released_ns + self.waiting_ns.unwrap_or(0)
    }

    /// The nanoseconds in `state`, `None` for waiting when it was not recorded.
    pub fn ns(&self, state: LockState) -> Option<u64> {
        match state {
            LockState::Held => Some(self.held_ns),
            LockState::Released => Some(self.released_ns),
            LockState::Waiting => self.waiting_ns,
        }
    }

    /// The share (0 to 1) of the total in `state`, `None` for waiting when it was not
    /// recorded or when there is no time at all.
    pub fn share(&self, state: LockState) -> Option<f64> {
        let total = self.total_ns();
        (total > 0)
            .then_some(())
            .and(self.ns(state))
            .map(|ns| ns as f64 / total as f64)
    }
}

/// A process's time with respect to its lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessLockTime {
    /// The process.
    pub pid: u32,
    /// Its threads' time.
    pub time: LockTime,
}

/// A function's time with respect to its process's lock: of every stack it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionLockTime {
    /// The function.
    pub frame: Frame,
    /// The time of the stacks it is on.
    pub time: LockTime,
}

/// Time with respect to the runtimes' global locks, from the stacks whose lock state
/// was read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockTimes {
    /// Per process with such stacks, by pid.
    pub processes: Vec<ProcessLockTime>,
    /// The [`LOCK_FUNCTIONS`] source functions with the most time, most first; entry
    /// points left out, as they hold everything.
    pub functions: Vec<FunctionLockTime>,
}

impl LockTimes {
    /// The times of `cpu`, a profile of samples `sample_ns` apart, and of `offcpu`,
    /// nanoseconds off the CPU, when off-CPU time was recorded: there only waits count,
    /// since a thread blocked on anything else is not running with or without the lock.
    pub fn new(cpu: &Profile, sample_ns: u64, offcpu: Option<&Profile>) -> Self {
        let mut processes: BTreeMap<u32, LockTime> = BTreeMap::new();
        let mut functions: Vec<(Frame, LockTime)> = Vec::new();
        let mut function_index: foldhash::HashMap<&Frame, usize> = Default::default();
        let blank = LockTime::empty(offcpu.is_some());
        let weighed = [(cpu, sample_ns, false)]
            .into_iter()
            .chain(offcpu.map(|offcpu| (offcpu, 1, true)));
        for (profile, unit, only_waits) in weighed {
            for stack in &profile.stacks {
                let Some(state) = stack.lock else { continue };
                if only_waits && state != LockState::Waiting {
                    continue;
                }
                let ns = stack.count * unit;
                if let Some(pid) = stack.origin.pid {
                    processes.entry(pid).or_insert(blank).add(state, ns);
                }
                let mut seen: Vec<usize> = Vec::new();
                for &id in &stack.frames {
                    let frame = &profile.frames[id];
                    if frame.source.is_none() || frame.is_entry_point() {
                        continue;
                    }
                    let index = *function_index.entry(frame).or_insert_with(|| {
                        functions.push((frame.clone(), blank));
                        functions.len() - 1
                    });
                    if !seen.contains(&index) {
                        seen.push(index);
                        functions[index].1.add(state, ns);
                    }
                }
            }
        }
        functions.sort_by(|a, b| {
            b.1.total_ns()
                .cmp(&a.1.total_ns())
                .then_with(|| a.0.name.cmp(&b.0.name))
        });
        functions.truncate(LOCK_FUNCTIONS);
        LockTimes {
            processes: processes
                .into_iter()
                .map(|(pid, time)| ProcessLockTime { pid, time })
                .collect(),
            functions: functions
                .into_iter()
                .map(|(frame, time)| FunctionLockTime { frame, time })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Language, Origin, ProfileBuilder, SourceFunction};

    fn python(name: &str) -> Frame {
        Frame {
            source: Some(SourceFunction {
                language: Language::Python,
                qualname: name.to_owned(),
                file: "app.py".to_owned(),
                line: 1,
                module: None,
                entry: false,
                installed: false,
            }),
            ..Frame::native(name, false)
        }
    }

    fn push(builder: &mut ProfileBuilder, lock: Option<LockState>, frames: &[Frame], count: u64) {
        let origin = Origin {
            pid: Some(7),
            tid: Some(8),
        };
        builder.push_placed(origin, lock, frames.iter().map(|f| (f.clone(), 0)), count);
    }

    #[test]
    fn samples_weigh_by_state_and_only_offcpu_waits_count() {
        let (work, matmul) = (python("work"), Frame::native("DOUBLE_matmul", false));
        let mut cpu = ProfileBuilder::default();
        push(
            &mut cpu,
            Some(LockState::Held),
            &[work.clone(), work.clone()],
            3,
        );
        push(
            &mut cpu,
            Some(LockState::Released),
            &[work.clone(), matmul],
            1,
        );
        push(&mut cpu, None, &[Frame::native("main", false)], 50);
        let mut offcpu = ProfileBuilder::default();
        push(
            &mut offcpu,
            Some(LockState::Waiting),
            std::slice::from_ref(&work),
            2_500,
        );
        push(
            &mut offcpu,
            Some(LockState::Released),
            std::slice::from_ref(&work),
            9_000,
        );
        let (cpu, offcpu) = (cpu.build(), offcpu.build());
        let times = LockTimes::new(&cpu, 1_000, Some(&offcpu));
        let expected = LockTime {
            held_ns: 3_000,
            released_ns: 1_000,
            waiting_ns: Some(2_500),
        };
        assert_eq!(times.processes[0].time, expected);
        assert_eq!(times.functions.len(), 1);
        assert_eq!(times.functions[0].time, expected, "recursion counts once");
        assert_eq!(expected.share(LockState::Released), Some(1_000.0 / 6_500.0));
        let cpu_only = LockTimes::new(&cpu, 1_000, None);
        assert_eq!(cpu_only.processes[0].time.waiting_ns, None);
        assert_eq!(cpu_only.processes[0].time.share(LockState::Waiting), None);
        assert_eq!(
            cpu_only.processes[0].time.share(LockState::Held),
            Some(0.75)
        );
    }
}
