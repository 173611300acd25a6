//! The prebuilt conntracker on the real kernel: with guessed offsets and no BTF, it fills
//! the `conntrack` map with exactly the NAT'd entries `conntrack -L` shows. Needs root.
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::thread;
use std::time::Duration;

use aya::maps::HashMap;
use privileged_loader::asset::AssetLoader;
use privileged_loader::btf::BtfError;
use privileged_loader::conntrack::map::{CtKey, CtValue, entry_of};
use privileged_loader::conntrack::prebuilt::{self, Hook, PrebuiltSettings};
use privileged_loader::offsetguess::OffsetGuessConfig;
use privileged_loader::status::Registry;

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("pb-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"]);
        ns
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn nft(&self, rules: &str) {
        let path = std::env::temp_dir().join(format!("{}.nft", self.0));
        std::fs::write(&path, rules).unwrap();
        self.exec(&["nft", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(path);
    }

    /// Runs `f` on a thread that lives in this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    fn inode(&self) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.0)).unwrap().ino() as u32
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `conntrack -L` NAT'd entries as "proto src:sport>dst:dport reply src:sport>dst:dport".
fn oracle(ns: &Netns) -> BTreeSet<String> {
    let text = ns.exec(&["conntrack", "-L", "-o", "extended"]);
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let proto = if line.contains(" tcp ") {
            "tcp"
        } else if line.contains(" udp ") {
            "udp"
        } else {
            continue;
        };
        let field = |key: &str, nth: usize| {
            line.split_whitespace().filter_map(|w| w.strip_prefix(key)).nth(nth).unwrap_or("").to_string()
        };
        let tuple = |n| {
            format!("{}:{}>{}:{}", field("src=", n), field("sport=", n), field("dst=", n), field("dport=", n))
        };
        let (orig, reply) = (tuple(0), tuple(1));
        let inverse = format!(
            "{}:{}>{}:{}",
            field("src=", 1),
            field("sport=", 1),
            field("dst=", 1),
            field("dport=", 1)
        ) == format!(
            "{}:{}>{}:{}",
            field("dst=", 0),
            field("dport=", 0),
            field("src=", 0),
            field("sport=", 0)
        );
        if !inverse {
            out.insert(format!("{proto} {orig} reply {reply}"));
        }
    }
    out
}

#[test]
fn prebuilt_fills_the_map_with_what_conntrack_shows() {
    let registry = Registry::default();
    let assets = AssetLoader::new(
        Err(BtfError::NotFound { tried: vec!["hidden by the test".into()] }),
        None,
        registry.clone(),
    );
    let settings = PrebuiltSettings {
        max_entries: 4096,
        tcpv6_enabled: true,
        udpv6_enabled: true,
        offsetguess: OffsetGuessConfig::default(),
    };
    let loaded =
        prebuilt::load(&settings, &assets, &registry, "conntrack").expect("prebuilt loads without BTF");
    assert_eq!(loaded.hook, Hook::RawTracepoint, "no kprobes on this kernel");

    let ns = Netns::new("map");
    ns.nft(
        "table ip nat {\n chain output {\n  type nat hook output priority -100;\n  ip daddr 10.99.0.1 tcp dport 80 dnat to 127.0.0.1:8080\n  ip daddr 10.99.0.1 udp dport 53 dnat to 127.0.0.1:5353\n }\n}\n",
    );
    ns.run(|| {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 8080)).unwrap();
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 5353)).unwrap();
        for _ in 0..5 {
            let _c = TcpStream::connect((Ipv4Addr::new(10, 99, 0, 1), 80)).unwrap();
            let _ = tcp.accept().unwrap();
            let u = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            u.send_to(b"x", (Ipv4Addr::new(10, 99, 0, 1), 53)).unwrap();
        }
        drop(udp);
    });
    thread::sleep(Duration::from_millis(100));

    let map: HashMap<_, CtKey, CtValue> = HashMap::try_from(loaded.ebpf.map("conntrack").unwrap()).unwrap();
    let netns = ns.inode();
    let mut seen = BTreeSet::new();
    for item in map.iter() {
        let (k, v) = item.unwrap();
        if let Some(e) = entry_of(&k, &v).unwrap() {
            if e.netns == netns {
                let t = |t: &privileged_loader::conntrack::Tuple| {
                    format!("{}:{}>{}:{}", t.src, t.src_port, t.dst, t.dst_port)
                };
                let proto = format!("{:?}", e.original.protocol).to_lowercase();
                seen.insert(format!("{proto} {} reply {}", t(&e.original), t(&e.reply)));
            }
        }
    }
    let want = oracle(&ns);
    assert_eq!(want.len(), 10, "5 TCP + 5 UDP NAT entries expected in conntrack -L: {want:?}");
    assert_eq!(seen, want, "the prebuilt map must hold exactly the NAT'd entries conntrack -L shows");
}
