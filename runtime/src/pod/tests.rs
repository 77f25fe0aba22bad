//! The core without a VM: a pod over a fake agent on a socketpair and a fake VM.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_protocol::{
    read_frame, write_frame, AgentError as WireError, AgentMessage, ErrorKind, Event, Outcome, Reply, Request,
    RequestBody, Response,
};

use super::*;

/// What the fake agent does with one request: its answer, and events to push right after it.
type Script = dyn Fn(&RequestBody) -> (Outcome, Vec<Event>) + Send + Sync;

/// The guest end of the control connection.
struct FakeGuest {
    writer: Arc<Mutex<UnixStream>>,
    calls: Arc<Mutex<Vec<RequestBody>>>,
}

impl FakeGuest {
    fn event(&self, event: Event) {
        write_frame(&mut *self.writer.lock().unwrap(), &AgentMessage::Event(event)).unwrap();
    }

    fn calls(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| serde_json::to_value(c).unwrap()["call"].as_str().unwrap().to_string())
            .collect()
    }

    /// Hang up, as a dead agent would.
    fn hang_up(&self) {
        let _ = self.writer.lock().unwrap().shutdown(std::net::Shutdown::Both);
    }
}

fn ok() -> (Outcome, Vec<Event>) {
    (Outcome::Ok(Reply::Empty), Vec::new())
}

/// An agent that does what it is asked: creates answer pid 100, execs pid 200.
fn obliging(body: &RequestBody) -> (Outcome, Vec<Event>) {
    match body {
        RequestBody::CreateContainer { .. } => (Outcome::Ok(Reply::Created { pid: 100 }), Vec::new()),
        RequestBody::ExecProcess { .. } => (Outcome::Ok(Reply::Created { pid: 200 }), Vec::new()),
        RequestBody::ListProcesses { .. } => (Outcome::Ok(Reply::Processes { processes: Vec::new() }), Vec::new()),
        _ => ok(),
    }
}

fn fake_agent(script: Arc<Script>) -> (Agent, Receiver<AgentNotice>, FakeGuest) {
    let (host, guest) = UnixStream::pair().unwrap();
    let (agent, notices) = Agent::over(host).unwrap();
    let writer = Arc::new(Mutex::new(guest.try_clone().unwrap()));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (w, c) = (writer.clone(), calls.clone());
    std::thread::spawn(move || {
        let mut reader = guest;
        while let Ok(req) = read_frame::<Request>(&mut reader) {
            c.lock().unwrap().push(req.body.clone());
            let (result, after) = script(&req.body);
            let mut w = w.lock().unwrap();
            if write_frame(&mut *w, &AgentMessage::Response(Response { id: req.id, result })).is_err() {
                return;
            }
            for event in after {
                let _ = write_frame(&mut *w, &AgentMessage::Event(event));
            }
        }
    });
    (agent, notices, FakeGuest { writer, calls })
}

/// A VM with no processes, or with one real process standing for its VMM.
struct FakeVm {
    vmm: Option<std::process::Child>,
    stopped: Arc<AtomicBool>,
    oom_killed: Arc<AtomicBool>,
}

impl Vm for FakeVm {
    fn vsock_socket(&self) -> &Path {
        Path::new("/nonexistent/vsock.sock")
    }

    fn pidfds(&self) -> std::result::Result<Vec<(&'static str, OwnedFd)>, ProcessError> {
        let Some(vmm) = &self.vmm else { return Ok(Vec::new()) };
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd (or -1).
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, vmm.id() as libc::pid_t, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: the kernel just returned this fd to us.
        Ok(vec![("fake-vmm", unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })])
    }

    fn how_it_ended(&mut self) -> Option<VmEnd> {
        let vmm = self.vmm.as_mut()?;
        vmm.try_wait().ok().flatten().map(|s| VmEnd { what: format!("fake-vmm exited ({s})"), clean: s.success() })
    }

    fn oom_killed(&self) -> bool {
        self.oom_killed.load(Ordering::SeqCst)
    }

    fn shutdown(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(vmm) = self.vmm.as_mut() {
            let _ = vmm.kill();
            let _ = vmm.wait();
        }
    }
}

