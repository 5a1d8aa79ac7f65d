//! Following a started command's new processes: a target's fork makes a target, so that
//! `profiler record -- sh -c './service'` profiles the service, not only the shell.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use profiler_common::{EventKind, LossCounter, ProcessStart, TARGET_FOLLOWED};

use crate::{
    EVENTS, TARGET_TGIDS, count_loss, current_thread, forget_verdict, header, now_ns, stacks,
    syscalls,
};

/// Set by userspace from the kernel's BTF: the offset of `tgid` in `task_struct`.
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u64 = 0;

/// A target forked: a child that is a new process (not a thread) becomes a target too.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn process_fork(ctx: RawTracePointContext) -> u32 {
    let (tgid, _) = current_thread();
    // SAFETY: only tested for presence.
    if unsafe { TARGET_TGIDS.get(&tgid) }.is_none() {
        return 0;
    }
    // SAFETY: the tracepoint's arguments are (parent, child) task pointers; the child's
    // tgid is read through the checking helper.
    let child_tgid = unsafe {
        let child = *ctx.as_ptr().cast::<u64>().add(1) as *const u8;
        let offset = core::ptr::read_volatile(&raw const TASK_TGID_OFFSET);
        if offset == 0 {
            return 0;
        }
        match bpf_probe_read_kernel(child.add(offset as usize).cast::<u32>()) {
            Ok(child_tgid) => child_tgid,
            Err(_) => return 0,
        }
    };
    if child_tgid != tgid {
        let _ = TARGET_TGIDS.insert(&child_tgid, &TARGET_FOLLOWED, 0);
        stacks::inherit(tgid, child_tgid);
        // The child has its parent's command name until it execs.
        report_start(child_tgid);
    }
    0
}

/// Tells userspace that process `tgid` started, under the current task's command name,
/// at once: it may end before the next drain, and an `exec`'d program's map is best
/// read early.
#[inline(always)]
pub fn report_start(tgid: u32) {
    let Some(mut record) = EVENTS.reserve::<ProcessStart>(0) else {
        count_loss(LossCounter::ProcessStartRingFull);
        return;
    };
    let start = record.as_mut_ptr();
    // SAFETY: `start` points at a reserved, writable ProcessStart in the ring buffer.
    unsafe {
        (*start).header = header(EventKind::ProcessStart, tgid, tgid, now_ns());
        (*start).comm = bpf_get_current_comm().unwrap_or_default();
    }
    record.submit(u64::from(BPF_RB_FORCE_WAKEUP));
}

/// A thread ended: its verdict and syscall slots are free again. When it was a followed process's
/// leader, the process's slots in the target, mapping and Python tables are free too, so
/// that a script that starts thousands of short commands does not fill them.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit(_ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    forget_verdict(pid_tgid);
    syscalls::forget_thread(pid_tgid);
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // The group leader's exit stands for the process's: a leader that ends before its
    // other threads (pthread_exit in main) stops their sampling early.
    // SAFETY: the value is a u8 of this map.
    if tgid == tid && unsafe { TARGET_TGIDS.get(&tgid) }.copied() == Some(TARGET_FOLLOWED) {
        let _ = TARGET_TGIDS.remove(&tgid);
        stacks::forget(tgid);
    }
    0
}
