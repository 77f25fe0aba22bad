//! `hull resume ID`: thaw a paused container.

use anyhow::Result;
use hull::state::{StateDir, Status};

use crate::cli::Cli;
use crate::supervisor::control::ControlRequest;

pub fn run(cli: &Cli, id: &str) -> Result<i32> {
    let _lock = StateDir::new(&cli.root, id)?.lock_existing()?;
    let (dir, _) = super::container(cli, id, "resume", &[Status::Paused])?;
    super::request(&dir, &ControlRequest::Resume)?;
    Ok(0)
}
