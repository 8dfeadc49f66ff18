//! The xlane packet engine: a burst pipeline over frames in caller-owned buffers.
//!
//! * [`pipeline`]: classify, ARP proxy, VXLAN decap, LPM, local delivery, VXLAN encap;
//!   one [`Verdict`] per frame.
//! * [`drop`]: the table of drop reasons (enum, names, counter indices).
//! * [`counters`]: per-core counters, summed when read.
//! * [`frame`]: a packet view with headroom.
//! * [`flow`]: the inner-flow hash for the outer UDP source port.
//! * [`mem`]: in-memory ports, so the whole engine runs without privileges (tests,
//!   benches, the demo).
//!
//! The engine has no I/O of its own: the AF_XDP daemon and the in-memory ports hand it
//! bursts of frames and act on the verdicts.
#![forbid(unsafe_code)]

pub mod counters;
pub mod drop;
pub mod flow;
pub mod frame;
pub mod mem;
pub mod pipeline;
pub mod testbed;

pub use counters::{CoreCounters, CounterSnapshot};
pub use drop::DropReason;
pub use frame::Frame;
pub use pipeline::{BURST, Pipeline, Verdict};
