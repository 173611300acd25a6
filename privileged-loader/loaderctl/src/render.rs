//! Human tables and JSON documents for each answer.
use serde_json::{Value, json};
use shared_proto::loader::v1 as pb;

pub fn tuple_json(t: Option<&pb::Tuple>) -> Value {
    let Some(t) = t else { return Value::Null };
    json!({
        "src": t.src_addr, "sport": t.src_port, "dst": t.dst_addr, "dport": t.dst_port,
        "proto": protocol_name(t.protocol),
    })
}

fn protocol_name(p: i32) -> String {
    match pb::Protocol::try_from(p) {
        Ok(pb::Protocol::Tcp) => "tcp".into(),
        Ok(pb::Protocol::Udp) => "udp".into(),
        _ => format!("proto-{p}"),
    }
}

fn endpoint(addr: &str, port: u32) -> String {
    if addr.contains(':') { format!("[{addr}]:{port}") } else { format!("{addr}:{port}") }
}

fn tuple_text(t: Option<&pb::Tuple>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| format!("{} -> {}", endpoint(&t.src_addr, t.src_port), endpoint(&t.dst_addr, t.dst_port)),
    )
}

pub fn entries_json(entries: &[pb::ConntrackEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                json!({"original": tuple_json(e.original.as_ref()), "reply": tuple_json(e.reply.as_ref()), "netns": e.netns})
            })
            .collect(),
    )
}

pub fn entries_text(entries: &[pb::ConntrackEntry]) -> String {
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.original.as_ref().map_or_else(|| "-".into(), |t| protocol_name(t.protocol)),
                tuple_text(e.original.as_ref()),
                tuple_text(e.reply.as_ref()),
                e.netns.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    let mut out = table(&["PROTO", "ORIGINAL", "REPLY", "NETNS"], &rows);
    out.push_str(&format!("{} NAT translation(s)\n", entries.len()));
    out
}

pub fn lookup_json(answer: &pb::LookupTranslationResponse) -> Value {
    json!({"found": answer.found, "translated": tuple_json(answer.translated.as_ref()), "netns": answer.netns})
}

pub fn lookup_text(answer: &pb::LookupTranslationResponse) -> String {
    if !answer.found {
        return "no translation found\n".into();
    }
    format!("{}  (netns {})\n", tuple_text(answer.translated.as_ref()), answer.netns)
}

fn feature_json(f: Option<&pb::Feature>) -> Value {
    f.map_or(Value::Null, |f| json!({"name": f.name, "available": f.available, "reason": f.reason}))
}

fn module_state(s: i32) -> &'static str {
    match pb::ModuleState::try_from(s) {
        Ok(pb::ModuleState::Loading) => "loading",
        Ok(pb::ModuleState::Running) => "running",
        Ok(pb::ModuleState::Failed) => "failed",
        Ok(pb::ModuleState::Disabled) => "disabled",
        Ok(pb::ModuleState::Stopped) => "stopped",
        _ => "unknown",
    }
}

fn asset_outcome(o: i32) -> &'static str {
    match pb::AssetOutcome::try_from(o) {
        Ok(pb::AssetOutcome::Loaded) => "loaded",
        Ok(pb::AssetOutcome::BtfNotFound) => "btf-not-found",
        Ok(pb::AssetOutcome::AssetReadError) => "asset-read-error",
        Ok(pb::AssetOutcome::VerifierError) => "verifier-error",
        Ok(pb::AssetOutcome::AttachError) => "attach-error",
        _ => "unknown",
    }
}