struct Rig {
    pod: Arc<Pod>,
    events: Receiver<PodEvent>,
    guest: FakeGuest,
    vm_stopped: Arc<AtomicBool>,
    vm_oom_killed: Arc<AtomicBool>,
    dir: PathBuf,
    bundle: Bundle,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.pod.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tests' [`KILL_GRACE`].
const GRACE: Duration = Duration::from_millis(300);

static RIGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn rig_with(script: Arc<Script>, vmm: Option<std::process::Child>) -> Rig {
    let dir = std::env::temp_dir().join(format!(
        "hull-pod-test-{}-{}",
        std::process::id(),
        RIGS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(dir.join("bundle/rootfs")).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs"},
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "linux": {"namespaces": [{"type": "network"}, {"type": "pid"}]}
    });
    std::fs::write(dir.join("bundle/config.json"), config.to_string()).unwrap();
    let bundle = Bundle::load(&dir.join("bundle")).unwrap();
    let state = StateDir::new(&dir, "sandbox").unwrap();
    let (agent, notices, guest) = fake_agent(script);
    let vm_stopped = Arc::new(AtomicBool::new(false));
    let vm_oom_killed = Arc::new(AtomicBool::new(false));
    let vm = FakeVm { vmm, stopped: vm_stopped.clone(), oom_killed: vm_oom_killed.clone() };
    let (tx, events) = mpsc::channel();
    let tx = Mutex::new(tx);
    let sink: EventSink = Arc::new(move |e| {
        let _ = tx.lock().unwrap().send(e);
    });
    let pod = Pod::assemble(Parts {
        dir: state,
        share: ShareMode::Private,
        vm: Box::new(vm),
        agent,
        notices,
        network: None,
        events: sink,
        kill_grace: GRACE,
    })
    .unwrap();
    Rig { pod, events, guest, vm_stopped, vm_oom_killed, dir, bundle }
}

fn rig() -> Rig {
    rig_with(Arc::new(obliging), None)
}

impl Rig {
    fn next(&self) -> PodEvent {
        self.events.recv_timeout(Duration::from_secs(10)).expect("an event")
    }

    fn no_more_events(&self) {
        if let Ok(e) = self.events.recv_timeout(Duration::from_millis(200)) {
            panic!("unexpected event {e:?}");
        }
    }

    fn create(&self, id: &str) {
        assert_eq!(self.pod.create_container(id, &self.bundle, None).unwrap(), 100);
    }

    /// Create and start `id`, taking its Started event.
    fn running(&self, id: &str) {
        self.create(id);
        self.pod.start(id, None).unwrap();
        assert_eq!(self.next(), started(id, None));
    }

    fn exited(&self, id: &str, exec_id: Option<&str>, status: i32) {
        self.guest.event(Event::ProcessExited {
            container_id: id.into(),
            exec_id: exec_id.map(str::to_string),
            status,
        });
    }

