//! `berthctl config`: what the agent applied at this boot, from where, and what it
//! skipped (errors and warnings with their key paths), from `org.berth.Agent1`.

use berth_control::AgentProxy;
use serde_json::Value;

pub async fn run(agent: &AgentProxy<'_>, json: bool) -> Result<(), String> {
    let report = agent.report().await.map_err(|e| e.to_string())?;
    if json {
        println!("{report}");
        return Ok(());
    }
    let r: Value = serde_json::from_str(&report).map_err(|e| format!("the agent's report: {e}"))?;
    print!("{}", render(&r));
    Ok(())
}

/// The report as an operator reads it.
fn render(r: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = format!("source: {}", text(&r["source"]));
    if let Some(id) = r["instance_id"].as_str() {
        out += &format!(" (instance {id})");
    }
    out.push('\n');
    let applied = r["applied"].as_array().cloned().unwrap_or_default();
    if !applied.is_empty() {
        out += "applied:\n";
        let width = applied
            .iter()
            .map(|a| text(&a["item"]).len())
            .max()
            .unwrap_or(0);
        for a in &applied {
            let state = if a["ok"].as_bool() == Some(true) {
                "ok"
            } else {
                "FAILED"
            };
            out += &format!(
                "  {state:<6} {:<width$}  {}\n",
                text(&a["item"]),
                text(&a["detail"])
            );
        }
    }
    for (kind, title) in [("errors", "errors (skipped)"), ("warnings", "warnings")] {
        let list = r["problems"][kind].as_array().cloned().unwrap_or_default();
        if !list.is_empty() {
            out += &format!("{title}:\n");
            for p in list {
                out += &format!("  {}: {}\n", text(&p["at"]), text(&p["message"]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_rendered() {
        let r = serde_json::json!({
            "source": "NoCloud (/dev/vdb)",
            "instance_id": "iid-1",
            "problems": {
                "errors": [{"at": "hostname", "message": "invalid type: sequence"}],
                "warnings": [{"at": "runcmd", "message": "ignored: no shell"}]
            },
            "applied": [
                {"item": "hostname", "ok": true, "detail": "web-1"},
                {"item": "container web", "ok": false, "detail": "disk full"}
            ]
        });
        assert_eq!(
            render(&r),
            "source: NoCloud (/dev/vdb) (instance iid-1)\napplied:\n  \
             ok     hostname       web-1\n  FAILED container web  disk full\n\
             errors (skipped):\n  hostname: invalid type: sequence\n\
             warnings:\n  runcmd: ignored: no shell\n"
        );
    }
}
