//! Signal names and numbers as `kill` accepts them (`KILL`, `SIGKILL`, `9`).

use anyhow::{anyhow, Result};
use nix::sys::signal::Signal;

pub fn parse(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map(|s| s as i32).map_err(|_| anyhow!("invalid signal number {n}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map(|s| s as i32).map_err(|_| anyhow!("invalid signal {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("KILL").unwrap(), 9);
        assert_eq!(parse("sigterm").unwrap(), 15);
        assert_eq!(parse("2").unwrap(), 2);
        assert!(parse("NOPE").is_err());
        assert!(parse("99").is_err());
    }
}
