//! Who is at the other end of a connection, read from the kernel when it is accepted:
//! SO_PEERCRED (uid, primary gid, pid) and SO_PEERGROUPS (supplementary groups).
use std::os::fd::AsRawFd;

use tokio::net::UnixStream;

/// The connection's peer, attached to every request of that connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// Supplementary groups at the time the peer connected.
    pub groups: Vec<u32>,
}

impl Peer {
    pub fn of(stream: &UnixStream) -> std::io::Result<Self> {
        let cred = stream.peer_cred()?;
        Ok(Self { uid: cred.uid(), gid: cred.gid(), pid: cred.pid(), groups: peer_groups(stream)? })
    }
}

fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is a writable buffer of `len` bytes; the kernel writes at most
        // `len` bytes and sets `len` to the size it needs or wrote.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() {
            return Err(err);
        }
        groups.resize(needed, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_the_peers_credentials_and_supplementary_groups() {
        let (a, _b) = UnixStream::pair().expect("pair");
        let peer = Peer::of(&a).expect("peer");
        // SAFETY: getuid/getgid cannot fail.
        assert_eq!(peer.uid, unsafe { libc::getuid() });
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        let own = nix::unistd::getgroups().expect("getgroups");
        let own: Vec<u32> = own.iter().map(|g| g.as_raw()).collect();
        assert_eq!(peer.groups, own);
    }
}
