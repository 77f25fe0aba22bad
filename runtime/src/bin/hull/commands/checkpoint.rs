//! `checkpoint` and `restore`: refused, as a container's memory lives inside its VM.

use anyhow::{bail, Result};

pub fn refuse() -> Result<i32> {
    bail!("checkpoint/restore is not supported: a container's memory lives inside its VM")
}
