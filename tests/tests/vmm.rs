//! hull-vmm, proven here without hardware KVM: a synthetic guest (guests/synthetic) drives each
//! device from inside the VM, a hostile variant attacks them, and the project's guest kernel
//! shows that the Linux boot protocol is right up to where this host's PVM stops it.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hull_tests::vmm::{asset_dir, synthetic_guest, vmm_bin, vsock_connect, Vm};
use hull_tests::Env;

/// virtiofsd serving `shared` on `socket`, as the runtime starts it.
fn virtiofsd(socket: &Path, shared: &Path) -> Child {
    let mut child = Command::new(asset_dir().join("bin/virtiofsd"))
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", shared.display()))
        .args(["--sandbox=namespace", "--cache=never", "--log-level=error"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning virtiofsd");
    for _ in 0..200 {
        if socket.exists() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("virtiofsd did not create {}", socket.display());
}

/// A tap device on the host, removed on drop, with a raw socket that sees frames the VM sends.
struct Tap {
    name: String,
    sock: i32,
}

const ETHERTYPE: u16 = 0x88b5;

impl Tap {
    fn new() -> Tap {
        let name = format!("hvmt{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        let _ = Command::new("ip").args(["link", "del", &name]).stderr(Stdio::null()).status();
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        ip(&["link", "set", &name, "up"]);
        // SAFETY: plain socket/bind calls with values we own.
        let sock = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETHERTYPE.to_be())) };
        assert!(sock >= 0);
        let ifname = std::ffi::CString::new(name.clone()).unwrap();
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETHERTYPE.to_be();
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(sock, &addr as *const _ as *const libc::sockaddr, std::mem::size_of_val(&addr) as u32)
        };
        assert_eq!(rc, 0, "binding the packet socket");
        Tap { name, sock }
    }

    /// The next frame of our ethertype, waiting up to `timeout`.
    fn frame(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut pfd = libc::pollfd { fd: self.sock, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) } != 1 {
            return None;
        }
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(self.sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // SAFETY: closing the socket we opened.
        unsafe { libc::close(self.sock) };
        let _ = Command::new("ip").args(["link", "del", &self.name]).status();
    }
}

/// A host service at `<uds>_<port>` that answers one greeting, for guest-initiated connections.
fn host_service(uds: &Path, port: u32) -> std::thread::JoinHandle<String> {
    let listener = UnixListener::bind(format!("{}_{port}", uds.display())).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 128];
        let n = s.read(&mut buf).unwrap();
        let said = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        s.write_all(format!("hello guest, you said: {said}\n").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        said
    })
}

fn guest_args<'a>(cmdline: &'a str, uds: &'a str) -> Vec<&'a str> {
    vec!["--kernel", synthetic_guest().to_str().unwrap(), "--cmdline", cmdline, "--vsock-cid", "3", "--vsock-uds", uds]
}

