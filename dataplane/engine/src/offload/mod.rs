//! Super-packets: offload metadata, checksum completion, software segmentation (GSO)
//! and coalescing (GRO) of TCP over IPv4.
//!
//! A port that keeps the kernel's offloads (a tap or AF_PACKET socket with a virtio-net
//! header) hands the engine frames up to 64 KiB with an [`OffloadMeta`]: the virtio-net
//! header's GSO type and segment size, checksum start and offset. The engine routes such
//! a frame once; where it leaves the node it is cut into MSS-sized packets
//! ([`gso::plan`] then [`GsoPlan::write`] into buffers the caller allocates, with
//! headroom for the VXLAN outer headers), or its checksum is completed
//! ([`complete_checksum`]). In the other direction, in-order segments of one flow within
//! a burst are merged ([`gro::coalesce`] then [`Merged::write`]) into one super-packet
//! with a GSO header, as the kernel's `tcp_gro_receive` would.
//!
//! Nothing here allocates: both directions plan first (validating, counting segments,
//! sizing the output) and then write into caller-provided buffers.
//!
//! The metadata travels *beside* [`Packet`](crate::Packet), not in it: a burst of
//! `Packet<u64>` is 16 bytes a frame, four to a cache line, on every port; most ports
//! (the uplink, vhost-user) never carry metadata, and `Packet` is built by struct literal
//! in every port crate. A port that offloads hands a parallel `[OffloadMeta; BURST]`.

#[cfg(any(test, feature = "test-utils"))]
pub mod build;
pub mod gro;
pub mod gso;
mod headers;
pub mod jumbo;
mod meta;
mod tunnel;

pub use gro::{Coalesced, MAX_FLOWS, Merged, coalesce, coalesce_whole};
pub use gso::{GsoPlan, Segmented};
pub use jumbo::{JUMBO_HEADROOM, JUMBO_MAX, Jumbo, JumboFrame};
pub use meta::{Gso, GsoKind, OffloadMeta, PartialCsum, VIRTIO_NET_HDR_LEN, VIRTIO_NET_HDR_MRG_LEN, complete_checksum};
pub use tunnel::{DatagramPart, Datagrams, datagram_parts, push_outer, write_datagrams};

crate::drop::reason_table! {
    /// Why a header or super-packet was refused: `Copy`, one byte, with a stable name,
    /// so a caller can count it as a drop.
    pub enum OffloadError {
        HeaderShort => "vnet_hdr_short", "virtio-net header shorter than 10 bytes";
        HeaderFlags => "vnet_hdr_flags", "virtio-net header flags outside NEEDS_CSUM, DATA_VALID, RSC_INFO";
        HeaderGsoType => "vnet_hdr_gso_type", "virtio-net GSO type unknown, or the ECN bit without a GSO type";
        GsoSizeZero => "gso_size_zero", "GSO type set with segment size 0";
        GsoUnsupported => "gso_unsupported", "GSO type the engine does not segment (only TCPv4)";
        NotGso => "not_gso", "segmentation asked of a frame without GSO metadata";
        CsumOutOfFrame => "csum_out_of_frame", "checksum start + offset + 2 beyond the frame";
        CsumNotTcp => "csum_not_tcp", "partial checksum of a TCP super-packet not at the TCP checksum field";
        NotIpv4 => "gso_not_ipv4", "super-packet is not Ethernet II / IPv4";
        Ipv4Malformed => "gso_ipv4_malformed", "IPv4 version, header length or total length invalid";
        Ipv4Fragment => "gso_ipv4_fragment", "super-packet is an IPv4 fragment";
        NotTcp => "gso_not_tcp", "TCPv4 GSO type on a packet that is not TCP";
        TcpMalformed => "gso_tcp_malformed", "TCP data offset below 5 or beyond the packet";
        GsoEmpty => "gso_empty", "TCP super-packet without payload";
        BufferTooSmall => "gso_buffer_small", "an output buffer cannot hold its segment (or super-packet)";
        TooFewBuffers => "gso_too_few_buffers", "fewer output buffers than segments";
        TooManySegments => "gso_too_many_segments", "super-packet would make more segments than the engine cuts one into (segment size too small)";
    }
}

impl core::fmt::Display for OffloadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for OffloadError {}

#[cfg(test)]
mod tests {
    use super::OffloadError;

    #[test]
    fn error_names_unique() {
        let mut names: Vec<_> = OffloadError::ALL.iter().map(|e| e.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OffloadError::ALL.len());
        assert_eq!(core::mem::size_of::<OffloadError>(), 1);
    }
}
