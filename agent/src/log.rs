//! Agent log lines on the guest console (the host keeps it as `console.log`).

pub fn info(msg: &str) {
    eprintln!("hull-agent: {msg}");
}

pub fn error(msg: &str) {
    eprintln!("hull-agent: error: {msg}");
}
