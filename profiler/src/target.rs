//! The processes being profiled: pids that already run, or a command that the profiler
//! starts itself and holds until the probes are attached.

use std::{
    ffi::{CString, OsStr, OsString},
    fs,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::io::unix::AsyncFd;

use crate::exit::Failure;

/// Processes whose exit is awaited through their pidfds: the kernel says when they end,
/// so nothing reads `/proc` over and over to find out.
pub struct ExitWatch {
    pidfds: Vec<AsyncFd<OwnedFd>>,
}

impl ExitWatch {
    /// Watches `pids`; one that is gone already is not waited for.
    pub fn new(pids: &[u32]) -> std::io::Result<Self> {
        let mut pidfds = Vec::with_capacity(pids.len());
        for &pid in pids {
            // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd < 0 {
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::ESRCH) {
                    continue;
                }
                return Err(error);
            }
            // SAFETY: the descriptor was just opened and nothing else owns it.
            let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            // SAFETY: the AsyncFd owns the pidfd, which stays open until it is dropped.
            let pidfd =
                unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                    .map_err(|error| error.into_parts().1)?;
            pidfds.push(pidfd);
        }
        Ok(ExitWatch { pidfds })
    }

    /// Returns once every watched process has exited (a zombie has).
    pub async fn all_exited(&self) {
        for pidfd in &self.pidfds {
            // A pidfd turns readable when its process exits, and stays so; an error
            // cannot be waited out either.
            let _ = pidfd.readable().await;
        }
    }
}

/// Checks that `pid` names a live process, so that nothing is loaded for a typo; a
/// thread's id (which `/proc` also lists) is refused with its process's.
pub fn ensure_exists(pid: u32) -> Result<(), Failure> {
    if pid == 0 || !is_alive(pid) {
        return Err(Failure::NoTarget(format!("no process with pid {pid}")));
    }
    let process = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Tgid:"))
                .and_then(|tgid| tgid.trim().parse::<u32>().ok())
        });
    match process {
        Some(process) if process != pid => Err(Failure::NoTarget(format!(
            "{pid} is a thread of process {process}, not a process: pass --pid {process}"
        ))),
        _ => Ok(()),
    }
}

/// Whether `pid` is a process that can still run: it exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

/// `pid` and every process it started that still runs, their children included: the
/// tree a `--pid --children` recording starts with.
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&process) = tree.get(next) {
        next += 1;
        // Each thread lists the processes it forked.
        let threads = fs::read_dir(format!("/proc/{process}/task"))
            .into_iter()
            .flatten();
        for thread in threads.flatten() {
            let children = fs::read_to_string(thread.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|child| child.parse().ok())
            {
                if !tree.contains(&child) {
                    tree.push(child);
                }
            }
        }
    }
    tree
}

/// The process's pid in its own pid namespace, where that differs from the host's (a
/// container's processes), from the last field of `NSpid` in its status.
pub fn namespace_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?;
    let innermost: u32 = line.split_whitespace().last()?.parse().ok()?;
    (innermost != pid).then_some(innermost)
}

