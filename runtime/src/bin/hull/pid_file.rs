//! `--pid-file`: written whole or not at all (a temp file renamed into place), as runc does.

use std::path::Path;

use anyhow::{Context, Result};

pub fn write(path: &Path, pid: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pid.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
