//! Child processes of the control plane.
//!
//! Every component is spawned from one dedicated thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG = SIGKILL`: the kernel sends the signal when the *thread* that forked the
//! child exits, so forking from a short-lived thread (a `#[tokio::test]` thread, the startup
//! thread) would kill the component as soon as that thread ends. With the dedicated thread the
//! components die exactly when the test process dies, whichever way it dies.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use crate::Result;

type SpawnRequest = (Command, Sender<std::io::Result<Child>>);

/// A running component; its stdout and stderr go to its own log file.
pub(crate) struct Proc {
    pub name: &'static str,
    child: Child,
}

impl Proc {
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Proc> {
        let out = File::create(log)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Own process group: a Ctrl-C in the terminal reaches us, and we stop the
            // components in order, instead of all of them dying at once.
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        let child = spawner_thread()
            .and_then(|tx| {
                let (reply, rx) = channel();
                tx.send((cmd, reply)).ok()?;
                rx.recv().ok()
            })
            .ok_or("testenv spawner thread is gone")?
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        Ok(Proc { name, child })
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. A zero grace kills at once.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        if !grace.is_zero() {
            // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if self.exited().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawner_thread() -> Option<&'static Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Option<Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("testenv-spawner".into())
                .spawn(move || {
                    // Never returns: the sender lives in a static.
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

/// The last `n` lines of a log file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
