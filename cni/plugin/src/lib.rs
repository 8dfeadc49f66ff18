//! The xlane CNI plugin.
//!
//! * [`protocol`]: the CNI protocol — environment, network configuration, version
//!   negotiation, results and errors shaped per spec version (0.4.0, 1.0.0, 1.1.0).
//!
//! (Next: the veth attach through the agent's API, IPAM delegation, the binary.)
#![forbid(unsafe_code)]

pub mod attach;
pub mod protocol;
