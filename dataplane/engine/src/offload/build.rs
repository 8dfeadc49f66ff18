//! A TCPv4 super-packet builder for tests, benches and the no-allocation check (feature
//! `test-utils`): the frame a Linux sender hands a device with TSO, its headers written
//! by hand and its checksum either complete or partial; and the outer headers the
//! pipeline puts in front of one bound for another node.

use super::{Gso, GsoKind, OffloadMeta, PartialCsum};
use xlane_wire::encap::{EncapParams, EncapTemplate};
use xlane_wire::{Mac, VXLAN_OVERHEAD, checksum};

/// The outer headers towards 192.168.50.2:8472 (from 192.168.50.1, VNI 1, TTL `ttl`).
#[must_use]
pub fn template(ttl: u8) -> EncapTemplate {
    EncapTemplate::new(&EncapParams {
        src_mac: Mac([2, 0, 0, 0, 0, 1]),
        dst_mac: Mac([2, 0, 0, 0, 0, 2]),
        src_ip: core::net::Ipv4Addr::new(192, 168, 50, 1),
        dst_ip: core::net::Ipv4Addr::new(192, 168, 50, 2),
        dst_port: 8472,
        vni: 1,
        ttl,
    })
}

/// `inner` behind [`template`]'s headers with UDP source port `src_port`, their lengths
/// meaningless, as the pipeline leaves them on an encapsulated super-packet.
#[must_use]
pub fn encapsulated(inner: &[u8], src_port: u16, ttl: u8) -> Vec<u8> {
    let t = template(ttl);
    let mut f = vec![0u8; VXLAN_OVERHEAD + inner.len()];
    let (outer, rest) = f.split_at_mut(VXLAN_OVERHEAD);
    t.write(outer.try_into().expect("50 bytes"), 60_000, src_port);
    rest.copy_from_slice(inner);
    f
}

/// The fields of a super-packet a test varies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSuper {
    /// IPv4 identification of the first segment.
    pub ident: u16,
    /// TTL.
    pub ttl: u8,
    /// TOS byte (DSCP and ECN).
    pub tos: u8,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub ip_options: Vec<u8>,
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// TCP flag byte (ACK is 0x10).
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// TCP options (a multiple of 4 bytes, at most 40).
    pub tcp_options: Vec<u8>,
    /// Payload.
    pub payload: Vec<u8>,
    /// Segment size for the GSO metadata.
    pub mss: u16,
    /// Leave the TCP checksum partial (`NEEDS_CSUM`) rather than complete.
    pub partial: bool,
}

impl TcpSuper {
    /// 10.244.1.2:40000 → 10.244.2.3:5201 (iperf3), ACK|PSH, timestamps, DF, TTL 64.
    #[must_use]
    pub fn new(payload: Vec<u8>, mss: u16) -> Self {
        Self {
            ident: 0x1234,
            ttl: 64,
            tos: 0,
            ip_options: Vec::new(),
            src: [10, 244, 1, 2],
            dst: [10, 244, 2, 3],
            seq: 1_000_000,
            ack: 2_000_000,
            flags: 0x18,
            window: 502,
            urgent: 0,
            // NOP, NOP, timestamps (TSval 0x01020304, TSecr 0x05060708).
            tcp_options: vec![1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8],
            payload,
            mss,
            partial: true,
        }
    }

    /// The frame and its metadata.
    ///
    /// # Panics
    /// If options are not multiples of 4 bytes up to 40, or the packet exceeds 65535 bytes.
    #[must_use]
    pub fn build(&self) -> (Vec<u8>, OffloadMeta) {
        assert!(self.ip_options.len().is_multiple_of(4) && self.ip_options.len() <= 40);
        assert!(self.tcp_options.len().is_multiple_of(4) && self.tcp_options.len() <= 40);
        let (ihl, thl) = (20 + self.ip_options.len(), 20 + self.tcp_options.len());
        let total = u16::try_from(ihl + thl + self.payload.len()).expect("at most 65535 bytes");
        let mut f = Vec::with_capacity(14 + usize::from(total));
        f.extend_from_slice(&[0x0e, 0, 0, 0, 2, 1, 0x0e, 0, 0, 0, 1, 1, 0x08, 0x00]);
        #[expect(clippy::cast_possible_truncation, reason = "ihl ≤ 60, thl ≤ 60")]
        let (ihl_words, thl_words) = ((ihl / 4) as u8, (thl / 4) as u8);
        f.extend_from_slice(&[0x40 | ihl_words, self.tos]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&self.ident.to_be_bytes());
        f.extend_from_slice(&[0x40, 0, self.ttl, 6, 0, 0]);
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.ip_options);
        let c = !checksum::sum(&f[14..14 + ihl]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let l4 = f.len();
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&5201u16.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.extend_from_slice(&[thl_words << 4, self.flags]);
        f.extend_from_slice(&self.window.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.urgent.to_be_bytes());
        f.extend_from_slice(&self.tcp_options);
        f.extend_from_slice(&self.payload);
        let tcp_len = u16::try_from(f.len() - l4).expect("checked above");
        let pseudo = checksum::pseudo_ipv4(self.src, self.dst, 6, tcp_len);
        let c = if self.partial { pseudo } else { !checksum::combine(&[pseudo, checksum::sum(&f[l4..])]) };
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        #[expect(clippy::cast_possible_truncation, reason = "l4 ≤ 74, headers ≤ 134")]
        let meta = OffloadMeta {
            csum: self.partial.then_some(PartialCsum { start: l4 as u16, offset: 16 }),
            gso: Some(Gso { kind: GsoKind::TcpV4, size: self.mss, ecn: self.flags & 0x80 != 0 }),
            hdr_len: (l4 + thl) as u16,
            data_valid: false,
        };
        (f, meta)
    }
}
