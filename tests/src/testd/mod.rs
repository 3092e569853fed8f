//! The test channel: berth-testd in the guest runs commands the harness sends over a
//! virtio-serial port and answers with their output and exit status. JSON lines both
//! ways, one request at a time.
//!
//! `exec` is the guest side's work (used by the berth-testd binary, tested on the host),
//! `client` the harness side.

use serde::{Deserialize, Serialize};

mod client;
pub mod exec;

pub use client::TestdClient;

/// The virtio-serial port name testd looks for in /sys/class/virtio-ports/*/name.
pub const PORT_NAME: &str = "org.berth.testd";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Set when the command could not run or timed out.
    #[serde(default)]
    pub error: Option<String>,
}

/// A finished command, as the harness sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

impl Response {
    /// An answer that ran nothing.
    pub fn failed(id: u64, error: impl Into<String>) -> Self {
        Response {
            id,
            error: Some(error.into()),
            ..Response::default()
        }
    }
}

/// Seconds between the two `/proc/uptime` readings a timed guest script echoed
/// (`echo $t0 $t1`); `what` names the timing in the error.
pub fn uptime_span(stdout: &str, what: &str) -> anyhow::Result<f64> {
    let t: Vec<f64> = stdout
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    anyhow::ensure!(t.len() == 2, "{what}: {stdout}");
    Ok(t[1] - t[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_round_trip() {
        let req = Request {
            id: 7,
            argv: vec!["echo".into(), "hi".into()],
            stdin: None,
            timeout_ms: Some(5),
        };
        let text = serde_json::to_string(&req).unwrap();
        assert_eq!(text, r#"{"id":7,"argv":["echo","hi"],"timeout_ms":5}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), req);

        let resp = Response {
            id: 7,
            exit_code: Some(0),
            stdout: "hi\n".into(),
            ..Response::default()
        };
        let text = serde_json::to_string(&resp).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), resp);
        // Absent optional fields are None, not errors.
        let sparse: Response =
            serde_json::from_str(r#"{"id":7,"exit_code":0,"stdout":"hi\n"}"#).unwrap();
        assert_eq!(sparse.stdout, "hi\n");
        assert_eq!(sparse.signal, None);
        assert_eq!(sparse.error, None);
    }
}
