//! Everything xlane does with the kernel's XDP machinery, and the only xlane crate
//! allowed `unsafe`:
//!
//! * [`sys`]: the bpf(2) commands (maps, program load, links, test runs);
//! * [`asm`] and [`programs`]: the XDP pinhole programs, emitted from Rust;
//! * [`fdpass`]: descriptors to another process (`SCM_RIGHTS`), for a hitless restart;
//! * [`attach`]: an XSKMAP, a loaded program and its link on one interface, native XDP
//!   with fallback to generic;
//! * [`xsk`]: UMEM and AF_XDP sockets (their rings mapped here), with safe frame access;
//! * [`port`]: an AF_XDP socket as the engine's `Port`, its UMEM as the `FrameMemory`;
//! * [`packet`]: an AF_PACKET socket with a virtio-net header on a pod's veth as the
//!   engine's `Port`, keeping the pod's offloads (super-packets);
//! * [`udp_gso`]: UDP sockets with `UDP_SEGMENT` beside the uplink's AF_XDP sockets, which
//!   send encapsulated super-packets through the host's stack as one buffer.

// The workspace forbids unsafe code; this crate is where it lives instead of everywhere.
#![allow(
    unsafe_code,
    reason = "the one crate that talks to the kernel (bpf(2), mmap'd rings, UMEM); every unsafe block carries a SAFETY comment"
)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod asm;
pub mod attach;
pub mod fdpass;
pub mod packet;
pub mod port;
pub mod programs;
pub mod sys;
pub mod udp_gro;
pub mod udp_gso;
pub mod xsk;
