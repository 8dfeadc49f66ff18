//! virtio-net over vhost-user for xlane's VM-based pods: moving Ethernet frames between
//! a guest's virtqueues and the dataplane.
//!
//! * [`net::drain_tx`]: every frame the guest queued on its transmit queue, header
//!   checked and stripped, handed to the caller (which copies it into the dataplane);
//! * [`net::deliver_rx`]: one frame into the guest's receive buffers, with the
//!   virtio-net header, across several buffers when the guest negotiated mergeable
//!   receive buffers.
//!
//! * [`backend`]: the vhost-user-net device (rust-vmm `vhost-user-backend`) around them,
//!   and the queues it shares with the dataplane;
//! * [`server`]: a port's socket and the thread serving one frontend after another,
//!   through a relay that puts QEMU 7.2's early `SET_VRING_ENABLE` in the spec's order
//!   and records what defines the connection ([`session`]), so that a port can be
//!   handed to another process with its guest connected (xlaned's hitless restart);
//! * [`port`]: a guest as the engine's `Port`, so the burst driver that runs AF_XDP
//!   sockets runs guests too.
//!
//! Guest memory and ring addresses come from the frontend and are not trusted: every
//! access goes through `vm-memory`'s checked accessors, and a chain that points outside
//! guest memory, is too short, or loops is a counted drop, never a panic.
#![forbid(unsafe_code)]

pub mod backend;
pub mod net;
pub mod port;
mod relay;
mod ring;
pub mod server;
pub mod session;
