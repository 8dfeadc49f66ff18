//! Byte-exact checks of segmentation and coalescing against frames built by an
//! independent encoder from the kernel's rules (Scapy; `fixtures/make_fixtures.py`,
//! `offloads()`), virtio-net headers included, and against the segments the kernel's
//! own GSO made of the same super-packet (`fixtures/capture_kernel_gso.py`: a tap with
//! a virtio-net header bridged to a veth without TSO, in a private namespace; Linux
//! 6.18).

use xlane_engine::BURST;
use xlane_engine::fixtures::fixture;
use xlane_engine::offload::{Coalesced, OffloadMeta, coalesce, complete_checksum, gso};

const HEADROOM: usize = 50;

#[test]
fn segments_match_the_kernel_rules_byte_for_byte() {
    let frame = fixture("gso_tcp_in");
    let meta = OffloadMeta::from_virtio(&fixture("gso_tcp_in_vnet")).unwrap();
    let plan = gso::plan(&frame, &meta).unwrap();
    assert_eq!(plan.segments(), 4);
    let mut bufs = vec![vec![0u8; 2048]; 4];
    let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
    plan.write(&frame, HEADROOM, &mut out).unwrap();
    for (i, b) in bufs.iter().enumerate() {
        let want = fixture(&format!("gso_tcp_out_{i}"));
        let got = &b[HEADROOM..HEADROOM + plan.segment_len(i)];
        assert!(got == want.as_slice(), "segment {i}:\n got  {got:02x?}\n want {want:02x?}");
    }
}

#[test]
fn segments_match_the_kernels_own_gso() {
    let frame = fixture("gso_tcp_in");
    let meta = OffloadMeta::from_virtio(&fixture("gso_tcp_in_vnet")).unwrap();
    let plan = gso::plan(&frame, &meta).unwrap();
    let mut bufs = vec![vec![0u8; 2048]; plan.segments()];
    let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
    plan.write(&frame, 0, &mut out).unwrap();
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(b[..plan.segment_len(i)], fixture(&format!("kernel_gso_out_{i}")), "segment {i}");
    }
}

#[test]
fn the_same_super_packet_with_its_checksum_complete_segments_the_same() {
    let mut frame = fixture("gso_tcp_in");
    let mut meta = OffloadMeta::from_virtio(&fixture("gso_tcp_in_vnet")).unwrap();
    complete_checksum(&mut frame, &meta).unwrap();
    meta.csum = None;
    let plan = gso::plan(&frame, &meta).unwrap();
    let mut bufs = vec![vec![0u8; 2048]; 4];
    let mut out: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
    plan.write(&frame, 0, &mut out).unwrap();
    for (i, b) in bufs.iter().enumerate() {
        assert_eq!(b[..plan.segment_len(i)], fixture(&format!("gso_tcp_out_{i}")), "segment {i}");
    }
}

#[test]
fn segments_merge_into_the_super_packet_and_its_virtio_header() {
    let segs: Vec<Vec<u8>> = (0..3).map(|i| fixture(&format!("gro_tcp_in_{i}"))).collect();
    let mut units = [Coalesced::default(); BURST];
    assert_eq!(coalesce(&segs, true, &mut units), 1);
    let Coalesced::Merged(m) = units[0] else { panic!("{:?}", units[0]) };
    let mut out = vec![0u8; m.len()];
    let meta = m.write(&segs, &mut out).unwrap();
    assert_eq!(out, fixture("gro_tcp_out"));
    let mut hdr = [0u8; 10];
    assert_eq!(meta.to_virtio(&mut hdr), Some(10));
    assert_eq!(hdr.as_slice(), fixture("gro_tcp_out_vnet"));
}
