//! `crashgrid status --url URL`: `GET /api/v1/cluster` printed as a table.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

/// Fetches the cluster view of the node at `url` and renders it.
pub async fn fetch(url: &str) -> anyhow::Result<String> {
    let base = url.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let response = client
        .get(format!("{base}/api/v1/cluster"))
        .send()
        .await
        .with_context(|| format!("asking {base} for its cluster view"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "{base} answered {}",
        response.status()
    );
    let view: Value = response.json().await.context("reading the cluster view")?;
    render(&view)
}

fn ms_text(v: &Value) -> String {
    match v.as_u64() {
        Some(ms) => {
            let text = format!("{}.{:03}", ms / 1000, ms % 1000);
            format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
        }
        None => "-".into(),
    }
}

fn clock_text(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    let secs = unix_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03} UTC", unix_ms % 1000)
}

/// Renders a cluster view (the JSON of `GET /api/v1/cluster`) as text.
pub fn render(view: &Value) -> anyhow::Result<String> {
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let members = view
        .get("members")
        .and_then(Value::as_array)
        .context("the answer has no members: is this a crashgrid node?")?;
    let mut out = String::new();
    let healthy = members
        .iter()
        .filter(|m| m.get("healthy").and_then(Value::as_bool) == Some(true))
        .count();
    let leader = view
        .get("leader")
        .and_then(Value::as_str)
        .unwrap_or("(none)");
    writeln!(
        out,
        "cluster ({}): {healthy} live member(s), membership version {}; leader {leader} at epoch {}; answered by {}{}",
        str_of(view, "mode"),
        view.get("membership_version").and_then(Value::as_u64).unwrap_or(0),
        view.get("epoch").and_then(Value::as_u64).unwrap_or(0),
        str_of(view, "node"),
        if view.get("is_leader").and_then(Value::as_bool) == Some(true) { " (the leader)" } else { "" },
    )?;
    if let Some(lease) = view.get("lease").filter(|l| !l.is_null()) {
        writeln!(
            out,
            "lease: duration {}, renew deadline {}, retry period {}",
            ms_text(&lease["lease_duration_ms"]),
            ms_text(&lease["renew_deadline_ms"]),
            ms_text(&lease["retry_period_ms"]),
        )?;
    }
    let rows: Vec<[String; 6]> = members
        .iter()
        .map(|m| {
            [
                str_of(m, "id"),
                if m.get("leader").and_then(Value::as_bool) == Some(true) {
                    "leader".into()
                } else {
                    String::new()
                },
                if m.get("healthy").and_then(Value::as_bool) == Some(true) {
                    "healthy".into()
                } else {
                    "UNREACHABLE".into()
                },
                str_of(m, "address"),
                str_of(m, "rpc_address"),
                clock_text(m.get("incarnation").and_then(Value::as_u64).unwrap_or(0)),
            ]
        })
        .collect();
    let header = ["NODE", "ROLE", "HEALTH", "HTTP", "RPC", "STARTED"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{c:<w$}");
        }
        l.trim_end().to_string()
    };
    writeln!(out, "{}", line(header))?;
    for r in &rows {
        writeln!(out, "{}", line(r.each_ref().map(String::as_str)))?;
    }
    if let Some(ts) = view.get("transitions").and_then(Value::as_array) {
        if !ts.is_empty() {
            writeln!(out, "recent leader changes (as seen by this node):")?;
            for t in ts {
                writeln!(
                    out,
                    "  {}  {} at epoch {}",
                    clock_text(t.get("at_ms").and_then(Value::as_u64).unwrap_or(0)),
                    t.get("leader")
                        .and_then(Value::as_str)
                        .unwrap_or("(no leader)"),
                    t.get("epoch").and_then(Value::as_u64).unwrap_or(0)
                )?;
            }
        }
    }
    let rejected = view
        .get("stale_epoch_rejections")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if rejected > 0 {
        writeln!(
            out,
            "{rejected} message(s) from deposed leaders rejected (stale epoch)"
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_members_leader_lease_and_transitions() {
        let view = serde_json::json!({
            "mode": "cluster", "node": "node-1", "leader": "node-2", "epoch": 3,
            "is_leader": false, "membership_version": 7,
            "members": [
                {"id": "node-1", "address": "127.0.0.1:8080", "rpc_address": "127.0.0.1:7946",
                 "incarnation": 1_764_066_000_123u64, "healthy": true, "leader": false},
                {"id": "node-2", "address": "127.0.0.1:8081", "rpc_address": "127.0.0.1:7947",
                 "incarnation": 0, "healthy": true, "leader": true},
                {"id": "?", "address": "", "rpc_address": "127.0.0.1:7948",
                 "incarnation": 0, "healthy": false, "leader": false}
            ],
            "lease": {"lease_duration_ms": 15000, "renew_deadline_ms": 10000, "retry_period_ms": 2500},
            "transitions": [{"at_ms": 1_764_066_001_000u64, "leader": "node-2", "epoch": 3}],
            "stale_epoch_rejections": 2
        });
        let text = render(&view).unwrap();
        assert!(text.starts_with(
            "cluster (cluster): 2 live member(s), membership version 7; leader node-2 at epoch 3; answered by node-1\n"
        ), "{text}");
        assert!(text.contains("lease: duration 15s, renew deadline 10s, retry period 2.5s"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["NODE", "ROLE", "HEALTH", "HTTP", "RPC", "STARTED"]
        );
        assert!(
            lines[3].starts_with("node-1")
                && lines[3].contains("healthy")
                && lines[3].ends_with("10:20:00.123 UTC")
        );
        assert!(lines[4].starts_with("node-2  leader"));
        assert!(lines[5].contains("UNREACHABLE") && lines[5].contains("127.0.0.1:7948"));
        assert!(text.contains("node-2 at epoch 3\n"));
        assert!(text.contains("2 message(s) from deposed leaders rejected"));
    }

    #[test]
    fn a_non_crashgrid_answer_is_an_error() {
        assert!(render(&serde_json::json!({"hello": 1})).is_err());
    }
}
