//! A/B boot slots from init's side (GRUB's side and the state's rules are
//! berth-bootslot's): which slot this boot came from (`berth.slot=` from GRUB), the
//! state on the ESP, the one console line after a rollback, the health watch that
//! blesses or fails a trial boot, and the operator's `slots` and `rollback`.
//!
//! The ESP is mounted at [`ESP_DIR`] (vfat, root only, no exec). The environment block
//! is rewritten in place: it is one 512-byte sector, which a disk writes whole or not at
//! all, and GRUB's own `save_env` writes it the same way. A rename on FAT would be two
//! directory updates with no journal, so a power cut between them could lose the file,
//! which the in-place write cannot.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use berth_bootslot::{envblock, grub, slotinfo, BootState, EnvBlock, Slot, SlotInfo};
use berth_control::SlotStatus;
use nix::mount::{mount, MsFlags};

use super::control::Control;
use crate::cmdline::Cmdline;
use crate::stage1::root;
use crate::{info, log, warn};

pub const ESP_DIR: &str = berth_bootslot::grub::ESP_MOUNT;
const ESP_LABEL: &str = "EFI-SYSTEM";

/// What user-data's `berth.update` sets (the agent writes it here), read when the
/// health watch starts.
pub const UPDATE_SETTINGS: &str = berth_schema::update::CONFIG_PATH;
/// How long a trial boot must stay healthy before it is blessed, unless set.
pub const DEFAULT_HEALTH: Duration = Duration::from_secs(60);
/// How long after `berth: ready` a trial boot has to become healthy for that long.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("finding the ESP: {0}")]
    Find(#[from] root::FindError),
    #[error("mounting the ESP {dev} on {ESP_DIR}: {errno}")]
    Mount { dev: PathBuf, errno: nix::Error },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a regular file of {} bytes", envblock::SIZE)]
    NotAnEnvBlock { path: PathBuf },
    #[error("{path}: {source}")]
    Env {
        path: PathBuf,
        source: berth_bootslot::EnvError,
    },
    #[error(transparent)]
    State(#[from] berth_bootslot::StateError),
    #[error("slot {} is empty: there is nothing to roll back to", .0.name())]
    Empty(Slot),
    #[error("this boot is a trial of slot {}: an update waits until it is blessed or failed", .0.name())]
    OnTrial(Slot),
    #[error("slot {} was not claimed by an update (or was offered since): nothing to offer", .0.name())]
    NotClaimed(Slot),
    #[error("slot {} has no slot.json: its files were not all written", .0.name())]
    Incomplete(Slot),
}

/// Reads the boot slots on a thread of its own (mounting the ESP loads vfat and costs
/// a few hundred ms under emulation, which the boot need not wait for): reports the
/// boot, publishes them to the control API, and starts the health watch on a trial.
pub fn start(cmdline: &Cmdline, cell: Arc<OnceLock<Arc<Slots>>>, control: Option<&Control>) {
    if cmdline.slot.is_none() {
        return;
    }
    let cmdline = cmdline.clone();
    let watch = control.map(|c| (c.snapshot.clone(), c.requester()));
    let spawned = std::thread::Builder::new()
        .name("slots".into())
        .spawn(move || {
            let Some(slots) = Slots::open(&cmdline).map(Arc::new) else {
                return;
            };
            slots.report_boot();
            let _ = cell.set(slots.clone());
            if !slots.on_trial() {
                return;
            }
            match watch {
                Some((snapshot, requester)) => {
                    super::trial::watch(&slots, &snapshot, &requester)
                }
                None => warn!("boot slots: no control loop to reboot through; the trial is not judged this boot"),
            }
        });
    if let Err(e) = spawned {
        warn!("boot slots: starting their thread: {e}; no slot management this boot");
    }
}

/// The boot slots of this machine, shared by the control API and the health watch.
pub struct Slots {
    esp: PathBuf,
    pub booted: Slot,
    /// GRUB said this boot is a trial (`berth.trial`).
    pub trial: bool,
    /// Serializes read-modify-write of the environment block.
    lock: Mutex<()>,
}

impl Slots {
    /// The slots, when GRUB booted this machine (`berth.slot=`); `None` otherwise (a
    /// kernel booted directly has no slots), said on the console either way.
    pub fn open(cmdline: &Cmdline) -> Option<Slots> {
        let booted = match cmdline.slot.as_deref() {
            None => return None,
            Some("a") => Slot::A,
            Some("b") => Slot::B,
            Some(other) => {
                warn!("boot slots: berth.slot={other:?} is not a or b; no slot management");
                return None;
            }
        };
        match mount_esp(Path::new(ESP_DIR)) {
            Ok(()) => Some(Slots {
                esp: PathBuf::from(ESP_DIR),
                booted,
                trial: cmdline.trial,
                lock: Mutex::new(()),
            }),
            Err(e) => {
                warn!("boot slots: {e}; no slot management this boot");
                None
            }
        }
    }

    fn env_path(&self) -> PathBuf {
        self.esp.join(grub::DIR).join(grub::ENV_FILE)
    }

    fn read_state(&self) -> Result<(EnvBlock, BootState), SlotError> {
        let path = self.env_path();
        let bytes = read_env_file(&path)?;
        let env = EnvBlock::parse(&bytes).map_err(|source| SlotError::Env {
            path: path.clone(),
            source,
        })?;
        let state = BootState::from_env(&env)?;
        Ok((env, state))
    }

    fn write_state(&self, mut env: EnvBlock, state: &BootState) -> Result<(), SlotError> {
        state.store(&mut env)?;
        let path = self.env_path();
        let bytes = env
            .to_bytes(envblock::SIZE)
            .map_err(|source| SlotError::Env {
                path: path.clone(),
                source,
            })?;
        write_env_file(&path, &bytes)
    }

    /// Reads, changes and writes the state under the lock.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut BootState) -> Result<T, SlotError>,
    ) -> Result<T, SlotError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (env, mut state) = self.read_state()?;
        let out = f(&mut state)?;
        self.write_state(env, &state)?;
        Ok(out)
    }

    /// A slot's `slot.json`, or `None` when it is empty or unreadable (said).
    pub fn info(&self, slot: Slot) -> Option<SlotInfo> {
        let path = self
            .esp
            .join(grub::DIR)
            .join(slot.name())
            .join(slotinfo::FILE);
        let bytes = match read_regular(&path, slotinfo::MAX_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!("boot slots: {}: {e}", path.display());
                return None;
            }
        };
        SlotInfo::parse(&bytes)
            .map_err(|e| warn!("boot slots: {}: {e}", path.display()))
            .ok()
    }

    fn describe(&self, slot: Slot) -> String {
        match self.info(slot) {
            Some(i) => format!(
                "berth {} (build {}, slot {})",
                i.version,
                i.build_id,
                slot.name()
            ),
            None => format!("slot {}", slot.name()),
        }
    }

    /// At boot: says which slot booted and whether on trial, and reports a rollback
    /// once (the boot after it), in one line.
    pub fn report_boot(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.read_state().and_then(|(env, mut state)| {
            let booted = self.describe(self.booted);
            match state.trial {
                Some(t) if t.slot == self.booted => info!(
                    "boot slots: {booted} on trial (boot attempts left after this one: {})",
                    t.tries_left
                ),
                _ => info!("boot slots: {booted}"),
            }
            if let Some(f) = state.failed.as_mut().filter(|f| !f.told) {
                log::bare(format_args!(
                    "berth: rolled back from {} to {}: {}",
                    self.describe(f.slot),
                    self.describe(self.booted),
                    why_text(&f.why)
                ));
                f.told = true;
                // Written only then: a boot without news writes nothing to the ESP.
                return self.write_state(env, &state);
            }
            Ok(())
        });
        if let Err(e) = result {
            warn!("boot slots: {e}");
        }
    }

    /// Whether the state still has this boot's slot on trial.
    pub fn on_trial(&self) -> bool {
        self.trial
            && self
                .read_state()
                .is_ok_and(|(_, s)| s.on_trial(self.booted))
    }

    pub fn bless(&self) -> Result<(), SlotError> {
        self.change(|state| Ok(state.bless(self.booted)?))
    }

    pub fn fail(&self, why: &str) -> Result<(), SlotError> {
        self.change(|state| Ok(state.fail(self.booted, why)?))
    }

    /// `berthctl rollback`: the slot that did not boot boots next. A trial boot ends as
    /// failed; from the active slot, the other must hold a version that has not failed.
    pub fn roll_back(&self) -> Result<Slot, SlotError> {
        self.change(|state| {
            if state.on_trial(self.booted) {
                state.fail(self.booted, "rolled back by the operator")?;
                return Ok(state.default);
            }
            let other = self.booted.other();
            if self.info(other).is_none() {
                return Err(SlotError::Empty(other));
            }
            if state.default == other {
                return Ok(other);
            }
            Ok(state.roll_back()?)
        })
    }

    /// An update is about to write into the slot that did not boot: it is marked so
    /// (never booted, never rolled back to) until [`Slots::offer_other`]. Returns it.
    pub fn claim_other(&self) -> Result<Slot, SlotError> {
        self.change(|state| {
            if state.on_trial(self.booted) {
                return Err(SlotError::OnTrial(self.booted));
            }
            let other = self.booted.other();
            state.claim(other)?;
            Ok(other)
        })
    }

    /// The update wrote the other slot whole (root, kernel, initramfs, boot.cfg, then
    /// slot.json last): it boots next, on trial with `tries` tries.
    pub fn offer_other(&self, tries: u8) -> Result<Slot, SlotError> {
        let other = self.booted.other();
        if self.info(other).is_none() {
            return Err(SlotError::Incomplete(other));
        }
        self.change(|state| {
            if !state.claimed(other) {
                return Err(SlotError::NotClaimed(other));
            }
            state.offer(other, tries)?;
            Ok(other)
        })
    }

    pub fn status(&self) -> Result<Vec<SlotStatus>, SlotError> {
        let (_, state) = self.read_state()?;
        Ok([Slot::A, Slot::B]
            .into_iter()
            .map(|slot| {
                let info = self.info(slot);
                let trial = state.trial.filter(|t| t.slot == slot);
                let failed = state.failed.as_ref().filter(|f| f.slot == slot);
                let status = if state.claimed(slot) {
                    ("writing", String::new())
                } else if let Some(f) = failed {
                    ("bad", f.why.clone())
                } else if trial.is_some() {
                    ("trial", String::new())
                } else if state.default == slot {
                    ("active", String::new())
                } else if info.is_some() {
                    ("good", String::new())
                } else {
                    ("empty", String::new())
                };
                let field = |f: fn(&SlotInfo) -> &String| {
                    info.as_ref().map(|i| f(i).clone()).unwrap_or_default()
                };
                SlotStatus {
                    slot: slot.name().into(),
                    state: status.0.into(),
                    version: field(|i| &i.version),
                    build_id: field(|i| &i.build_id),
                    root_hash: field(|i| &i.root_hash),
                    tries_left: trial.map_or(0, |t| u32::from(t.tries_left)),
                    why: status.1,
                    booted: slot == self.booted,
                }
            })
            .collect())
    }
}

