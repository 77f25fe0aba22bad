//! `hull pause ID`: freeze every process of a running container (guest cgroup freezer).

use anyhow::Result;
use hull::state::{StateDir, Status};

use crate::cli::Cli;
use crate::supervisor::control::ControlRequest;

pub fn run(cli: &Cli, id: &str) -> Result<i32> {
    let _lock = StateDir::new(&cli.root, id)?.lock_existing()?;
    let (dir, _) = super::container(cli, id, "pause", &[Status::Running])?;
    super::request(&dir, &ControlRequest::Pause)?;
    Ok(0)
}
