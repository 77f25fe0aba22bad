//! A private containerd (its own root, state and socket under a test's scratch dir) that finds
//! `containerd-shim-hull-v2` next to the `hull` binary under test, and OCI image archives built
//! from busybox for it to import (there is no registry here).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{hull_bin, text, Env};

pub const RUNTIME: &str = "io.containerd.hull.v2";
/// The pause image CRI runs as each pod's sandbox container (imported by [`Containerd::import_pause`]).
pub const PAUSE_IMAGE: &str = "docker.io/hull/pause:e2e";
/// CNI's bridge for CRI pods, and the pods' subnet.
pub const CNI_BRIDGE: &str = "hullcni0";
pub const CNI_SUBNET: &str = "10.201.0.0/24";

pub struct Containerd {
    pub env: Env,
    pub socket: PathBuf,
    child: Child,
    /// Network namespaces that existed before (CRI's `cni-*` ones made later are ours).
    netns_before: Vec<String>,
}

fn cni_netns() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cni-"))
                .collect()
        })
        .unwrap_or_default()
}

impl Containerd {
    pub fn start(name: &str) -> Containerd {
        Self::start_in(Env::new(name))
    }

    /// containerd whose hull shims boot the hostile guest (agent/src/hostile.rs).
    pub fn start_hostile(name: &str) -> Containerd {
        Self::start_in(Env::new(name).hostile())
    }

    /// containerd with hull's runtime configured as deploy/containerd-hull.toml has it.
    fn start_in(env: Env) -> Containerd {
        let socket = env.dir.join("containerd.sock");
        let config = env.dir.join("containerd.toml");
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/run\"\n[grpc]\n  address = \"{sock}\"\n\
                 [{cri}]\n  restrict_oom_score_adj = true\n  sandbox_image = \"{PAUSE_IMAGE}\"\n\
                 [{cri}.containerd.runtimes.hull]\n  runtime_type = \"{RUNTIME}\"\n  privileged_without_host_devices = true\n\
                 [{cri}.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
                 [{cri}.cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{root}/net.d\"\n",
                root = env.dir.display(),
                sock = socket.display()
            ),
        )
        .unwrap();
        fs::create_dir_all(env.dir.join("net.d")).unwrap();
        let cni = json!({
            "cniVersion": "1.0.0", "name": "hull-e2e",
            "plugins": [{
                "type": "bridge", "bridge": CNI_BRIDGE, "isGateway": true, "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": CNI_SUBNET}]], "dataDir": env.dir.join("ipam")}
            }]
        });
        fs::write(env.dir.join("net.d/10-hull-e2e.conflist"), cni.to_string()).unwrap();
        let shim_dir = hull_bin().parent().unwrap().canonicalize().unwrap();
        let path = format!("{}:{}", shim_dir.display(), std::env::var("PATH").unwrap_or_default());
        let log = fs::File::create(env.dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("HULL_SHIM_LOG", env.dir.join("shim.log"))
            .envs(env.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd (apt-get install containerd)");
        let c = Containerd { env, socket, child, netns_before: cni_netns() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not come up: {}", c.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn ctr_cmd(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket);
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd().args(args).stdin(Stdio::null()).output().expect("running ctr")
    }

    /// `ctr` that must succeed; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}\nshim log:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.shim_log()
        );
        text(&out.stdout)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.env.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn shim_log(&self) -> String {
        fs::read_to_string(self.env.dir.join("shim.log")).unwrap_or_default()
    }

    /// Import a busybox image named `reference` into containerd namespace `ns`, running `cmd`.
    pub fn import_busybox(&self, ns: &str, reference: &str, cmd: &[&str]) {
        let src = self.env.dir.join("image-src");
        if !src.exists() {
            self.env.bundle("image-src", &["true"]);
        }
        let archive = self.env.dir.join("image.tar");
        oci_archive(&src.join("rootfs"), reference, cmd, &archive);
        self.ctr_ok(&["--namespace", ns, "image", "import", archive.to_str().unwrap()]);
    }

    /// The pause image CRI needs, in CRI's namespace.
    pub fn import_pause(&self) {
        self.import_busybox("k8s.io", PAUSE_IMAGE, &["/bin/sleep", "2147483647"]);
    }

    /// Processes and mounts this containerd's shims left behind, plus any shim sandbox dir.
    pub fn leftovers(&self) -> Vec<String> {
        let needle = self.env.dir.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            if pid == self.child.id() {
                continue;
            }
            let cmdline =
                String::from_utf8_lossy(&fs::read(entry.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
            let sandbox_process = cmdline.contains("/run/hull/shim/");
            if (cmdline.contains(&needle) && cmdline.contains("containerd-shim-hull")) || sandbox_process {
                found.push(format!("process {pid}: {cmdline}"));
            }
        }
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        found.extend(
            mounts
                .lines()
                .filter(|l| l.contains("/run/hull/shim") || (l.contains(&needle) && l.contains("rootfs")))
                .map(|l| format!("mount: {l}")),
        );
        found.extend(cni_netns().into_iter().filter(|n| !self.netns_before.contains(n)).map(|n| format!("netns: {n}")));
        if let Ok(entries) = fs::read_dir("/run/hull/shim") {
            found.extend(entries.flatten().map(|e| format!("shim state: {}", e.path().display())));
        }
        found
    }

    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind:\n{}\nshim log:\n{}\ncontainerd log (shim lines):\n{}",
                left.join("\n"),
                self.shim_log(),
                self.log()
                    .lines()
                    .filter(|l| l.contains("shim") || l.contains("cleanup"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Shims outlive containerd by design; a test that failed midway leaves some running.
        // SIGTERM makes each tear its VM down.
        let needle = self.socket.to_string_lossy().into_owned();
        let _ = Command::new("pkill").args(["-TERM", "-f", &format!("containerd-shim-hull-v2 .*{needle}")]).status();
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for ns in cni_netns().into_iter().filter(|n| !self.netns_before.contains(n)) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        // The bridge CNI made for pods outlives them.
        let _ = Command::new("ip").args(["link", "del", CNI_BRIDGE]).stderr(Stdio::null()).status();
        // Snapshots containerd left mounted would keep the scratch dir from going away.
        let needle = self.env.dir.to_string_lossy().into_owned();
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for target in mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|t| t.starts_with(&needle)) {
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    text(&out.stdout).split(' ').next().unwrap().to_string()
}

/// Write `rootfs` as a one-layer OCI image archive (`ctr image import` format) named `reference`.
pub fn oci_archive(rootfs: &Path, reference: &str, cmd: &[&str], out: &Path) {
    let layout = out.with_extension("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let add_blob = |path: &Path| -> (String, u64) {
        let digest = sha256(path);
        let size = fs::metadata(path).unwrap().len();
        fs::rename(path, blobs.join(&digest)).unwrap();
        (digest, size)
    };
    let layer = layout.join("layer.tar");
    let status = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the image rootfs");
    let (layer_digest, layer_size) = add_blob(&layer);
    let write_json = |name: &str, value: serde_json::Value| -> (String, u64) {
        let path = layout.join(name);
        fs::write(&path, value.to_string()).unwrap();
        add_blob(&path)
    };
    let (config_digest, config_size) = write_json(
        "config.json",
        json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]}
        }),
    );
    let (manifest_digest, manifest_size) = write_json(
        "manifest.json",
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer_size}]
        }),
    );
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": reference}
        }]
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let status = Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(out).arg(".").status().unwrap();
    assert!(status.success(), "tar of the image layout");
    fs::remove_dir_all(&layout).unwrap();
}
