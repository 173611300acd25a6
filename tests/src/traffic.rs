//! Traffic inside a namespace: backends that accept/echo, and client connections.
//!
//! Sockets are created on a thread that entered the namespace ([`Netns::run`]) and then
//! used from ordinary threads: a socket stays in the namespace it was created in.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::oracle::{L4, Tuple};
use crate::{HarnessError, Netns};

const POLL: Duration = Duration::from_millis(5);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A TCP or UDP server inside a namespace: TCP connections are accepted, drained and held
/// open until the client closes them (so their conntrack entries stay ESTABLISHED); UDP
/// datagrams are echoed. Stops and closes everything on drop.
pub struct Backend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(netns: &Netns, protocol: L4, addr: SocketAddr) -> Result<Self, HarnessError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let io = |source| HarnessError::Io {
            what: format!("binding {protocol:?} {addr}"),
            netns: netns.name().into(),
            source,
        };
        let thread = match protocol {
            L4::Tcp => {
                let listener = netns.run(move || TcpListener::bind(addr))?.map_err(io)?;
                listener.set_nonblocking(true).map_err(io)?;
                std::thread::spawn(move || accept_until(listener, &flag))
            }
            L4::Udp => {
                let socket = netns.run(move || UdpSocket::bind(addr))?.map_err(io)?;
                socket.set_read_timeout(Some(POLL * 10)).map_err(io)?;
                std::thread::spawn(move || echo_until(socket, &flag))
            }
        };
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_until(listener: TcpListener, stop: &Arc<AtomicBool>) {
    let mut readers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let stop = stop.clone();
                readers.push(std::thread::spawn(move || drain_until(stream, &stop)));
                readers.retain(|r: &JoinHandle<()>| !r.is_finished());
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
}

/// Reads and discards until the client closes (or the backend stops), so that clients
/// can stream data through the NAT rule; the connection stays open meanwhile.
fn drain_until(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(POLL * 10));
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn echo_until(socket: UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((len, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..len], peer);
        }
    }
}

/// A client connection made inside a namespace; its conntrack entry lives as long as
/// the kernel keeps it (TCP: while open; UDP: the conntrack UDP timeout).
pub enum Connection {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl Connection {
    /// Connects to `to` from inside `netns` and exchanges one message, so that the
    /// entry is confirmed and has seen traffic both ways.
    pub fn open(netns: &Netns, protocol: L4, to: SocketAddr) -> Result<Self, HarnessError> {
        let name = netns.name().to_string();
        let io = move |source| HarnessError::Io {
            what: format!("{protocol:?} exchange with {to}"),
            netns: name.clone(),
            source,
        };
        let conn = netns.run(move || -> std::io::Result<Connection> {
            match protocol {
                L4::Tcp => TcpStream::connect_timeout(&to, IO_TIMEOUT).map(Connection::Tcp),
                L4::Udp => {
                    let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                        .parse()
                        .map_err(std::io::Error::other)?;
                    let socket = UdpSocket::bind(any)?;
                    socket.connect(to)?;
                    socket.set_read_timeout(Some(IO_TIMEOUT))?;
                    socket.send(b"ping")?;
                    let mut buf = [0u8; 16];
                    socket.recv(&mut buf)?;
                    Ok(Connection::Udp(socket))
                }
            }
        })?;
        let conn = conn.map_err(io.clone())?;
        if let Connection::Tcp(stream) = &conn {
            let mut stream = stream;
            stream.write_all(b"ping").map_err(io)?;
        }
        Ok(conn)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Connection::Tcp(s) => s.local_addr(),
            Connection::Udp(s) => s.local_addr(),
        }
    }

    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Connection::Tcp(s) => s.peer_addr(),
            Connection::Udp(s) => s.peer_addr(),
        }
    }

    /// The original-direction tuple the kernel records for this connection.
    pub fn original_tuple(&self) -> std::io::Result<Tuple> {
        let (local, peer) = (self.local_addr()?, self.peer_addr()?);
        let protocol = match self {
            Connection::Tcp(_) => L4::Tcp,
            Connection::Udp(_) => L4::Udp,
        };
        Ok(Tuple { protocol, src: local.ip(), sport: local.port(), dst: peer.ip(), dport: peer.port() })
    }
}
