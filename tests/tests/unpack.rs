//! `hull unpack` on the host (no VM): image layouts built here, the layers' whiteouts, and a
//! hostile corpus. Every refusal must exit non-zero, name the blob or entry, leave no bundle
//! and leave a canary directory next to the bundle exactly as it was.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use hull_tests::oci_image::{sha256_hex, tree_digest, tree_listing, Compression, Layout, Tar};
use hull_tests::{text, Env};
use serde_json::{json, Value};

/// `hull unpack --image IMAGE [FLAGS] BUNDLE [-- ARGS]`, `extra` holding the flags and then
/// any `-- ARGS`.
fn unpack(env: &Env, image: &str, bundle: &Path, extra: &[&str]) -> Output {
    let split = extra.iter().position(|a| *a == "--").unwrap_or(extra.len());
    let mut cmd = env.hull();
    cmd.args(["unpack", "--image", image]).args(&extra[..split]).arg(bundle).args(&extra[split..]);
    cmd.output().expect("spawning hull unpack")
}

fn short(data: &[u8]) -> String {
    sha256_hex(data)[..12].to_string()
}

fn three_layers() -> Vec<(Vec<u8>, Compression)> {
    let base = Tar::new()
        .dir("etc", 0o755)
        .file("etc/keep", b"keep\n", 0o644)
        .file("etc/gone", b"gone\n", 0o644)
        .dir("opt", 0o755)
        .file("opt/old1", b"old\n", 0o644)
        .dir("opt/olddir", 0o700)
        .file("opt/olddir/x", b"x\n", 0o600)
        .raw(tar::EntryType::Regular, "opt/owned", "", 0o4750, (1000, 1001), b"owned\n")
        .bytes();
    let second = Tar::new()
        .file("etc/.wh.gone", b"", 0o644)
        .dir("opt", 0o751)
        .file("opt/new", b"new\n", 0o644)
        // Written by this layer before the marker: it stays, but what the lower layer had
        // in it goes (opt/olddir/x).
        .dir("opt/olddir", 0o750)
        .file("opt/.wh..wh..opq", b"", 0o644)
        .symlink("etc/link", "keep")
        .file("etc/keep", b"replaced\n", 0o640)
        .bytes();
    let third = Tar::new()
        .hardlink("etc/hard", "etc/keep")
        .dir("opt/sub", 0o755)
        .file("opt/sub/f", b"f\n", 0o644)
        .file("etc/.wh.link", b"", 0o644)
        .file("usr/lib/implicit", b"i\n", 0o644)
        .bytes();
    vec![(base, Compression::None), (second, Compression::Gzip), (third, Compression::Zstd)]
}

fn expected_tree() -> Vec<String> {
    let replaced = short(b"replaced\n");
    let mut lines = vec![
        "etc 755 0:0 dir".to_string(),
        format!("etc/hard 640 0:0 file {replaced} links 2"),
        format!("etc/keep 640 0:0 file {replaced} links 2"),
        "opt 751 0:0 dir".to_string(),
        format!("opt/new 644 0:0 file {} links 1", short(b"new\n")),
        "opt/olddir 750 0:0 dir".to_string(),
        "opt/sub 755 0:0 dir".to_string(),
        format!("opt/sub/f 644 0:0 file {} links 1", short(b"f\n")),
        // Parents no entry describes are 0755, whatever hull's own umask (077).
        "usr 755 0:0 dir".to_string(),
        "usr/lib 755 0:0 dir".to_string(),
        format!("usr/lib/implicit 644 0:0 file {} links 1", short(b"i\n")),
    ];
    lines.sort();
    lines
}

