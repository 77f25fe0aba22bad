//! Networking: the VM attached to a named network namespace (tap + tc mirred), the seed demo,
//! loopback-only containers, and clean tear-down. Only loopback and this test's own namespaces
//! and bridge are ever contacted.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hull_tests::{hull_bin, text, Env};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A bridge, veth pair and namespace like the seed's, with names and a /24 of the test's own.
struct Net {
    ns: String,
    bridge: String,
    host_veth: String,
}

impl Net {
    fn new(tag: &str, subnet: u8) -> Net {
        let net = Net { ns: format!("hullt-{tag}"), bridge: format!("hbr-{tag}"), host_veth: format!("hvh-{tag}") };
        net.remove();
        let (ns, br, vh) = (&net.ns, &net.bridge, &net.host_veth);
        sh(&format!(
            "set -e
             ip link add name {br} type bridge && ip link set {br} up
             ip addr add 10.201.{subnet}.1/24 dev {br} && ip -6 addr add fd00:201:{subnet}::1/64 dev {br} nodad
             ip link add name {vh} type veth peer name hvg-{tag}
             ip link set {vh} up && ip link set {vh} master {br}
             ip netns add {ns} && ip link set hvg-{tag} netns {ns}
             ip netns exec {ns} ip link set hvg-{tag} name eth0
             ip netns exec {ns} ip addr add 10.201.{subnet}.2/24 dev eth0
             ip netns exec {ns} ip -6 addr add fd00:201:{subnet}::2/64 dev eth0 nodad
             ip netns exec {ns} ip link set eth0 up && ip netns exec {ns} ip link set lo up
             ip netns exec {ns} ip route add default via 10.201.{subnet}.1"
        ));
        net
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.ns)
    }

    /// What the namespace holds besides the veth and loopback: taps, qdiscs, filters.
    fn residue(&self) -> String {
        let ns = &self.ns;
        let links = sh(&format!("ip netns exec {ns} ip -o link show"));
        let qdiscs = sh(&format!("ip netns exec {ns} tc qdisc show dev eth0"));
        let filters = sh(&format!("ip netns exec {ns} tc filter show dev eth0 ingress"));
        let mut residue = String::new();
        residue.extend(links.lines().filter(|l| l.contains("hulltap")).map(|l| format!("{l}\n")));
        residue.extend(qdiscs.lines().filter(|l| l.contains("ingress")).map(|l| format!("{l}\n")));
        residue.push_str(filters.trim());
        residue
    }

    fn remove(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).stderr(std::process::Stdio::null()).status();
        let _ = Command::new("ip").args(["link", "del", &self.host_veth]).stderr(std::process::Stdio::null()).status();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(std::process::Stdio::null()).status();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

fn curl(url: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let out = Command::new("curl").args(["-s", "--max-time", "2", url]).output().unwrap();
        if out.status.success() {
            return Some(text(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Point the bundle's network namespace at `path`.
fn join_netns(b: &hull_tests::Bundle, path: &str) {
    b.edit(|c| {
        for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = path.into();
            }
        }
    });
}

fn httpd_bundle(env: &Env, net: &Net) -> hull_tests::Bundle {
    let b = env.bundle("web", &["httpd", "-f", "-p", "8000", "-h", "/www"]);
    std::fs::create_dir_all(b.rootfs().join("www")).unwrap();
    std::fs::write(b.rootfs().join("www/hello"), "hello world\n").unwrap();
    join_netns(&b, &net.path());
    b
}

#[test]
fn seed_demo_script_answers_hello_world() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh");
    let out = Command::new(script).env("HULL", hull_bin()).output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", text(&out.stderr));
    let answers: Vec<&str> = stdout.lines().filter(|l| *l == "hello world").collect();
    assert_eq!(answers.len(), 2, "expected an IPv4 and an IPv6 answer:\n{stdout}");
}

#[test]
fn http_over_ipv4_and_ipv6_from_the_host_then_clean_teardown() {
    let env = Env::new("http");
    let net = Net::new("http", 1);
    let b = httpd_bundle(&env, &net);
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "web"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    assert_eq!(curl("http://10.201.1.2:8000/hello", Duration::from_secs(30)).as_deref(), Some("hello world\n"));
    assert_eq!(curl("http://[fd00:201:1::2]:8000/hello", Duration::from_secs(10)).as_deref(), Some("hello world\n"));
    assert!(!net.residue().is_empty(), "no redirect was installed while running");
    let out = env.hull_out(&["delete", "--force", "web"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
    assert_eq!(net.residue(), "", "tap/qdisc/filter left in the namespace");
}

#[test]
fn guest_gets_the_veth_mac_mtu_and_routes() {
    let env = Env::new("netconf");
    let net = Net::new("conf", 2);
    sh(&format!("ip netns exec {} ip link set eth0 mtu 1400", net.ns));
    let mac = sh(&format!("ip netns exec {} cat /sys/class/net/eth0/address", net.ns)).trim().to_string();
    let b = env.bundle(
        "b",
        &["sh", "-c", "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip route; ip addr show eth0"],
    );
    join_netns(&b, &net.path());
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(mac.as_str()));
    assert_eq!(lines.next(), Some("1400"));
    assert!(stdout.contains("default via 10.201.2.1 dev eth0"), "{stdout}");
    assert!(stdout.contains("10.201.2.2/24"), "{stdout}");
    assert!(stdout.contains("fd00:201:2::2/64"), "{stdout}");
    env.assert_clean();
    assert_eq!(net.residue(), "");
}

#[test]
fn without_a_named_netns_the_container_sees_only_loopback() {
    let env = Env::new("loonly");
    let b = env.bundle("b", &["ls", "/sys/class/net"]);
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).split_whitespace().collect::<Vec<_>>(), ["lo"]);
    env.assert_clean();
}