#[test]
fn synthetic_guest_drives_every_device_then_resets() {
    assert!(vmm_bin().exists(), "build hull-vmm first (make binaries)");
    let env = Env::new("vmm-devices");
    let uds = env.dir.join("v.sock");
    let uds_s = uds.to_str().unwrap().to_string();
    let shared = env.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let fs_sock = env.dir.join("fs.sock");
    let mut fsd = virtiofsd(&fs_sock, &shared);
    let tap = Tap::new();
    let greeting = host_service(&uds, 6000);

    let mut args = guest_args("hull.vsock_port=5000 hull.host_port=6000", &uds_s);
    let fs_s = fs_sock.to_str().unwrap().to_string();
    args.extend(["--fs-socket", &fs_s, "--fs-tag", "hullfs", "--tap", &tap.name, "--mac", "02:48:55:4c:4c:07"]);
    let mut vm = Vm::start(&env.dir, &args);

    vm.wait_console("listening on port 5000", Duration::from_secs(30));
    // virtio-fs is up (FUSE_INIT went through virtiofsd), yet virtiofsd maps no guest RAM: only
    // the bounce memory its requests are copied through.
    assert!(vm.console_text().contains("fs: FUSE_INIT reply"), "{}", vm.console_text());
    let maps: Vec<String> = hull_tests::processes_of(fs_sock.to_str().unwrap(), "virtiofsd")
        .iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default())
        .collect();
    assert!(maps.iter().all(|m| !m.contains("memfd:hull-guest-ram")), "virtiofsd maps guest RAM");
    assert!(maps.iter().any(|m| m.contains("memfd:hull-fs-bounce")), "virtiofsd maps no bounce memory: {maps:?}");
    let mut s = vsock_connect(&uds, 5000);
    s.write_all(b"ping over vsock").unwrap();
    let mut echo = [0u8; 15];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping over vsock");
    drop(s);

    let status = vm.wait_exit(Duration::from_secs(30));
    let console = vm.console_text();
    assert!(status.success(), "hull-vmm: {status}\n{console}\n{}", vm.stderr_text());
    for line in [
        "hello from the guest",
        "virtio-mmio device id 19 found on the cmdline",
        "fs: tag hullfs",
        "fs: FUSE_INIT reply: major 7",
        "net: sent a frame from 02:48:55:4c:4c:07",
        "vsock: host replied: hello guest, you said: hello host from the guest",
        "vsock: echoed 15 bytes; host closed",
        "all steps done",
        "resetting through the i8042",
    ] {
        assert!(console.contains(line), "console lacks {line:?}:\n{console}");
    }
    // Each device raised its line (irqfd -> IO-APIC -> local APIC) and the guest took it; for
    // virtio-fs that is virtiofsd's call eventfd relayed by the VMM.
    for (id, irq) in [(19, 5), (26, 6), (1, 7)] {
        let count: u64 = console
            .lines()
            .find_map(|l| l.strip_prefix(&format!("hull-synthetic: interrupts: device id {id} irq {irq}: ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no interrupt count for device {id}:\n{console}"));
        assert!(count > 0, "device {id} never interrupted the guest");
    }
    assert_eq!(greeting.join().unwrap(), "hello host from the guest");
    let frame = tap.frame(Duration::from_secs(5)).expect("the guest's frame on the tap");
    assert_eq!(&frame[0..6], &[0xff; 6]);
    assert_eq!(&frame[6..12], &[0x02, 0x48, 0x55, 0x4c, 0x4c, 0x07]);
    assert!(String::from_utf8_lossy(&frame).contains("hull-synthetic frame"));
    let _ = fsd.kill();
    let _ = fsd.wait();
    assert!(!uds.exists(), "hull-vmm left its vsock socket behind");
}

