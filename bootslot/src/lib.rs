//! Berth's A/B boot slots, as the bootloader sees them.
//!
//! Both firmware paths boot through GRUB (BIOS: Debian's i386-pc GRUB; UEFI: Debian's
//! signed shim and GRUB), and GRUB reads one small environment block on the ESP before
//! it picks a kernel: the slot it boots by default, the slot on trial and its tries
//! left, and the slot that lost its last trial and why. GRUB spends a try before it
//! boots a trial slot, so a kernel that panics (or a root that fails verification, or
//! a hang that the watchdog resets) costs its tries and the default slot boots again.
//! Berth's init blesses a healthy trial or fails an unhealthy one; `berthctl` shows the
//! state and rolls back.
//!
//! - [`envblock`]: GRUB's environment block format, read and written by Rust.
//! - [`state`]: the slot state, its transitions, and [`state::BootState::pick`], the
//!   model of what the GRUB script does on each boot.
//! - [`grub`]: that GRUB script.
//! - [`slotinfo`]: what each slot holds (`slot.json`: version, build, root hash).

pub mod envblock;
pub mod grub;
pub mod slotinfo;
pub mod state;

pub use envblock::{EnvBlock, EnvError};
pub use slotinfo::{SlotInfo, SlotInfoError};
pub use state::{BootState, Slot, StateError};
