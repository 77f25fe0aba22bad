//! The one state machine of containers and their processes.
//!
//! ```text
//!   Created ──start──▶ Running ──pause──▶ Paused
//!      │                 │  ▲──resume──────┘ │
//!      └──────exit───────┴──────exit─────────┴──▶ Stopped
//! ```
//! A container's state is its init's; an exec is Created until it is started (containerd adds
//! execs before starting them) and is never paused on its own. Every operation names the
//! states it is allowed in; anything else is [`InvalidState`], one error for both front ends.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    Created,
    Running,
    Paused,
    Stopped,
}

impl ProcessState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Created => "created",
            ProcessState::Running => "running",
            ProcessState::Paused => "paused",
            ProcessState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for ProcessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operations whose allowed states the machine checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    /// Adding an exec to a container.
    Exec,
    Signal,
    Pause,
    Resume,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Exec => "exec in",
            Op::Signal => "kill",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Delete => "delete",
        }
    }

    /// The states `self` may be applied in.
    fn allowed(self) -> &'static [ProcessState] {
        use ProcessState::*;
        match self {
            Op::Start => &[Created],
            Op::Exec => &[Running],
            Op::Signal => &[Created, Running, Paused],
            Op::Pause => &[Running],
            Op::Resume => &[Paused],
            Op::Delete => &[Created, Stopped],
        }
    }

    /// The state after `self` succeeded from `from` (operations that change none keep it).
    pub fn after(self, from: ProcessState) -> ProcessState {
        match self {
            Op::Start | Op::Resume => ProcessState::Running,
            Op::Pause => ProcessState::Paused,
            Op::Exec | Op::Signal | Op::Delete => from,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `op` is not allowed on `subject` (e.g. "container c1") in `state`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {op} {subject} that is {state}")]
pub struct InvalidState {
    pub op: Op,
    pub state: ProcessState,
    pub subject: String,
}

/// Check that `op` may be applied to `subject` in `state`.
pub fn check(op: Op, state: ProcessState, subject: impl FnOnce() -> String) -> Result<(), InvalidState> {
    if op.allowed().contains(&state) {
        Ok(())
    } else {
        Err(InvalidState { op, state, subject: subject() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProcessState::*;

    const ALL: [ProcessState; 4] = [Created, Running, Paused, Stopped];

    #[test]
    fn each_operation_is_allowed_exactly_where_the_machine_says() {
        let table: [(Op, &[ProcessState]); 6] = [
            (Op::Start, &[Created]),
            (Op::Exec, &[Running]),
            (Op::Signal, &[Created, Running, Paused]),
            (Op::Pause, &[Running]),
            (Op::Resume, &[Paused]),
            (Op::Delete, &[Created, Stopped]),
        ];
        for (op, allowed) in table {
            for state in ALL {
                let result = check(op, state, || "container c".into());
                assert_eq!(result.is_ok(), allowed.contains(&state), "{op} in {state}");
            }
        }
    }

    #[test]
    fn transitions() {
        assert_eq!(Op::Start.after(Created), Running);
        assert_eq!(Op::Pause.after(Running), Paused);
        assert_eq!(Op::Resume.after(Paused), Running);
        assert_eq!(Op::Signal.after(Paused), Paused);
    }

    #[test]
    fn the_error_names_operation_subject_and_state() {
        let e = check(Op::Pause, Stopped, || "container c1".into()).unwrap_err();
        assert_eq!(e.to_string(), "cannot pause container c1 that is stopped");
        assert_eq!((e.op, e.state), (Op::Pause, Stopped));
    }
}
