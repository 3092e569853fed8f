//! What the supervisor tells: `status.json` (what the next daemon adopts, and what
//! operators and tests read) and the API's snapshot of every container.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::api::Published;
use crate::status::{self, Record};

use super::{say, Container, State, Supervisor};

impl Supervisor {
    pub(super) fn status_path(&self) -> PathBuf {
        self.paths.run_dir.join("status.json")
    }

    /// `status.json` (what the next daemon adopts, and what operators and tests read)
    /// and the API's snapshot.
    pub(super) fn write_status(&self) {
        let records: BTreeMap<&String, Record> = self
            .containers
            .iter()
            .map(|(n, c)| {
                let rec = Record {
                    state: c.state_name().to_string(),
                    pid: c.pid().unwrap_or(0),
                    restarts: c.tally.restarts,
                    exit_code: c.exit_code,
                    error: match &c.state {
                        State::Failed(e) => e.clone(),
                        _ => String::new(),
                    },
                    started_at: c.started_at.clone(),
                    stopped: c.stopped,
                    address: self.bridge.as_ref().ok().and_then(|b| b.address(n)),
                };
                (n, rec)
            })
            .collect();
        if let Err(e) = status::write_json(&self.status_path(), &records) {
            say(&format!("writing the status: {e}"));
        }
        if let Some(control) = &self.control {
            control.publish(
                self.containers
                    .iter()
                    .map(|(n, c)| (n.clone(), self.published(c)))
                    .collect(),
            );
        }
    }

    fn published(&self, c: &Container) -> Published {
        let d = &c.decl;
        let ports: Vec<String> = d.ports.iter().map(port_text).collect();
        let cgroup = super::container_cgroup(self.cgroup_parent.as_deref(), &d.name);
        let error = match &c.state {
            State::Failed(e) => e.clone(),
            _ => String::new(),
        };
        let info = berth_control::ContainerInfo {
            name: d.name.clone(),
            image: d.image.clone(),
            state: c.state_name().to_string(),
            pid: c.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            restarts: c.tally.restarts,
            exit_code: c.exit_code,
            error,
            started_at: c.started_at.clone(),
            ports,
            network: serde_json::to_value(d.network)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            address: self
                .bridge
                .as_ref()
                .ok()
                .and_then(|b| b.address(&d.name))
                .map(|a| a.to_string())
                .unwrap_or_default(),
            source: c.source.display().to_string(),
        };
        let detail = serde_json::json!({
            "Name": d.name,
            "State": {
                "Status": info.state,
                "Pid": info.pid,
                "ExitCode": info.exit_code,
                "Error": info.error,
                "StartedAt": info.started_at,
                "Restarts": info.restarts,
                "StoppedByOperator": c.stopped,
            },
            "Declaration": d,
            "Source": info.source,
            "LogPath": self.paths.log_dir.join(format!("{}.log", d.name)),
            "Rootfs": self.paths.store.join("containers").join(&d.name).join("rootfs"),
            "Bundle": self.paths.run_dir.join(&d.name).join("bundle"),
            "Cgroup": cgroup,
            "NetworkSettings": {
                "Network": info.network,
                "IPAddress": info.address,
                "Ports": info.ports,
                "NetNs": (d.network == crate::declaration::Network::Bridge)
                    .then(|| self.paths.netns_dir.join(&d.name)),
            },
        });
        Published {
            info,
            detail,
            cgroup,
            oom_kills: c.oom_kills,
            started_epoch: c.started_epoch,
            link: (d.network == crate::declaration::Network::Bridge)
                .then(|| crate::network::host_link(&d.name)),
        }
    }
}

/// `8080:80/tcp`, `127.0.0.1:5353:53/udp`.
fn port_text(p: &crate::declaration::Port) -> String {
    let proto = match p.protocol {
        crate::declaration::Protocol::Tcp => "tcp",
        crate::declaration::Protocol::Udp => "udp",
    };
    match p.host_ip {
        Some(ip) => format!("{ip}:{}:{}/{proto}", p.host_port, p.container_port),
        None => format!("{}:{}/{proto}", p.host_port, p.container_port),
    }
}
