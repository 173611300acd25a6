//! Connection tuples as the API sees them: addresses, ports, protocol.
use std::net::IpAddr;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Tuple {
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub protocol: Protocol,
}

/// One NAT'd connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Entry {
    pub original: Tuple,
    pub reply: Tuple,
    pub netns: u32,
}

impl Entry {
    /// True when NAT rewrote the entry: its reply tuple is not the original turned around
    /// (the rule the eBPF programs apply too, `is_plain_inverse`).
    pub fn is_nat(&self) -> bool {
        is_nat(&self.original, &self.reply)
    }
}

/// True when `reply` is not `original` turned around.
pub fn is_nat(original: &Tuple, reply: &Tuple) -> bool {
    let (o, r) = (original, reply);
    !(o.src == r.dst && o.dst == r.src && o.src_port == r.dst_port && o.dst_port == r.src_port)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TupleError {
    #[error("invalid {field} address {value:?}: expected an IPv4 or IPv6 address")]
    Address { field: &'static str, value: String },
    #[error("invalid {field} {value}: ports are 0-65535")]
    Port { field: &'static str, value: u32 },
    #[error("invalid protocol {0}: expected tcp (6) or udp (17)")]
    Protocol(i32),
    #[error("source and destination address families differ")]
    MixedFamilies,
}

impl Tuple {
    /// Builds a tuple from API fields, checking each.
    pub fn parse(
        src: &str,
        src_port: u32,
        dst: &str,
        dst_port: u32,
        protocol: i32,
    ) -> Result<Self, TupleError> {
        let addr = |field, value: &str| {
            value.parse::<IpAddr>().map_err(|_| TupleError::Address { field, value: value.to_string() })
        };
        let port = |field, value: u32| u16::try_from(value).map_err(|_| TupleError::Port { field, value });
        let protocol = u8::try_from(protocol)
            .ok()
            .and_then(Protocol::from_number)
            .ok_or(TupleError::Protocol(protocol))?;
        let (src, dst) = (addr("source", src)?, addr("destination", dst)?);
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(TupleError::MixedFamilies);
        }
        Ok(Tuple {
            src,
            src_port: port("source port", src_port)?,
            dst,
            dst_port: port("destination port", dst_port)?,
            protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_tuple() {
        let t = Tuple::parse("10.0.0.1", 1234, "10.0.0.2", 80, 6).expect("valid tuple");
        assert_eq!(t.protocol, Protocol::Tcp);
        assert_eq!(t.dst_port, 80);
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        assert_eq!(
            Tuple::parse("nope", 1, "10.0.0.2", 80, 6),
            Err(TupleError::Address { field: "source", value: "nope".into() })
        );
        assert_eq!(
            Tuple::parse("10.0.0.1", 70000, "10.0.0.2", 80, 6),
            Err(TupleError::Port { field: "source port", value: 70000 })
        );
        assert_eq!(Tuple::parse("10.0.0.1", 1, "10.0.0.2", 80, 1), Err(TupleError::Protocol(1)));
        assert_eq!(Tuple::parse("10.0.0.1", 1, "::1", 80, 17), Err(TupleError::MixedFamilies));
    }
}
