//! What every `make bench` JSON file carries beside its figures: the commit measured,
//! when, and on what accelerator, so a file found later says what it is. And the table
//! `berth-vm bench-summary` prints from all of them: each goal, its figure and its bound.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The commit of the tree in the current directory (`-dirty` when it has changes), or
/// `BERTH_COMMIT` when set (a build outside a clone).
pub fn commit() -> String {
    if let Some(c) = std::env::var("BERTH_COMMIT").ok().filter(|c| !c.is_empty()) {
        return c;
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{head}-dirty"),
            _ => head,
        },
        None => "unknown".into(),
    }
}

/// Writes `figures` (an object, or an array kept under `results`) with `commit` and
/// `date` added.
pub fn write(path: &Path, figures: Value) -> Result<()> {
    let mut doc = match figures {
        Value::Object(map) => Value::Object(map),
        other => json!({ "results": other }),
    };
    doc["commit"] = json!(commit());
    doc["date"] = json!(berth_schema::time::now_rfc3339());
    std::fs::write(path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// One line of the summary: a goal, the figure measured, its bound.
struct Goal {
    what: &'static str,
    figure: Option<f64>,
    unit: &'static str,
    bound: f64,
}

fn goal(what: &'static str, figure: Option<f64>, unit: &'static str, bound: f64) -> Goal {
    Goal {
        what,
        figure,
        unit,
        bound,
    }
}

fn read(dir: &Path, name: &str) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(dir.join(name)).ok()?).ok()
}

fn field(doc: &Option<Value>, key: &str) -> Option<f64> {
    doc.as_ref()?.get(key)?.as_f64()
}

/// The median of one entry of a file's `results` (`key` names it: runtime, tool).
fn median_of(doc: &Option<Value>, key: &str, name: &str) -> Option<f64> {
    doc.as_ref()?
        .get("results")?
        .as_array()?
        .iter()
        .find(|r| r[key] == name)?
        .get("median_ms")?
        .as_f64()
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

/// Prints every goal of the performance work from the JSON files in `dir`; a file that
/// is missing leaves its lines at `-`. Returns how many goals were missed.
pub fn summary(dir: &Path) -> usize {
    let uefi = read(dir, "bench.json");
    let bios = read(dir, "bench-bios.json");
    let demo = read(dir, "bench-demo.json");
    let daemon = read(dir, "bench-daemon.json");
    let runtimes = read(dir, "bench-runtimes.json");
    let pull = read(dir, "bench-pull.json");
    let manifest = read(dir, "manifest.json");
    let ours = median_of(&runtimes, "runtime", "berth-runtime");
    let pulled = median_of(&pull, "tool", "berth-store");
    let qcow2 = manifest
        .as_ref()
        .and_then(|m| m["disk"]["qcow2_bytes"].as_f64())
        .map(|b| b / 1e6);
    let goals = [
        goal(
            "boot to ready / floor, UEFI disk",
            field(&uefi, "ratio"),
            "x",
            1.15,
        ),
        goal(
            "boot to ready / floor, BIOS disk",
            field(&bios, "ratio"),
            "x",
            1.15,
        ),
        goal(
            "smallest machine serving the demo, UEFI",
            field(&demo, "smallest_mib_uefi"),
            " MiB",
            256.0,
        ),
        goal(
            "smallest machine serving the demo, BIOS",
            field(&demo, "smallest_mib_bios"),
            " MiB",
            256.0,
        ),
        goal(
            "Berth's processes idle, RSS sum",
            field(&demo, "rss_kb_total").map(|k| k * 1024.0 / 1e6),
            " MB",
            12.0,
        ),
        goal(
            "Berth's processes idle, PSS sum",
            field(&demo, "pss_kb_total").map(|k| k * 1024.0 / 1e6),
            " MB",
            12.0,
        ),
        goal(
            "100 containers via the daemon / floor",
            ratio(
                field(&daemon, "start_seconds"),
                field(&daemon, "floor_seconds"),
            ),
            "x",
            1.3,
        ),
        goal(
            "berth-runtime / namespace floor",
            ratio(ours, median_of(&runtimes, "runtime", "namespace floor")),
            "x",
            1.5,
        ),
        goal(
            "berth-runtime / crun",
            ratio(ours, median_of(&runtimes, "runtime", "crun")),
            "x",
            1.0,
        ),
        goal(
            "pull / decompress floor",
            ratio(pulled, median_of(&pull, "tool", "floor")),
            "x",
            1.3,
        ),
        goal(
            "pull / skopeo",
            ratio(pulled, median_of(&pull, "tool", "skopeo")),
            "x",
            1.0,
        ),
        goal(
            "pull / podman",
            ratio(pulled, median_of(&pull, "tool", "podman")),
            "x",
            1.0,
        ),
        goal("qcow2 image", qcow2, " MB", 20.0),
    ];
    println!(
        "make bench, commit {} (the files' own commits: {}):",
        commit(),
        [&uefi, &bios, &demo, &daemon, &runtimes, &pull]
            .iter()
            .filter_map(|d| d.as_ref()?.get("commit")?.as_str().map(str::to_string))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  {:<40} {:>12} {:>10}  met", "goal", "measured", "bound");
    let mut missed = 0;
    for g in &goals {
        let (figure, met) = match g.figure {
            Some(f) if f.is_finite() => (format!("{f:.2}{}", g.unit), f <= g.bound),
            _ => ("-".to_string(), false),
        };
        if !met {
            missed += 1;
        }
        println!(
            "  {:<40} {:>12} {:>10}  {}",
            g.what,
            figure,
            format!("<= {}{}", g.bound, g.unit),
            if met { "yes" } else { "NO" }
        );
    }
    missed
}
