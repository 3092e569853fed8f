//! The power button: ACPI's button driver turns the power-button GPE (what QEMU's
//! `system_powerdown` and every cloud's "stop instance" press) into a KEY_POWER event on
//! an input device; evdev exposes it as /dev/input/eventN, which init reads.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// From linux/input-event-codes.h.
const EV_KEY: u16 = 0x01;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: a 16-byte timeval, u16 type, u16 code, i32 value.
const INPUT_EVENT_SIZE: usize = 24;

/// Open input devices that can report KEY_POWER, by event node name (`event3`).
#[derive(Default)]
pub struct PowerButtons {
    devices: BTreeMap<String, File>,
}

impl PowerButtons {
    /// Opens any event device under `sys_class_input` that reports KEY_POWER and is not
    /// open yet. Returns the names newly opened.
    pub fn refresh(&mut self, sys_class_input: &Path, dev_input: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(sys_class_input) else {
            return Vec::new();
        };
        let mut opened = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("event") || self.devices.contains_key(&name) {
                continue;
            }
            let caps = entry.path().join("device/capabilities/key");
            let reports_power = std::fs::read_to_string(caps)
                .map(|bits| has_key(&bits, KEY_POWER))
                .unwrap_or(false);
            if !reports_power {
                continue;
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(dev_input.join(&name));
            match file {
                Ok(file) => {
                    self.devices.insert(name.clone(), file);
                    opened.push(name);
                }
                Err(e) => crate::warn!("opening power button {name}: {e}"),
            }
        }
        opened
    }

    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.devices.values().map(|f| f.as_fd())
    }

    /// Reads what is pending on every device; true if the power key was pressed.
    pub fn pressed(&mut self) -> bool {
        let mut pressed = false;
        let mut gone = Vec::new();
        for (name, file) in &mut self.devices {
            let mut buf = [0u8; INPUT_EVENT_SIZE * 16];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => pressed |= contains_power_press(buf.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // ENODEV: the device was unplugged.
                    Err(_) => {
                        gone.push(name.clone());
                        break;
                    }
                }
            }
        }
        for name in gone {
            self.devices.remove(&name);
        }
        pressed
    }
}

/// Whether the sysfs capability bitmap (hex words of the kernel's `long`, most
/// significant first, separated by spaces) has `code` set.
fn has_key(bitmap: &str, code: u16) -> bool {
    let bits_per_word = usize::BITS as usize;
    let word_index = usize::from(code) / bits_per_word;
    let words: Vec<&str> = bitmap.split_whitespace().collect();
    let Some(pos) = words.len().checked_sub(word_index + 1) else {
        return false;
    };
    words
        .get(pos)
        .and_then(|w| u64::from_str_radix(w, 16).ok())
        .is_some_and(|w| w & (1u64 << (usize::from(code) % bits_per_word)) != 0)
}

/// Whether a buffer of `input_event`s holds a KEY_POWER press (value 1; 0 is release).
fn contains_power_press(buf: &[u8]) -> bool {
    buf.chunks_exact(INPUT_EVENT_SIZE).any(|ev| {
        let ty = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        ty == EV_KEY && code == KEY_POWER && value == 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: u16, code: u16, value: i32) -> Vec<u8> {
        let mut ev = vec![0u8; 16];
        ev.extend(ty.to_ne_bytes());
        ev.extend(code.to_ne_bytes());
        ev.extend(value.to_ne_bytes());
        ev
    }

    #[test]
    fn power_button_capabilities() {
        // The ACPI power button's real bitmap: only bit 116 set.
        assert!(has_key("10000000000000 0", KEY_POWER));
        assert!(!has_key("0", KEY_POWER));
        assert!(!has_key("", KEY_POWER));
        assert!(!has_key("zz 0", KEY_POWER));
    }

    #[test]
    fn detects_press_not_release() {
        let mut buf = event(EV_KEY, KEY_POWER, 0);
        assert!(!contains_power_press(&buf));
        buf.extend(event(0, 0, 0));
        buf.extend(event(EV_KEY, KEY_POWER, 1));
        assert!(contains_power_press(&buf));
        assert!(!contains_power_press(&event(EV_KEY, 30, 1)));
    }
}
