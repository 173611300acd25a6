//! Caller checks: every RPC's peer credentials (SO_PEERCRED, captured by tonic when the
//! connection is accepted) are matched against the configured allow-list, which gives the
//! caller a [`Role`]: `Apply` (the controller: may apply configs and read), `Read`
//! (`loaderctl` users: may only read), or none (refused). Changing RPCs check the role.
use serde::{Deserialize, Serialize};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

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

/// Who may call the API. A caller is allowed when its uid is listed or its gid is listed:
/// in `uids`/`gids` with the apply role, in `read_only_*` with the read role.
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

impl AllowList {
    pub fn permits(&self, uid: u32, gid: u32) -> bool {
        self.role(uid, gid).is_some()
    }

    /// The strongest role the credentials have.
    pub fn role(&self, uid: u32, gid: u32) -> Option<Role> {
        if self.uids.contains(&uid) || self.gids.contains(&gid) {
            return Some(Role::Apply);
        }
        (self.read_only_uids.contains(&uid) || self.read_only_gids.contains(&gid)).then_some(Role::Read)
    }

    /// The interceptor applied to every service on the socket (loader, health, reflection).
    pub fn check<T>(&self, mut request: Request<T>) -> Result<Request<T>, Status> {
        let cred = request.extensions().get::<UdsConnectInfo>().and_then(|info| info.peer_cred);
        let Some(cred) = cred else {
            tracing::warn!("refused a call without peer credentials (not a unix socket peer)");
            return Err(Status::permission_denied("peer credentials unavailable"));
        };
        let (uid, gid) = (cred.uid(), cred.gid());
        if let Some(role) = self.role(uid, gid) {
            request.extensions_mut().insert(role);
            return Ok(request);
        }
        tracing::warn!(uid, gid, pid = ?cred.pid(), "refused a call from a peer not in api.allowed_uids/allowed_gids");
        Err(Status::permission_denied(format!(
            "uid {uid} (gid {gid}) is not allowed: add it to api.allowed_uids/allowed_gids (apply) or api.read_only_uids/read_only_gids (read)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_or_gid_match_allows() {
        let list = AllowList {
            uids: vec![0, 1000],
            gids: vec![2000],
            read_only_gids: vec![3000],
            ..Default::default()
        };
        assert_eq!(list.role(1000, 5), Some(Role::Apply));
        assert_eq!(list.role(7, 2000), Some(Role::Apply));
        assert_eq!(list.role(7, 3000), Some(Role::Read));
        assert!(!list.permits(7, 5));
    }

    #[test]
    fn calls_without_peer_credentials_are_refused() {
        let status = AllowList::default().check(Request::new(())).expect_err("no cred");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
}
