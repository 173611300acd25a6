//! The `GetAudit` answer: the loader reads its own `/proc` entries at call time, so the
//! report shows what the process holds now, not what its configuration intended.
use std::path::PathBuf;

use hardening::{ProcessAudit, wire};
use shared_proto::loader::v1 as pb;
use tonic::Status;

/// What the audit needs beyond `/proc`: the socket to describe and the intended state.
#[derive(Clone, Debug, Default)]
pub struct AuditContext {
    pub socket: PathBuf,
    /// The steady-state capability mask (privileges.keep).
    pub kept: u64,
    /// Start-up-only capabilities and what each was for.
    pub startup: Vec<String>,
}

impl AuditContext {
    pub fn answer(&self) -> Result<pb::GetAuditResponse, Status> {
        let audit = ProcessAudit::read(None)
            .map_err(|e| Status::internal(format!("reading this process's privileges: {e}")))?
            .with_socket(&self.socket);
        Ok(wire::to_response(&audit, self.kept, &self.startup))
    }
}
