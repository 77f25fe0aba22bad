//! runc-style logging: `--log FILE` and `--log-format text|json`, through `tracing`.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat};

/// Install the subscriber; returns true when logs go to a file (so errors must also be
/// printed on stderr for the caller to see them).
pub fn init(cli: &Cli) -> bool {
    let level = if cli.debug { "debug" } else { "warn" };
    let filter = EnvFilter::try_from_env("HULL_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    // A detached supervisor must not write on the stderr it hands to the container.
    let path = cli.log.clone().or_else(|| match &cli.command {
        Command::Supervise { id, .. } => Some(cli.root.join(id).join("supervisor.log")),
        _ => None,
    });
    let file = path.and_then(|p| OpenOptions::new().create(true).append(true).open(&p).ok());
    let to_file = file.is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let result = match (file, cli.log_format) {
        (Some(f), LogFormat::Json) => builder.json().with_writer(Mutex::new(f)).try_init(),
        (Some(f), LogFormat::Text) => builder.with_ansi(false).with_writer(Mutex::new(f)).try_init(),
        (None, LogFormat::Json) => builder.json().with_writer(std::io::stderr).try_init(),
        (None, LogFormat::Text) => {
            builder.with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).try_init()
        }
    };
    let _ = result;
    to_file
}
