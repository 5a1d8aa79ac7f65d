//! The collector: takes each streamed record through unwinding, Python frames and
//! aggregation while the targets run, then symbolizes and analyzes what it gathered
//! into the finished [`Report`].

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use profiler_common::{EventHeader, StackEnd, Stacks};

use super::{RecordOptions, TargetSpec};
use crate::{
    aggregate::{
        Completeness, IoRow, IoTable, LiveSummary, SlowCall, StackCounts, StackKey,
        SyscallLatencies, SyscallSummary, UnwindMethod, growth_per_second,
    },
    allocators,
    analyze::{AnalysisOptions, LockTime, LockTimes, Observations, ProcessLockTime, analyze},
    memory_map::MemoryMaps,
    profile::{Frame, LockState, Origin, Profile, ProfileBuilder},
    report::{
        LeakCandidate, Leaks, Losses, NamedSlowCall, OffCpu, Report, SLOW_CALLS_KEPT, SelfCost,
        StackQuality, StopReason, TargetProcess,
    },
    runtime::python::{self, PythonFrames, PythonReport},
    stream::Event,
    symbolize::{Capture, NamedStacks, Names, Symbolizer},
    syscall_names::syscall_name,
    target,
    unwind::UnwindTables,
};

/// What the allocation probes left in the kernel when they were detached.
pub(super) struct Allocations {
    pub(super) live: LiveSummary,
    pub(super) alloc_calls: u64,
    pub(super) free_calls: u64,
}

/// Takes each streamed record through unwinding and aggregation, and keeps the memory
/// maps that both those and symbolization need current while the targets run.
#[derive(Default)]
pub(super) struct Collector {
    maps: MemoryMaps,
    /// `None` when no stack is unwound from tables (`--unwind fp`, block IO alone).
    pub(super) unwind_tables: Option<UnwindTables>,
    symbolizer: Symbolizer,
    pub(super) python: PythonFrames,
    stack_quality: StackQuality,
    cpu: StackCounts,
    offcpu: StackCounts,
    slow_calls: Vec<SlowCall>,
    slow_call_count: u64,
    pub(super) slow_latencies: SyscallLatencies,
    io: IoTable,
    /// Allocating stacks by id.
    alloc_stacks: HashMap<u64, StackKey>,
    /// Each process's command name, read at its last map read while it ran: after an
    /// `exec`, the new program's.
    process_names: HashMap<u32, String>,
    /// When each process last started a program (fork or exec), by tgid, in the
    /// probes' clock.
    program_starts: HashMap<u32, u64>,
    /// The processes forked or `exec`ed since [`Collector::take_processes_started`].
    processes_started: Vec<u32>,
    /// The threads sampled since [`Collector::take_threads_sampled`], as (tgid, tid).
    threads_sampled: HashSet<(u32, u32)>,
    /// CPU stacks since the last view of each live window that was asked for.
    windows: HashMap<LiveWindow, StackCounts>,
    /// The cgroup whose processes are the targets, if that is how they were chosen.
    pub(super) cgroup: Option<String>,
    /// The names of every CPU stack the live views have shown, grown as stacks come.
    live_stacks: NamedStacks,
    /// CPU stacks seen for the first time since the live names were last grown.
    unnamed_stacks: Vec<StackKey>,
    /// Per process whose stacks told their GIL state, as records come, for the live
    /// metrics: CPU samples by state, in [`LockState::ALL`]'s order, and nanoseconds
    /// waiting off the CPU.
    lock_tallies: BTreeMap<u32, ([u64; 3], u64)>,
}

/// Samples per (pid, tid).
type ThreadSamples = Vec<((u32, u32), u64)>;

/// A view of the recording while it runs, over CPU samples since its last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum LiveWindow {
    /// `--interval` snapshots.
    Interval,
    /// `--metrics-addr` refreshes.
    Metrics,
    /// `profiler top`'s refreshes.
    Top,
}

/// Adds a record's stack to `counts` with `weight`; a stack not seen before may hold
/// addresses outside the known mappings, so those are checked then, and only then.
fn weigh(
    maps: &mut MemoryMaps,
    counts: &mut StackCounts,
    header: &EventHeader,
    stacks: &Stacks,
    key: StackKey,
    weight: u64,
) -> bool {
    let new = counts.add(key, weight);
    if new {
        maps.observe(header.tgid, stacks.user_frames());
    }
    new
}

