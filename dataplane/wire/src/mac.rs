//! The MAC address type of the whole workspace.
//!
//! The dataplane tables, the encapsulation template, netlink and the control protocols
//! all name this one type. smoltcp's views speak [`EthernetAddress`]; the `From`
//! conversions below are for the places that read a MAC out of one of those views.
//! With the `serde` feature a MAC (de)serialises as its `aa:bb:cc:dd:ee:ff` string.

use core::fmt;
use core::str::FromStr;
use smoltcp::wire::EthernetAddress;

/// A MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The six bytes, in wire order.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }
}

impl From<EthernetAddress> for Mac {
    fn from(a: EthernetAddress) -> Self {
        Self(a.0)
    }
}

impl From<Mac> for EthernetAddress {
    fn from(m: Mac) -> Self {
        Self(m.0)
    }
}

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMac(pub String);

impl fmt::Display for BadMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid MAC address {:?} (expected aa:bb:cc:dd:ee:ff)", self.0)
    }
}

impl core::error::Error for BadMac {}

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            // Two hex digits exactly: `from_str_radix` alone would also take "+e".
            let p = parts
                .next()
                .filter(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| BadMac(s.to_owned()))?;
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

#[cfg(feature = "serde")]
impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Mac {
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
        assert_eq!(m.as_bytes(), &[0x0e, 0, 0x0a, 0xff, 1, 2]);
        assert_eq!(m.to_string(), "0e:00:0a:ff:01:02");
        assert_eq!("0E:00:0A:FF:01:02".parse::<Mac>(), Ok(m), "upper-case hex");
        for bad in [
            "",
            "0e:00:0a:ff:01",
            "0e:00:0a:ff:01:02:03",
            "0e:00:0a:ff:01:02:",
            "0e-00-0a-ff-01-02",
            "zz:00:0a:ff:01:02",
            "e:000:0a:ff:01:02",
            "+e:00:0a:ff:01:02",
        ] {
            assert_eq!(bad.parse::<Mac>(), Err(BadMac(bad.to_owned())), "{bad}");
        }
        assert_eq!(BadMac("x".into()).to_string(), r#"invalid MAC address "x" (expected aa:bb:cc:dd:ee:ff)"#);
    }

    #[test]
    fn smoltcp_conversions_keep_the_bytes() {
        let m = Mac([2, 0, 0, 0, 0, 1]);
        let e = EthernetAddress::from(m);
        assert_eq!(e.as_bytes(), m.as_bytes());
        assert_eq!(Mac::from(e), m);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_as_a_string() {
        let m = Mac([0x0e, 0, 0x0a, 0xff, 1, 2]);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#""0e:00:0a:ff:01:02""#);
        assert_eq!(serde_json::from_str::<Mac>(r#""0e:00:0a:ff:01:02""#).unwrap(), m);
        let err = serde_json::from_str::<Mac>(r#""0e:00""#).unwrap_err().to_string();
        assert!(err.contains("invalid MAC address"), "{err}");
        assert!(serde_json::from_str::<Mac>("[14,0,10,255,1,2]").is_err(), "only the string form");
    }
}
