//! The network sockets a process listens on: its socket inodes (`/proc/<pid>/fd`) matched
//! against its network namespace's tables (`/proc/<pid>/net/{tcp,tcp6,udp,udp6}`).
//! Listening TCP sockets and every UDP socket (a bound UDP socket receives) count.
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use crate::process::AuditError;

/// `tcp 127.0.0.1:9090`-style names of the sockets process `proc_dir` listens on.
pub fn listening_sockets(proc_dir: &Path) -> Result<Vec<String>, AuditError> {
    let inodes = socket_inodes(proc_dir)?;
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let path = proc_dir.join("net").join(table);
        // A kernel without IPv6 has no tcp6/udp6 table: nothing listens there.
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        found.extend(listening_in(&text, table, &inodes));
    }
    found.sort();
    Ok(found)
}

fn socket_inodes(proc_dir: &Path) -> Result<HashSet<u64>, AuditError> {
    let fd_dir = proc_dir.join("fd");
    let entries =
        std::fs::read_dir(&fd_dir).map_err(|source| AuditError::Read { path: fd_dir.clone(), source })?;
    Ok(entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect())
}

/// The rows of one `/proc/net/<table>` that belong to `inodes` and listen.
fn listening_in(text: &str, table: &str, inodes: &HashSet<u64>) -> Vec<String> {
    let tcp = table.starts_with("tcp");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = cols.get(9)?.parse().ok()?;
            let listening = !tcp || *cols.get(3)? == "0A";
            if !listening || !inodes.contains(&inode) {
                return None;
            }
            Some(format!("{} {}", &table[..3], endpoint(cols.get(1)?)?))
        })
        .collect()
}

/// `0100007F:1F90` → `127.0.0.1:8080`; IPv6 addresses are four little-endian words.
fn endpoint(hex: &str) -> Option<String> {
    let (addr, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.swap_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?.swap_bytes();
                word.copy_from_slice(&w.to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
   1: 0100007F:A0B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n";

    #[test]
    fn only_listening_rows_of_our_inodes_count() {
        let ours: HashSet<u64> = [111, 222].into();
        assert_eq!(listening_in(TCP, "tcp", &ours), vec!["tcp 127.0.0.1:8080"]);
        assert!(listening_in(TCP, "tcp", &[333].into()).is_empty());
    }

    #[test]
    fn decodes_ipv6_endpoints() {
        assert_eq!(endpoint("00000000000000000000000001000000:0035").as_deref(), Some("[::1]:53"));
    }

    #[test]
    fn sees_a_socket_this_process_listens_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let found = listening_sockets(Path::new("/proc/self")).expect("read /proc/self");
        assert!(found.contains(&format!("tcp 127.0.0.1:{port}")), "{found:?}");
    }
}
