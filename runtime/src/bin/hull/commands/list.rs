//! `hull list`: the containers under `--root`.

use anyhow::Result;
use hull::state::{StateDir, Status};

use crate::cli::{Cli, Format};

pub fn run(cli: &Cli, format: Format, quiet: bool) -> Result<i32> {
    let mut states = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&cli.root) {
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok(dir) = StateDir::new(&cli.root, &id) else { continue };
            let Ok(mut state) = dir.read() else { continue };
            state.status = state.effective_status();
            if state.status == Status::Stopped {
                state.pid = None;
            }
            states.push(state);
        }
    }
    states.sort_by(|a, b| a.id.cmp(&b.id));
    match (format, quiet) {
        (_, true) => states.iter().for_each(|s| super::emit(&s.id)),
        (Format::Json, false) => super::emit(&serde_json::to_string(&states)?),
        (Format::Table, false) => {
            super::emit(&format!("{:<20} {:<8} {:<10} {:<40} CREATED", "ID", "PID", "STATUS", "BUNDLE"));
            for s in &states {
                let pid = s.pid.map(|p| p.to_string()).unwrap_or_else(|| "0".into());
                super::emit(&format!(
                    "{:<20} {:<8} {:<10} {:<40} {}",
                    s.id,
                    pid,
                    s.status.as_str(),
                    s.bundle.display(),
                    s.created
                ));
            }
        }
    }
    Ok(0)
}
