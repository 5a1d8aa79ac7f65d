//! `--cgroup`: a container, a pod or a systemd unit as a target. The kernel's programs
//! recognize its processes, those that join it later included, by the id of the cgroup
//! they run in on the v2 hierarchy, which is what a task's cgroup id is on a host that
//! also mounts v1 hierarchies.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

use crate::exit::Failure;

/// A cgroup of the v2 hierarchy, as the programs recognize its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupId {
    /// Its id: the inode of its directory.
    pub id: u64,
    /// How deep it is below the root, which is level 0.
    pub level: u32,
}

/// A cgroup given on the command line, found on the v2 hierarchy.
#[derive(Clone, Debug)]
pub struct Cgroup {
    /// Its directory under the v2 mount.
    pub directory: PathBuf,
    /// Its path from the hierarchy's root, as `/proc/PID/cgroup` prints it.
    pub path: String,
    /// What the programs compare.
    pub id: CgroupId,
}

impl Cgroup {
    /// Finds the cgroup `given` names: a directory under the v2 mount, or a path from
    /// the hierarchy's root (`/system.slice/nginx.service`, as `/proc/PID/cgroup` gives
    /// it). A group of a v1-only hierarchy is refused with what to pass instead.
    pub fn find(given: &Path) -> Result<Cgroup, Failure> {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mount_of = |kind: &str| -> Vec<PathBuf> {
            mounts
                .lines()
                .filter_map(|line| {
                    let mut fields = line.split_whitespace();
                    let (_, target, fs_type) = (fields.next(), fields.next()?, fields.next()?);
                    (fs_type == kind).then(|| PathBuf::from(target))
                })
                .collect()
        };
        let Some(root) = mount_of("cgroup2").into_iter().next() else {
            return Err(Failure::KernelFeature(
                "no cgroup v2 hierarchy is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) or use --pid --children".to_owned(),
            ));
        };
        let directory = if given.starts_with(&root) {
            given.to_owned()
        } else if let Some(v1) = mount_of("cgroup")
            .into_iter()
            .find(|v1| given.starts_with(v1))
        {
            let below = given.strip_prefix(&v1).unwrap_or(given);
            return Err(Failure::Usage(format!(
                "{} is on a cgroup v1 hierarchy, whose members the kernel's programs cannot tell; pass the same group on the v2 hierarchy ({}), or its processes with --pid --children",
                given.display(),
                root.join(below).display()
            )));
        } else {
            root.join(given.strip_prefix("/").unwrap_or(given))
        };
        let metadata = fs::metadata(&directory).map_err(|error| {
            Failure::NoTarget(format!("no cgroup at {}: {error}", directory.display()))
        })?;
        if !directory.join("cgroup.procs").exists() {
            return Err(Failure::NoTarget(format!(
                "{} is not a cgroup (it has no cgroup.procs)",
                directory.display()
            )));
        }
        let below_root = directory.strip_prefix(&root).unwrap_or(&directory);
        let level = below_root
            .components()
            .filter(|component| matches!(component, Component::Normal(_)))
            .count() as u32;
        Ok(Cgroup {
            path: format!("/{}", below_root.display()),
            directory,
            id: CgroupId {
                id: metadata.ino(),
                level,
            },
        })
    }

    /// Every process in the group and in the groups below it, now.
    pub fn processes(&self) -> Vec<u32> {
        let mut processes = Vec::new();
        let mut groups = vec![self.directory.clone()];
        while let Some(group) = groups.pop() {
            let procs = fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
            processes.extend(
                procs
                    .lines()
                    .filter_map(|pid| pid.trim().parse::<u32>().ok()),
            );
            let children = fs::read_dir(&group).into_iter().flatten().flatten();
            groups.extend(
                children
                    .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                    .map(|entry| entry.path()),
            );
        }
        processes.sort_unstable();
        processes.dedup();
        processes
    }
}

/// The cgroup process `pid` runs in on the v2 hierarchy (`/` for the root), if it
/// still runs.
pub fn of_process(pid: u32) -> Option<String> {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_in_a_cgroup_of_the_v2_hierarchy() {
        let path = of_process(std::process::id()).expect("a cgroup v2 entry");
        assert!(path.starts_with('/'), "{path}");
    }
}
