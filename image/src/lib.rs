//! From an OCI image layout to an OCI runtime bundle.
//!
//! [`unpack`] reads an image layout (a directory, or a tar of one), resolves a reference
//! through `index.json` (nested indexes by platform), verifies every blob it reads against
//! its descriptor's digest and size (and each layer's uncompressed digest against the
//! config's `diff_ids`), applies the layers in order with their whiteouts, and writes
//! `config.json` from the image config over a base runtime spec.
//!
//! The host runs this as root on input nobody vouches for, so every write into the rootfs
//! is made relative to a directory fd, with parents resolved by `openat2(RESOLVE_IN_ROOT)`,
//! and entries that would name or link outside the rootfs are refused ([`layer`]).

pub mod digest;
pub mod error;
pub mod layer;
pub mod layout;
pub mod remove;
pub mod resolve;
pub mod runtime_config;
pub mod tar_stream;
pub mod unpack;
pub mod users;

pub use error::ImageError;
pub use layer::Limits;
pub use resolve::Platform;
pub use unpack::{unpack, Progress, UnpackOptions, UnpackReport};