/// The reason GRUB or init recorded, for the rollback line.
fn why_text(why: &str) -> String {
    if why == berth_bootslot::state::OUT_OF_TRIES {
        "its trial ran out of boot attempts (a kernel panic, a root that failed to \
         mount or verify, or a hang that the watchdog reset)"
            .into()
    } else if why.is_empty() {
        "no reason recorded".into()
    } else {
        why.into()
    }
}

fn mount_esp(dir: &Path) -> Result<(), SlotError> {
    let parts = root::partitions(Path::new("/sys/class/block"));
    let esp = root::find(&parts, ESP_LABEL)?;
    std::fs::create_dir_all(dir).map_err(|source| SlotError::Io {
        what: "creating",
        path: dir.into(),
        source,
    })?;
    let dev = esp.dev_path();
    // MS_DIRSYNC: vfat's rename writes the new directory entry with no size and no first
    // cluster, filled in only when the inode is written back, which an fsync of the
    // directory does not do. A power cut after an update's durable write (temporary
    // file, fsync, rename, fsync of the directory) left an empty slot.json and the
    // file's clusters lost. With dirsync the rename writes the entry whole before it
    // returns (the update's power-cut test found this).
    mount(
        Some(&dev),
        dir,
        Some("vfat"),
        MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NOATIME
            | MsFlags::MS_DIRSYNC,
        Some("umask=0077,errors=remount-ro"),
    )
    .map_err(|errno| SlotError::Mount { dev, errno })
}