/// Every process running now (kernel threads included), by pid.
pub fn all_processes() -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// The process's command name, or `?` once it is gone.
pub fn process_name(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// A command started by the profiler, stopped before `exec` until [`HeldCommand::release`].
///
/// Holding it lets the probes be in place before its first instruction, as `perf record
/// -- CMD` does. `std::process::Command` can't do this: its `spawn` waits for the `exec`.
pub struct HeldCommand {
    pid: u32,
    /// The program it will `exec`, resolved through `$PATH`.
    program: PathBuf,
    /// Write end of the pipe the child waits on. A byte written lets it `exec`; the pipe
    /// closing without one (the profiler failed or died first) makes it exit instead.
    go: Option<std::io::PipeWriter>,
    exit: Option<ExitStatus>,
}

/// How a started command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

impl HeldCommand {
    /// Forks a child that will `exec` `argv` once released. Fails if the program is not
    /// found or not executable, so that the error is reported before anything is loaded.
    pub fn spawn(argv: &[OsString]) -> Result<Self, Failure> {
        let program = argv
            .first()
            .ok_or_else(|| Failure::NoTarget("no command given after `--`".to_owned()))?;
        let path = find_program(program).ok_or_else(|| {
            Failure::NoTarget(format!(
                "command not found or not executable: {}",
                program.to_string_lossy()
            ))
        })?;
        let program = path.clone();
        let path = c_string(path.as_os_str())?;
        let args = argv
            .iter()
            .map(|arg| c_string(arg))
            .collect::<Result<Vec<_>, _>>()?;
        let mut arg_pointers: Vec<*const libc::c_char> =
            args.iter().map(|arg| arg.as_ptr()).collect();
        arg_pointers.push(std::ptr::null());

        let (wait, go) =
            std::io::pipe().map_err(|error| Failure::Other(anyhow::anyhow!("pipe: {error}")))?;
        let wait_fd = std::os::fd::AsRawFd::as_raw_fd(&wait);
        // SAFETY: the child calls only async-signal-safe functions (close, read, execv,
        // _exit) on memory prepared before the fork, so it is sound in a threaded parent.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(Failure::Other(anyhow::anyhow!(
                "fork: {}",
                std::io::Error::last_os_error()
            ))),
            0 => unsafe {
                libc::close(std::os::fd::AsRawFd::as_raw_fd(&go));
                let mut byte = 0u8;
                let mut read = libc::read(wait_fd, (&raw mut byte).cast(), 1);
                while read < 0 {
                    read = libc::read(wait_fd, (&raw mut byte).cast(), 1);
                }
                if read == 1 {
                    libc::close(wait_fd);
                    libc::execv(path.as_ptr(), arg_pointers.as_ptr());
                }
                libc::_exit(127)
            },
            pid => Ok(HeldCommand {
                pid: pid as u32,
                program,
                go: Some(go),
                exit: None,
            }),
        }
    }

    /// The child's pid, which stays the same across its `exec`.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The program the child will `exec`.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Lets the child `exec` the command.
    pub fn release(&mut self) {
        if let Some(mut go) = self.go.take() {
            // If the child is gone already, poll_exit will tell.
            let _ = std::io::Write::write_all(&mut go, b"x");
        }
    }

    /// Waits up to `timeout` for the command to stop (see [`Probes::hold_at_entry`]).
    /// Returns false if it exited, or did not stop in time.
    ///
    /// [`Probes::hold_at_entry`]: crate::attach::Probes::hold_at_entry
    pub fn wait_for_stop(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let mut status = 0;
            // SAFETY: plain syscall on our own child.
            let reaped = unsafe {
                libc::waitpid(
                    self.pid as i32,
                    &raw mut status,
                    libc::WNOHANG | libc::WUNTRACED,
                )
            };
            if reaped == self.pid as i32 {
                if libc::WIFSTOPPED(status) {
                    return true;
                }
                self.exit = Some(exit_status(status));
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// Lets a stopped command continue.
    pub fn resume(&self) {
        // SAFETY: signalling our own, not yet reaped, child.
        unsafe { libc::kill(self.pid as i32, libc::SIGCONT) };
    }

    /// How the command ended, once it has; reaps it without blocking.
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let mut status = 0;
            // SAFETY: plain syscall on our own child.
            let reaped = unsafe { libc::waitpid(self.pid as i32, &raw mut status, libc::WNOHANG) };
            if reaped == self.pid as i32 {
                self.exit = Some(exit_status(status));
            }
        }
        self.exit
    }

    /// Ends a command that outlived the recording: SIGTERM, then SIGKILL after a grace
    /// period, so that the profiler leaves no orphan behind. A command never released is
    /// simply closed out: it exits without running.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.go.take();
        for (signal, grace_ms) in [(libc::SIGTERM, 2000), (libc::SIGKILL, 2000)] {
            if self.poll_exit().is_some() {
                break;
            }
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(self.pid as i32, signal) };
            for _ in 0..grace_ms / 10 {
                if self.poll_exit().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.poll_exit()
    }
}

impl Drop for HeldCommand {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.terminate();
        }
    }
}

fn exit_status(status: i32) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

fn c_string(text: &OsStr) -> Result<CString, Failure> {
    CString::new(text.as_bytes()).map_err(|_| {
        Failure::NoTarget(format!(
            "command argument contains a NUL byte: {}",
            text.to_string_lossy()
        ))
    })
}

/// Resolves a program the way a shell does: a name with a slash is a path, others are
/// searched in `$PATH`.
fn find_program(program: &OsStr) -> Option<PathBuf> {
    let is_executable = |path: &Path| {
        let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: plain syscall on a NUL-terminated path.
        path.is_file() && unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } == 0
    };
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    let search_path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&search_path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_pid_zero_is_not_a_target() {
        assert!(is_alive(std::process::id()));
        assert!(ensure_exists(0).is_err());
    }

    #[test]
    fn programs_resolve_through_path_and_missing_ones_do_not() {
        assert!(find_program(OsStr::new("sh")).is_some());
        assert!(find_program(OsStr::new("/bin/sh")).is_some());
        assert!(find_program(OsStr::new("surely-no-such-program-here")).is_none());
    }
}
