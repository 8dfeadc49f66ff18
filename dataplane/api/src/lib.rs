//! The control protocols of xlane, and the one codec, client and server loop they share.
//!
//! Two unix sockets (root-only) speak JSON lines: xlaned's control socket
//! ([`dataplane`]: xlanectl and the agent program the dataplane) and the agent's socket
//! ([`agent`]: the CNI plugin asks for addresses and attachment). Both use
//!
//! * [`codec`]: a request is `{"version":N, ...op}` on one line, a reply one JSON object on
//!   one line; a line that does not parse gets a typed [`ParseError`], which each
//!   protocol turns into its error reply; no line longer than [`MAX_LINE`];
//! * [`client`]: a blocking [`client::Client`] generic over the protocol, with a timeout;
//! * [`server`]: a mio loop serving one [`server::Handler`], which may answer a request
//!   later (deferred reply) while other connections go on being served, and into which
//!   the daemon feeds its other events.
#![forbid(unsafe_code)]

pub mod agent;
pub mod client;
pub mod codec;
pub mod dataplane;
pub mod server;

pub use client::ClientError;
pub use codec::{ErrorCode, ErrorReply, MAX_LINE, Message, ParseError};
pub use dataplane::*;

use core::fmt;
use core::str::FromStr;
use serde::{Deserialize, Serialize};

/// A MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?} (expected aa:bb:cc:dd:ee:ff)")]
pub struct BadMac(pub String);

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(|| BadMac(s.to_owned()))?;
            *b = u8::from_str_radix(p, 16).map_err(|_| BadMac(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.to_owned()));
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_errors() {
        let m: Mac = "0e:00:0a:ff:01:02".parse().unwrap();
        assert_eq!(m.0, [0x0e, 0, 0x0a, 0xff, 1, 2]);
        assert_eq!(m.to_string(), "0e:00:0a:ff:01:02");
        for bad in [
            "",
            "0e:00:0a:ff:01",
            "0e:00:0a:ff:01:02:03",
            "0e-00-0a-ff-01-02",
            "zz:00:0a:ff:01:02",
            "e:000:0a:ff:01:02",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