/// A regular file's bytes, at most `limit` (a longer file is an error): no symlink
/// followed, a FIFO neither waited on nor read.
pub(super) fn read_regular(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(std::io::Error::other(format!("more than {limit} bytes")));
    }
    Ok(bytes)
}

fn read_env_file(path: &Path) -> Result<Vec<u8>, SlotError> {
    read_regular(path, envblock::MAX_SIZE).map_err(|source| SlotError::Io {
        what: "reading",
        path: path.into(),
        source,
    })
}

/// Rewrites the block in place (see the module's note) and waits for the disk.
fn write_env_file(path: &Path, bytes: &[u8]) -> Result<(), SlotError> {
    let io = |what, source| SlotError::Io {
        what,
        path: path.into(),
        source,
    };
    let file = File::options()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io("opening", e))?;
    let meta = file.metadata().map_err(|e| io("reading", e))?;
    if !meta.is_file() || meta.len() != bytes.len() as u64 {
        return Err(SlotError::NotAnEnvBlock { path: path.into() });
    }
    file.write_all_at(bytes, 0).map_err(|e| io("writing", e))?;
    file.sync_data().map_err(|e| io("syncing", e))
}

/// The health watch's settings: user-data's `berth.update`, as the agent wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    pub settle: Duration,
    pub timeout: Duration,
}

