//! `hull spec`: write a default config.json (runc's, terminal off) into the bundle.

use std::path::Path;

use anyhow::{bail, Context, Result};

pub fn run(bundle: &Path) -> Result<i32> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} already exists; remove it first", path.display());
    }
    std::fs::write(&path, serde_json::to_string_pretty(&hull::spec::default_spec())?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(0)
}
