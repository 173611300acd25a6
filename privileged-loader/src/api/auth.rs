//! Caller checks: every RPC's peer (SO_PEERCRED and SO_PEERGROUPS, captured when the
//! connection is accepted) is matched against the configured allow-list, which gives the
//! caller a [`Role`]: `Apply` (the controller: may apply configs and read), `Read`
//! (`loaderctl` users: may only read), or none (refused). Changing RPCs check the role.
use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use super::peer::Peer;
use super::quiet_log::QuietLog;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Apply configs and read everything.
    Apply,
    /// Read only.
    Read,
}

impl Role {
    /// Refuses a changing call from a read-only caller.
    pub fn require_apply<T>(request: &Request<T>, rpc: &str) -> Result<(), Status> {
        match request.extensions().get::<Role>() {
            Some(Role::Apply) => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "{rpc} needs the apply role: the caller is read-only (api.read_only_uids/read_only_gids); only api.allowed_uids/allowed_gids may apply"
            ))),
        }
    }
}

/// Who may call the API. A caller is allowed when its uid is listed, or its primary gid or
/// one of its supplementary groups is listed: in `uids`/`gids` with the apply role, in
/// `read_only_*` with the read role.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AllowList {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub read_only_uids: Vec<u32>,
    pub read_only_gids: Vec<u32>,
}

impl Default for AllowList {
    fn default() -> Self {
        Self { uids: vec![0], gids: Vec::new(), read_only_uids: Vec::new(), read_only_gids: Vec::new() }
    }
}

/// Refused calls are logged at most once a second: a denied peer looping on the socket
/// must not fill the disk with the loader's log.
static REFUSED: QuietLog = QuietLog::new();

impl AllowList {
    pub fn permits(&self, peer: &Peer) -> bool {
        self.role(peer).is_some()
    }

    /// The strongest role the peer has.
    pub fn role(&self, peer: &Peer) -> Option<Role> {
        let listed = |uids: &[u32], gids: &[u32]| {
            uids.contains(&peer.uid)
                || gids.contains(&peer.gid)
                || peer.groups.iter().any(|g| gids.contains(g))
        };
        if listed(&self.uids, &self.gids) {
            return Some(Role::Apply);
        }
        listed(&self.read_only_uids, &self.read_only_gids).then_some(Role::Read)
    }

    /// The interceptor applied to every service on the socket (loader, health, reflection).
    pub fn check<T>(&self, mut request: Request<T>) -> Result<Request<T>, Status> {
        let Some(peer) = request.extensions().get::<Peer>() else {
            tracing::warn!("refused a call without peer credentials (not a unix socket peer)");
            return Err(Status::permission_denied("peer credentials unavailable"));
        };
        if let Some(role) = self.role(peer) {
            request.extensions_mut().insert(role);
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
            "uid {uid} (gid {gid}) is not allowed: add it (or one of its groups) to api.allowed_uids/allowed_gids (apply) or api.read_only_uids/read_only_gids (read)"
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
        let list = AllowList {
            uids: vec![0, 1000],
            gids: vec![2000],
            read_only_gids: vec![3000],
            ..Default::default()
        };
        assert_eq!(list.role(&peer(1000, 5, &[])), Some(Role::Apply));
        assert_eq!(list.role(&peer(7, 2000, &[])), Some(Role::Apply));
        assert_eq!(list.role(&peer(7, 3000, &[])), Some(Role::Read));
        assert!(!list.permits(&peer(7, 5, &[])));
    }

    #[test]
    fn a_supplementary_group_on_the_list_allows() {
        let list =
            AllowList { uids: vec![0], gids: vec![2000], read_only_gids: vec![3000], ..Default::default() };
        assert_eq!(list.role(&peer(7, 5, &[100, 2000])), Some(Role::Apply));
        assert_eq!(list.role(&peer(7, 5, &[3000])), Some(Role::Read));
        assert!(!list.permits(&peer(7, 5, &[100, 2001])));
    }

    #[test]
    fn calls_without_peer_credentials_are_refused() {
        let status = AllowList::default().check(Request::new(())).expect_err("no cred");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
}
