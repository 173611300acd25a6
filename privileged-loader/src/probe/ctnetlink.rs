//! Is ctnetlink there? One `IPCTNL_MSG_CT_GET_STATS` request over a netfilter netlink
//! socket, answered or refused. Cheap (one round trip), and it exercises exactly the path
//! the conntracker's initial dump and event listener use.
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, setsockopt, socket,
    sockopt,
};
use nix::sys::time::TimeVal;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET_STATS: u16 = 5;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const REQUEST_SEQ: u32 = 1;

/// Asks the kernel for global conntrack statistics; `Err` says why it did not answer.
pub fn ask_stats() -> Result<(), String> {
    let fd =
        socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)
            .map_err(|e| format!("netfilter netlink socket: {e}"))?;
    // A kernel that never answers must not stall the probe.
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 200_000))
        .map_err(|e| format!("setting a receive timeout: {e}"))?;
    sendto(fd.as_raw_fd(), &stats_request(), &NetlinkAddr::new(0, 0), MsgFlags::empty())
        .map_err(|e| format!("sending IPCTNL_MSG_CT_GET_STATS: {e}"))?;
    let mut reply = [0u8; 4096];
    let len = recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty())
        .map_err(|e| format!("no answer to IPCTNL_MSG_CT_GET_STATS: {e}"))?;
    parse_reply(&reply[..len])
}

/// nlmsghdr + nfgenmsg (AF_UNSPEC, NFNETLINK_V0, res_id 0), native endian as netlink is.
pub fn stats_request() -> Vec<u8> {
    let len = (NLMSG_HDRLEN + NFGENMSG_LEN) as u32;
    let mut msg = Vec::with_capacity(len as usize);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS).to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&REQUEST_SEQ.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg
}

/// Ok for a stats reply (or a zero ack); the errno for an NLMSG_ERROR.
pub fn parse_reply(reply: &[u8]) -> Result<(), String> {
    let header =
        reply.get(..NLMSG_HDRLEN).ok_or_else(|| format!("short netlink reply ({} bytes)", reply.len()))?;
    let msg_type = u16::from_ne_bytes([header[4], header[5]]);
    if msg_type != NLMSG_ERROR {
        return Ok(());
    }
    let code = reply
        .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "truncated netlink error".to_string())?;
    match code {
        0 => Ok(()),
        negative => Err(format!("kernel answered {}", super::errno_name(-negative))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_reply(code: i32) -> Vec<u8> {
        let mut reply = vec![0u8; NLMSG_HDRLEN];
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        reply.extend_from_slice(&code.to_ne_bytes());
        reply
    }

    #[test]
    fn request_is_a_ctnetlink_get_stats() {
        let msg = stats_request();
        assert_eq!(msg.len(), 20);
        assert_eq!(u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]), 20);
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), 0x0105);
    }

    #[test]
    fn errors_carry_the_errno_name() {
        assert_eq!(parse_reply(&error_reply(-libc::EOPNOTSUPP)), Err("kernel answered EOPNOTSUPP".into()));
        assert_eq!(parse_reply(&error_reply(0)), Ok(()));
    }

    #[test]
    fn short_replies_are_errors_not_panics() {
        assert!(parse_reply(&[0u8; 3]).is_err());
        let mut truncated = error_reply(-1);
        truncated.truncate(NLMSG_HDRLEN + 2);
        assert!(parse_reply(&truncated).is_err());
    }
}
