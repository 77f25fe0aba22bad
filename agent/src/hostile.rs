//! A hostile guest, for the host's tests only: compiled in with the `hostile` feature (the
//! `initramfs-hostile.cpio` the test suite builds), never in the production initramfs.
//!
//! A container whose process environment holds `HULL_TEST_HOSTILE=act,act,…` makes this
//! agent turn on the host once the container is created, the way an agent (or a guest kernel)
//! under an attacker's control could:
//! - `fill-share`: write as much as it can at the top level of the virtio-fs share;
//! - `plant-root`: replace the share's `containers/` with a symlink to `HULL_TEST_PLANT_TARGET`
//!   (a host directory the test owns, standing for `/`);
//! - `plant-canary`: make `containers/<HULL_TEST_VICTIM>/mounts/0` a symlink to
//!   `HULL_TEST_CANARY`, ahead of the host creating that container;
//! - `flood-notices`: send exit notices for processes the host never started and OOM notices
//!   for every container id it can think of; `flood-huge` adds 64 MiB of exec ids;
//! - `ignore-sigkill`: acknowledge SIGKILL for the container and never deliver it;
//! - `stop-reading`: stop reading the control connection once the container has started;
//! - `console-flood`: write to the console without end;
//! - `eat-memory`: touch as much of the guest's RAM as it can get (the VM's, not the
//!   container's: the agent is in no container cgroup).
//!
//! Each act says on the console what came of it (`hostile: <act>: <result>`).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use hull_protocol::Event;
use libcontainer::oci_spec::runtime::Spec;

use crate::control::EventSink;
use crate::guest_init::SHARE_DIR;
use crate::log;

fn armed() -> &'static Mutex<HashMap<String, HashSet<String>>> {
    static ARMED: OnceLock<Mutex<HashMap<String, HashSet<String>>>> = OnceLock::new();
    ARMED.get_or_init(Default::default)
}

/// Whether container `id` was created with `act`.
pub fn has(id: &str, act: &str) -> bool {
    armed().lock().unwrap().get(id).is_some_and(|acts| acts.contains(act))
}

fn env<'a>(spec: &'a Spec, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    spec.process().as_ref()?.env().as_ref()?.iter().find_map(|e| e.strip_prefix(&prefix))
}

fn report(act: &str, result: impl std::fmt::Display) {
    log::info(&format!("hostile: {act}: {result}"));
}

fn outcome(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "done".into(),
        Err(e) => {
            format!("refused ({})", e.raw_os_error().map(|n| nix::errno::Errno::from_raw(n).desc()).unwrap_or("?"))
        }
    }
}

/// Container `id` of `spec` was created: carry out what its environment asks.
pub fn on_create(id: &str, spec: &Spec, events: &EventSink) {
    let Some(acts) = env(spec, "HULL_TEST_HOSTILE") else { return };
    let acts: HashSet<String> = acts.split(',').map(str::to_string).collect();
    armed().lock().unwrap().insert(id.to_string(), acts.clone());
    let share = Path::new(SHARE_DIR);
    if acts.contains("fill-share") {
        let r = std::fs::File::create(share.join("fill")).and_then(|mut f| {
            let chunk = vec![0x5a; 1 << 20];
            for _ in 0..64 {
                f.write_all(&chunk)?;
            }
            Ok(())
        });
        report("fill-share", outcome(r));
    }
    if acts.contains("plant-root") {
        let Some(target) = env(spec, "HULL_TEST_PLANT_TARGET") else {
            return report("plant-root", "HULL_TEST_PLANT_TARGET is needed");
        };
        let containers = share.join("containers");
        let r = std::fs::rename(&containers, share.join("containers.away"))
            .and_then(|()| std::os::unix::fs::symlink(target, &containers));
        report("plant-root", outcome(r));
    }
    if acts.contains("plant-canary") {
        let (Some(victim), Some(canary)) = (env(spec, "HULL_TEST_VICTIM"), env(spec, "HULL_TEST_CANARY")) else {
            return report("plant-canary", "HULL_TEST_VICTIM and HULL_TEST_CANARY are needed");
        };
        let mounts = share.join("containers").join(victim).join("mounts");
        let r = std::fs::create_dir_all(&mounts).and_then(|()| std::os::unix::fs::symlink(canary, mounts.join("0")));
        report("plant-canary", outcome(r));
    }
    for (act, huge) in [("flood-notices", false), ("flood-huge", true)] {
        if acts.contains(act) {
            let (events, id) = (events.clone(), id.to_string());
            std::thread::spawn(move || flood(&events, &id, huge));
        }
    }
    if acts.contains("eat-memory") {
        std::thread::spawn(|| {
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk = vec![0u8; 1 << 20];
                for page in chunk.chunks_mut(4096) {
                    page[0] = 1;
                }
                held.push(chunk);
                if held.len().is_multiple_of(16) {
                    report("eat-memory", format!("{} MiB touched", held.len()));
                }
            }
        });
    }
    if acts.contains("console-flood") {
        std::thread::spawn(|| {
            let Ok(mut console) = std::fs::OpenOptions::new().write(true).open("/dev/console") else { return };
            let line = [b'#'; 4095].iter().copied().chain([b'\n']).collect::<Vec<u8>>();
            while console.write_all(&line).is_ok() {}
        });
        report("console-flood", "started");
    }
}

/// Exit notices of processes the host never started, with 16 KiB ids (64 MiB of them in all,
/// which a host that kept them would have to hold), and OOM notices for this container and for
/// names of other containers. (Frames over 64 KiB stall or tear vhost-device-vsock 0.3.0's
/// connections: it drops data when its buffer toward the host is full.)
/// Exit notices of processes the host never started, OOM notices for this container and for
/// names of other containers; with `huge`, also 4096 exit notices of exec ids of 16 KiB each
/// (64 MiB, which a host that kept them would have to hold).
fn flood(events: &EventSink, id: &str, huge: bool) {
    const HUGE: usize = 4096;
    const SMALL: usize = 2000;
    let mut sent = 0;
    if huge {
        for n in 0..HUGE {
            let exec_id = format!("{n:08}{}", "x".repeat(16 * 1024));
            events.send(Event::ProcessExited { container_id: id.to_string(), exec_id: Some(exec_id), status: 0 });
        }
        sent += HUGE;
    }
    for n in 0..SMALL {
        events.send(Event::ProcessExited { container_id: format!("other-pod-{n}"), exec_id: None, status: 1 });
        events.send(Event::ProcessExited {
            container_id: id.to_string(),
            exec_id: Some(format!("never-{n}")),
            status: 2,
        });
        events.send(Event::OomKilled { container_id: id.to_string() });
        events.send(Event::OomKilled { container_id: format!("other-pod-{n}") });
    }
    sent += SMALL * 4;
    report(if huge { "flood-huge" } else { "flood-notices" }, format!("{sent} notices sent"));
}
