//! Conversions from the loader's own types to the API's messages.
use shared_proto::loader::v1 as pb;

use super::map_walks::Fill;
use crate::conntrack::{Entry, TableFill, Tuple};
use crate::status::{
    AssetOutcome, AssetRecord, HookAttempt, ImplementationAttempt, ModuleRecord, ModuleState,
};

pub fn tuple(t: &Tuple) -> pb::Tuple {
    pb::Tuple {
        src_addr: t.src.to_string(),
        src_port: t.src_port.into(),
        dst_addr: t.dst.to_string(),
        dst_port: t.dst_port.into(),
        protocol: i32::from(t.protocol.number()),
    }
}

pub fn entry(e: &Entry) -> pb::ConntrackEntry {
    pb::ConntrackEntry { original: Some(tuple(&e.original)), reply: Some(tuple(&e.reply)), netns: e.netns }
}

pub fn asset(a: &AssetRecord) -> pb::AssetResult {
    let (outcome, btf_source) = match &a.outcome {
        AssetOutcome::Loaded { btf_source } => {
            (pb::AssetOutcome::Loaded, btf_source.map(|s| s.as_str().to_string()).unwrap_or_default())
        }
        AssetOutcome::BtfNotFound => (pb::AssetOutcome::BtfNotFound, String::new()),
        AssetOutcome::AssetReadError => (pb::AssetOutcome::AssetReadError, String::new()),
        AssetOutcome::VerifierError => (pb::AssetOutcome::VerifierError, String::new()),
        AssetOutcome::AttachError => (pb::AssetOutcome::AttachError, String::new()),
    };
    pb::AssetResult {
        asset: a.asset.clone(),
        outcome: outcome.into(),
        btf_source,
        detail: a.detail.clone(),
        load_time_us: a.load_time.as_micros() as u64,
        count: a.count,
    }
}

/// A module's record; `fill` is the conntracker's fill levels, shown on its module.
pub fn module(m: &ModuleRecord, fill: &Fill) -> pb::ModuleStatus {
    let maps = if m.name == "conntrack" {
        fill.tables.iter().map(|t| map_fill(t, &fill.counted_by)).collect()
    } else {
        Vec::new()
    };
    pb::ModuleStatus {
        name: m.name.clone(),
        state: module_state(m.state).into(),
        strategy: m.strategy.clone(),
        attempts: m.attempts.iter().map(attempt).collect(),
        last_error: m.last_error.clone().unwrap_or_default(),
        maps,
        load_time_us: m.load_time.as_micros() as u64,
        notes: m.notes.clone(),
        generation: m.generation,
        loaded_at_unix_ms: m.loaded_at_unix_ms,
        last_reload: m.last_reload.as_ref().map(|r| pb::ReloadRecord {
            at_unix_ms: r.at_unix_ms,
            changed: r.changed.clone(),
            how: r.how.clone(),
        }),
        failed_reloads: m
            .failed_reloads
            .iter()
            .map(|f| pb::FailedReload {
                at_unix_ms: f.at_unix_ms,
                changed: f.changed.clone(),
                reason: f.reason.clone(),
            })
            .collect(),
    }
}

fn module_state(s: ModuleState) -> pb::ModuleState {
    match s {
        ModuleState::Loading => pb::ModuleState::Loading,
        ModuleState::Running => pb::ModuleState::Running,
        ModuleState::Failed => pb::ModuleState::Failed,
        ModuleState::Disabled => pb::ModuleState::Disabled,
        ModuleState::Stopped => pb::ModuleState::Stopped,
    }
}

fn attempt(a: &ImplementationAttempt) -> pb::ImplementationAttempt {
    pb::ImplementationAttempt {
        implementation: a.implementation.clone(),
        ok: a.ok,
        reason: a.reason.clone(),
        hooks: a.hooks.iter().map(hook).collect(),
    }
}

fn hook(h: &HookAttempt) -> pb::HookAttempt {
    pb::HookAttempt { hook: h.hook.clone(), ok: h.ok, reason: h.reason.clone() }
}

fn map_fill(t: &TableFill, counted_by: &str) -> pb::MapFill {
    pb::MapFill {
        name: t.name.clone(),
        entries: t.entries,
        max_entries: t.max_entries,
        counted_by: counted_by.to_string(),
    }
}

fn feature(f: &crate::probe::Feature) -> pb::Feature {
    // A "yes" may carry a note (e.g. which program proved it); the API's reason is for "no".
    pb::Feature {
        name: f.name.clone(),
        available: f.available,
        reason: if f.available { String::new() } else { f.reason.clone() },
    }
}

pub fn kernel(k: &crate::probe::KernelReport) -> pb::KernelReport {
    pb::KernelReport {
        release: k.release.clone(),
        arch: k.arch.clone(),
        btf: Some(pb::BtfInfo {
            found: k.btf.found,
            source: k.btf.source.map(|s| s.as_str().to_string()).unwrap_or_default(),
            path: k.btf.path.clone(),
            reason: k.btf.reason.clone(),
        }),
        attach_kinds: k.attach_kinds.iter().map(feature).collect(),
        conntrack: Some(feature(&k.conntrack)),
        lock_contention_tracepoints: Some(feature(&k.lock_contention_tracepoints)),
    }
}
