//! Agent log lines on the guest console (the host keeps it as `console.log`).

pub fn info(msg: &str) {
    line(&format!("hull-agent: {msg}\n"));
}

pub fn error(msg: &str) {
    line(&format!("hull-agent: error: {msg}\n"));
}

/// One write per line: the host looks for the ready line's exact bytes, and `eprintln!`'s
/// several writes would let a kernel message (at `loglevel=7`) land between them.
fn line(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// A boot step, into the kernel's log only (`<6>`: info, below `quiet`'s console level), where
/// the kernel's own timestamps place it: with `HULL_KERNEL_APPEND=printk.time=1`, `dmesg`
/// shows how long each step of the agent's start took. Best effort: a log is not worth failing
/// the boot for.
pub fn boot_step(step: &str) {
    use std::io::Write;
    if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        // The wall clock too (kvm-clock's, the host's), to place the step in the host's logs.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let _ = kmsg
            .write_all(format!("<6>hull-agent: {step} (at {}.{:06})\n", now.as_secs(), now.subsec_micros()).as_bytes());
    }
}
