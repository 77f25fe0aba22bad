//! `hull-agent`: PID 1 of the hull guest.
//!
//! Started by the kernel as `/init` of the initramfs. It prepares the guest (mounts, a root
//! that `pivot_root` can leave), then serves the host over vsock: framed JSON control requests
//! on [`hull_protocol::CONTROL_PORT`], raw stdio streams on [`hull_protocol::STDIO_PORT`] and
//! forwarded TCP connections on [`hull_protocol::FORWARD_PORT`].
//!
//! Containers are created by re-executing this binary as a short-lived, single-threaded
//! helper (`hull-agent create-helper …`), because libcontainer forks with `clone3` from the
//! calling thread and a multi-threaded PID 1 must not do that. Once the helper exits, the
//! container's init is re-parented to us and reaped by [`reaper`].

mod cgroup;
mod containers;
mod control;
mod create_helper;
mod exec_seccomp;
mod forward;
mod guest_init;
#[cfg(feature = "hostile")]
mod hostile;
mod log;
mod network;
mod propagation;
mod reaper;
mod refusal;
mod stdio;
mod terminal;
mod vsock;

use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(create_helper::ARG) {
        std::process::exit(create_helper::main(&args[2..]));
    }
    if args.get(1).map(String::as_str) == Some(propagation::ARG) {
        std::process::exit(propagation::main(&args[2..]));
    }
    if std::process::id() != 1 {
        eprintln!("hull-agent: must run as PID 1 of a hull guest");
        std::process::exit(2);
    }
    if let Err(e) = run() {
        log::error(&format!("fatal: {e:#}"));
    }
    // PID 1 must never return: power the VM off so the host sees the sandbox end.
    guest_init::power_off();
}

fn run() -> anyhow::Result<()> {
    guest_init::prepare()?;
    let reaper = reaper::Reaper::start();
    let registry = Arc::new(containers::Registry::new(reaper.clone())?);
    let events = control::EventSink::new();
    reaper.set_exit_hook({
        let registry = registry.clone();
        let events = events.clone();
        move |pid, status| {
            for event in registry.process_exited(pid, status) {
                events.send(event);
            }
        }
    });
    stdio::serve(registry.clone())?;
    forward::serve()?;
    control::serve(registry, events)
}
