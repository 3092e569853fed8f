//! FleetLock, as Zincati speaks it: before rebooting into a new version a machine takes
//! a slot from the fleet's lock server (`POST /v1/pre-reboot`), and gives it back once
//! it runs the new version steadily (`POST /v1/steady-state`). Both carry the header
//! `fleet-lock-protocol: true` and `{"client_params": {"id": ..., "group": ...}}`; 200
//! means granted (or released), anything else means not now.
//! (Protocol: coreos/airlock's and Zincati's FleetLock documentation.)

use std::io::Read;

pub struct FleetLock {
    base: String,
    id: String,
    group: String,
}

/// How much of a refusal's body is kept for the log.
const MAX_BODY: u64 = 4096;

impl FleetLock {
    pub fn new(url: &str, id: &str, group: &str) -> FleetLock {
        FleetLock {
            base: url.trim_end_matches('/').to_string(),
            id: id.to_string(),
            group: group.to_string(),
        }
    }

    pub fn pre_reboot(&self, http: &ureq::Agent) -> Result<(), String> {
        self.post(http, "pre-reboot")
    }

    pub fn steady_state(&self, http: &ureq::Agent) -> Result<(), String> {
        self.post(http, "steady-state")
    }

    pub fn body(&self) -> String {
        serde_json::json!({"client_params": {"id": self.id, "group": self.group}}).to_string()
    }

    fn post(&self, http: &ureq::Agent, what: &str) -> Result<(), String> {
        let url = format!("{}/v1/{what}", self.base);
        let resp = http
            .post(&url)
            .header("fleet-lock-protocol", "true")
            .header("content-type", "application/json")
            .send(self.body().as_bytes())
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let mut body = String::new();
        let _ = resp
            .into_body()
            .into_reader()
            .take(MAX_BODY)
            .read_to_string(&mut body);
        Err(format!("{url}: HTTP {status}: {}", body.trim()))
    }
}
