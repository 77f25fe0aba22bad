//! What the host reads from the guest's agent, which may be hostile: control frames (length
//! header, then a JSON body), stdio stream headers and port-forward replies. Nothing may panic
//! or allocate past the frame limit, and whatever parses must survive the checks the runtime
//! puts it through.
#![no_main]

use std::str::FromStr;

use hull_protocol::forward::{read_line, ForwardReply, MAX_LINE};
use hull_protocol::{read_frame, validate_id, AgentMessage, Event, FrameError, StreamHeader, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A stream of control frames, as the host's reader takes them one after another.
    let mut rest = data;
    for _ in 0..8 {
        match read_frame::<AgentMessage>(&mut rest) {
            Ok(AgentMessage::Event(Event::ProcessExited { container_id, exec_id, .. })) => {
                let _ = validate_id(&container_id);
                if let Some(exec) = exec_id {
                    let _ = validate_id(&exec);
                }
            }
            Ok(AgentMessage::Event(Event::OomKilled { container_id })) => {
                let _ = validate_id(&container_id);
            }
            Ok(AgentMessage::Response(_)) => {}
            Err(FrameError::TooLarge(n)) => assert!(n > MAX_FRAME),
            Err(_) => break,
        }
    }
    // A forward reply line, then what it parses to: a reply that parses prints back the same.
    let mut r = data;
    if let Ok(line) = read_line(&mut r) {
        assert!(line.len() < MAX_LINE && !line.contains('\n'));
        if let Ok(reply) = ForwardReply::from_str(&line) {
            assert_eq!(reply.to_string(), format!("{line}\n"));
        }
    }
    // A stdio header line: one that parses prints back the same and names valid ids only.
    if let Ok(text) = std::str::from_utf8(&data[..data.len().min(hull_protocol::stream::MAX_HEADER)]) {
        let line = text.split('\n').next().unwrap_or_default();
        if let Ok(header) = StreamHeader::from_str(line) {
            assert!(validate_id(&header.container_id).is_ok());
            assert_eq!(header.to_string(), format!("{line}\n"));
        }
    }
});
