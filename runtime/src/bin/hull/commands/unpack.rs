//! `hull unpack --image DIR[:REF] BUNDLE`: an OCI image layout into a new bundle, with
//! umoci's argument form. The work (and every refusal) is in `hull_image`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hull_image::{Limits, Platform, Progress, UnpackOptions};

pub fn run(image: &str, platform: &str, max_size: Option<u64>, bundle: &Path, args: &[String]) -> Result<i32> {
    let (layout, reference) = split_reference(image);
    let platform: Platform = platform.parse().map_err(|e: String| anyhow::anyhow!("--platform {platform:?}: {e}"))?;
    let mut limits = Limits::default();
    if let Some(max) = max_size {
        limits.max_unpacked_bytes = max;
    }
    let opts = UnpackOptions {
        image: layout,
        reference,
        platform,
        bundle: bundle.to_path_buf(),
        limits,
        args: (!args.is_empty()).then(|| args.to_vec()),
        base_spec: hull::spec::default_spec(),
    };
    let report = hull_image::unpack(&opts, &mut |step| match step {
        Progress::Manifest { digest, layers } => eprintln!("unpack: manifest {digest}: {layers} layers"),
        Progress::Layer { index, count, digest, size } => {
            eprintln!("unpack: layer {index}/{count} {digest} ({size} bytes)")
        }
    })
    .with_context(|| format!("unpacking {image} into {}", bundle.display()))?;
    for label in &report.dropped_labels {
        eprintln!(
            "unpack: warning: image label {label} not made an annotation (a namespace runtimes take instructions from)"
        );
    }
    for device in &report.skipped_devices {
        eprintln!("unpack: warning: device node {device} not created (a container gets its devices from the spec)");
    }
    eprintln!(
        "unpack: {} ready: {} layers, {} entries, from manifest {}",
        bundle.display(),
        report.layers,
        report.entries,
        report.manifest
    );
    Ok(0)
}

/// `DIR[:REF]`: the layout is the shortest prefix before a `:` that names an existing
/// path (a reference such as `docker.io/library/httpd:2` holds colons of its own), else the
/// whole text if it exists, else the text before the last `:` (whose absence is then the
/// error reported).
fn split_reference(image: &str) -> (PathBuf, Option<String>) {
    let reference =
        |at: usize| (PathBuf::from(&image[..at]), Some(image[at + 1..].to_string()).filter(|r| !r.is_empty()));
    if let Some((at, _)) = image.match_indices(':').find(|&(at, _)| at > 0 && Path::new(&image[..at]).exists()) {
        return reference(at);
    }
    match image.rfind(':') {
        Some(at) if at > 0 && !Path::new(image).exists() => reference(at),
        _ => (PathBuf::from(image), None),
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn the_layout_is_the_first_existing_prefix() {
        let dir = std::env::temp_dir().join(format!("hull-unpack-ref-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a:b")).unwrap();
        let d = dir.display();
        let split = |s: String| split_reference(&s);
        assert_eq!(split(format!("{d}/a:b")), (dir.join("a:b"), None));
        assert_eq!(split(format!("{d}/a:b:v1")), (dir.join("a:b"), Some("v1".into())));
        assert_eq!(split(format!("{d}:docker.io/library/x:2")), (dir.clone(), Some("docker.io/library/x:2".into())));
        assert_eq!(split(format!("{d}/missing:v1")), (dir.join("missing"), Some("v1".into())));
        assert_eq!(split(format!("{d}/missing")), (dir.join("missing"), None));
        assert_eq!(split(format!("{d}:")), (dir.clone(), None));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