pub fn status_json(s: &pb::GetStatusResponse) -> Value {
    let kernel = s.kernel.as_ref().map_or(Value::Null, |k| {
        json!({
            "release": k.release, "arch": k.arch,
            "btf": k.btf.as_ref().map_or(Value::Null, |b| json!({"found": b.found, "source": b.source, "path": b.path, "reason": b.reason})),
            "attach_kinds": k.attach_kinds.iter().map(|f| feature_json(Some(f))).collect::<Vec<_>>(),
            "conntrack": feature_json(k.conntrack.as_ref()),
            "lock_contention_tracepoints": feature_json(k.lock_contention_tracepoints.as_ref()),
        })
    });
    let modules: Vec<Value> = s
        .modules
        .iter()
        .map(|m| {
            json!({
                "name": m.name, "state": module_state(m.state), "strategy": m.strategy,
                "attempts": m.attempts.iter().map(|a| json!({
                    "implementation": a.implementation, "ok": a.ok, "reason": a.reason,
                    "hooks": a.hooks.iter().map(|h| json!({"hook": h.hook, "ok": h.ok, "reason": h.reason})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "last_error": m.last_error, "load_time_us": m.load_time_us, "notes": m.notes,
                "maps": m.maps.iter().map(|f| json!({"name": f.name, "entries": f.entries, "max_entries": f.max_entries, "counted_by": f.counted_by})).collect::<Vec<_>>(),
                "generation": m.generation, "loaded_at_unix_ms": m.loaded_at_unix_ms,
                "last_reload": m.last_reload.as_ref().map_or(Value::Null, |r| json!({"at_unix_ms": r.at_unix_ms, "changed": r.changed, "how": r.how})),
                "failed_reloads": m.failed_reloads.iter().map(|f| json!({"at_unix_ms": f.at_unix_ms, "changed": f.changed, "reason": f.reason})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let assets: Vec<Value> = s
        .assets
        .iter()
        .map(|a| {
            json!({"asset": a.asset, "outcome": asset_outcome(a.outcome), "btf_source": a.btf_source,
                   "detail": a.detail, "load_time_us": a.load_time_us, "count": a.count})
        })
        .collect();
    let access = s.access.as_ref().map_or(Value::Null, |a| {
        json!({"apply_uids": a.apply_uids, "apply_gids": a.apply_gids,
               "read_only_uids": a.read_only_uids, "read_only_gids": a.read_only_gids})
    });
    json!({
        "loader_version": s.loader_version, "started_at_unix_ms": s.started_at_unix_ms,
        "startup_us": s.startup_us, "capabilities": s.capabilities,
        "startup_capabilities": s.startup_capabilities,
        "kernel": kernel, "modules": modules, "assets": assets, "access": access,
    })
}

pub fn status_text(s: &pb::GetStatusResponse) -> String {
    let mut out = format!(
        "loader {}  started in {:.1} ms  capabilities: {}\n",
        s.loader_version,
        s.startup_us as f64 / 1000.0,
        if s.capabilities.is_empty() { "none".to_string() } else { s.capabilities.join(",") }
    );
    for used in &s.startup_capabilities {
        out.push_str(&format!("start-up only: {used}\n"));
    }
    if let Some(a) = &s.access {
        out.push_str(&format!(
            "access: apply uids {:?} gids {:?}; read-only uids {:?} gids {:?}\n",
            a.apply_uids, a.apply_gids, a.read_only_uids, a.read_only_gids
        ));
    }
    if let Some(k) = &s.kernel {
        out.push_str(&format!("\nkernel {} ({})\n", k.release, k.arch));
        if let Some(b) = &k.btf {
            let btf = if b.found {
                format!("{} ({})", b.source, b.path)
            } else {
                format!("not found: {}", b.reason)
            };
            out.push_str(&format!("BTF: {btf}\n"));
        }
        let features =
            k.attach_kinds.iter().chain(k.conntrack.iter()).chain(k.lock_contention_tracepoints.iter());
        let rows: Vec<Vec<String>> = features
            .map(|f| {
                vec![f.name.clone(), if f.available { "yes".into() } else { "no".into() }, f.reason.clone()]
            })
            .collect();
        out.push_str(&table(&["FEATURE", "AVAILABLE", "REASON"], &rows));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .modules
        .iter()
        .map(|m| {
            let fill = m
                .maps
                .iter()
                .map(|f| format!("{} {}/{}", f.name, f.entries, f.max_entries))
                .collect::<Vec<_>>();
            vec![
                m.name.clone(),
                module_state(m.state).into(),
                m.strategy.clone(),
                fill.join(", "),
                m.last_error.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["MODULE", "STATE", "STRATEGY", "MAPS", "LAST ERROR"], &rows));
    for m in &s.modules {
        let verdict =
            |ok: bool, reason: &str| if ok { "chosen".to_string() } else { format!("not used: {reason}") };
        for a in &m.attempts {
            out.push_str(&format!("  {} {}: {}\n", m.name, a.implementation, verdict(a.ok, &a.reason)));
            for h in &a.hooks {
                out.push_str(&format!("    hook {}: {}\n", h.hook, verdict(h.ok, &h.reason)));
            }
        }
        for note in &m.notes {
            out.push_str(&format!("  {} note: {note}\n", m.name));
        }
        out.push_str(&lifecycle_text(m));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .assets
        .iter()
        .map(|a| {
            vec![
                a.asset.clone(),
                asset_outcome(a.outcome).into(),
                a.btf_source.clone(),
                format!("{:.1}", a.load_time_us as f64 / 1000.0),
                a.detail.lines().last().unwrap_or("").to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["ASSET", "RESULT", "BTF", "LOAD MS", "DETAIL"], &rows));
    out
}

fn lockstats_state(s: i32) -> &'static str {
    match pb::LockStatsState::try_from(s) {
        Ok(pb::LockStatsState::Running) => "running",
        Ok(pb::LockStatsState::Disabled) => "disabled",
        Ok(pb::LockStatsState::Failed) => "failed",
        _ => "unknown",
    }
}

/// One row per (map, lock type), most total wait first.
fn lock_rows(stats: &pb::GetLockStatsResponse) -> Vec<(&pb::MapLockStats, &pb::LockTypeStats)> {
    let mut rows: Vec<_> = stats.maps.iter().flat_map(|m| m.locks.iter().map(move |l| (m, l))).collect();
    rows.sort_by(|a, b| b.1.total_wait_ns.cmp(&a.1.total_wait_ns).then(a.0.id.cmp(&b.0.id)));
    rows
}

pub fn lockstats_json(stats: &pb::GetLockStatsResponse) -> Value {
    let status = stats.status.as_ref().map_or(Value::Null, |s| {
        json!({
            "state": lockstats_state(s.state), "reasons": s.reasons, "symbols_source": s.symbols_source,
            "tracked_maps": s.tracked_maps, "tracked_ranges": s.tracked_ranges, "max_ranges": s.max_ranges,
            "maps_left_out": s.maps_left_out.iter().map(|m| json!({"id": m.id, "name": m.name, "owner": m.owner, "reason": m.reason})).collect::<Vec<_>>(),
            "dropped_ranges": s.dropped_ranges, "dropped_waiters": s.dropped_waiters,
            "unmatched_events": s.unmatched_events, "events_seen": s.events_seen, "events_tracked": s.events_tracked,
            "initialize_us": s.initialize_us,
        })
    });
    let locks: Vec<Value> = lock_rows(stats)
        .into_iter()
        .map(|(m, l)| {
            json!({
                "map_id": m.id, "map": m.name, "map_type": m.map_type, "module": m.owner,
                "lock_type": l.lock_type, "contended": l.contended_count, "total_wait_ns": l.total_wait_ns,
                "avg_wait_ns": l.avg_wait_ns, "min_wait_ns": l.min_wait_ns, "max_wait_ns": l.max_wait_ns,
            })
        })
        .collect();
    json!({"status": status, "locks": locks})
}

fn nanos(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.2} us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

pub fn lockstats_text(stats: &pb::GetLockStatsResponse) -> String {
    let mut out = String::new();
    if let Some(s) = &stats.status {
        out.push_str(&format!(
            "collector {}: {} maps, {} of at most {} lock ranges tracked; {} contention events seen, {} on tracked ranges\n",
            lockstats_state(s.state),
            s.tracked_maps,
            s.tracked_ranges,
            s.max_ranges,
            s.events_seen,
            s.events_tracked
        ));
        for reason in &s.reasons {
            out.push_str(&format!("  note: {reason}\n"));
        }
        if !s.maps_left_out.is_empty() {
            out.push_str(&format!("  {} map(s) left out (see --json)\n", s.maps_left_out.len()));
        }
        if s.dropped_ranges + s.dropped_waiters > 0 {
            out.push_str(&format!(
                "  dropped: {} range events, {} waiters\n",
                s.dropped_ranges, s.dropped_waiters
            ));
        }
    }
    let rows: Vec<Vec<String>> = lock_rows(stats)
        .into_iter()
        .map(|(m, l)| {
            vec![
                l.contended_count.to_string(),
                nanos(l.total_wait_ns),
                nanos(l.max_wait_ns),
                nanos(l.avg_wait_ns),
                l.lock_type.clone(),
                format!("{} ({} {})", m.name, m.map_type, m.id),
                m.owner.clone(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["CONTENDED", "TOTAL WAIT", "MAX WAIT", "AVG WAIT", "LOCK TYPE", "MAP", "MODULE"],
        &rows,
    ));
    out
}

/// A left-aligned text table; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A module's generation, its last reload and the reloads that failed, one line each.
fn lifecycle_text(m: &pb::ModuleStatus) -> String {
    if m.generation == 0 && m.failed_reloads.is_empty() {
        return String::new();
    }
    let mut out =
        format!("  {} generation {} loaded at {} ms (unix)\n", m.name, m.generation, m.loaded_at_unix_ms);
    if let Some(r) = &m.last_reload {
        out.push_str(&format!("  {} last reload ({}): changed {}\n", m.name, r.how, r.changed.join(", ")));
    }
    for f in &m.failed_reloads {
        out.push_str(&format!(
            "  {} reload failed at {} ms (changing {}): {}\n",
            m.name,
            f.at_unix_ms,
            f.changed.join(", "),
            f.reason
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let out = table(&["A", "BB"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(out, "A     BB\nlong  x\n");
    }

    #[test]
    fn lock_rows_sort_by_total_wait() {
        let lock = |t: &str, total| pb::LockTypeStats {
            lock_type: t.into(),
            total_wait_ns: total,
            ..Default::default()
        };
        let stats = pb::GetLockStatsResponse {
            status: None,
            maps: vec![
                pb::MapLockStats { id: 1, locks: vec![lock("hash_bucket", 5)], ..Default::default() },
                pb::MapLockStats {
                    id: 2,
                    locks: vec![lock("hash_bucket", 50), lock("lru_global_list", 7)],
                    ..Default::default()
                },
            ],
        };
        let order: Vec<u64> = lock_rows(&stats).iter().map(|(_, l)| l.total_wait_ns).collect();
        assert_eq!(order, vec![50, 7, 5]);
        assert_eq!(nanos(1_500), "1.50 us");
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        assert_eq!(endpoint("::1", 80), "[::1]:80");
        assert_eq!(endpoint("10.0.0.1", 80), "10.0.0.1:80");
    }
}
