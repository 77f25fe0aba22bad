//! Just enough of the i8042 keyboard controller for the guest to reset the machine: a write of
//! 0xfe (pulse reset line) to the command port ends the VM cleanly.

use crate::bus::BusDevice;

pub const I8042_DATA_PORT: u64 = 0x60;
/// Ports 0x60..=0x64; 0x61 (the PC speaker / NMI status port) sits inside the range.
pub const I8042_PORT_RANGE: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    on_reset: Box<dyn Fn() + Send>,
}

impl I8042 {
    pub fn new(on_reset: Box<dyn Fn() + Send>) -> Self {
        I8042 { on_reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty: the guest never waits on us.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            tracing::info!("i8042: guest requested a reset");
            (self.on_reset)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn only_the_reset_command_signals() {
        let resets = Arc::new(AtomicUsize::new(0));
        let r = resets.clone();
        let mut dev = I8042::new(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        dev.write(COMMAND_OFFSET, &[0xd1]);
        dev.write(0, &[CMD_RESET_CPU]);
        assert_eq!(resets.load(Ordering::SeqCst), 0);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }
}
