//! What can go wrong between an image layout and a bundle; every message names the file,
//! blob or tar entry it is about.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("blob {digest}: {reason}")]
    Blob { digest: String, reason: String },
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Entry { layer: String, entry: String, reason: String },
}

impl ImageError {
    pub fn io(path: impl std::fmt::Display, source: io::Error) -> Self {
        ImageError::Io { path: path.to_string(), source }
    }

    pub fn invalid(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        ImageError::Invalid { what: what.to_string(), reason: reason.to_string() }
    }

    pub fn blob(digest: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        ImageError::Blob { digest: digest.to_string(), reason: reason.to_string() }
    }
}
