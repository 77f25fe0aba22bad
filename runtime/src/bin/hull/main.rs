//! `hull`: the runc-compatible command line, and (hidden) the per-container supervisor.
//!
//! Thin: [`cli`] parses, [`commands`] has one file per verb, and everything a container's
//! life needs is in the `hull` library's pod core, which the [`supervisor`] drives.

mod cli;
mod commands;
mod detach;
mod logging;
mod pid_file;
mod signal;
mod supervisor;

use clap::Parser;

use cli::{Cli, LogFormat};

fn main() {
    // Everything hull creates is root's alone (state dirs, sockets, logs, state.json): files
    // 0600, directories 0700. Hooks and virtiofsd get the usual 022 back.
    // SAFETY: umask(2) only sets this process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    let cli = Cli::parse();
    let log_to_file = logging::init(&cli);
    let status = match commands::run(&cli) {
        Ok(status) => status,
        Err(e) => {
            let msg = format!("{e:#}");
            // JSON logs on stderr carry the error themselves; otherwise say it plainly there.
            if log_to_file || cli.log_format == LogFormat::Json {
                tracing::error!("{msg}");
            }
            if log_to_file || cli.log_format == LogFormat::Text {
                eprintln!("hull: error: {msg}");
            }
            1
        }
    };
    std::process::exit(status);
}