/// What the recording adds to the collector's aggregates at the end.
pub(super) struct Finished<'o> {
    pub(super) options: &'o RecordOptions,
    pub(super) targets: Vec<TargetProcess>,
    pub(super) duration: Duration,
    pub(super) losses: Losses,
    pub(super) steal_samples_left_out: u64,
    pub(super) syscalls: Vec<SyscallSummary>,
    pub(super) allocations: Option<Allocations>,
    pub(super) stop: StopReason,
    pub(super) cost: SelfCost,
}

impl Collector {
    /// A collector that unwinds user stacks from tables if `uses_unwind_tables`, keeps
    /// the CPU samples of each of `windows` apart, and shows every native frame of
    /// Python stacks if `python_internals`.
    pub(super) fn new(
        uses_unwind_tables: bool,
        windows: &[LiveWindow],
        python_internals: bool,
    ) -> Self {
        Collector {
            unwind_tables: uses_unwind_tables.then(UnwindTables::default),
            python: PythonFrames::new(python_internals),
            windows: windows
                .iter()
                .map(|&window| (window, StackCounts::default()))
                .collect(),
            ..Collector::default()
        }
    }

    /// Takes one streamed record in.
    pub(super) fn add(&mut self, event: Event) {
        match event {
            Event::Cpu(sample) => {
                self.threads_sampled
                    .insert((sample.header.tgid, sample.header.tid));
                let stacks = &sample.stacks;
                self.note_end(
                    sample.header.tgid,
                    stacks.user_end,
                    stacks.frame_pointer_frames,
                    |q| &mut q.cpu,
                );
                let key = self.stack_key(&sample.header, &sample.stacks, true);
                if let Some(state) = key.lock {
                    let tally = self.lock_tallies.entry(key.tgid).or_default();
                    tally.0[state as usize] += 1;
                }
                for window in self.windows.values_mut() {
                    window.add(key.clone(), 1);
                }
                let live = (!self.windows.is_empty()).then(|| key.clone());
                let new = weigh(
                    &mut self.maps,
                    &mut self.cpu,
                    &sample.header,
                    &sample.stacks,
                    key,
                    1,
                );
                if new {
                    self.unnamed_stacks.extend(live);
                }
            }
            Event::OffCpu(span) => {
                let stacks = &span.stacks;
                self.note_end(
                    span.header.tgid,
                    stacks.user_end,
                    stacks.frame_pointer_frames,
                    |q| &mut q.offcpu,
                );
                let key = self.stack_key(&span.header, &span.stacks, false);
                if key.lock == Some(LockState::Waiting) {
                    self.lock_tallies.entry(key.tgid).or_default().1 += span.duration_ns;
                }
                weigh(
                    &mut self.maps,
                    &mut self.offcpu,
                    &span.header,
                    &span.stacks,
                    key,
                    span.duration_ns,
                );
            }
            Event::SlowSyscall(call) => {
                let stacks = &call.stacks;
                self.note_end(
                    call.header.tgid,
                    stacks.user_end,
                    stacks.frame_pointer_frames,
                    |q| &mut q.slow_calls,
                );
                self.slow_latencies.record(call.nr, call.duration_ns);
                self.slow_call_count += 1;
                let stack = self.stack_key(&call.header, &call.stacks, false);
                self.maps.observe(call.header.tgid, &stack.user);
                self.keep_slow_call(SlowCall {
                    nr: call.nr,
                    ret: call.ret,
                    duration_ns: call.duration_ns,
                    stack,
                });
            }
            Event::BlockIo(io) => self.io.add(&io),
            Event::ProcessStart(start) => {
                let tgid = start.header.tgid;
                let length = start.comm.iter().position(|&byte| byte == 0);
                let comm = &start.comm[..length.unwrap_or(start.comm.len())];
                self.process_names
                    .insert(tgid, String::from_utf8_lossy(comm).into_owned());
                self.program_starts.insert(tgid, start.header.timestamp_ns);
                self.processes_started.push(tgid);
                // An exec'd program's first stacks wait for its map: read it now.
                self.maps.restart(tgid);
            }
            Event::AllocStack(stack) => {
                let tgid = stack.header.tgid;
                self.note_end(tgid, stack.end, stack.frame_pointer_frames, |q| {
                    &mut q.alloc
                });
                self.maps.observe(tgid, stack.frames());
                let python = self.python.resolve(tgid, &stack.python, false);
                let complete = StackEnd::from_raw(stack.end) == StackEnd::Root;
                // Every thread allocating from this stack shares its id: it is no one
                // thread's.
                self.alloc_stacks.insert(
                    stack.id,
                    StackKey::new(tgid, 0, stack.frames(), &[]).with_python(python, complete, None),
                );
            }
        }
        self.follow_maps();
    }

