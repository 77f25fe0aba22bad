//! Logs a guest can make a host process write: through a pipe into a sink that keeps at most a
//! cap of it in the file and drains the rest, so a guest cannot fill the host's `/run` through
//! them. QEMU's serial console (`console.log`) and its own stderr (`vmm.log`) go this way;
//! hull-vmm caps its console log itself.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

/// What `console.log` keeps of a guest's console: the boot, the agent's lines, and a lot of
/// whatever follows.
pub const CONSOLE_CAP: u64 = 64 << 20;
/// What a VMM's own log keeps.
pub const VMM_LOG_CAP: u64 = 16 << 20;

/// The console cap, or `HULL_CONSOLE_CAP` (bytes) where a test wants a small one.
pub fn console_cap() -> u64 {
    std::env::var("HULL_CONSOLE_CAP").ok().and_then(|v| v.parse().ok()).unwrap_or(CONSOLE_CAP)
}

/// Start a sink writing what comes through the returned pipe end into `log`, up to `cap`
/// bytes. It ends when the last writer (the VMM) closes the pipe.
pub fn sink(log: &Path, cap: u64) -> std::io::Result<OwnedFd> {
    let mut file = File::create(log)?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    std::thread::Builder::new().name("console".into()).spawn(move || {
        let mut pipe = File::from(read);
        let mut kept = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if kept >= cap {
                continue;
            }
            let take = n.min((cap - kept) as usize);
            if file.write_all(&buf[..take]).is_err() {
                kept = cap;
                continue;
            }
            kept += take as u64;
            if kept >= cap {
                let _ = writeln!(file, "\n[hull: this log reached its cap of {cap} bytes; the rest is dropped]");
                tracing::warn!(cap, "a log the guest can fill reached its cap");
            }
        }
    })?;
    Ok(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_cap_and_drains_the_rest() {
        let log = std::env::temp_dir().join(format!("hull-log-sink-test-{}", std::process::id()));
        let write = sink(&log, 1000).unwrap();
        let mut w = File::from(write);
        for _ in 0..100 {
            w.write_all(&[b'x'; 4096]).unwrap();
        }
        drop(w);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read(&log).unwrap().len() < 1000 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.starts_with(&"x".repeat(1000)) && text.contains("reached its cap of 1000 bytes"),
            "{}",
            text.len()
        );
        assert!(text.len() < 1200, "{}", text.len());
        std::fs::remove_file(&log).unwrap();
    }
}