#[test]
fn hostile_guest_fails_its_requests_and_the_vmm_stays_up_and_bounded() {
    let env = Env::new("vmm-hostile");
    let uds = env.dir.join("v.sock");
    let uds_s = uds.to_str().unwrap().to_string();
    let mut vm = Vm::start(&env.dir, &guest_args("hull.hostile=1 hull.vsock_port=5000", &uds_s));
    vm.wait_console("hostile: drained", Duration::from_secs(60));
    let rss_anon: u64 = vm.status_field("RssAnon").unwrap().trim_end_matches(" kB").parse().unwrap();
    vm.wait_console("listening on port 5000", Duration::from_secs(30));
    let mut s = vsock_connect(&uds, 5000);
    s.write_all(b"still here?").unwrap();
    let mut echo = [0u8; 11];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here?");
    drop(s);
    let status = vm.wait_exit(Duration::from_secs(30));
    let console = vm.console_text();
    assert!(status.success(), "{status}\n{console}");
    for case in [
        "address beyond RAM",
        "length running off the end",
        "absurd length",
        "descriptor loop",
        "next index out of the table",
        "readable after writable",
        "header claiming 2 GiB of payload",
    ] {
        assert!(console.contains(&format!("hostile: {case}: request failed, VMM alive")), "{case}:\n{console}");
    }
    // The flood of 3000 packets is answered with at most the backlog (1024) plus the ring.
    let drained: u64 = console
        .lines()
        .find_map(|l| l.strip_prefix("hull-synthetic: hostile: drained "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(drained <= 1024 + 16, "{drained} packets queued for a guest that reads none");
    // The VMM's own memory (not guest RAM, which is shared memfd) stayed small.
    assert!(rss_anon < 48 * 1024, "RssAnon {rss_anon} kB after the flood");
    // The guest cannot flood the host's logs: warnings are capped.
    let log = vm.stderr_text();
    assert!(log.matches("dropped a malformed request").count() <= 16, "{log}");
    assert!(log.matches("not taking packets").count() <= 1, "{log}");
}

#[test]
fn guest_kernel_prints_its_banner_and_our_e820_map() {
    let env = Env::new("vmm-kernel");
    let kernel = asset_dir().join("vmlinux");
    let initrd = asset_dir().join("initramfs.cpio");
    let mut vm = Vm::start(
        &env.dir,
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory-mib",
            "256",
            "--cmdline",
            "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 nomodule",
        ],
    );
    vm.wait_console("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable", Duration::from_secs(120));
    let console = vm.console_text();
    assert!(console.contains("Linux version 6.12"), "{console}");
    assert!(console.contains("BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable"), "{console}");
    // earlyprintk shows the boot before the console driver is up. Here (PVM) the boot stops later on an emulation failure; with hardware KVM it goes on to
    // the agent. Either way the VM is ended by dropping it.
}

/// Run the synthetic guest jailed in `<env>/jail`, check the confinement while it waits for the
/// host, then finish its echo. Returns the process status lines seen while it ran.
fn run_jailed(env: &Env, extra: &[&str], owner: Option<u32>) -> String {
    let jail = env.dir.join("jail");
    std::fs::create_dir_all(&jail).unwrap();
    if let Some(uid) = owner {
        std::os::unix::fs::chown(&jail, Some(uid), Some(uid)).unwrap();
    }
    let uds = jail.join("v.sock");
    let uds_s = uds.to_str().unwrap().to_string();
    let greeting = host_service(&uds, 6000);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(format!("{uds_s}_6000"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let jail_s = jail.to_str().unwrap().to_string();
    let mut args = guest_args("hull.vsock_port=5000 hull.host_port=6000", &uds_s);
    args.extend(["--jail", &jail_s]);
    args.extend(extra);
    let mut vm = Vm::start(&env.dir, &args);
    vm.wait_console("listening on port 5000", Duration::from_secs(30));

    let pid = vm.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(vm.status_field(field).as_deref(), Some("0000000000000000"), "{field}\n{status}");
    }
    assert_eq!(vm.status_field("NoNewPrivs").as_deref(), Some("1"));
    // Every thread (event loop and vCPU) runs under a seccomp filter.
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let s = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(s.lines().any(|l| l == "Seccomp:\t2"), "a thread without a filter:\n{s}");
        threads += 1;
    }
    assert!(threads >= 2, "expected the event loop and a vCPU thread");
    // Its root is the jail: only its own sockets, and a single mount.
    let mut seen: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    assert_eq!(seen, vec!["v.sock".to_string(), "v.sock_6000".to_string()]);
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert_eq!(mounts.lines().count(), 1, "the jail shows host mounts:\n{mounts}");

    let mut s = vsock_connect(&uds, 5000);
    s.write_all(b"from outside").unwrap();
    let mut echo = [0u8; 12];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"from outside");
    drop(s);
    let exit = vm.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "{exit}\n{}\n{}", vm.console_text(), vm.stderr_text());
    assert_eq!(greeting.join().unwrap(), "hello host from the guest");
    assert!(!uds.exists(), "the jailed VMM left its socket behind");
    status
}

