//! [`LockStatsReport`] → the `GetLockStats` proto messages (`loader.v1`).
use shared_proto::loader::v1 as pb;

use super::report::{
    CollectorState, LockStatsReport, LockStatsStatus, LockTypeStats, MapLeftOut, MapLockStats,
};

impl From<&LockStatsReport> for pb::GetLockStatsResponse {
    fn from(report: &LockStatsReport) -> Self {
        Self { status: Some((&report.status).into()), maps: report.maps.iter().map(Into::into).collect() }
    }
}

impl From<CollectorState> for pb::LockStatsState {
    fn from(state: CollectorState) -> Self {
        match state {
            CollectorState::Running => pb::LockStatsState::Running,
            CollectorState::Disabled => pb::LockStatsState::Disabled,
            CollectorState::Failed => pb::LockStatsState::Failed,
        }
    }
}

impl From<&LockStatsStatus> for pb::LockStatsStatus {
    fn from(s: &LockStatsStatus) -> Self {
        Self {
            state: pb::LockStatsState::from(s.state).into(),
            reasons: s.reasons.clone(),
            symbols_source: s.symbols_source.clone(),
            tracked_maps: s.tracked_maps,
            tracked_ranges: s.tracked_ranges,
            max_ranges: s.max_ranges,
            maps_left_out: s.maps_left_out.iter().map(Into::into).collect(),
            dropped_ranges: s.dropped_ranges,
            dropped_waiters: s.dropped_waiters,
            unmatched_events: s.unmatched_events,
            events_seen: s.events_seen,
            events_tracked: s.events_tracked,
            initialize_us: s.initialize_us,
            programs: s
                .programs
                .iter()
                .map(|p| pb::LockStatsProgram { name: p.name.clone(), id: p.id })
                .collect(),
        }
    }
}

impl From<&MapLeftOut> for pb::MapLeftOut {
    fn from(m: &MapLeftOut) -> Self {
        Self { id: m.id, name: m.name.clone(), owner: m.owner.clone(), reason: m.reason.clone() }
    }
}

impl From<&MapLockStats> for pb::MapLockStats {
    fn from(m: &MapLockStats) -> Self {
        Self {
            id: m.id,
            name: m.name.clone(),
            map_type: m.map_type.clone(),
            owner: m.owner.clone(),
            locks: m.locks.iter().map(Into::into).collect(),
        }
    }
}

impl From<&LockTypeStats> for pb::LockTypeStats {
    fn from(l: &LockTypeStats) -> Self {
        Self {
            lock_type: l.lock_type.as_str().to_string(),
            ranges: l.ranges,
            contended_count: l.contended_count,
            total_wait_ns: l.total_wait_ns,
            avg_wait_ns: l.avg_wait_ns,
            min_wait_ns: l.min_wait_ns,
            max_wait_ns: l.max_wait_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockstats::LockType;

    #[test]
    fn report_converts_with_state_and_lock_type_names() {
        let mut status = LockStatsStatus::new(CollectorState::Disabled, 16);
        status.reasons.push("off".into());
        let report = LockStatsReport {
            status,
            maps: vec![MapLockStats {
                id: 4,
                name: "m".into(),
                map_type: "hash".into(),
                owner: "external".into(),
                locks: vec![LockTypeStats {
                    lock_type: LockType::HashBucket,
                    ranges: 1,
                    contended_count: 2,
                    total_wait_ns: 30,
                    avg_wait_ns: 15,
                    min_wait_ns: 10,
                    max_wait_ns: 20,
                }],
            }],
        };
        let pb_report = pb::GetLockStatsResponse::from(&report);
        let status = pb_report.status.expect("status set");
        assert_eq!(status.state(), pb::LockStatsState::Disabled);
        assert_eq!(status.reasons, vec!["off".to_string()]);
        assert_eq!(pb_report.maps[0].locks[0].lock_type, "hash_bucket");
        assert_eq!(pb_report.maps[0].locks[0].avg_wait_ns, 15);
    }
}
