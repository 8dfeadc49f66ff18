//! The agent's protocol for the CNI plugin, defined in `xlane-api` beside xlaned's (see
//! [`xlane_api::agent`]) so that the plugin depends on the protocol, not on the agent.

pub use xlane_api::agent::*;
