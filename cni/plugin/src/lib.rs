//! The xlane CNI plugin.
//!
//! * [`protocol`]: the CNI protocol — environment, network configuration, version
//!   negotiation, results and errors shaped per spec version (0.4.0, 1.0.0, 1.1.0).
//! * [`attach`]: ADD/DEL/CHECK/STATUS/GC — a veth pair per pod, addressed by the agent
//!   (or a delegated IPAM plugin) and attached to the dataplane through the agent.
//! * [`delegate`]: running a standard IPAM plugin found on `CNI_PATH`.
#![forbid(unsafe_code)]

pub mod attach;
pub mod delegate;
pub mod protocol;
