//! Caller checks: every RPC's peer credentials (SO_PEERCRED, captured by tonic when the
//! connection is accepted) are matched against the configured allow-list.
use serde::{Deserialize, Serialize};
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

/// Who may call the API. A caller is allowed when its uid is listed or its gid is listed.
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

impl AllowList {
    pub fn permits(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    /// The interceptor applied to every service on the socket (loader, health, reflection).
    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let cred = request.extensions().get::<UdsConnectInfo>().and_then(|info| info.peer_cred);
        let Some(cred) = cred else {
            tracing::warn!("refused a call without peer credentials (not a unix socket peer)");
            return Err(Status::permission_denied("peer credentials unavailable"));
        };
        let (uid, gid) = (cred.uid(), cred.gid());
        if self.permits(uid, gid) {
            return Ok(request);
        }
        tracing::warn!(uid, gid, pid = ?cred.pid(), "refused a call from a peer not in api.allowed_uids/allowed_gids");
        Err(Status::permission_denied(format!(
            "uid {uid} (gid {gid}) is not allowed: add it to api.allowed_uids or api.allowed_gids"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_or_gid_match_allows() {
        let list = AllowList { uids: vec![0, 1000], gids: vec![2000] };
        assert!(list.permits(1000, 5));
        assert!(list.permits(7, 2000));
        assert!(!list.permits(7, 5));
    }

    #[test]
    fn calls_without_peer_credentials_are_refused() {
        let status = AllowList::default().check(Request::new(())).expect_err("no cred");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
}
