//! Agent log lines on the guest console (the host keeps it as `console.log`).

pub fn info(msg: &str) {
    eprintln!("hull-agent: {msg}");
}

pub fn error(msg: &str) {
    eprintln!("hull-agent: error: {msg}");
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
