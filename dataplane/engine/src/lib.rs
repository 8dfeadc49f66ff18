//! The xlane packet engine: a burst pipeline over frames in caller-owned buffers.
//!
//! * [`pipeline`]: classify, ARP proxy, VXLAN decap, LPM, local delivery, VXLAN encap;
//!   one [`Verdict`] per frame.
//! * [`drop`]: the table of drop reasons (enum, names, counter indices).
//! * [`counters`]: per-core counters, summed when read.
//! * [`frame`]: a packet view with headroom.
//! * [`icmp`]: the ICMP errors the pipeline originates (time exceeded, fragmentation
//!   needed), built in place, and their rate limits.
//! * [`flow`]: the inner-flow hash for the outer UDP source port.
//! * [`port`]: what an I/O layer implements: a [`Port`] (receive, transmit, release,
//!   counters, offloads) over a [`FrameMemory`] its ports share.
//! * [`driver`]: the one burst driver over any such ports: pipeline, placement,
//!   transmission, every frame counted.
//! * [`offload`]: super-packets: virtio-net offload metadata, checksum completion,
//!   TCPv4 segmentation (GSO) and coalescing (GRO) into caller-provided buffers.
//! * [`observe`]: packet trace and capture around the pipeline, off unless installed.
//! * `mem`, `testbed` and `fixtures` (feature `test-utils`): in-memory ports, a
//!   reproducible node and its frames (the byte fixtures, frame builders), so the whole
//!   engine runs without privileges (tests, benches, examples).
//!
//! The engine has no I/O of its own: AF_XDP sockets, vhost-user guests and the
//! in-memory ports implement [`Port`] and the [`Driver`] runs them.
#![forbid(unsafe_code)]

pub mod counters;
pub mod driver;
pub mod drop;
#[cfg(any(test, feature = "test-utils"))]
pub mod fixtures;
pub mod flow;
pub mod frame;
pub mod icmp;
pub mod idle;
#[cfg(any(test, feature = "test-utils"))]
pub mod mem;
pub mod observe;
pub mod offload;
pub mod pipeline;
pub mod port;
#[cfg(any(test, feature = "test-utils"))]
pub mod testbed;

pub use counters::{CoreCounters, CounterSnapshot};
pub use driver::{Driver, MAX_SEGMENTS, Received};
pub use drop::DropReason;
pub use frame::Frame;
pub use idle::Idle;
pub use offload::{OffloadError, OffloadMeta};
pub use pipeline::{BURST, Pipeline, Verdict};
pub use port::{FrameMemory, Offloads, Packet, Port, PortCounters, bump};
