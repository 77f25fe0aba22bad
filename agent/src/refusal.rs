//! Errors that carry the kind the host sees ([`hull_protocol::ErrorKind`]).
//!
//! The agent's code reports failures as `anyhow` errors; the ones whose kind matters to the
//! host (a process that does not exist, an id that is taken, a request in the wrong state)
//! are made here, and the control server finds the kind anywhere in an error's chain.

use hull_protocol::{AgentError, ErrorKind};

#[derive(Debug)]
pub struct Refusal {
    kind: ErrorKind,
    message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

fn refusal(kind: ErrorKind, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Refusal { kind, message: message.into() })
}

pub fn not_found(message: impl Into<String>) -> anyhow::Error {
    refusal(ErrorKind::NotFound, message)
}

pub fn already_exists(message: impl Into<String>) -> anyhow::Error {
    refusal(ErrorKind::AlreadyExists, message)
}

pub fn invalid(message: impl Into<String>) -> anyhow::Error {
    refusal(ErrorKind::InvalidArgument, message)
}

pub fn precondition(message: impl Into<String>) -> anyhow::Error {
    refusal(ErrorKind::FailedPrecondition, message)
}

/// The wire form of `e`: its whole message, and the kind of the innermost refusal in it.
pub fn to_wire(e: &anyhow::Error) -> AgentError {
    let kind = e.chain().find_map(|c| c.downcast_ref::<Refusal>()).map(|r| r.kind).unwrap_or_default();
    AgentError::new(kind, format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn kind_survives_context() {
        let e = Err::<(), _>(not_found("exec x does not exist")).context("signalling").unwrap_err();
        let wire = to_wire(&e);
        assert_eq!(wire.kind, ErrorKind::NotFound);
        assert_eq!(wire.message, "signalling: exec x does not exist");
        assert_eq!(to_wire(&anyhow::anyhow!("boom")).kind, ErrorKind::Internal);
    }
}
