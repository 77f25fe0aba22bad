//! Kubernetes' path: containerd's CRI plugin with a `hull` RuntimeClass handler, driven by our
//! own CRI client. A pod is one VM; its containers join it.

use std::time::{Duration, Instant};

use hull_tests::containerd::{Containerd, CNI_BRIDGE};
use hull_tests::cri::{ContainerSpec, Cri};
use hull_tests::text;
use k8s_cri::v1::ContainerState;

const IMAGE: &str = "docker.io/hull/busybox:e2e";

fn setup(name: &str) -> (Containerd, Cri) {
    let c = Containerd::start(name);
    c.import_pause();
    c.import_busybox("k8s.io", IMAGE, &["/bin/sh"]);
    let cri = Cri::connect(&c.socket, &c.env.dir.join("pod-logs"));
    (c, cri)
}

fn vm_count() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(hull_tests::Backend::current().vmm()) && cmdline.contains("/run/hull/shim/")
        })
        .count()
}

fn wait_exited(cri: &mut Cri, id: &str) -> k8s_cri::v1::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cri.container_status(id);
        if status.state == ContainerState::ContainerExited as i32 {
            return status;
        }
        assert!(Instant::now() < deadline, "container {id} did not exit: {status:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_pod_is_one_vm_whose_containers_share_its_network_and_pid_namespace() {
    let (c, mut cri) = setup("cri-pod");
    let pod = cri.run_pod("web", true).unwrap_or_else(|e| panic!("RunPodSandbox: {e}\nshim log:\n{}", c.shim_log()));
    assert_eq!(vm_count(), 1, "RunPodSandbox boots exactly one VM");
    let web = cri
        .start_container(
            &pod,
            ContainerSpec {
                name: "httpd",
                image: IMAGE,
                args: &["sh", "-c", "mkdir -p /www && echo pod-ok > /www/hello && exec httpd -f -p 8080 -h /www"],
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\nshim log:\n{}", c.shim_log()));
    let client = cri
        .start_container(
            &pod,
            ContainerSpec { name: "client", image: IMAGE, args: &["sleep", "601"], ..Default::default() },
        )
        .unwrap();
    assert_eq!(vm_count(), 1, "the pod's containers join its VM");

    // The shared network namespace: the client reaches the server over loopback.
    let mut fetched = String::new();
    for _ in 0..50 {
        let out = cri.exec_sync(&client, &["wget", "-qO-", "http://127.0.0.1:8080/hello"]);
        fetched = text(&out.stdout);
        if out.exit_code == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(fetched, "pod-ok\n");
    // The shared pid namespace (the pod asked for it): the client sees the server.
    let ps = text(&cri.exec_sync(&client, &["ps", "-o", "args"]).stdout);
    assert!(ps.contains("httpd -f -p 8080"), "shared pid namespace, but ps shows:\n{ps}");

    // CNI gave the pod an address on the host bridge, and the VM answers on it.
    let ip = cri.pod_ip(&pod);
    assert!(ip.starts_with("10.201.0."), "pod ip {ip:?}");
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", &format!("http://{ip}:8080/hello")])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "pod-ok\n", "curl from the host via {CNI_BRIDGE}");
    // …and from a runc pod on the same CNI network.
    let neighbour = cri.run_pod_with("neighbour", "runc", true).unwrap_or_else(|e| panic!("runc RunPodSandbox: {e}"));
    let fetcher = cri
        .start_container(
            &neighbour,
            ContainerSpec { name: "fetcher", image: IMAGE, args: &["sleep", "600"], ..Default::default() },
        )
        .unwrap();
    let out = cri.exec_sync(&fetcher, &["wget", "-qO-", &format!("http://{ip}:8080/hello")]);
    assert_eq!(text(&out.stdout), "pod-ok\n", "a runc pod fetching from the hull pod: {}", text(&out.stderr));
    cri.remove_pod(&neighbour);

    cri.stop_container(&web);
    let status = wait_exited(&mut cri, &web);
    assert_eq!(status.exit_code, 143, "httpd dies of the SIGTERM StopContainer sends: {status:?}");
    cri.remove_pod(&pod);
    c.assert_clean();
    assert_eq!(vm_count(), 0);
}

/// `kubectl port-forward`: containerd dials `localhost:PORT` in the pod's network namespace on
/// the host, where no process of the guest listens; hull carries each such connection to the
/// port on the loopback of the pod in the guest.
#[test]
fn port_forward_reaches_a_server_on_the_pods_loopback() {
    let (c, mut cri) = setup("cri-portfwd");
    let pod = cri.run_pod("fwd", false).unwrap_or_else(|e| panic!("RunPodSandbox: {e}\nshim log:\n{}", c.shim_log()));
    let server = "mkdir -p /www && echo forwarded-ok > /www/hello && exec httpd -f -p 127.0.0.1:8080 -h /www";
    let web = cri
        .start_container(
            &pod,
            ContainerSpec { name: "web", image: IMAGE, args: &["sh", "-c", server], ..Default::default() },
        )
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\nshim log:\n{}", c.shim_log()));
    let serving = (0..50).any(|_| {
        let up = cri.exec_sync(&web, &["wget", "-qO-", "http://127.0.0.1:8080/hello"]).exit_code == 0;
        if !up {
            std::thread::sleep(Duration::from_millis(200));
        }
        up
    });
    assert!(serving, "httpd in the pod never answered on its loopback");
    // The server listens on the pod's loopback only: from outside the pod it is not there.
    let ip = cri.pod_ip(&pod);
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", &format!("http://{ip}:8080/hello")])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "the pod's loopback server answered on {ip}: {}", text(&out.stdout));

    // Two connections, one after the other, each its own stream.
    for round in 0..2 {
        let url = cri.port_forward(&pod, 8080);
        let got = hull_tests::port_forward::exchange(&url, 8080, b"GET /hello HTTP/1.0\r\n\r\n")
            .unwrap_or_else(|e| panic!("port-forward {round} via {url}: {e}\nshim log:\n{}", c.shim_log()));
        let data = text(&got.data);
        assert!(
            data.starts_with("HTTP/1.") && data.contains(" 200 "),
            "round {round}: {data:?} (error channel: {:?})",
            text(&got.error)
        );
        assert!(data.ends_with("\r\n\r\nforwarded-ok\n"), "round {round}: the body came through: {data:?}");
        assert!(got.error.is_empty(), "round {round}: error channel: {}", text(&got.error));
    }
    // In the pod's namespace on the host: the redirect is there, any loopback dialer (IPv4
    // and IPv6) reaches the guest's server, and what listens there listens on loopback only.
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cni-"))
        .collect();
    assert_eq!(netns.len(), 1, "one CNI namespace, the pod's: {netns:?}");
    let in_pod = |cmd: &[&str]| {
        let out = std::process::Command::new("ip").args(["netns", "exec", &netns[0]]).args(cmd).output().unwrap();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, rules, err) = in_pod(&["nft", "list", "table", "inet", "hull_port_forward"]);
    assert!(ok && rules.contains("redirect to"), "the pod's namespace has no redirect: {rules}{err}");
    for url in ["http://127.0.0.1:8080/hello", "http://[::1]:8080/hello"] {
        let (_, body, err) = in_pod(&["curl", "-s", "-S", "--max-time", "10", url]);
        assert_eq!(body, "forwarded-ok\n", "{url} in the pod's namespace on the host: {err}");
    }
    let (_, listening, _) = in_pod(&["ss", "-H", "-l", "-t", "-n"]);
    for line in listening.lines() {
        let local = line.split_whitespace().nth(3).unwrap_or("");
        assert!(local.starts_with("127.0.0.1:") || local.starts_with("[::1]:"), "listening beyond loopback: {line}");
    }

    // A port nothing listens on in the pod: no data, and containerd reports an error.
    let url = cri.port_forward(&pod, 8081);
    let got = hull_tests::port_forward::exchange(&url, 8081, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(got.data.is_empty(), "port 8081 answered: {:?}", text(&got.data));
    assert!(!got.error.is_empty(), "port 8081: containerd reported no error");

    cri.remove_pod(&pod);
    c.assert_clean();
    assert_eq!(vm_count(), 0);
}

/// A volume's `mountPropagation` as the kubelet passes it: `None` (private),
/// `HostToContainer` (containerd: rslave) and `Bidirectional` (rshared), each as the mount
/// table in the container shows it. containerd insists that the host source of the latter two
/// be a shared (or slave) mount, so the test makes it one.
#[test]
fn volume_mount_propagation_applies_in_the_pods_vm() {
    use k8s_cri::v1::{Mount, MountPropagation};
    let (c, mut cri) = setup("cri-propagation");
    let source = c.env.dir.join("volume");
    std::fs::create_dir_all(&source).unwrap();
    let src = source.to_str().unwrap();
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh").args(["-c", cmd]).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
    };
    sh(&format!("mount --bind {src} {src} && mount --make-shared {src}"));
    /// Undoes the bind even when an assertion fails.
    struct Unmount<'a>(&'a str);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let bound = Unmount(src);
    let volumes = [
        ("/v/private", MountPropagation::PropagationPrivate),
        ("/v/host-to-container", MountPropagation::PropagationHostToContainer),
        ("/v/bidirectional", MountPropagation::PropagationBidirectional),
    ];
    let mounts: Vec<Mount> = volumes
        .iter()
        .map(|(path, propagation)| Mount {
            container_path: path.to_string(),
            host_path: src.into(),
            propagation: *propagation as i32,
            ..Default::default()
        })
        .collect();
    let pod = cri.run_pod("prop", false).unwrap_or_else(|e| panic!("RunPodSandbox: {e}\nshim log:\n{}", c.shim_log()));
    let id = cri
        .start_container(
            &pod,
            ContainerSpec {
                name: "vols",
                image: IMAGE,
                args: &["sleep", "608"],
                mounts: &mounts,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\nshim log:\n{}", c.shim_log()));
    let script = "awk '$5 ~ /^\\/v\\// { f = \"\"; for (i = 7; $i != \"-\"; i++) f = f \" \" $i; print $5 \":\" f }' \
                  /proc/self/mountinfo";
    let out = cri.exec_sync(&id, &["sh", "-c", script]);
    let table = text(&out.stdout);
    for (path, propagation) in volumes {
        let prefix = format!("{path}:");
        let line = table.lines().find(|l| l.starts_with(&prefix));
        let got =
            line.unwrap_or_else(|| panic!("no mount at {path} in the container:\n{table}"))[prefix.len()..].to_string();
        let ok = match propagation {
            MountPropagation::PropagationPrivate => got.trim().is_empty(),
            MountPropagation::PropagationHostToContainer => got.contains("master:") && !got.contains("shared:"),
            MountPropagation::PropagationBidirectional => got.contains("shared:"),
        };
        assert!(ok, "{path} ({propagation:?}) has propagation {got:?}:\n{table}");
    }
    // Each is the host directory: a write through one is on the host.
    assert_eq!(cri.exec_sync(&id, &["sh", "-c", "echo through > /v/host-to-container/f"]).exit_code, 0);
    assert_eq!(std::fs::read_to_string(source.join("f")).unwrap(), "through\n");
    cri.remove_pod(&pod);
    drop(bound);
    c.assert_clean();
    assert_eq!(vm_count(), 0);
}

#[test]
fn separate_pid_namespaces_exit_codes_and_oom_killed() {
    let (c, mut cri) = setup("cri-status");
    let pod = cri.run_pod("jobs", false).unwrap_or_else(|e| panic!("RunPodSandbox: {e}\nshim log:\n{}", c.shim_log()));
    let sleeper = cri
        .start_container(
            &pod,
            ContainerSpec { name: "sleeper", image: IMAGE, args: &["sleep", "603"], ..Default::default() },
        )
        .unwrap();
    let looker = cri
        .start_container(
            &pod,
            ContainerSpec { name: "looker", image: IMAGE, args: &["sleep", "604"], ..Default::default() },
        )
        .unwrap();
    let ps = text(&cri.exec_sync(&looker, &["ps", "-o", "args"]).stdout);
    assert!(!ps.contains("sleep 603"), "pid namespaces are per container here, but ps shows:\n{ps}");
    let out = cri.exec_sync(&sleeper, &["sh", "-c", "echo out; echo err >&2; exit 4"]);
    assert_eq!((text(&out.stdout).as_str(), text(&out.stderr).as_str(), out.exit_code), ("out\n", "err\n", 4));

    // Stats come from the guest cgroup; limits can change while the container runs.
    let (memory, cpu) = cri.container_stats(&sleeper);
    assert!(memory > 0 && cpu > 0, "ContainerStats: memory {memory}, cpu {cpu}");
    cri.update_memory_limit(&sleeper, 64 << 20).unwrap_or_else(|e| panic!("UpdateContainerResources: {e}"));
    // CRI on a cgroup v1 host asks for no cgroup namespace: the guest's whole tree shows.
    let out = cri.exec_sync(&sleeper, &["sh", "-c", "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max"]);
    assert_eq!(text(&out.stdout).trim(), (64u64 << 20).to_string(), "stderr: {}", text(&out.stderr));

    let exits = cri
        .start_container(
            &pod,
            ContainerSpec { name: "exits", image: IMAGE, args: &["sh", "-c", "exit 7"], ..Default::default() },
        )
        .unwrap();
    let status = wait_exited(&mut cri, &exits);
    assert_eq!((status.exit_code, status.reason.as_str()), (7, "Error"), "{status:?}");

    let hog = cri
        .start_container(
            &pod,
            ContainerSpec {
                name: "hog",
                image: IMAGE,
                args: &["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"],
                memory_limit: Some(32 << 20),
                ..Default::default()
            },
        )
        .unwrap();
    let status = wait_exited(&mut cri, &hog);
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled"),
        "{status:?}\nshim log:\n{}",
        c.shim_log()
    );

    cri.remove_container(&exits);
    cri.remove_pod(&pod);
    c.assert_clean();
}

#[test]
fn killing_a_pods_vmm_or_shim_ends_its_containers() {
    let (c, mut cri) = setup("cri-crash");
    let pod = cri.run_pod("doomed", true).unwrap_or_else(|e| panic!("RunPodSandbox: {e}\nshim log:\n{}", c.shim_log()));
    let a = cri
        .start_container(&pod, ContainerSpec { name: "a", image: IMAGE, args: &["sleep", "605"], ..Default::default() })
        .unwrap();
    let b = cri
        .start_container(&pod, ContainerSpec { name: "b", image: IMAGE, args: &["sleep", "606"], ..Default::default() })
        .unwrap();
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("{}.*/run/hull/shim/", hull_tests::Backend::current().vmm())])
        .status()
        .unwrap();
    assert!(killed.success(), "no VMM found to kill");
    for id in [&a, &b] {
        let status = wait_exited(&mut cri, id);
        assert_eq!(status.exit_code, 255, "a container of a pod whose VM died: {status:?}");
    }
    cri.remove_pod(&pod);
    c.assert_clean();

    let pod = cri.run_pod("orphaned", true).unwrap();
    let a = cri
        .start_container(&pod, ContainerSpec { name: "a", image: IMAGE, args: &["sleep", "607"], ..Default::default() })
        .unwrap();
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("containerd-shim-hull-v2 .* -id {} ", pod.id)])
        .status()
        .unwrap();
    assert!(killed.success(), "no shim found to kill");
    wait_exited(&mut cri, &a);
    cri.remove_pod(&pod);
    c.assert_clean();
    assert_eq!(vm_count(), 0);
}