#[test]
fn jailed_vmm_has_no_capabilities_a_seccomp_filter_and_sees_only_its_jail() {
    let env = Env::new("vmm-jail");
    let status = run_jailed(&env, &[], None);
    assert!(status.lines().any(|l| l.starts_with("Uid:\t0\t")), "{status}");
}

#[test]
fn jailed_vmm_can_drop_to_an_unprivileged_uid() {
    let env = Env::new("vmm-jail-uid");
    let status = run_jailed(&env, &["--uid", "65534", "--gid", "65534"], Some(65534));
    assert!(status.lines().any(|l| l.starts_with("Uid:\t65534\t65534\t65534")), "{status}");
    assert!(status.lines().any(|l| l.starts_with("Gid:\t65534\t65534\t65534")), "{status}");
}

#[test]
fn bad_configuration_is_refused_naming_the_field_and_leaves_nothing() {
    let env = Env::new("vmm-config");
    let run = |args: &[&str]| {
        let out = Command::new(vmm_bin()).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let guest = synthetic_guest().to_str().unwrap();
    assert!(run(&["--kernel", "/nonexistent"]).contains("kernel: /nonexistent is not a file"));
    assert!(run(&["--kernel", guest, "--vcpus", "0"]).contains("vcpus: 0 is out of range"));
    assert!(run(&["--kernel", guest, "--memory-mib", "8"]).contains("memory_mib: 8 is out of range"));
    assert!(run(&["--kernel", guest, "--tap", "x", "--mac", "nope"]).contains("net[0].mac:"));
    assert!(run(&["--kernel", guest, "--vcpus", "33"]).contains("vcpus: 33 is out of range (1 to 32)"));
    assert!(run(&["--config", "/x.json", "--kernel", guest]).contains("cannot be used with"));
    let cfg = env.dir.join("vm.json");
    std::fs::write(&cfg, format!(r#"{{"kernel": "{guest}", "vcpu": 2}}"#)).unwrap();
    let err = run(&["--config", cfg.to_str().unwrap()]);
    assert!(err.contains("unknown field `vcpu`") && err.contains("vm.json"), "{err}");
    // A failure after the vsock socket was bound (no virtio-fs backend) removes the socket.
    let uds = env.dir.join("v.sock");
    let err = run(&[
        "--kernel",
        guest,
        "--vsock-cid",
        "3",
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--fs-socket",
        "/nonexistent.sock",
    ]);
    assert!(err.contains("virtio-fs backend /nonexistent.sock"), "{err}");
    assert!(!uds.exists(), "a failed start left {}", uds.display());
    // A JSON config works the same as flags.
    std::fs::write(&cfg, format!(r#"{{"kernel": "{guest}", "vcpus": 2, "memory_mib": 64}}"#)).unwrap();
    let mut vm = Vm::start(&env.dir, &["--config", cfg.to_str().unwrap()]);
    assert!(vm.wait_exit(Duration::from_secs(30)).success());
    assert!(vm.console_text().contains("all steps done"));
}

/// The runtime's hull-vmm backend, chosen explicitly. With hardware KVM the whole suite runs on
/// it (`make test` does that); here, under PVM, the guest kernel cannot finish booting, so this
/// checks the other half of the contract: the failure reaches the caller with the console's
/// tail, and nothing (VMM, virtiofsd, sockets, state) is left behind.
#[test]
fn runtime_backend_hull_vmm_boots_or_fails_cleanly() {
    let env = Env::new("vmm-backend");
    let bundle = env.bundle("b", &["echo", "hello from hull-vmm"]);
    let out = env
        .hull()
        .env("HULL_BACKEND", "hull-vmm")
        .args(["run", "--bundle", bundle.path(), "vmmbackend"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if hull_tests::vmm::hardware_kvm() {
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("hello from hull-vmm"), "{stdout}");
    } else {
        assert!(!out.status.success(), "booted under PVM? {stdout}");
        assert!(stderr.contains("hull-vmm"), "the error does not name the VMM: {stderr}");
        assert!(stderr.contains("emulation failure"), "the error lacks the VMM's own account: {stderr}");
    }
    let _ = env.hull_out(&["delete", "--force", "vmmbackend"]);
    env.assert_clean();
}

#[test]
fn sigterm_shuts_the_vmm_down_in_order() {
    let env = Env::new("vmm-sigterm");
    let uds = env.dir.join("v.sock");
    let uds_s = uds.to_str().unwrap().to_string();
    let mut vm = Vm::start(&env.dir, &guest_args("hull.idle=1", &uds_s));
    vm.wait_console("idling", Duration::from_secs(30));
    assert!(uds.exists());
    // SAFETY: kill with the pid of our own child and a signal number.
    assert_eq!(unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) }, 0);
    let status = vm.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}\n{}", vm.stderr_text());
    assert!(vm.stderr_text().contains("signal 15: shutting down"), "{}", vm.stderr_text());
    assert!(!uds.exists(), "the vsock socket was left behind");
}

/// The console's last "tick N", if any.
fn last_tick(console: &str) -> Option<u64> {
    console.lines().rev().find_map(|l| l.strip_prefix("hull-synthetic: tick ")?.trim().parse().ok())
}

#[test]
fn a_snapshot_restored_in_a_new_process_goes_on_where_it_stopped() {
    let env = Env::new("vmm-snapshot");
    let guest = synthetic_guest().to_str().unwrap();
    let snap = env.dir.join("vm.snap");
    let snap_s = snap.to_str().unwrap();
    let base = ["--kernel", guest, "--cmdline", "hull.ticks=1", "--memory-mib", "64"];

    let first_dir = env.dir.join("first");
    std::fs::create_dir_all(&first_dir).unwrap();
    let mut first = Vm::start(&first_dir, &[&base[..], &["--snapshot-to", snap_s]].concat());
    first.wait_console("hull-synthetic: tick 3", Duration::from_secs(30));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(first.pid() as i32, libc::SIGUSR1) }, 0);
    let status = first.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "hull-vmm exited {status} after SIGUSR1\n{}", first.stderr_text());
    assert!(first.stderr_text().contains("snapshot written"), "{}", first.stderr_text());
    let saved = last_tick(&first.console_text()).unwrap();
    // The guest touched little of its 64 MiB: the file is sparse.
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&snap).unwrap()) * 512;
    assert!(blocks < 16 << 20, "the snapshot holds {blocks} bytes of a 64 MiB guest");

    // Twice from the same file: each copy goes on from the saved count.
    for run in ["second", "third"] {
        let dir = env.dir.join(run);
        std::fs::create_dir_all(&dir).unwrap();
        let mut vm = Vm::start(&dir, &[&base[..], &["--restore-from", snap_s]].concat());
        vm.wait_console(&format!("hull-synthetic: tick {}", saved + 2), Duration::from_secs(30));
        let console = vm.console_text();
        assert!(!console.contains("hello from the guest"), "{run}: the restored guest booted again:\n{console}");
        let first_tick: u64 =
            console.lines().find_map(|l| l.strip_prefix("hull-synthetic: tick ")?.trim().parse().ok()).unwrap();
        assert_eq!(first_tick, saved + 1, "{run}: the restored guest did not go on from tick {saved}:\n{console}");
    }

    // The same file under another VM shape, and damaged: refused, naming why, nothing started.
    let mut other = base.to_vec();
    other[5] = "128";
    let out = Command::new(vmm_bin()).args(&other).args(["--restore-from", snap_s]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("memory_mib"), "{err}");
    let mut other = base.to_vec();
    other[3] = "hull.ticks=2";
    let out = Command::new(vmm_bin()).args(&other).args(["--restore-from", snap_s]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cmdline differs"), "{err}");
    let len = std::fs::metadata(&snap).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&snap).unwrap().set_len(len - 1).unwrap();
    let out = Command::new(vmm_bin()).args(base).args(["--restore-from", snap_s]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("truncated") && err.contains(snap_s), "{err}");
}
