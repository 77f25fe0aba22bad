//! PID 1 reaps every child: the create helpers it spawns, the container inits re-parented to
//! it, and any orphan. Nothing else in the agent may call `wait*`, or it would steal statuses.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};

type ExitHook = Box<dyn Fn(i32, i32) + Send + Sync>;

#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Inner>,
}

struct Inner {
    /// Exit statuses not yet claimed by [`Reaper::wait`] (a child can end before its spawner
    /// asks about it).
    exited: Mutex<HashMap<i32, i32>>,
    /// Pids someone will `wait` for; everything else goes to the exit hook.
    awaited: Mutex<Vec<i32>>,
    changed: Condvar,
    hook: OnceLock<ExitHook>,
}

impl Reaper {
    pub fn start() -> Self {
        let reaper = Reaper {
            inner: Arc::new(Inner {
                exited: Mutex::new(HashMap::new()),
                awaited: Mutex::new(Vec::new()),
                changed: Condvar::new(),
                hook: OnceLock::new(),
            }),
        };
        let inner = reaper.inner.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || inner.run())
            .expect("spawning the reaper thread");
        reaper
    }

    /// Called with `(pid, status)` for every child nobody [`wait`](Self::wait)s for.
    pub fn set_exit_hook(&self, hook: impl Fn(i32, i32) + Send + Sync + 'static) {
        let _ = self.inner.hook.set(Box::new(hook));
    }

    /// Spawn `cmd` as a child whose status will be collected with [`wait`](Self::wait).
    /// The pid is registered before the reaper can see the child end.
    pub fn spawn(&self, cmd: &mut std::process::Command) -> std::io::Result<i32> {
        let mut awaited = lock(&self.inner.awaited);
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        awaited.push(pid);
        // The reaper thread, not `Child`, collects the status.
        drop(child);
        Ok(pid)
    }

    /// Block until `pid` (started with [`spawn`](Self::spawn)) ends; returns its status.
    pub fn wait(&self, pid: i32) -> i32 {
        let mut exited = lock(&self.inner.exited);
        loop {
            if let Some(status) = exited.remove(&pid) {
                lock(&self.inner.awaited).retain(|p| *p != pid);
                return status;
            }
            exited = self.inner.changed.wait(exited).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Inner {
    fn run(&self) {
        loop {
            // Peek first, reap second: `Command::spawn` reaps a child whose exec failed itself,
            // and must find it still there. Taking the `awaited` lock between the two waits
            // for any spawn in progress to finish.
            let peeked = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::__WALL);
            let pid = match peeked {
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => continue,
                },
                // No children right now: poll again shortly (a spawn may be under way).
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            let awaited = lock(&self.awaited);
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::Exited(pid, code)) => Some((pid.as_raw(), code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => Some((pid.as_raw(), 128 + sig as i32)),
                // Reaped by a failed spawn meanwhile, or not ended after all.
                _ => None,
            };
            drop(awaited);
            if let Some((pid, status)) = status {
                self.record(pid, status);
            }
        }
    }

    fn record(&self, pid: i32, status: i32) {
        let awaited = lock(&self.awaited).contains(&pid);
        if awaited {
            lock(&self.exited).insert(pid, status);
            self.changed.notify_all();
        } else if let Some(hook) = self.hook.get() {
            hook(pid, status);
        }
    }
}

/// The reaper must keep reaping even if some thread panicked while holding a lock.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