    fn state(&self, id: &str, exec_id: Option<&str>) -> ProcessState {
        self.pod.status(id, exec_id).unwrap().state
    }
}

fn started(id: &str, exec_id: Option<&str>) -> PodEvent {
    PodEvent::Started { container_id: id.into(), exec_id: exec_id.map(str::to_string) }
}

fn exit_status(e: PodEvent) -> (String, Option<String>, i32) {
    match e {
        PodEvent::Exited { container_id, exec_id, exit } => (container_id, exec_id, exit.status),
        other => panic!("expected an exit, got {other:?}"),
    }
}

#[test]
fn a_container_lives_through_every_state() {
    let r = rig();
    r.create("c1");
    assert_eq!(r.state("c1", None), ProcessState::Created);
    r.pod.start("c1", None).unwrap();
    assert_eq!(r.next(), started("c1", None));
    r.pod.pause("c1").unwrap();
    assert_eq!(r.next(), PodEvent::Paused { container_id: "c1".into() });
    assert_eq!(r.state("c1", None), ProcessState::Paused);
    r.pod.resume("c1").unwrap();
    assert_eq!(r.next(), PodEvent::Resumed { container_id: "c1".into() });
    r.exited("c1", None, 3);
    assert_eq!(exit_status(r.next()), ("c1".into(), None, 3));
    assert_eq!(r.pod.wait("c1", None).unwrap().status, 3);
    assert_eq!(r.state("c1", None), ProcessState::Stopped);
    assert_eq!(r.pod.remove_container("c1").unwrap().map(|e| e.status), Some(3));
    assert!(matches!(r.pod.status("c1", None), Err(PodError::NoContainer(_))));
    assert_eq!(
        r.guest.calls(),
        ["create_container", "start_container", "pause_container", "resume_container", "remove_container"]
    );
    assert!(r.pod.shutdown_if_empty());
    assert!(r.vm_stopped.load(Ordering::SeqCst));
}

#[test]
fn operations_in_the_wrong_state_are_one_error() {
    let r = rig();
    r.create("c1");
    let invalid = |e: PodError| match e {
        PodError::InvalidState(s) => (s.op, s.state),
        other => panic!("expected InvalidState, got {other}"),
    };
    assert_eq!(invalid(r.pod.pause("c1").unwrap_err()), (Op::Pause, ProcessState::Created));
    assert_eq!(
        invalid(r.pod.add_exec("c1", "e", serde_json::json!({}), false, None).unwrap_err()),
        (Op::Exec, ProcessState::Created)
    );
    r.pod.start("c1", None).unwrap();
    let e = r.pod.start("c1", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(e.to_string(), "cannot start container c1 that is running");
    assert_eq!(invalid(r.pod.resume("c1").unwrap_err()), (Op::Resume, ProcessState::Running));
    assert_eq!(invalid(r.pod.remove_container("c1").unwrap_err()), (Op::Delete, ProcessState::Running));
    assert!(matches!(r.pod.start("nope", None), Err(PodError::NoContainer(_))));
    assert_eq!(r.pod.create_container("c1", &r.bundle, None).unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert_eq!(r.pod.create_container("../x", &r.bundle, None).unwrap_err().kind(), ErrorKind::InvalidArgument);
    // Refused calls never reached the guest.
    assert_eq!(r.guest.calls(), ["create_container", "start_container"]);
}

/// The agent answers a start and reports the exit right behind it, on the same connection:
/// the exit must still come after the start, every time.
#[test]
fn an_exit_right_behind_its_start_is_reported_after_it() {
    for _ in 0..50 {
        let script: Arc<Script> = Arc::new(|body| match body {
            RequestBody::StartContainer { container_id } => (
                Outcome::Ok(Reply::Empty),
                vec![Event::ProcessExited { container_id: container_id.clone(), exec_id: None, status: 0 }],
            ),
            other => obliging(other),
        });
        let r = rig_with(script, None);
        r.create("c1");
        r.pod.start("c1", None).unwrap();
        assert_eq!(r.next(), started("c1", None));
        assert_eq!(exit_status(r.next()), ("c1".into(), None, 0));
        assert_eq!(r.state("c1", None), ProcessState::Stopped);
    }
}

#[test]
fn kill_before_and_after_the_exit() {
    let r = rig();
    r.running("c1");
    r.pod.signal("c1", None, libc::SIGKILL, false).unwrap();
    r.exited("c1", None, 137);
    assert_eq!(exit_status(r.next()), ("c1".into(), None, 137));
    let e = r.pod.signal("c1", None, libc::SIGKILL, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A second report of the same exit changes nothing.
    r.exited("c1", None, 0);
    r.no_more_events();
    assert_eq!(r.pod.wait("c1", None).unwrap().status, 137);
    assert_eq!(r.guest.calls().iter().filter(|c| *c == "signal_process").count(), 1);
}

#[test]
fn exec_ids_can_be_reused_once_removed() {
    let r = rig();
    r.running("c1");
    for round in 0..3 {
        r.pod.add_exec("c1", "probe", serde_json::json!({"args": ["true"]}), false, None).unwrap();
        let dup = r.pod.add_exec("c1", "probe", serde_json::json!({}), false, None).unwrap_err();
        assert_eq!(dup.kind(), ErrorKind::AlreadyExists);
        assert_eq!(r.state("c1", Some("probe")), ProcessState::Created);
        r.pod.start("c1", Some("probe")).unwrap();
        assert_eq!(r.next(), started("c1", Some("probe")));
        let busy = r.pod.remove_process("c1", "probe").unwrap_err();
        assert_eq!(busy.kind(), ErrorKind::FailedPrecondition, "round {round}: {busy}");
        r.exited("c1", Some("probe"), round);
        assert_eq!(exit_status(r.next()), ("c1".into(), Some("probe".into()), round));
        assert_eq!(r.pod.remove_process("c1", "probe").unwrap().map(|e| e.status), Some(round));
        assert_eq!(r.pod.wait("c1", Some("probe")).unwrap_err().kind(), ErrorKind::NotFound);
    }
    assert_eq!(r.pod.remove_process("c1", "never").unwrap_err().kind(), ErrorKind::NotFound);
    // An exec added but never started is forgotten without asking the guest.
    r.pod.add_exec("c1", "idle", serde_json::json!({}), false, None).unwrap();
    assert_eq!(r.pod.remove_process("c1", "idle").unwrap(), None);
    let calls = r.guest.calls();
    assert_eq!(calls.iter().filter(|c| *c == "exec_process").count(), 3);
    assert_eq!(calls.iter().filter(|c| *c == "remove_process").count(), 3);
}

#[test]
fn a_wait_wakes_on_the_exit() {
    let r = rig();
    r.create("c1");
    r.pod.start("c1", None).unwrap();
    let pod = r.pod.clone();
    let waiter = std::thread::spawn(move || pod.wait("c1", None).map(|e| e.status));
    std::thread::sleep(Duration::from_millis(100));
    r.exited("c1", None, 42);
    assert_eq!(waiter.join().unwrap().unwrap(), 42);
}

#[test]
fn the_agents_refusals_keep_their_kind() {
    let script: Arc<Script> = Arc::new(|body| match body {
        RequestBody::SignalProcess { .. } => {
            (Outcome::Error(WireError::new(ErrorKind::NotFound, "the init has already exited")), Vec::new())
        }
        RequestBody::PauseContainer { .. } => (Outcome::Ok(Reply::Created { pid: 1 }), Vec::new()),
        RequestBody::ContainerStats { .. } => {
            (Outcome::Error(WireError::new(ErrorKind::Internal, "cgroup gone")), Vec::new())
        }
        other => obliging(other),
    });
    let r = rig_with(script, None);
    r.create("c1");
    r.pod.start("c1", None).unwrap();
    let e = r.pod.signal("c1", None, 15, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("the init has already exited"), "{e}");
    // A reply of the wrong shape is an error, and the state does not move.
    let e = r.pod.pause("c1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert!(e.to_string().contains("pause_container"), "{e}");
    assert_eq!(r.state("c1", None), ProcessState::Running);
    assert_eq!(r.pod.stats("c1").unwrap_err().kind(), ErrorKind::Internal);
}

/// The guest names processes the host never started, floods OOM notices and reports an exit
/// status no process can have.
#[test]
fn notices_about_unknown_processes_change_nothing() {
    let r = rig();
    r.running("c1");
    r.exited("other-pod", None, 0);
    r.exited("c1", Some("never-started"), 0);
    r.exited(&"x".repeat(200), None, 0);
    for _ in 0..1000 {
        r.guest.event(Event::OomKilled { container_id: "c1".into() });
        r.guest.event(Event::OomKilled { container_id: "someone-else".into() });
    }
    // One process started, so one OOM kill is believable.
    assert_eq!(r.next(), PodEvent::Oom { container_id: "c1".into() });
    r.no_more_events();
    r.exited("c1", None, 99_999);
    assert_eq!(exit_status(r.next()), ("c1".into(), None, SANDBOX_FAILED));
}

#[test]
fn a_lost_agent_fails_the_sandbox_and_ends_every_process() {
    let r = rig();
    r.running("c1");
    r.pod.add_exec("c1", "e1", serde_json::json!({}), false, None).unwrap();
    r.pod.start("c1", Some("e1")).unwrap();
    r.next();
    r.guest.hang_up();
    match r.next() {
        PodEvent::SandboxFailed { reason } => assert!(reason.contains("lost the guest agent"), "{reason}"),
        other => panic!("expected SandboxFailed, got {other:?}"),
    }
    let mut exits = vec![exit_status(r.next()), exit_status(r.next())];
    exits.sort();
    assert_eq!(exits, [("c1".into(), None, SANDBOX_FAILED), ("c1".into(), Some("e1".into()), SANDBOX_FAILED)]);
    // A kill that comes too late finds nothing, as containerd expects; other calls say why.
    let e = r.pod.signal("c1", None, 9, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = r.pod.stats("c1").unwrap_err();
    assert!(matches!(e, PodError::SandboxFailed(_)), "{e}");
    // What is left can still be cleaned up.
    r.pod.remove_process("c1", "e1").unwrap();
    r.pod.remove_container("c1").unwrap();
    assert!(r.pod.failure().is_some());
}

/// The host's OOM killer took the VMM, and the agent's connection dropped before the VMM's
/// pidfd said so: still an OOM kill of the container, not a sandbox failure.
#[test]
fn a_host_oom_kill_noticed_first_as_a_lost_agent_is_an_oom_kill() {
    let r = rig();
    r.running("c1");
    r.vm_oom_killed.store(true, Ordering::SeqCst);
    r.guest.hang_up();
    assert!(matches!(r.next(), PodEvent::Oom { container_id } if container_id == "c1"));
    assert_eq!(exit_status(r.next()), ("c1".into(), None, KILLED));
    assert!(matches!(r.next(), PodEvent::SandboxFailed { .. }));
    assert_eq!(r.pod.wait("c1", None).unwrap().status, KILLED);
}

/// The VMM died, and its agent connection dropped before its exit showed (hull-vmm carries
/// vsock itself): the failure names the VMM, not the lost connection.
#[test]
fn a_lost_agent_names_the_vm_process_that_died_with_it() {
    let vmm = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let pid = vmm.id() as i32;
    let r = rig_with(Arc::new(obliging), Some(vmm));
    r.running("c1");
    r.guest.hang_up();
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill(2) of the child this test started and has not reaped.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    match r.next() {
        PodEvent::SandboxFailed { reason } => {
            assert!(reason.starts_with("sandbox process failed: fake-vmm exited"), "{reason}")
        }
        other => panic!("expected SandboxFailed, got {other:?}"),
    }
}

#[test]
fn a_vm_process_that_dies_fails_the_sandbox() {
    let vmm = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let pid = vmm.id() as i32;
    let r = rig_with(Arc::new(obliging), Some(vmm));
    r.running("c1");
    // SAFETY: kill(2) of the child this test started and has not reaped.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    match r.next() {
        PodEvent::SandboxFailed { reason } => {
            assert!(reason.starts_with("sandbox process failed: fake-vmm exited"), "{reason}")
        }
        other => panic!("expected SandboxFailed, got {other:?}"),
    }
    assert_eq!(exit_status(r.next()).2, SANDBOX_FAILED);
}

#[test]
fn shutdown_records_what_still_ran_as_killed() {
    let r = rig();
    r.running("c1");
    assert!(!r.pod.shutdown_if_empty(), "a pod with a container stays up");
    assert!(!r.vm_stopped.load(Ordering::SeqCst));
    r.pod.shutdown();
    assert_eq!(exit_status(r.next()), ("c1".into(), None, KILLED));
    assert!(r.vm_stopped.load(Ordering::SeqCst));
    // A stop of our own is no sandbox failure.
    assert!(r.pod.failure().is_none());
    assert!(matches!(r.pod.create_container("c2", &r.bundle, None), Err(PodError::Stopping)));
}

#[test]
fn a_private_share_holds_one_container() {
    let r = rig();
    r.create("c1");
    let e = r.pod.create_container("c2", &r.bundle, None).unwrap_err();
    assert!(e.to_string().contains("one container"), "{e}");
}

#[test]
fn resize_needs_a_terminal() {
    let r = rig();
    r.create("c1");
    let e = r.pod.resize("c1", None, 80, 24).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert!(e.to_string().contains("no terminal"), "{e}");
    r.pod.add_exec("c1", "t", serde_json::json!({}), true, None).unwrap_err();
    r.pod.start("c1", None).unwrap();
    r.pod.add_exec("c1", "t", serde_json::json!({}), true, None).unwrap();
    r.pod.resize("c1", Some("t"), 80, 24).unwrap();
}

/// The guest acknowledges SIGKILL and never reports the exit: the host decides.
#[test]
fn a_kill_the_guest_never_reports_is_recorded_by_the_host() {
    let r = rig();
    r.running("c1");
    r.pod.add_exec("c1", "e1", serde_json::json!({}), false, None).unwrap();
    r.pod.start("c1", Some("e1")).unwrap();
    r.next();
    r.pod.signal("c1", None, libc::SIGTERM, false).unwrap();
    std::thread::sleep(GRACE * 2);
    assert_eq!(r.state("c1", None), ProcessState::Running, "only SIGKILL is watched");
    let killed = std::time::Instant::now();
    r.pod.signal("c1", None, libc::SIGKILL, false).unwrap();
    let mut exits = vec![exit_status(r.next()), exit_status(r.next())];
    exits.sort();
    assert_eq!(exits, [("c1".into(), None, KILLED), ("c1".into(), Some("e1".into()), KILLED)]);
    assert!(killed.elapsed() >= GRACE, "recorded before the grace was over");
    assert!(matches!(r.next(), PodEvent::SandboxFailed { .. }));
    // The watcher thread reports the failure, then stops the VM: under load the event can
    // arrive here first (seen once in CI, 2026-12-08).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !r.vm_stopped.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(r.vm_stopped.load(Ordering::SeqCst), "the VM was left running");
    assert_eq!(r.pod.wait("c1", None).unwrap().status, KILLED);
    r.pod.remove_container("c1").unwrap();
}

#[test]
fn a_kill_the_guest_reports_in_time_changes_nothing_else() {
    let r = rig();
    r.running("c1");
    r.pod.signal("c1", None, libc::SIGKILL, false).unwrap();
    r.exited("c1", None, 137);
    assert_eq!(exit_status(r.next()), ("c1".into(), None, 137));
    std::thread::sleep(GRACE * 2);
    r.no_more_events();
    assert!(!r.vm_stopped.load(Ordering::SeqCst));
    assert!(r.pod.failure().is_none());
}

/// The guest reports the end of an exec the host added but never started.
#[test]
fn an_exec_cannot_end_before_it_started() {
    let r = rig();
    r.running("c1");
    r.pod.add_exec("c1", "e1", serde_json::json!({}), false, None).unwrap();
    r.exited("c1", Some("e1"), 0);
    r.no_more_events();
    assert_eq!(r.state("c1", Some("e1")), ProcessState::Created);
    r.pod.start("c1", Some("e1")).unwrap();
    assert_eq!(r.next(), started("c1", Some("e1")));
}

/// A second container of a pod waits for the first one's guest pid, whose namespaces it
/// joins, instead of joining the agent's own.
#[test]
fn later_containers_join_the_first_ones_namespaces() {
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate_rx);
    let script: Arc<Script> = Arc::new(move |body| match body {
        RequestBody::CreateContainer { container_id, .. } if container_id == "first" => {
            let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(10));
            (Outcome::Ok(Reply::Created { pid: 4242 }), Vec::new())
        }
        other => obliging(other),
    });
    let r = rig_with(script, None);
    let pod = r.pod.clone();
    let bundle = r.bundle.clone();
    // Private shares hold one container; the ordering is the same for propagating ones, which
    // need mounts, so the second create is checked for waiting and for its refusal here.
    let first = std::thread::spawn(move || pod.create_container("first", &bundle, None));
    std::thread::sleep(Duration::from_millis(200));
    let pod = r.pod.clone();
    let bundle = r.bundle.clone();
    let second = std::thread::spawn(move || pod.create_container("second", &bundle, None));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.guest.calls(), ["create_container"], "the second create did not wait for the first");
    gate_tx.send(()).unwrap();
    assert_eq!(first.join().unwrap().unwrap(), 4242);
    let e = second.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("one container"), "{e}");
}