#[test]
fn three_layers_with_whiteouts_give_exactly_the_final_tree_from_a_directory_or_a_tar() {
    let env = Env::new("unpack-layers");
    let mut layout = Layout::new(&env.dir.join("image"));
    layout.image(
        "v1",
        &three_layers(),
        json!({"Entrypoint": ["/bin/server"], "Cmd": ["--port", "8000"], "Env": ["PATH=/bin", "GREETING=hi"],
               "WorkingDir": "/opt", "StopSignal": "SIGINT",
               "Labels": {"org.example.team": "hull", "io.kubernetes.cri.sandbox-id": "not-from-an-image"}}),
    );
    let archive = env.dir.join("image.tar");
    layout.archive(&archive);

    for (image, bundle) in [
        (format!("{}:v1", layout.dir.display()), env.dir.join("from-dir")),
        (format!("{}:v1", archive.display()), env.dir.join("from-tar")),
    ] {
        let out = unpack(&env, &image, &bundle, &[]);
        assert!(out.status.success(), "hull unpack {image}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("layer 3/3"), "progress per layer: {}", text(&out.stderr));
        assert_eq!(tree_listing(&bundle.join("rootfs")), expected_tree(), "the rootfs of {image}");
        let mode = fs::metadata(bundle.join("rootfs")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "the rootfs is reachable by every user of the container");
        let config: Value = serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["process"]["args"], json!(["/bin/server", "--port", "8000"]));
        assert_eq!(config["process"]["cwd"], "/opt");
        let env_list: Vec<&str> =
            config["process"]["env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(env_list.contains(&"PATH=/bin") && env_list.contains(&"GREETING=hi"), "env: {env_list:?}");
        assert_eq!(
            env_list.iter().filter(|e| e.starts_with("PATH=")).count(),
            1,
            "the image's PATH replaces the default"
        );
        assert_eq!(config["annotations"]["org.example.team"], "hull");
        assert!(
            config["annotations"].get("io.kubernetes.cri.sandbox-id").is_none(),
            "a reserved label became an annotation"
        );
        assert!(text(&out.stderr).contains("image label io.kubernetes.cri.sandbox-id not made an annotation"));
        assert_eq!(config["annotations"]["org.opencontainers.image.stopSignal"], "SIGINT");
        assert_eq!(config["annotations"]["org.opencontainers.image.ref.name"], "v1");
        assert_eq!(config["root"]["path"], "rootfs");
    }

    // `-- ARGS` replaces Cmd and keeps the Entrypoint.
    let bundle = env.dir.join("override");
    let out = unpack(&env, &format!("{}:v1", layout.dir.display()), &bundle, &["--", "--port", "9000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config: Value = serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"], json!(["/bin/server", "--port", "9000"]));
}

#[test]
fn references_and_platforms_are_resolved_through_the_index() {
    let env = Env::new("unpack-index");
    let mut layout = Layout::new(&env.dir.join("image"));
    let layer = || vec![(Tar::new().file("which", b"amd64\n", 0o644).bytes(), Compression::Gzip)];
    let amd64 = layout.manifest(&layer(), json!({"Cmd": ["/amd64"]}), |_| {});
    let amd64_desc = layout.blob("application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&amd64).unwrap());
    let arm64 = layout.manifest(
        &[(Tar::new().file("which", b"arm64\n", 0o644).bytes(), Compression::Gzip)],
        json!({"Cmd": ["/arm64"]}),
        |_| {},
    );
    let arm64_desc = layout.blob("application/vnd.oci.image.manifest.v1+json", &serde_json::to_vec(&arm64).unwrap());
    let platform = |mut d: Value, arch: &str| {
        d["platform"] = json!({"os": "linux", "architecture": arch});
        d
    };
    let nested = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [platform(arm64_desc, "arm64"), platform(amd64_desc, "amd64")],
    });
    layout.add("docker.io/library/multi:2", nested);
    layout.image("other", &layer(), json!({"Cmd": ["/other"]}));
    layout.image("example.com/a:v1", &layer(), json!({"Cmd": ["/a"]}));
    layout.image("example.com/b:v1", &layer(), json!({"Cmd": ["/b"]}));

    let args = |bundle: &Path| -> Value {
        let config: Value = serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        config["process"]["args"].clone()
    };
    // The full name, or its tag, chooses the nested index; linux/amd64 is the default platform.
    for (i, reference) in ["docker.io/library/multi:2", "2"].iter().enumerate() {
        let bundle = env.dir.join(format!("b{i}"));
        let out = unpack(&env, &format!("{}:{reference}", layout.dir.display()), &bundle, &[]);
        assert!(out.status.success(), "{reference}: {}", text(&out.stderr));
        assert_eq!(args(&bundle), json!(["/amd64"]));
    }
    let bundle = env.dir.join("arm");
    let out = unpack(&env, &format!("{}:2", layout.dir.display()), &bundle, &["--platform", "linux/arm64"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::read(bundle.join("rootfs/which")).unwrap(), b"arm64\n");

    // Two images and no reference: the error lists the names.
    let out = unpack(&env, layout.dir.to_str().unwrap(), &env.dir.join("none"), &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("name one as IMAGE:REF") && err.contains("other"), "{err}");
    let out = unpack(&env, &format!("{}:nope", layout.dir.display()), &env.dir.join("nope"), &[]);
    assert!(text(&out.stderr).contains("no manifest is named \"nope\""), "{}", text(&out.stderr));
    let out =
        unpack(&env, &format!("{}:2", layout.dir.display()), &env.dir.join("s390x"), &["--platform", "linux/s390x"]);
    assert!(text(&out.stderr).contains("no manifest for platform linux/s390x"), "{}", text(&out.stderr));
    assert!(!env.dir.join("s390x").exists());
    // A tag two names share names neither.
    let out = unpack(&env, &format!("{}:v1", layout.dir.display()), &env.dir.join("v1"), &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("\"v1\" is the tag of example.com/a:v1, example.com/b:v1"), "{err}");
    let out = unpack(&env, &format!("{}:example.com/b:v1", layout.dir.display()), &env.dir.join("b"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(args(&env.dir.join("b")), json!(["/b"]));
}

/// One hostile image, and what must hold after unpacking it.
struct Hostile {
    env: Env,
    canary: PathBuf,
    before: String,
    layout: Layout,
}

impl Hostile {
    fn new(name: &str) -> Hostile {
        let env = Env::new(name);
        let canary = env.dir.join("canary");
        fs::create_dir_all(canary.join("sub")).unwrap();
        fs::write(canary.join("file"), b"canary\n").unwrap();
        fs::write(canary.join("sub/deep"), b"deep\n").unwrap();
        let before = tree_digest(&env.dir.join("canary"));
        let layout = Layout::new(&env.dir.join("image"));
        Hostile { env, canary, before, layout }
    }

    /// A bundle two levels below the test dir, so `../../canary` from its rootfs is the canary.
    fn bundle(&self) -> PathBuf {
        self.env.dir.join("bundle")
    }

    fn image(&mut self, layers: Vec<Vec<u8>>) {
        let layers: Vec<_> = layers.into_iter().map(|t| (t, Compression::Gzip)).collect();
        self.layout.image("latest", &layers, json!({"Cmd": ["/bin/sh"]}));
    }

    fn unpack(&self, extra: &[&str]) -> Output {
        unpack(&self.env, &format!("{}:latest", self.layout.dir.display()), &self.bundle(), extra)
    }

    /// The unpack fails naming each of `expect`, and nothing outside the bundle changed.
    fn refused(&self, expect: &[&str]) -> String {
        self.refused_with(&[], expect)
    }

    fn refused_with(&self, extra: &[&str], expect: &[&str]) -> String {
        let out = self.unpack(extra);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "a hostile image unpacked: {err}");
        for e in expect {
            assert!(err.contains(e), "the error names {e:?}: {err}");
        }
        assert!(!self.bundle().exists(), "the partial bundle is removed: {:?}", tree_listing(&self.bundle()));
        self.assert_canary();
        err
    }

    fn assert_canary(&self) {
        assert_eq!(tree_digest(&self.canary), self.before, "the canary changed: {:?}", tree_listing(&self.canary));
        assert!(!self.env.dir.join("pwned").exists());
    }

    fn layer_digest(&self, index: usize) -> String {
        let index_json: Value = serde_json::from_slice(&fs::read(self.layout.dir.join("index.json")).unwrap()).unwrap();
        let manifest_digest = index_json["manifests"][0]["digest"].as_str().unwrap().to_string();
        let manifest: Value =
            serde_json::from_slice(&fs::read(self.layout.blob_path(&manifest_digest)).unwrap()).unwrap();
        manifest["layers"][index]["digest"].as_str().unwrap().to_string()
    }
}

#[test]
fn entry_names_with_dotdot_or_absolute_paths_are_refused_and_the_partial_bundle_goes() {
    let mut h = Hostile::new("unpack-names");
    // A good first layer, so the refusal comes after something was written.
    h.image(vec![
        Tar::new().dir("etc", 0o755).file("etc/ok", b"ok\n", 0o644).bytes(),
        Tar::new().file("../../canary/pwned", b"x", 0o644).bytes(),
    ]);
    let layer = h.layer_digest(1);
    h.refused(&[&layer, "\"../../canary/pwned\"", "'..' in the path"]);

    let mut h = Hostile::new("unpack-absolute");
    let target = format!("{}/pwned", h.canary.display());
    h.image(vec![Tar::new().file(&target, b"x", 0o644).bytes()]);
    h.refused(&[&h.layer_digest(0), &target, "absolute path"]);
}

#[test]
fn symlinks_out_of_the_rootfs_are_refused_and_absolute_ones_resolve_inside_it() {
    let mut h = Hostile::new("unpack-symlink");
    h.image(vec![Tar::new().symlink("evil", "../../canary").file("evil/pwned", b"x", 0o644).bytes()]);
    h.refused(&[&h.layer_digest(0), "\"evil\"", "points outside the rootfs"]);

    // Climbing out through a deeper name is the same.
    let mut h = Hostile::new("unpack-symlink-deep");
    h.image(vec![Tar::new().dir("a", 0o755).symlink("a/up", "../b/../../x").bytes()]);
    h.refused(&["\"a/up\"", "points outside the rootfs"]);

    let mut h = Hostile::new("unpack-symlink-loop");
    h.image(vec![Tar::new().symlink("a", "b").symlink("b", "a").file("a/x", b"x", 0o644).bytes()]);
    h.refused(&["\"a/x\"", "symbolic links"]);

    // A symlink to the canary's absolute path (or to `/`) in one layer, and writes through
    // it in the next: the container would see rootfs paths, and so does the unpack.
    let mut h = Hostile::new("unpack-symlink-abs");
    let canary = h.canary.display().to_string();
    h.image(vec![
        Tar::new().symlink("abs", &canary).symlink("root", "/").bytes(),
        Tar::new().file("abs/pwned", b"x", 0o644).file("root/../pwned", b"x", 0o644).bytes(),
    ]);
    h.refused(&["\"root/../pwned\"", "'..'"]);
    let mut h = Hostile::new("unpack-symlink-abs-ok");
    h.image(vec![
        Tar::new().symlink("abs", &canary).symlink("root", "/").bytes(),
        Tar::new().file("abs/pwned", b"x", 0o644).file("root/file", b"y", 0o644).dir("root/sub", 0o755).bytes(),
    ]);
    let out = h.unpack(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    h.assert_canary();
    let rootfs = h.bundle().join("rootfs");
    assert_eq!(fs::read(rootfs.join(canary.trim_start_matches('/')).join("pwned")).unwrap(), b"x");
    assert_eq!(fs::read(rootfs.join("file")).unwrap(), b"y");
    assert!(rootfs.join("sub").is_dir());
}

#[test]
fn hard_links_out_of_the_rootfs_or_to_directories_are_refused() {
    let mut h = Hostile::new("unpack-hardlink");
    h.image(vec![Tar::new().hardlink("h", "../../canary/file").bytes()]);
    h.refused(&["\"h\"", "hard link target: '..' in the path"]);

    // Through a symlink to the canary's absolute path: resolved in the rootfs, so there is
    // nothing to link to (the canary's link count is part of its digest).
    let mut h = Hostile::new("unpack-hardlink-symlink");
    let canary = h.canary.display().to_string();
    h.image(vec![Tar::new().symlink("abs", &canary).hardlink("h", "abs/file").bytes()]);
    h.refused(&["\"h\"", "hard link target abs/file"]);

    let mut h = Hostile::new("unpack-hardlink-dir");
    h.image(vec![Tar::new().dir("d", 0o755).hardlink("h", "d").bytes()]);
    h.refused(&["\"h\"", "is a directory"]);
}

#[test]
fn device_nodes_are_skipped_and_said_so() {
    let mut h = Hostile::new("unpack-devices");
    h.image(vec![Tar::new()
        .dir("dev", 0o755)
        .raw(tar::EntryType::Char, "dev/mem", "", 0o666, (0, 0), b"")
        .raw(tar::EntryType::Block, "dev/sda", "", 0o666, (0, 0), b"")
        .file("ok", b"ok\n", 0o644)
        .bytes()]);
    let out = h.unpack(&[]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("device node dev/mem not created") && err.contains("device node dev/sda not created"),
        "{err}"
    );
    let rootfs = h.bundle().join("rootfs");
    assert!(!rootfs.join("dev/mem").exists() && !rootfs.join("dev/sda").exists());
    assert_eq!(fs::read(rootfs.join("ok")).unwrap(), b"ok\n");
    h.assert_canary();
}

#[test]
fn blobs_that_are_not_what_their_descriptors_say_are_refused() {
    // A flipped byte in a layer.
    let mut h = Hostile::new("unpack-digest");
    h.image(vec![Tar::new().file("a", &[7u8; 4096], 0o644).bytes()]);
    let layer = h.layer_digest(0);
    let path = h.layout.blob_path(&layer);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 8; // the gzip trailer's CRC: the deflate stream still decodes
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    h.refused(&[&format!("blob {layer}"), "not to its digest"]);

    // A layer bigger than its descriptor, and one smaller.
    for (name, delta, says) in
        [("unpack-size-big", -1i64, "its descriptor says"), ("unpack-size-small", 1, "its descriptor says")]
    {
        let mut h = Hostile::new(name);
        let layers = vec![(Tar::new().file("a", b"a\n", 0o644).bytes(), Compression::Gzip)];
        let manifest = h.layout.manifest(&layers, json!({}), |m| {
            let size = m["layers"][0]["size"].as_i64().unwrap();
            m["layers"][0]["size"] = json!(size + delta);
        });
        let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
        h.layout.add("latest", manifest);
        h.refused(&[&format!("blob {layer}"), says]);
    }

    // A layer whose content is not the config's diff_id.
    let mut h = Hostile::new("unpack-diffid");
    let good = Tar::new().file("a", b"a\n", 0o644).bytes();
    let other = Tar::new().file("a", b"b\n", 0o644).bytes();
    let manifest = h.layout.manifest(&[(good, Compression::Gzip)], json!({}), |_| {});
    let swapped = {
        let mut m = manifest.clone();
        m["layers"][0] = h.layout.blob("application/vnd.oci.image.layer.v1.tar", &other);
        m
    };
    let layer = swapped["layers"][0]["digest"].as_str().unwrap().to_string();
    h.layout.add("latest", swapped);
    h.refused(&[&format!("blob {layer}"), "rootfs.diff_ids[0]"]);

    // An index.json entry whose digest is not its blob's.
    let mut h = Hostile::new("unpack-manifest-digest");
    h.image(vec![Tar::new().file("a", b"a\n", 0o644).bytes()]);
    h.layout.edit_index(|m| m[0]["digest"] = json!(format!("sha256:{}", "0".repeat(64))));
    h.refused(&[&format!("sha256:{}", "0".repeat(64))]);
}

#[test]
fn manifests_and_layers_of_the_wrong_media_type_are_refused() {
    let mut h = Hostile::new("unpack-media-index");
    h.image(vec![Tar::new().file("a", b"a\n", 0o644).bytes()]);
    h.layout.edit_index(|m| m[0]["mediaType"] = json!("application/vnd.oci.image.config.v1+json"));
    h.refused(&["is neither an image manifest nor an image index"]);

    let mut h = Hostile::new("unpack-media-manifest");
    let manifest = h.layout.manifest(&[(Tar::new().bytes(), Compression::Gzip)], json!({}), |m| {
        m["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
    });
    h.layout.add("latest", manifest);
    h.layout.edit_index(|m| m[0]["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json"));
    h.refused(&["is not an image manifest"]);

    let mut h = Hostile::new("unpack-media-layer");
    let manifest = h.layout.manifest(&[(Tar::new().bytes(), Compression::Gzip)], json!({}), |m| {
        m["layers"][0]["mediaType"] = json!("application/vnd.example.unknown");
    });
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    h.layout.add("latest", manifest);
    h.refused(&[&format!("blob {layer}"), "is not a layer type hull unpacks"]);
}

#[test]
fn a_decompression_bomb_stops_at_the_cap() {
    let mut h = Hostile::new("unpack-bomb");
    let zeros = vec![0u8; 64 << 20];
    h.image(vec![Tar::new().file("bomb", &zeros, 0o644).bytes()]);
    let blob = fs::metadata(h.layout.blob_path(&h.layer_digest(0))).unwrap().len();
    assert!(blob < 1 << 20, "64 MiB of zeros gzip to {blob} bytes");
    let err = h.refused_with(
        &["--max-size", "8388608"],
        &[&h.layer_digest(0), "unpacks to more than the unpacked-size cap (8388608 bytes)"],
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_bundle_must_be_new_and_is_left_alone_otherwise() {
    let mut h = Hostile::new("unpack-existing");
    h.image(vec![Tar::new().file("a", b"a\n", 0o644).bytes()]);
    fs::create_dir_all(h.bundle()).unwrap();
    fs::write(h.bundle().join("mine"), b"mine\n").unwrap();
    let out = h.unpack(&[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("exists and is not empty"), "{}", text(&out.stderr));
    assert_eq!(fs::read(h.bundle().join("mine")).unwrap(), b"mine\n");
    assert_eq!(fs::read_dir(h.bundle()).unwrap().count(), 1);

    // An empty directory is taken, and left (empty) when the unpack fails.
    fs::remove_file(h.bundle().join("mine")).unwrap();
    let mut bad = Hostile::new("unpack-existing-bad");
    bad.image(vec![Tar::new().file("../x", b"x", 0o644).bytes()]);
    let out = unpack(&bad.env, &format!("{}:latest", bad.layout.dir.display()), &h.bundle(), &[]);
    assert!(!out.status.success());
    assert!(h.bundle().is_dir() && fs::read_dir(h.bundle()).unwrap().count() == 0);
}

/// In a VM: an unpacked image's Entrypoint, Cmd, Env, WorkingDir and User (by name, with
/// its supplementary groups) are what the container's process gets; the bundle is an
/// ordinary one (`hull run` takes it as it is).
#[test]
fn an_unpacked_image_runs_with_its_entrypoint_cmd_env_workdir_and_user() {
    let env = Env::new("unpack-run");
    let busybox = env.bundle("busybox", &["true"]);
    let users = Tar::new()
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n", 0o644)
        .file("etc/group", b"root:x:0:\napp:x:2345:\nextra:x:3456:root,app\nother:x:4567:root\n", 0o644)
        .raw(tar::EntryType::Directory, "work", "", 0o755, (1234, 2345), b"")
        .bytes();
    let mut layout = Layout::new(&env.dir.join("image"));
    layout.image(
        "latest",
        &[(Tar::new().tree(&busybox.rootfs()).bytes(), Compression::Gzip), (users, Compression::Zstd)],
        json!({
            "Entrypoint": ["/bin/sh", "-c", "echo \"$0|$1|$GREETING|$(pwd)|$(id -u):$(id -g)|$(id -G)\""],
            "Cmd": ["from-cmd", "second"],
            "Env": ["PATH=/bin", "GREETING=hello from the image"],
            "WorkingDir": "/work",
            "User": "app",
        }),
    );
    let bundle = env.dir.join("bundle");
    let out = unpack(&env, layout.dir.to_str().unwrap(), &bundle, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.hull_out(&["run", "--bundle", bundle.to_str().unwrap(), "image1"]);
    assert!(out.status.success(), "hull run: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from-cmd|second|hello from the image|/work|1234:2345|2345 3456\n");

    // `-- ARGS` replaces the Cmd.
    let bundle = env.dir.join("override");
    let out = unpack(&env, layout.dir.to_str().unwrap(), &bundle, &["--", "from-args"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = env.hull_out(&["run", "--bundle", bundle.to_str().unwrap(), "image2"]);
    assert!(out.status.success(), "hull run: {}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("from-args||hello from the image|/work|"), "{}", text(&out.stdout));
    env.assert_clean();
}

#[test]
fn sparse_entries_and_oversized_extension_headers_are_refused() {
    // A sparse entry: the tar crate would expand its holes into as many zeros as it claims.
    let mut h = Hostile::new("unpack-sparse");
    h.image(vec![Tar::new().raw(tar::EntryType::GNUSparse, "holes", "", 0o644, (0, 0), b"").bytes()]);
    h.refused(&["\"holes\"", "sparse files are not supported"]);

    // A PAX header body over 64 KiB: read into memory whole, it could claim gigabytes.
    let mut h = Hostile::new("unpack-pax");
    let body = vec![b'a'; 100 << 10];
    h.image(vec![Tar::new()
        .raw(tar::EntryType::XHeader, "PaxHeader/x", "", 0o644, (0, 0), &body)
        .file("x", b"x", 0o644)
        .bytes()]);
    h.refused(&["PaxHeader/x", "more than 65536"]);
}

#[test]
fn symlinks_and_fifos_inside_the_layout_are_not_followed() {
    // blobs -> another store: a layout must not hand out blobs from outside itself.
    let mut h = Hostile::new("unpack-layout-symlink");
    h.image(vec![Tar::new().file("a", b"a\n", 0o644).bytes()]);
    let elsewhere = h.env.dir.join("elsewhere");
    fs::rename(h.layout.dir.join("blobs"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, h.layout.dir.join("blobs")).unwrap();
    h.refused(&["blobs/sha256/", "symbolic links"]);

    // index.json a FIFO: refused, not waited on.
    let h = Hostile::new("unpack-layout-fifo");
    fs::remove_file(h.layout.dir.join("index.json")).unwrap();
    nix::unistd::mkfifo(&h.layout.dir.join("index.json"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    h.refused(&["index.json", "not a regular file"]);
}

#[test]
fn an_existing_bundle_directory_must_be_ours_and_is_made_private() {
    let mut h = Hostile::new("unpack-bundle-owner");
    h.image(vec![Tar::new().file("a", b"a\n", 0o644).bytes()]);
    fs::create_dir_all(h.bundle()).unwrap();
    fs::set_permissions(h.bundle(), fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(h.bundle(), Some(1000), Some(1000)).unwrap();
    let out = h.unpack(&[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("belongs to uid 1000, not to this user (0)"), "{}", text(&out.stderr));
    assert_eq!(fs::read_dir(h.bundle()).unwrap().count(), 0);

    // Ours: taken, and made 0700 (the rootfs may hold set-id-root files).
    std::os::unix::fs::chown(h.bundle(), Some(0), Some(0)).unwrap();
    let out = h.unpack(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(fs::metadata(h.bundle()).unwrap().permissions().mode() & 0o7777, 0o700);
}
