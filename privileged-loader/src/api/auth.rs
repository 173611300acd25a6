//! Caller checks: every RPC's peer (SO_PEERCRED and SO_PEERGROUPS, captured when the
//! connection is accepted) is matched against the configured allow-list.
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use super::peer::Peer;
use super::quiet_log::QuietLog;

/// Who may call the API. A caller is allowed when its uid is listed, or its primary gid or
/// one of its supplementary groups is listed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AllowList {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Default for AllowList {
    fn default() -> Self {
        Self { uids: vec![0], gids: Vec::new() }
    }
}

/// Refused calls are logged at most once a second: a denied peer looping on the socket
/// must not fill the disk with the loader's log.
static REFUSED: QuietLog = QuietLog::new();

impl AllowList {
    pub fn permits(&self, peer: &Peer) -> bool {
        self.uids.contains(&peer.uid)
            || self.gids.contains(&peer.gid)
            || peer.groups.iter().any(|g| self.gids.contains(g))
    }

    /// The interceptor applied to every service on the socket (loader, health, reflection).
    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let Some(peer) = request.extensions().get::<Peer>() else {
            tracing::warn!("refused a call without peer credentials (not a unix socket peer)");
            return Err(Status::permission_denied("peer credentials unavailable"));
        };
        if self.permits(peer) {
            return Ok(request);
        }
        let (uid, gid) = (peer.uid, peer.gid);
        if let Some(suppressed) = REFUSED.admit() {
            tracing::warn!(
                uid,
                gid,
                pid = ?peer.pid,
                groups = ?peer.groups,
                suppressed,
                "refused a call from a peer not in api.allowed_uids/allowed_gids (at most one such line a second; `suppressed` counts the ones not logged)"
            );
        }
        Err(Status::permission_denied(format!(
            "uid {uid} (gid {gid}) is not allowed: add it to api.allowed_uids, or one of its groups to api.allowed_gids"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer { uid, gid, pid: None, groups: groups.to_vec() }
    }

    #[test]
    fn uid_or_gid_match_allows() {
        let list = AllowList { uids: vec![0, 1000], gids: vec![2000] };
        assert!(list.permits(&peer(1000, 5, &[])));
        assert!(list.permits(&peer(7, 2000, &[])));
        assert!(!list.permits(&peer(7, 5, &[])));
    }

    #[test]
    fn a_supplementary_group_on_the_list_allows() {
        let list = AllowList { uids: vec![0], gids: vec![2000] };
        assert!(list.permits(&peer(7, 5, &[100, 2000])));
        assert!(!list.permits(&peer(7, 5, &[100, 2001])));
    }

    #[test]
    fn calls_without_peer_credentials_are_refused() {
        let status = AllowList::default().check(Request::new(())).expect_err("no cred");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
}
