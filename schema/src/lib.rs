//! The formats Berth's parts hand each other as files, in one small crate so that the
//! agent (which writes them from user-data) checks them with the very parsers the
//! daemon and the image store read them with, without linking either:
//!
//! - `bridge`: the container bridge's `/etc/berth/network.toml`;
//! - `declaration`: a container declaration, `/etc/berth/containers.d/NAME.toml`;
//! - `caps`: capability names as declarations use them, and Docker's default set;
//! - `registries`: the image store's `/etc/berth/registries.toml`;
//! - `logs`: `/etc/berth/logs.toml`, where the logs are forwarded;
//! - `metrics`: `/etc/berth/metrics.toml`, the Prometheus endpoint;
//! - `time`: UTC instants as RFC 3339 text, both ways;
//! - `update`: `/etc/berth/update.toml`, the trial's health and automatic updates.

pub mod bridge;
pub mod caps;
pub mod declaration;
pub mod logs;
pub mod metrics;
pub mod registries;
pub mod time;
pub mod update;
