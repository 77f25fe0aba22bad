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

pub struct Containerd {
    pub env: Env,
    pub socket: PathBuf,
    child: Child,
}

impl Containerd {
    pub fn start(name: &str) -> Containerd {
        let env = Env::new(name);
        let socket = env.dir.join("containerd.sock");
        let config = env.dir.join("containerd.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}/root\"\nstate = \"{root}/run\"\n[grpc]\n  address = \"{sock}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n",
                root = env.dir.display(),
                sock = socket.display()
            ),
        )
        .unwrap();
        let shim_dir = hull_bin().parent().unwrap().canonicalize().unwrap();
        let path = format!("{}:{}", shim_dir.display(), std::env::var("PATH").unwrap_or_default());
        let log = fs::File::create(env.dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("HULL_SHIM_LOG", env.dir.join("shim.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd (apt-get install containerd)");
        let c = Containerd { env, socket, child };
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
        assert!(out.status.success(), "ctr {args:?}: {}{}\nshim log:\n{}", text(&out.stdout), text(&out.stderr), self.shim_log());
        text(&out.stdout)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.env.dir.join("containerd.log")).unwrap_or_default()
    }

    pub fn shim_log(&self) -> String {
        fs::read_to_string(self.env.dir.join("shim.log")).unwrap_or_default()
    }

    /// Import a busybox image named `reference`.
    pub fn import_busybox(&self, reference: &str) {
        let rootfs = self.env.bundle("image-src", &["true"]).rootfs();
        let archive = self.env.dir.join("image.tar");
        oci_archive(&rootfs, reference, &archive);
        self.ctr_ok(&["image", "import", archive.to_str().unwrap()]);
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
            let cmdline = String::from_utf8_lossy(&fs::read(entry.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
            let sandbox_process = cmdline.contains("/run/hull/shim/");
            if (cmdline.contains(&needle) && cmdline.contains("containerd-shim-hull")) || sandbox_process {
                found.push(format!("process {pid}: {cmdline}"));
            }
        }
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        found.extend(
            mounts.lines().filter(|l| l.contains("/run/hull/shim") || (l.contains(&needle) && l.contains("rootfs"))).map(|l| format!("mount: {l}")),
        );
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
            assert!(Instant::now() < deadline, "left behind:\n{}", left.join("\n"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
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
pub fn oci_archive(rootfs: &Path, reference: &str, out: &Path) {
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
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
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