    /// The aggregation key of a record's stacks, with its Python frames named; `counted`
    /// counts how the Python stack ended (once per CPU sample).
    fn stack_key(&mut self, header: &EventHeader, stacks: &Stacks, counted: bool) -> StackKey {
        let python = self.python.resolve(header.tgid, &stacks.python, counted);
        let complete = StackEnd::from_raw(stacks.user_end) == StackEnd::Root;
        StackKey::new(
            header.tgid,
            header.tid,
            stacks.user_frames(),
            stacks.kernel_frames(),
        )
        .with_python(python, complete, python::lock_state(&stacks.python))
    }

    /// Reads the process's memory map now, and has everything that follows it follow.
    pub(super) fn read_map(&mut self, tgid: u32) {
        self.maps.read(tgid);
        self.follow_maps();
    }

    /// Hands each memory map read since the last call to the symbolizer, which opens
    /// the mapped files while the process lives, and to the unwind tables.
    fn follow_maps(&mut self) {
        for tgid in self.maps.take_updated() {
            if target::is_alive(tgid) {
                self.process_names.insert(tgid, target::process_name(tgid));
            }
            let mappings = self.maps.mappings(tgid);
            self.symbolizer.keep_files(tgid, mappings);
            self.python.observe(tgid, mappings);
            if let Some(tables) = &mut self.unwind_tables {
                tables.load_mappings(tgid, mappings);
            }
        }
    }

    /// Counts how a stack ended; one that reached an address the kernel has no mapping
    /// for makes the process's map read again, and so its new tables load.
    fn note_end(
        &mut self,
        tgid: u32,
        end: u32,
        frame_pointer_frames: u32,
        kind: impl FnOnce(&mut StackQuality) -> &mut Completeness,
    ) {
        let end = StackEnd::from_raw(end);
        kind(&mut self.stack_quality).add(end, UnwindMethod::of(end, frame_pointer_frames));
        if end == StackEnd::UnknownMapping {
            self.maps.refresh(tgid);
        }
    }

    /// Names each leak candidate's stack and the function that allocated.
    fn name_leaks(
        &self,
        allocations: Allocations,
        names: &Names,
        min_age: Duration,
        recorded: Duration,
    ) -> Leaks {
        let mut profile = ProfileBuilder::default();
        let candidates: Vec<LeakCandidate> = allocations
            .live
            .candidates
            .iter()
            .map(|group| {
                let stack = match self.alloc_stacks.get(&group.stack_id) {
                    Some(key) => names.frames(key),
                    None => vec![Frame::native("[stack not recorded]", false)],
                };
                // Python code allocates through the interpreter, and often through a
                // package's Python code (numpy's `ones`): its innermost frame of the
                // program's own code is what allocated.
                let function = stack
                    .iter()
                    .rev()
                    .find(|frame| {
                        frame
                            .source
                            .as_ref()
                            .is_some_and(|source| !source.installed)
                    })
                    .or_else(|| stack.iter().rev().find(|frame| frame.source.is_some()))
                    .or_else(|| {
                        stack
                            .iter()
                            .rev()
                            .find(|frame| !allocators::is_allocator_frame(&frame.name))
                    })
                    .map_or_else(|| "[unknown]".to_owned(), |frame| frame.name.clone());
                let bytes = group.bytes.round() as u64;
                let origin = Origin {
                    pid: Some(group.tgid),
                    tid: None,
                };
                profile.push_from(origin, stack.iter().cloned(), bytes);
                LeakCandidate {
                    pid: group.tgid,
                    function,
                    stack,
                    bytes,
                    count: group.count.round() as u64,
                    oldest_age: group.oldest_age,
                    growth_per_s: growth_per_second(group.bytes, recorded, min_age),
                }
            })
            .collect();
        Leaks {
            min_age,
            alloc_calls: allocations.alloc_calls,
            free_calls: allocations.free_calls,
            outstanding_bytes: allocations.live.outstanding_bytes.round() as u64,
            outstanding_count: allocations.live.outstanding_count.round() as u64,
            candidates,
            profile: profile.build(),
        }
    }

    /// Keeps the slowest [`SLOW_CALLS_KEPT`] calls, trimming in batches.
    fn keep_slow_call(&mut self, call: SlowCall) {
        self.slow_calls.push(call);
        if self.slow_calls.len() >= 2 * SLOW_CALLS_KEPT {
            self.trim_slow_calls();
        }
    }

    fn trim_slow_calls(&mut self) {
        self.slow_calls
            .sort_by_key(|call| std::cmp::Reverse(call.duration_ns));
        self.slow_calls.truncate(SLOW_CALLS_KEPT);
    }