#[test]
fn a_missing_netns_path_is_refused_naming_it() {
    let env = Env::new("nonetns");
    let b = env.bundle("b", &["true"]);
    join_netns(&b, "/var/run/netns/hull-no-such-ns");
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("hull-no-such-ns"), "{}", text(&out.stderr));
    env.assert_clean();
}

#[test]
fn twenty_create_delete_cycles_leave_nothing_behind() {
    let env = Env::new("cycles");
    let net = Net::new("cyc", 3);
    let b = httpd_bundle(&env, &net);
    for i in 0..20 {
        let out = env.hull_detached(&["create", "--bundle", b.path(), "web"]);
        assert!(out.status.success(), "cycle {i}: create: {}", text(&out.stderr));
        let out = env.hull_out(&["delete", "web"]);
        assert!(out.status.success(), "cycle {i}: delete: {}", text(&out.stderr));
        env.assert_clean();
        assert_eq!(net.residue(), "", "cycle {i}: left in the namespace");
    }
}

#[test]
fn a_killed_supervisor_takes_its_vm_along_and_delete_cleans_the_namespace() {
    let env = Env::new("supkill");
    let net = Net::new("sup", 4);
    let b = httpd_bundle(&env, &net);
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "web"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    assert!(curl("http://10.201.4.2:8000/hello", Duration::from_secs(30)).is_some());
    let state: serde_json::Value = serde_json::from_slice(&env.hull_out(&["state", "web"]).stdout).unwrap();
    let pid = state["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) of the supervisor this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state: serde_json::Value = serde_json::from_slice(&env.hull_out(&["state", "web"]).stdout).unwrap();
        if state["status"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "a dead supervisor is still reported {}", state["status"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its VM and daemons died with it (parent-death signal).
    let deadline = Instant::now() + Duration::from_secs(10);
    let kinds = hull_tests::Backend::current().sandbox_processes();
    while kinds.iter().any(|kind| env.find_process(kind).is_some()) {
        assert!(Instant::now() < deadline, "sandbox processes outlived their supervisor");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = env.hull_out(&["delete", "web"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
    assert_eq!(net.residue(), "", "the crashed sandbox's redirect was left in the namespace");
}

/// A config naming the runtime's own network namespace would hand its links to the VM. The
/// test runs hull inside a namespace of its own, standing in for the host, so that even a
/// hull that got this wrong could only touch the test's veth, never this machine's eth0.
#[test]
fn the_runtimes_own_network_namespace_is_refused() {
    let env = Env::new("hostns");
    let net = Net::new("own", 5);
    let b = env.bundle("b", &["true"]);
    // (/proc/1/ns/net is refused the same way where it can be read; in this workplace's
    // sandbox even root may not read PID 1's namespace links.)
    for path in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
        join_netns(&b, path);
        let out = Command::new("ip")
            .args(["netns", "exec", &net.ns])
            .arg(hull_bin())
            .args(["--root", env.root.to_str().unwrap(), "run", "--bundle", b.path(), "c1"])
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{path} was accepted");
        assert!(stderr.contains(path) && stderr.contains("host's own"), "{path}: {stderr}");
        assert_eq!(net.residue(), "", "{path}: the namespace was touched");
        env.assert_clean();
    }
    // Nothing ever reached this machine's own links either.
    let host = sh("tc qdisc show");
    assert!(!host.lines().any(|l| l.contains("ingress") && !l.contains("hvh-") && !l.contains("hbr-")), "{host}");
}

/// Only veths are attached: a bridge with an address (standing for any Ethernet link that is
/// not a veth, a physical NIC among them: this kernel has no dummy links) in the same namespace
/// gets no tap, no redirect, and no twin in the guest.
#[test]
fn only_veths_are_attached() {
    let env = Env::new("vethonly");
    let net = Net::new("dum", 6);
    let ns = &net.ns;
    sh(&format!(
        "set -e
         ip netns exec {ns} ip link add dummy0 type bridge
         ip netns exec {ns} ip addr add 10.202.6.2/24 dev dummy0
         ip netns exec {ns} ip link set dummy0 up"
    ));
    let b = env.bundle("b", &["sh", "-c", "ls /sys/class/net; ip -o addr show"]);
    join_netns(&b, &net.path());
    let out = env.hull_detached(&["create", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let qdiscs = sh(&format!("ip netns exec {ns} tc qdisc show"));
    assert!(qdiscs.lines().any(|l| l.contains("ingress") && l.contains("eth0")), "the veth is not attached: {qdiscs}");
    assert!(!qdiscs.lines().any(|l| l.contains("ingress") && l.contains("dummy0")), "the dummy was attached: {qdiscs}");
    let taps = sh(&format!("ip netns exec {ns} ip -o link show"));
    assert_eq!(taps.lines().filter(|l| l.contains("hulltap")).count(), 1, "{taps}");
    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    assert_eq!(net.residue(), "");
    assert!(!sh(&format!("ip netns exec {ns} tc qdisc show dev dummy0")).contains("ingress"));
    // The guest has the veth's twin and nothing of the other link.
    let out = env.hull_out(&["run", "--bundle", b.path(), "c2"]);
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "run: {}", text(&out.stderr));
    assert!(shown.contains("10.201.6.2/24") && !shown.contains("10.202.6.2"), "{shown}");
    assert_eq!(shown.lines().take_while(|l| !l.contains(':')).collect::<Vec<_>>(), ["eth0", "lo"], "{shown}");
    env.assert_clean();
}