/// The kubelet's `seccompProfile` (RuntimeDefault, and a Localhost file on the node) and
/// added capabilities reach a pod's containers in the VM: read from the container's own init
/// (pid 1 of its pid namespace) and from a blocked syscall's errno.
#[test]
fn seccomp_profiles_and_added_capabilities_reach_pod_containers() {
    use k8s_cri::v1::security_profile::ProfileType;
    use k8s_cri::v1::{Capability, SecurityProfile};
    let (c, mut cri) = setup("cri-security");
    let pod =
        cri.run_pod("secure", false).unwrap_or_else(|e| panic!("RunPodSandbox: {e}\nshim log:\n{}", c.shim_log()));
    let profile = c.env.dir.join("deny-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .unwrap();
    let start = |cri: &mut Cri, name: &str, seccomp: Option<SecurityProfile>, capabilities: Option<Capability>| {
        cri.start_container(
            &pod,
            ContainerSpec { name, image: IMAGE, args: &["sleep", "605"], seccomp, capabilities, ..Default::default() },
        )
        .unwrap_or_else(|e| panic!("{name}: CreateContainer: {e}\nshim log:\n{}", c.shim_log()))
    };
    let runtime_default = start(
        &mut cri,
        "runtime-default",
        Some(SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, ..Default::default() }),
        None,
    );
    let localhost = start(
        &mut cri,
        "localhost",
        Some(SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: profile.to_string_lossy().into_owned(),
        }),
        None,
    );
    let admin = start(
        &mut cri,
        "admin",
        None,
        Some(Capability { add_capabilities: vec!["NET_ADMIN".into(), "SYS_ADMIN".into()], ..Default::default() }),
    );
    let status_of_init = |cri: &mut Cri, id: &str, field: &str| -> String {
        let out = cri.exec_sync(id, &["sh", "-c", &format!("grep '^{field}:' /proc/1/status")]);
        text(&out.stdout).split_whitespace().nth(1).unwrap_or_default().to_string()
    };

    assert_eq!(status_of_init(&mut cri, &runtime_default, "Seccomp"), "2", "RuntimeDefault loads a filter");
    // containerd's default profile refuses new user namespaces without CAP_SYS_ADMIN.
    // kubectl exec runs under the container's profile too, as under runc.
    let out = cri.exec_sync(&runtime_default, &["grep", "Seccomp:", "/proc/self/status"]);
    assert_eq!(text(&out.stdout).split_whitespace().nth(1), Some("2"), "an exec ran unfiltered");
    let out = cri.exec_sync(&runtime_default, &["unshare", "-U", "true"]);
    assert_ne!(out.exit_code, 0, "unshare -U ran under RuntimeDefault: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("Operation not permitted"), "{}", text(&out.stderr));

    assert_eq!(status_of_init(&mut cri, &localhost, "Seccomp"), "2", "the Localhost profile loads a filter");
    let out = cri.exec_sync(&localhost, &["mkdir", "/tmp/blocked"]);
    assert!(out.exit_code != 0 && text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));

    let caps = u64::from_str_radix(&status_of_init(&mut cri, &admin, "CapEff"), 16).unwrap_or_default();
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    assert!(caps & (1 << CAP_NET_ADMIN) != 0 && caps & (1 << CAP_SYS_ADMIN) != 0, "CapEff {caps:#x}");
    let out = cri.exec_sync(&admin, &["ip", "addr", "add", "10.9.9.9/32", "dev", "lo"]);
    assert_eq!(out.exit_code, 0, "NET_ADMIN in the pod's netns: {}", text(&out.stderr));

    cri.remove_pod(&pod);
    c.assert_clean();
}

