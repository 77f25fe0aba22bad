//! COM1 (8250/16550) from vm-superio, its output going to the console log. Its interrupt is
//! delivered through an irqfd on GSI 4.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::snapshot::SerialState;

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;

/// Raises the serial interrupt by writing to an eventfd registered as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialDevice<W: Write + Send> {
    serial: Serial<IrqTrigger, NoEvents, W>,
}

impl<W: Write + Send> SerialDevice<W> {
    pub fn new(irq: EventFd, out: W) -> Self {
        SerialDevice { serial: Serial::new(IrqTrigger(irq), out) }
    }

    /// The port as a snapshot saved it, writing to a new `out`.
    pub fn from_state(state: &SerialState, irq: EventFd, out: W) -> Result<Self, String> {
        Serial::from_state(&state.into(), IrqTrigger(irq), NoEvents, out)
            .map(|serial| SerialDevice { serial })
            .map_err(|e| format!("serial state: {e:?}"))
    }

    pub fn state(&self) -> SerialState {
        self.serial.state().into()
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.serial.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            // A console log that cannot be written (disk full) must not stop the guest.
            let _ = self.serial.write(offset as u8, data[0]);
        }
    }
}

/// The console log: unbuffered writes, so a crash loses nothing the guest printed. The size is
/// capped, so a guest printing forever cannot fill the host's disk.
pub struct ConsoleLog {
    file: std::fs::File,
    written: u64,
    limit: u64,
}

impl ConsoleLog {
    pub fn new(file: std::fs::File, limit: u64) -> Self {
        ConsoleLog { file, written: 0, limit }
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written >= self.limit {
            return Ok(buf.len());
        }
        let room = (self.limit - self.written).min(buf.len() as u64) as usize;
        let n = self.file.write(&buf[..room])?;
        self.written += n as u64;
        if self.written >= self.limit {
            // Said once, in the log itself, so a reader knows the rest was dropped.
            let _ = write!(
                self.file,
                "\n[hull-vmm: this log reached its cap of {} bytes; the rest is dropped]\n",
                self.limit
            );
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_log_keeps_its_cap_and_says_so_once() {
        let path = std::env::temp_dir().join(format!("hull-vmm-console-{}", std::process::id()));
        let mut log = ConsoleLog::new(std::fs::File::create(&path).unwrap(), 1000);
        for _ in 0..300 {
            log.write_all(b"abcdefg").unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (kept, note) = text.split_at(1000);
        assert_eq!(kept, &"abcdefg".repeat(143)[..1000]);
        assert_eq!(note, "\n[hull-vmm: this log reached its cap of 1000 bytes; the rest is dropped]\n");
    }
}
