//! `hull state ID`: the runtime-spec state JSON.

use anyhow::Result;
use hull::state::{StateDir, Status};

use crate::cli::Cli;

pub fn run(cli: &Cli, id: &str) -> Result<i32> {
    let mut state = StateDir::new(&cli.root, id)?.read()?;
    state.status = state.effective_status();
    if state.status == Status::Stopped {
        state.pid = None;
    }
    super::emit(&serde_json::to_string_pretty(&state)?);
    Ok(0)
}