/// A privileged container in a VM: every capability, no seccomp filter, no masked or
/// read-only paths, and no device of the host's list (deploy/containerd-hull.toml sets
/// `privileged_without_host_devices`, as Kata's documentation asks): its device nodes are
/// made in the guest, where the host's numbers would name the guest's devices.
#[test]
fn a_privileged_container_gets_every_capability_and_no_host_device() {
    let (c, mut cri) = setup("cri-privileged");
    let pod = cri
        .run_pod_as("root", "hull", false, true)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\nshim log:\n{}", c.shim_log()));
    let id = cri
        .start_container(
            &pod,
            ContainerSpec {
                name: "privileged",
                image: IMAGE,
                args: &["sleep", "606"],
                privileged: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\nshim log:\n{}", c.shim_log()));
    let script = "grep -E '^(CapEff|Seccomp):' /proc/1/status; ls /dev; \
                  touch /proc/sys/kernel/hostname && echo proc-sys-writable; \
                  ls /proc/acpi >/dev/null 2>&1; cat /proc/timer_list | head -1 | grep -q Timer && echo timer-list-visible";
    let out = cri.exec_sync(&id, &["sh", "-c", script]);
    let stdout = text(&out.stdout);
    // Every capability containerd knows (the host's bounding set: these machines lack
    // CAP_SYS_RESOURCE), as runc's privileged containers get.
    let host_bounding = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t").map(str::to_string))
        .unwrap();
    assert!(stdout.contains(&format!("CapEff:\t{host_bounding}\n")), "{stdout}");
    assert!(stdout.contains("Seccomp:\t0\n"), "a privileged container has no filter: {stdout}");
    assert!(stdout.contains("proc-sys-writable"), "readonly paths stay: {stdout}");
    assert!(stdout.contains("timer-list-visible"), "masked paths stay: {stdout}");
    // No device of the host's list: /dev is the default set, made in the guest.
    let devices: Vec<&str> = stdout.lines().filter(|l| !l.contains(':') && !l.contains('-')).collect();
    for host_only in ["kvm", "vda", "zram0", "loop0", "btrfs-control"] {
        assert!(!devices.contains(&host_only), "host device {host_only} in the container: {devices:?}");
    }
    assert!(devices.contains(&"null") && devices.contains(&"urandom"), "{devices:?}");
    cri.remove_pod(&pod);
    c.assert_clean();
}
