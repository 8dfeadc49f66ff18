//! Why a frame was dropped: one table generates the enum, its printable names and
//! descriptions, and (through [`DropReason::COUNT`]) the size of the per-core counter
//! array, as VPP's `vxlan_error.def` does.

/// A table of reasons (a counted drop, a refused offload): one list generates the
/// `Copy`, `u8`-sized enum, every reason in counter order ([`DropReason::ALL`]), their
/// count, snake_case names (metrics, the CLI), one-line descriptions, counter indices
/// and the lookup by name.
macro_rules! reason_table {
    ($(#[$meta:meta])* $vis:vis enum $enum:ident { $($variant:ident => $name:literal, $desc:literal;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        $vis enum $enum {
            $(#[doc = $desc] $variant,)*
        }

        impl $enum {
            /// Every reason, in counter order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)*];
            /// Number of reasons (the length of a counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// Short snake_case name, used in metrics and the CLI.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            /// One-line explanation for humans.
            #[must_use]
            pub const fn description(self) -> &'static str {
                match self { $(Self::$variant => $desc,)* }
            }

            /// Counter index.
            #[must_use]
            pub const fn index(self) -> usize {
                self as usize
            }

            /// Look a reason up by its [`name`](Self::name).
            #[must_use]
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(Self::$variant),)* _ => None }
            }
        }
    };
}
pub(crate) use reason_table;

reason_table! {
    /// A counted drop. `Copy` and `u8`-sized so a verdict array stays small.
    pub enum DropReason {
        Truncated => "truncated", "frame shorter than the headers it announces";
        NotIpv4 => "not_ipv4", "EtherType is neither IPv4 nor ARP (IPv6 is not supported yet)";
        Ipv4Malformed => "ipv4_malformed", "IPv4 version, header length or total length invalid";
        Ipv4Checksum => "ipv4_checksum", "IPv4 header checksum mismatch";
        TtlExpired => "ttl_expired", "IPv4 TTL would reach zero at this hop";
        NoRoute => "no_route", "no route for the destination address";
        UnresolvedVtep => "unresolved_vtep", "route names a remote node that is not in the table";
        UnknownPort => "unknown_port", "frame arrived on, or was routed to, a port with no role";
        NotConfigured => "not_configured", "the node's VTEP is not configured yet";
        SpoofedSource => "spoofed_source", "source IPv4 address, or ARP sender address or MAC, is not the pod's own";
        ArpMalformed => "arp_malformed", "ARP that is not Ethernet/IPv4 or is truncated";
        ArpNotRequest => "arp_not_request", "ARP reply or other operation from a pod (the engine never asks)";
        ArpOwnAddress => "arp_own_address", "ARP for the pod's own address (duplicate-address probe), not answered";
        NotVxlan => "not_vxlan", "uplink frame that is not UDP to the local VTEP address and port";
        VxlanFragment => "vxlan_fragment", "fragmented outer IPv4 packet (VXLAN is never reassembled)";
        VxlanNoVni => "vxlan_no_vni", "VXLAN I flag clear (RFC 7348: VNI not valid)";
        VxlanWrongVni => "vxlan_wrong_vni", "VXLAN network identifier is not ours";
        VxlanInnerMac => "vxlan_inner_mac", "inner destination MAC is not the local VTEP MAC";
        OverlayTransit => "overlay_transit", "decapsulated packet not for a local pod (no re-encapsulation)";
        MtuExceeded => "mtu_exceeded", "IPv4 packet larger than the pod MTU (uplink MTU - 50)";
        NoHeadroom => "no_headroom", "frame buffer has no room in front for the outer headers";
        NoEgressPort => "no_egress_port", "routed to a port this worker does not serve (still attaching, or just removed)";
        SuperPacket => "super_packet", "super-packet that could not be segmented or delivered whole (the offload counters say why)";
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unique_and_round_trip() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(DropReason::from_name(r.name()), Some(*r));
            assert!(!r.description().is_empty());
        }
        assert_eq!(DropReason::from_name("nope"), None);
    }

    /// The README's drop-reason table lists exactly these reasons, in this order.
    #[test]
    fn readme_table_in_step() {
        let readme = include_str!("../../../README.md");
        let table: Vec<(&str, &str)> = readme
            .lines()
            .skip_while(|l| !l.starts_with("### Drop reasons"))
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once("` | "))
            .map(|(name, rest)| (name, rest.trim_end_matches(" |")))
            .collect();
        let code: Vec<(&str, &str)> = DropReason::ALL.iter().map(|r| (r.name(), r.description())).collect();
        assert_eq!(table, code, "update the README's drop-reason table");
    }
}