    /// The CPU samples of `window` since its last look, named, and the samples of each
    /// thread among them; the window starts over.
    pub(super) fn take_window(&mut self, window: LiveWindow) -> (Profile, ThreadSamples) {
        let counts = self.windows.remove(&window).unwrap_or_default();
        self.windows
            .insert(window, StackCounts::with_capacity(counts.distinct_stacks()));
        self.name_new_stacks();
        let profile = self.live_stacks.profile(&counts, &self.process_names);
        (profile, counts.threads().collect())
    }

    /// How many CPU samples came so far.
    pub(super) fn cpu_samples(&self) -> u64 {
        self.cpu.total()
    }

    /// Every CPU sample so far, named.
    pub(super) fn cpu_so_far(&mut self) -> Profile {
        self.name_new_stacks();
        self.live_stacks.profile(&self.cpu, &self.process_names)
    }

    /// Grows the live names by the stacks seen since they were last grown: each look
    /// symbolizes only what is new.
    fn name_new_stacks(&mut self) {
        let stacks = std::mem::take(&mut self.unnamed_stacks);
        let names = self
            .symbolizer
            .resolve_new(&self.maps, &stacks, self.live_stacks.names())
            .with_python(self.python.functions().to_vec(), self.python.view().clone());
        self.live_stacks.add(names, stacks);
    }

    /// The report of the CPU samples since the last interval: its flame graph, shares,
    /// hotspots and CPU rules. Nothing else is gathered per interval, so the other
    /// sections are empty.
    pub(super) fn interval_report(
        &mut self,
        options: &RecordOptions,
        targets: &[TargetProcess],
        duration: Duration,
    ) -> Report {
        let (profile, threads) = self.take_window(LiveWindow::Interval);
        let analysis = analyze(&profile, &Observations::default(), &options.analysis);
        // Off-CPU time is not gathered per interval: waits for the lock are not told.
        let lock_times = LockTimes::new(&profile, options.probes.sample_interval_ns(), None);
        Report {
            targets: targets.to_vec(),
            command: command_line(options),
            cgroup: self.cgroup.clone(),
            duration,
            probes: options.probes,
            threads,
            process_names: self.process_names.clone().into_iter().collect(),
            losses: Losses::default(),
            steal_samples_left_out: 0,
            stack_quality: StackQuality::default(),
            profile,
            analysis,
            syscalls: Vec::new(),
            slow_calls: Vec::new(),
            slow_call_count: 0,
            io: Vec::new(),
            offcpu: OffCpu::default(),
            leaks: Leaks {
                min_age: options.leak_min_age,
                ..Leaks::default()
            },
            stop: StopReason::Duration,
            cost: SelfCost::default(),
            python: PythonReport::default(),
            lock_times,
            split_by_line: options.lines,
        }
    }

