//! Where the CPU samples read the time a hypervisor stole from each CPU, and when
//! their timers were due, to leave out those that came due in stolen time as the
//! kernel leaves that time out of the threads' CPU time (see the BPF side's `steal`
//! module).
//!
//! The kernel keeps the stolen time in each run queue (`rq.prev_steal_time_rq`), but
//! brings it up to date only at the queue's next tick or switch: a sample that fires as
//! the host gives the CPU back would not see the steal yet, and stay in. Under KVM the
//! host writes the CPU's steal counter itself (`steal_time.steal`, a per-CPU variable)
//! each time it gives the CPU back, so a sample reads it there when the kernel takes
//! its steal time from KVM.

use profiler_common::StealClockLayout;

use crate::kernel_btf::Btf;

/// Where each CPU's steal clock is; all 0 when the kernel keeps none.
pub fn layout(types: &Btf) -> StealClockLayout {
    let member = |name: &str, path: &[&str]| types.member_offset(name, path).unwrap_or(0);
    let Some(run_queue_clock) = types.member_offset("rq", &["prev_steal_time_rq"]) else {
        return StealClockLayout::default();
    };
    let layout = StealClockLayout {
        task_cfs_rq: member("task_struct", &["se", "cfs_rq"]),
        cfs_rq_rq: member("cfs_rq", &["rq"]),
        rq_cpu: member("rq", &["cpu"]),
        steal_ns_from_rq: kvm_steal_counter_from_rq(types).unwrap_or(run_queue_clock),
        context_event: member("bpf_perf_event_data_kern", &["event"]),
        event_timer_due: member("perf_event", &["hw", "hrtimer", "_softexpires"]),
    };
    if layout.is_known() {
        layout
    } else {
        StealClockLayout::default()
    }
}

/// From a CPU's run queue to its KVM steal counter, both per-CPU variables, if the
/// kernel takes its steal time from KVM.
fn kvm_steal_counter_from_rq(types: &Btf) -> Option<u64> {
    if !kvm_reports_steal_time() || kernel_ignores_steal_time() {
        return None;
    }
    let counter =
        types.per_cpu_offset("steal_time")? + types.member_offset("kvm_steal_time", &["steal"])?;
    Some(counter.wrapping_sub(types.per_cpu_offset("runqueues")?))
}

/// Whether the hypervisor is KVM and offers steal time (`KVM_FEATURE_STEAL_TIME`),
/// which a KVM guest kernel then takes its steal time from.
fn kvm_reports_steal_time() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
        const KVM_FEATURE_STEAL_TIME: u32 = 1 << 5;
        // Bare metal answers the hypervisor leaves with zeros or its highest leaf.
        let signature = __cpuid(KVM_CPUID_SIGNATURE);
        let vendor: Vec<u8> = [signature.ebx, signature.ecx, signature.edx]
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect();
        if vendor != b"KVMKVMKVM\0\0\0" || signature.eax < KVM_CPUID_SIGNATURE + 1 {
            return false;
        }
        let features = __cpuid(KVM_CPUID_SIGNATURE + 1);
        features.eax & KVM_FEATURE_STEAL_TIME != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the kernel was told to leave stolen time in the threads' CPU time.
fn kernel_ignores_steal_time() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .is_ok_and(|line| line.split_whitespace().any(|word| word == "no-steal-acc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_that_keeps_a_steal_clock_has_its_whole_layout() {
        let types = Btf::read().unwrap();
        let layout = layout(&types);
        let keeps_clock = types.member_offset("rq", &["prev_steal_time_rq"]).is_some();
        assert_eq!(layout.is_known(), keeps_clock, "{layout:?}");
    }
}
