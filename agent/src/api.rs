//! `org.berth.Agent1` on /run/berth/agent.sock (root only, peer to peer): this boot's
//! report for `berthctl config`.

use std::path::Path;
use std::sync::Arc;

use berth_control::{AGENT_PATH, AGENT_SOCKET};

struct AgentApi {
    report: Arc<String>,
}

#[zbus::interface(name = "org.berth.Agent1")]
impl AgentApi {
    fn report(&self) -> String {
        self.report.as_str().to_string()
    }
}

/// Serves `report` (JSON) from a thread of its own; an error leaves the agent without
/// its API (said by the caller).
pub fn serve(report: String) -> Result<(), String> {
    let listener = berth_control::listen(Path::new(AGENT_SOCKET))
        .map_err(|e| format!("{AGENT_SOCKET}: {e}"))?;
    let report = Arc::new(report);
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            berth_control::serve_root_clients(listener, AGENT_PATH, "berth-agent", move |_| {
                AgentApi {
                    report: report.clone(),
                }
            })
        })
        .map(|_| ())
        .map_err(|e| format!("starting the API thread: {e}"))
}