    /// The processes forked or `exec`ed since the last call.
    pub(super) fn take_processes_started(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.processes_started)
    }

    /// The threads CPU-sampled since the last call, as (tgid, tid).
    pub(super) fn take_threads_sampled(&mut self) -> HashSet<(u32, u32)> {
        std::mem::take(&mut self.threads_sampled)
    }

    /// When each process last started a program, for
    /// [`crate::aggregate::summarize_live`].
    pub(super) fn program_starts(&self) -> &HashMap<u32, u64> {
        &self.program_starts
    }

    /// Block requests so far, per device and operation.
    pub(super) fn io_rows(&self) -> Vec<IoRow> {
        self.io.rows()
    }

    /// Off-CPU nanoseconds so far.
    /// Each process's time with respect to its GIL so far, CPU samples being
    /// `sample_ns` apart; waits count when `offcpu_recorded`.
    pub(super) fn lock_times_so_far(
        &self,
        sample_ns: u64,
        offcpu_recorded: bool,
    ) -> Vec<ProcessLockTime> {
        self.lock_tallies
            .iter()
            .map(|(&pid, (samples, waiting_ns))| {
                let mut time = LockTime::empty(offcpu_recorded);
                for (state, samples) in LockState::ALL.into_iter().zip(samples) {
                    time.add(state, samples * sample_ns);
                }
                time.add(LockState::Waiting, *waiting_ns);
                ProcessLockTime { pid, time }
            })
            .collect()
    }

    pub(super) fn offcpu_ns(&self) -> u64 {
        self.offcpu.total()
    }

    /// Names every stack at once and builds the recording.
    pub(super) fn finish(mut self, finished: Finished<'_>) -> Report {
        self.trim_slow_calls();
        let options = finished.options;
        let candidate_stacks: Vec<&StackKey> = finished
            .allocations
            .iter()
            .flat_map(|allocations| &allocations.live.candidates)
            .filter_map(|group| self.alloc_stacks.get(&group.stack_id))
            .collect();
        let naming_started = Instant::now();
        // What the live views named already is not looked up again, and the CPU stacks
        // are named as they were: each address's frames once, however many stacks
        // hold it.
        let mut cpu_stacks = std::mem::take(&mut self.live_stacks);
        let unnamed_cpu_stacks: Vec<StackKey> = self
            .cpu
            .stacks()
            .map(|(key, _)| key)
            .filter(|key| !cpu_stacks.has(key))
            .cloned()
            .collect();
        let new_names = self
            .symbolizer
            .resolve_new(
                &self.maps,
                unnamed_cpu_stacks
                    .iter()
                    .chain(self.offcpu.stacks().map(|(key, _)| key))
                    .chain(self.slow_calls.iter().map(|call| &call.stack))
                    .chain(candidate_stacks),
                cpu_stacks.names(),
            )
            .with_python(self.python.functions().to_vec(), self.python.view().clone());
        cpu_stacks.add(new_names, unnamed_cpu_stacks);
        let profile = cpu_stacks.profile(&self.cpu, &self.process_names);
        let names = cpu_stacks.into_names();
        let named_processes: HashSet<u32> = self
            .cpu
            .stacks()
            .chain(self.offcpu.stacks())
            .map(|(key, _)| key.tgid)
            .collect();
        let cost = SelfCost {
            naming: naming_started.elapsed(),
            named_processes: named_processes.len(),
            ..finished.cost
        };
        let leaks = finished.allocations.map_or_else(
            || Leaks {
                min_age: options.leak_min_age,
                ..Leaks::default()
            },
            |allocations| {
                self.name_leaks(allocations, &names, options.leak_min_age, finished.duration)
            },
        );
        let io = self.io.rows();
        let observations = Observations {
            syscalls: &finished.syscalls,
            io: &io,
            leaked_bytes: leaks.candidate_bytes(),
            allocation_calls: leaks.alloc_calls,
        };
        let analysis = analyze(&profile, &observations, &options.analysis);
        let offcpu_profile =
            names.profile(&self.offcpu, Capture::AtTracepoint, &self.process_names);
        let lock_times = LockTimes::new(
            &profile,
            options.probes.sample_interval_ns(),
            options.probes.events.offcpu.then_some(&offcpu_profile),
        );
        let offcpu = OffCpu {
            functions: analyze(
                &offcpu_profile,
                &Observations::default(),
                &AnalysisOptions::default(),
            )
            .functions,
            profile: offcpu_profile,
            threads: self.offcpu.threads().collect(),
        };
        let slow_calls = self
            .slow_calls
            .iter()
            .map(|call| NamedSlowCall {
                name: syscall_name(call.nr),
                duration_ns: call.duration_ns,
                pid: call.stack.tgid,
                tid: call.stack.tid,
                ret: call.ret,
                stack: names.frames_below_tracepoint(&call.stack),
            })
            .collect();
        Report {
            targets: finished.targets,
            command: command_line(options),
            cgroup: self.cgroup.clone(),
            duration: finished.duration,
            probes: options.probes,
            threads: self.cpu.threads().collect(),
            process_names: self.process_names.into_iter().collect(),
            losses: finished.losses,
            steal_samples_left_out: finished.steal_samples_left_out,
            stack_quality: StackQuality {
                tables: self
                    .unwind_tables
                    .as_ref()
                    .map(UnwindTables::stats)
                    .unwrap_or_default(),
                unnamed: names
                    .unnamed
                    .iter()
                    .map(|(reason, count)| (reason.name(), *count))
                    .collect(),
                jit_hints: self.symbolizer.jit_hints(),
                ..self.stack_quality
            },
            profile,
            analysis,
            syscalls: finished.syscalls,
            slow_calls,
            slow_call_count: self.slow_call_count,
            io,
            offcpu,
            leaks,
            stop: finished.stop,
            cost,
            python: self.python.report(),
            lock_times,
            split_by_line: options.lines,
        }
    }
}

/// The started command's arguments, for the report.
fn command_line(options: &RecordOptions) -> Option<Vec<String>> {
    match &options.target {
        TargetSpec::Command(argv) => Some(
            argv.iter()
                .map(|arg| arg.to_string_lossy().into_owned())
                .collect(),
        ),
        TargetSpec::Pids(_) | TargetSpec::Cgroup(_) | TargetSpec::All => None,
    }
}