impl HealthSettings {
    pub fn read(path: &Path) -> HealthSettings {
        let defaults = HealthSettings {
            settle: DEFAULT_HEALTH,
            timeout: DEFAULT_HEALTH_TIMEOUT,
        };
        let text = match read_regular(path, 4096) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return defaults,
            Err(e) => {
                warn!("boot slots: {}: {e}; using the defaults", path.display());
                return defaults;
            }
        };
        Self::parse(&text).unwrap_or_else(|e| {
            warn!("boot slots: {}: {e}; using the defaults", path.display());
            defaults
        })
    }

    fn parse(text: &str) -> Result<HealthSettings, String> {
        let f = berth_schema::update::UpdateConfig::parse(text)?;
        Ok(HealthSettings {
            settle: f.health_seconds.map_or(DEFAULT_HEALTH, Duration::from_secs),
            timeout: f
                .health_timeout_seconds
                .map_or(DEFAULT_HEALTH_TIMEOUT, Duration::from_secs),
        })
    }
}

/// The trial's progress: healthy since when, and until when it may become so.
#[derive(Debug)]
pub struct HealthClock {
    settings: HealthSettings,
    started: Instant,
    healthy_since: Option<Instant>,
}

/// What the watch concludes after a look.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    Bless,
    Fail(String),
}

impl HealthClock {
    pub fn new(settings: HealthSettings, now: Instant) -> HealthClock {
        HealthClock {
            settings,
            started: now,
            healthy_since: None,
        }
    }

    /// One look: `Ok` when everything was healthy, `Err(item)` naming what was not.
    pub fn observe(&mut self, look: Result<(), String>, now: Instant) -> Verdict {
        match look {
            Ok(()) => {
                let since = *self.healthy_since.get_or_insert(now);
                if now.duration_since(since) >= self.settings.settle {
                    return Verdict::Bless;
                }
            }
            Err(item) => {
                self.healthy_since = None;
                if now.duration_since(self.started) >= self.settings.timeout {
                    return Verdict::Fail(format!(
                        "health check failed: {item} ({} s after berth: ready)",
                        self.settings.timeout.as_secs()
                    ));
                }
            }
        }
        Verdict::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(settle: u64, timeout: u64) -> HealthSettings {
        HealthSettings {
            settle: Duration::from_secs(settle),
            timeout: Duration::from_secs(timeout),
        }
    }

    #[test]
    fn blessed_only_after_the_settle_time_unbroken() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut c = HealthClock::new(settings(10, 100), t0);
        assert_eq!(c.observe(Ok(()), s(0)), Verdict::Wait);
        assert_eq!(c.observe(Ok(()), s(9)), Verdict::Wait);
        // A lapse restarts the settle time.
        assert_eq!(c.observe(Err("x".into()), s(9)), Verdict::Wait);
        assert_eq!(c.observe(Ok(()), s(10)), Verdict::Wait);
        assert_eq!(c.observe(Ok(()), s(19)), Verdict::Wait);
        assert_eq!(c.observe(Ok(()), s(20)), Verdict::Bless);
    }

    #[test]
    fn fails_naming_the_item_once_the_timeout_passes() {
        let t0 = Instant::now();
        let mut c = HealthClock::new(settings(10, 30), t0);
        let bad = || Err("container web is exited".to_string());
        assert_eq!(
            c.observe(bad(), t0 + Duration::from_secs(29)),
            Verdict::Wait
        );
        match c.observe(bad(), t0 + Duration::from_secs(30)) {
            Verdict::Fail(why) => assert!(why.contains("container web is exited"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn settings_parse_and_refuse_unknown_keys() {
        let s = HealthSettings::parse("health_seconds = 5\nhealth_timeout_seconds = 40\n").unwrap();
        assert_eq!(s, settings(5, 40));
        let d = HealthSettings::parse("").unwrap();
        assert_eq!(d.settle, DEFAULT_HEALTH);
        assert!(HealthSettings::parse("health_secs = 5").is_err());
    }

    #[test]
    fn the_env_block_is_rewritten_in_place_and_only_if_it_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grubenv");
        let mut env = EnvBlock::default();
        BootState::default().store(&mut env).unwrap();
        std::fs::write(&path, env.to_bytes(envblock::SIZE).unwrap()).unwrap();
        let mut state = BootState::default();
        state.offer(Slot::B, 2).unwrap();
        state.store(&mut env).unwrap();
        write_env_file(&path, &env.to_bytes(envblock::SIZE).unwrap()).unwrap();
        let back = BootState::from_env(&EnvBlock::parse(&read_env_file(&path).unwrap()).unwrap());
        assert_eq!(back.unwrap(), state);
        // A symlink, or a file of another size, is not written through.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(write_env_file(&link, &[0; envblock::SIZE]).is_err());
        let short = dir.path().join("short");
        std::fs::write(&short, b"x").unwrap();
        assert!(matches!(
            write_env_file(&short, &[0; envblock::SIZE]),
            Err(SlotError::NotAnEnvBlock { .. })
        ));
    }
}
