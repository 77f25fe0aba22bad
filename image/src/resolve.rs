//! From `index.json` and a reference to one image manifest: the reference picks entries by
//! `org.opencontainers.image.ref.name`, nested indexes (multi-platform images) are followed
//! to the manifest for the wanted platform.

use std::fmt;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

use crate::layout::Layout;
use crate::ImageError;

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Nested indexes deeper than this are refused (a loop of indexes would not end).
const MAX_INDEX_DEPTH: usize = 4;

/// `os/architecture[/variant]`, as `--platform` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform { os: "linux".into(), architecture: "amd64".into(), variant: None }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: None })
            }
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform { os: os.to_string(), architecture: arch.to_string(), variant: Some(variant.to_string()) })
            }
            _ => Err(format!("{s:?}: expected OS/ARCH or OS/ARCH/VARIANT (e.g. linux/amd64)")),
        }
    }
}

/// The kinds of blob a descriptor may point at, by media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

fn is_index(media: &MediaType) -> bool {
    matches!(media, MediaType::ImageIndex) || matches!(media, MediaType::Other(m) if m == DOCKER_LIST)
}

fn is_manifest(media: &MediaType) -> bool {
    matches!(media, MediaType::ImageManifest) || matches!(media, MediaType::Other(m) if m == DOCKER_MANIFEST)
}

pub fn is_config(media: &MediaType) -> bool {
    matches!(media, MediaType::ImageConfig) || matches!(media, MediaType::Other(m) if m == DOCKER_CONFIG)
}

/// How a layer of this media type is compressed; `None` if it is not a layer type.
pub fn layer_compression(media: &MediaType) -> Option<LayerCompression> {
    match media {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(LayerCompression::None),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Some(LayerCompression::Gzip),
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Some(LayerCompression::Zstd),
        MediaType::Other(m) if m == DOCKER_LAYER_GZIP => Some(LayerCompression::Gzip),
        _ => None,
    }
}

fn names(descs: &[Descriptor]) -> String {
    let names: Vec<&str> = descs
        .iter()
        .filter_map(|d| d.annotations().as_ref().and_then(|a| a.get(REF_NAME)).map(String::as_str))
        .collect();
    if names.is_empty() {
        "none is named".into()
    } else {
        format!("names: {}", names.join(", "))
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations().as_ref().and_then(|a| a.get(REF_NAME)).map(String::as_str)
}

/// The entries of `index.json` that `reference` names: an exact match of the ref name, or,
/// failing that, of the tag after its last `:` (podman names its entries `HOST/NAME:TAG`).
fn by_reference<'a>(descs: &'a [Descriptor], reference: &str) -> Vec<&'a Descriptor> {
    let exact: Vec<&Descriptor> = descs.iter().filter(|d| ref_name(d) == Some(reference)).collect();
    if !exact.is_empty() {
        return exact;
    }
    descs
        .iter()
        .filter(|d| ref_name(d).and_then(|n| n.rsplit_once(':')).is_some_and(|(_, tag)| tag == reference))
        .collect()
}

fn platform_matches(d: &Descriptor, want: &Platform) -> bool {
    match d.platform() {
        None => true,
        Some(p) => {
            p.os().to_string() == want.os
                && p.architecture().to_string() == want.architecture
                && want.variant.as_ref().is_none_or(|v| p.variant().as_deref() == Some(v.as_str()))
        }
    }
}

/// The one descriptor among `candidates` for `platform`: entries without a platform match
/// any, and when several match, the first wins (as containerd and umoci choose).
fn choose<'a>(candidates: &[&'a Descriptor], platform: &Platform, what: &str) -> Result<&'a Descriptor, ImageError> {
    let matching: Vec<&&Descriptor> = candidates.iter().filter(|d| platform_matches(d, platform)).collect();
    match matching.first() {
        Some(d) => Ok(d),
        None => {
            let offered: Vec<String> = candidates
                .iter()
                .filter_map(|d| d.platform().as_ref().map(|p| format!("{}/{}", p.os(), p.architecture())))
                .collect();
            Err(ImageError::invalid(
                what,
                format!("no manifest for platform {platform} (offered: {})", offered.join(", ")),
            ))
        }
    }
}

