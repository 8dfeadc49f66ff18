//! The perf-lab: the one-command demo, the interop scenario and the measurements, all in
//! network namespaces built by `xlane-netlab`.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cni_latency;
pub mod contender;
pub mod control_plane;
pub mod crash_gap;
pub mod demo;
pub mod forward;
pub mod interop;
pub mod kernel;
pub mod losses;
pub mod offload_ceiling;
pub mod profile;
pub mod report;
pub mod traffic;
pub mod vhost_bench;

/// The agent datastore a measurement runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Store {
    /// The file store (one host).
    File,
    /// etcd on loopback.
    Etcd,
}
