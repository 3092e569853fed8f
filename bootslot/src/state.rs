//! The slot state GRUB and init share, kept in the environment block:
//!
//! | variable | meaning |
//! |---|---|
//! | `berth_default` | `a` or `b`: the slot booted when none is on trial |
//! | `berth_trial` | the slot on trial, or empty |
//! | `berth_tries` | the trial's tries left, `0`..`9` |
//! | `berth_failed` | the slot that lost its last trial, or empty |
//! | `berth_failed_why` | why: `tries` (GRUB: out of tries) or `health: ITEM` (init) |
//! | `berth_failed_told` | `1` once init has said so on the console (GRUB clears it) |
//!
//! A slot that failed stays failed (never tried again) until a new version is written
//! into it and offered ([`BootState::offer`]).

use crate::envblock::{EnvBlock, EnvError};

/// The most tries a trial can have: GRUB has no arithmetic, so its script counts down
/// through one test per value.
pub const MAX_TRIES: u8 = 9;
/// Tries for a trial unless told otherwise.
pub const DEFAULT_TRIES: u8 = 3;

const DEFAULT: &str = "berth_default";
const TRIAL: &str = "berth_trial";
const TRIES: &str = "berth_tries";
const FAILED: &str = "berth_failed";
const FAILED_WHY: &str = "berth_failed_why";
const FAILED_TOLD: &str = "berth_failed_told";
/// What GRUB writes when a trial runs out of tries.
pub const OUT_OF_TRIES: &str = "tries";
/// A slot's failure while an update writes into it: neither booted nor rolled back to
/// until it is offered (a power cut mid-write leaves it so, never half a version).
pub const BEING_WRITTEN: &str = "an update is being written into it";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The GPT label of the slot's root partition.
    pub fn partlabel(self) -> &'static str {
        match self {
            Slot::A => "ROOT-A",
            Slot::B => "ROOT-B",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn parse(var: &'static str, text: &str) -> Result<Option<Slot>, StateError> {
        match text {
            "" => Ok(None),
            "a" => Ok(Some(Slot::A)),
            "b" => Ok(Some(Slot::B)),
            other => Err(StateError::BadValue {
                var,
                value: other.into(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("{var}={value:?} is not a value Berth writes")]
    BadValue { var: &'static str, value: String },
    #[error("slot {} is on trial already", .0.name())]
    TrialRunning(Slot),
    #[error("slot {} is the default slot: only the other one can be offered", .0.name())]
    OfferingDefault(Slot),
    #[error("slot {} is the default slot: an update writes only into the other one", .0.name())]
    ClaimingDefault(Slot),
    #[error("{tries} tries: a trial has 1 to {MAX_TRIES}")]
    BadTries { tries: u8 },
    #[error("slot {} is not on trial", .0.name())]
    NotOnTrial(Slot),
    #[error("slot {} failed its last trial ({why}): nothing to roll back to", .slot.name())]
    OtherFailed { slot: Slot, why: String },
}

/// A trial in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trial {
    pub slot: Slot,
    pub tries_left: u8,
}

/// A slot's lost trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub slot: Slot,
    pub why: String,
    /// The rollback was reported (once, on the boot that followed it).
    pub told: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    pub default: Slot,
    pub trial: Option<Trial>,
    pub failed: Option<Failure>,
}

impl Default for BootState {
    /// A new disk: slot A, nothing on trial.
    fn default() -> Self {
        BootState {
            default: Slot::A,
            trial: None,
            failed: None,
        }
    }
}

impl BootState {
    pub fn from_env(env: &EnvBlock) -> Result<BootState, StateError> {
        let slot = |var: &'static str| Slot::parse(var, env.get(var).unwrap_or(""));
        let default = slot(DEFAULT)?.unwrap_or(Slot::A);
        let trial = match slot(TRIAL)? {
            None => None,
            Some(s) => {
                let text = env.get(TRIES).unwrap_or("");
                let tries_left = text
                    .parse::<u8>()
                    .ok()
                    .filter(|t| *t <= MAX_TRIES)
                    .ok_or_else(|| StateError::BadValue {
                        var: TRIES,
                        value: text.into(),
                    })?;
                Some(Trial {
                    slot: s,
                    tries_left,
                })
            }
        };
        let failed = slot(FAILED)?.map(|s| Failure {
            slot: s,
            why: env.get(FAILED_WHY).unwrap_or("").to_string(),
            told: env.get(FAILED_TOLD) == Some("1"),
        });
        Ok(BootState {
            default,
            trial,
            failed,
        })
    }

    /// Writes the state into `env`, keeping any other variable there.
    pub fn store(&self, env: &mut EnvBlock) -> Result<(), StateError> {
        env.set(DEFAULT, self.default.name())?;
        env.set(TRIAL, self.trial.map_or("", |t| t.slot.name()))?;
        let tries = self
            .trial
            .map_or(String::new(), |t| t.tries_left.to_string());
        env.set(TRIES, &tries)?;
        env.set(FAILED, self.failed.as_ref().map_or("", |f| f.slot.name()))?;
        env.set(
            FAILED_WHY,
            self.failed.as_ref().map_or("", |f| f.why.as_str()),
        )?;
        let told = self.failed.as_ref().is_some_and(|f| f.told);
        env.set(FAILED_TOLD, if told { "1" } else { "" })?;
        Ok(())
    }

    /// A new version was written into `slot`: boot it on trial with `tries` tries. Its
    /// old failure, if any, is forgotten (it is not the same version any more).
    pub fn offer(&mut self, slot: Slot, tries: u8) -> Result<(), StateError> {
        if !(1..=MAX_TRIES).contains(&tries) {
            return Err(StateError::BadTries { tries });
        }
        if slot == self.default {
            return Err(StateError::OfferingDefault(slot));
        }
        if let Some(t) = self.trial {
            return Err(StateError::TrialRunning(t.slot));
        }
        self.trial = Some(Trial {
            slot,
            tries_left: tries,
        });
        if self.failed.as_ref().is_some_and(|f| f.slot == slot) {
            self.failed = None;
        }
        Ok(())
    }

    /// An update is about to write into `slot`: from now until it is offered, GRUB never
    /// boots it and `berthctl rollback` never goes to it (what it held is going away).
    /// Not while a trial runs: that trial decides first which slot stays.
    pub fn claim(&mut self, slot: Slot) -> Result<(), StateError> {
        if slot == self.default {
            return Err(StateError::ClaimingDefault(slot));
        }
        if let Some(t) = self.trial {
            return Err(StateError::TrialRunning(t.slot));
        }
        self.failed = Some(Failure {
            slot,
            why: BEING_WRITTEN.into(),
            told: true,
        });
        Ok(())
    }

    /// Whether `slot` was claimed by an update and not offered since.
    pub fn claimed(&self, slot: Slot) -> bool {
        self.failed
            .as_ref()
            .is_some_and(|f| f.slot == slot && f.why == BEING_WRITTEN)
    }

    /// What GRUB does before it loads a kernel (the script in `grub` does exactly
    /// this): a trial with tries left spends one and boots; a trial out of tries has
    /// failed, and the default slot boots. Returns the slot to boot.
    pub fn pick(&mut self) -> Slot {
        match self.trial {
            Some(Trial {
                slot,
                tries_left: n @ 1..,
            }) => {
                self.trial = Some(Trial {
                    slot,
                    tries_left: n - 1,
                });
                slot
            }
            Some(Trial { slot, .. }) => {
                self.trial = None;
                self.failed = Some(Failure {
                    slot,
                    why: OUT_OF_TRIES.into(),
                    told: false,
                });
                self.default
            }
            None => self.default,
        }
    }

    /// Whether the boot of `booted` is a trial (init then checks its health).
    pub fn on_trial(&self, booted: Slot) -> bool {
        self.trial.is_some_and(|t| t.slot == booted)
    }

    /// The trial boot of `booted` was healthy: it becomes the default.
    pub fn bless(&mut self, booted: Slot) -> Result<(), StateError> {
        if !self.on_trial(booted) {
            return Err(StateError::NotOnTrial(booted));
        }
        self.default = booted;
        self.trial = None;
        Ok(())
    }

    /// The trial boot of `booted` was not healthy: the default slot boots next, and
    /// `booted` is not tried again.
    pub fn fail(&mut self, booted: Slot, why: &str) -> Result<(), StateError> {
        if !self.on_trial(booted) {
            return Err(StateError::NotOnTrial(booted));
        }
        self.trial = None;
        self.failed = Some(Failure {
            slot: booted,
            why: why.to_string(),
            told: false,
        });
        Ok(())
    }

    /// `berthctl rollback`: the other slot becomes the default (and any trial ends),
    /// unless it failed its last trial.
    pub fn roll_back(&mut self) -> Result<Slot, StateError> {
        let other = self.default.other();
        if let Some(f) = self.failed.as_ref().filter(|f| f.slot == other) {
            return Err(StateError::OtherFailed {
                slot: other,
                why: f.why.clone(),
            });
        }
        self.trial = None;
        self.default = other;
        Ok(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envblock::SIZE;

    fn through_env(s: &BootState) -> BootState {
        let mut env = EnvBlock::default();
        env.set("saved_entry", "kept").unwrap();
        s.store(&mut env).unwrap();
        let env = EnvBlock::parse(&env.to_bytes(SIZE).unwrap()).unwrap();
        assert_eq!(env.get("saved_entry"), Some("kept"));
        BootState::from_env(&env).unwrap()
    }

    #[test]
    fn a_new_disk_boots_a() {
        let mut s = BootState::from_env(&EnvBlock::default()).unwrap();
        assert_eq!(s, BootState::default());
        assert_eq!(s.pick(), Slot::A);
        assert_eq!(s.pick(), Slot::A);
    }

    #[test]
    fn a_trial_spends_a_try_per_boot_then_falls_back() {
        let mut s = BootState::default();
        s.offer(Slot::B, 3).unwrap();
        for left in [2, 1, 0] {
            assert_eq!(s.pick(), Slot::B);
            assert_eq!(s.trial.unwrap().tries_left, left);
            s = through_env(&s);
        }
        // The fourth boot: out of tries, A again, B failed.
        assert_eq!(s.pick(), Slot::A);
        assert_eq!(s.trial, None);
        assert_eq!(
            s.failed,
            Some(Failure {
                slot: Slot::B,
                why: OUT_OF_TRIES.into(),
                told: false,
            })
        );
        let s = through_env(&s);
        assert_eq!(s.failed.as_ref().unwrap().slot, Slot::B);
        // Init reports it once: the flag survives the block.
        let mut told = s.clone();
        if let Some(f) = told.failed.as_mut() {
            f.told = true;
        }
        assert!(through_env(&told).failed.unwrap().told);
        // And never again until B is offered anew.
        let mut again = s.clone();
        assert_eq!(again.pick(), Slot::A);
    }

    #[test]
    fn a_healthy_trial_is_blessed_an_unhealthy_one_failed() {
        let mut s = BootState::default();
        s.offer(Slot::B, DEFAULT_TRIES).unwrap();
        assert_eq!(s.pick(), Slot::B);
        assert!(s.on_trial(Slot::B));
        s.bless(Slot::B).unwrap();
        assert_eq!(s.default, Slot::B);
        assert_eq!(s.pick(), Slot::B);
        assert!(!s.on_trial(Slot::B));
        assert_eq!(s.bless(Slot::B), Err(StateError::NotOnTrial(Slot::B)));

        // Now A holds a new version, which fails its health check.
        s.offer(Slot::A, 2).unwrap();
        assert_eq!(s.pick(), Slot::A);
        s.fail(Slot::A, "health: container web not running")
            .unwrap();
        assert_eq!(s.pick(), Slot::B);
        assert_eq!(
            s.failed.as_ref().unwrap().why,
            "health: container web not running"
        );
        // A failed slot is not a rollback target; offering it again clears the failure.
        assert!(matches!(s.roll_back(), Err(StateError::OtherFailed { .. })));
        s.offer(Slot::A, 1).unwrap();
        assert_eq!(s.failed, None);
    }

    #[test]
    fn offers_are_checked() {
        let mut s = BootState::default();
        assert_eq!(
            s.offer(Slot::A, 3),
            Err(StateError::OfferingDefault(Slot::A))
        );
        assert_eq!(s.offer(Slot::B, 0), Err(StateError::BadTries { tries: 0 }));
        assert_eq!(
            s.offer(Slot::B, 10),
            Err(StateError::BadTries { tries: 10 })
        );
        s.offer(Slot::B, 3).unwrap();
        assert_eq!(s.offer(Slot::B, 3), Err(StateError::TrialRunning(Slot::B)));
    }

    #[test]
    fn a_claimed_slot_is_neither_booted_nor_rolled_back_to_until_offered() {
        let mut s = BootState::default();
        assert_eq!(s.claim(Slot::A), Err(StateError::ClaimingDefault(Slot::A)));
        s.claim(Slot::B).unwrap();
        let mut s = through_env(&s);
        assert!(s.claimed(Slot::B));
        assert_eq!(s.clone().pick(), Slot::A);
        assert!(matches!(
            s.clone().roll_back(),
            Err(StateError::OtherFailed { .. })
        ));
        // Told already: no rollback line for a slot nobody booted.
        assert!(s.failed.as_ref().is_some_and(|f| f.told));
        s.offer(Slot::B, 2).unwrap();
        assert!(!s.claimed(Slot::B));
        assert_eq!(s.pick(), Slot::B);
        // Not while a trial runs.
        let mut s = BootState::default();
        s.offer(Slot::B, 1).unwrap();
        assert_eq!(s.claim(Slot::B), Err(StateError::TrialRunning(Slot::B)));
    }

    #[test]
    fn rollback_makes_the_other_slot_the_default() {
        let mut s = BootState::default();
        s.offer(Slot::B, 3).unwrap();
        s.pick();
        s.bless(Slot::B).unwrap();
        assert_eq!(s.roll_back(), Ok(Slot::A));
        assert_eq!(s.pick(), Slot::A);
    }

    #[test]
    fn values_berth_never_writes_are_refused() {
        for (var, value) in [
            ("berth_default", "c"),
            ("berth_trial", "A"),
            ("berth_failed", "x"),
        ] {
            let mut env = EnvBlock::default();
            env.set(var, value).unwrap();
            assert!(BootState::from_env(&env).is_err(), "{var}={value}");
        }
        let mut env = EnvBlock::default();
        env.set("berth_trial", "b").unwrap();
        env.set("berth_tries", "12").unwrap();
        assert!(BootState::from_env(&env).is_err());
    }
}