/// The manifest `reference` (or the layout's only image) names, for `platform`, and the
/// descriptor it was read through.
pub fn manifest(
    layout: &Layout,
    reference: Option<&str>,
    platform: &Platform,
) -> Result<(ImageManifest, Descriptor), ImageError> {
    let index_name = format!("{}/index.json", layout.path().display());
    let index: ImageIndex = layout.read_file_json("index.json")?;
    let all = index.manifests();
    let candidates: Vec<&Descriptor> = match reference {
        Some(r) => {
            let found = by_reference(all, r);
            if found.is_empty() {
                return Err(ImageError::invalid(&index_name, format!("no manifest is named {r:?} ({})", names(all))));
            }
            // A tag two names share (`a:v1`, `b:v1`) names neither: say so rather than pick.
            let distinct: std::collections::BTreeSet<Option<&str>> = found.iter().map(|d| ref_name(d)).collect();
            if distinct.len() > 1 {
                let listed: Vec<&str> = distinct.into_iter().flatten().collect();
                return Err(ImageError::invalid(
                    &index_name,
                    format!("{r:?} is the tag of {}; name one in full", listed.join(", ")),
                ));
            }
            found
        }
        None => {
            let distinct: std::collections::BTreeSet<Option<&str>> = all.iter().map(ref_name).collect();
            if all.is_empty() {
                return Err(ImageError::invalid(&index_name, "lists no manifests"));
            }
            if distinct.len() > 1 {
                return Err(ImageError::invalid(
                    &index_name,
                    format!("lists {} images; name one as IMAGE:REF ({})", distinct.len(), names(all)),
                ));
            }
            all.iter().collect()
        }
    };
    let mut desc = choose(&candidates, platform, &index_name)?.clone();
    for _ in 0..MAX_INDEX_DEPTH {
        if is_manifest(desc.media_type()) {
            let manifest: ImageManifest = layout.blob_json(&desc)?;
            check_manifest(&manifest, &desc)?;
            return Ok((manifest, desc));
        }
        if !is_index(desc.media_type()) {
            return Err(ImageError::blob(
                desc.digest(),
                format!("media type {} is neither an image manifest nor an image index", desc.media_type()),
            ));
        }
        let nested: ImageIndex = layout.blob_json(&desc)?;
        let inner: Vec<&Descriptor> = nested.manifests().iter().collect();
        desc = choose(&inner, platform, &format!("index {}", desc.digest()))?.clone();
    }
    Err(ImageError::blob(desc.digest(), format!("indexes nested more than {MAX_INDEX_DEPTH} deep")))
}

fn check_manifest(manifest: &ImageManifest, desc: &Descriptor) -> Result<(), ImageError> {
    if let Some(own) = manifest.media_type() {
        if !is_manifest(own) {
            return Err(ImageError::blob(desc.digest(), format!("mediaType {own} is not an image manifest")));
        }
    }
    let config = manifest.config();
    if !is_config(config.media_type()) {
        return Err(ImageError::blob(
            config.digest(),
            format!("config media type {} is not {}", config.media_type(), MediaType::ImageConfig),
        ));
    }
    for layer in manifest.layers() {
        if layer_compression(layer.media_type()).is_none() {
            return Err(ImageError::blob(
                layer.digest(),
                format!("media type {} is not a layer type hull unpacks", layer.media_type()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_with_and_without_variant() {
        assert_eq!("linux/arm64".parse::<Platform>().unwrap().architecture, "arm64");
        assert_eq!("linux/arm/v7".parse::<Platform>().unwrap().variant.as_deref(), Some("v7"));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
    }
}
