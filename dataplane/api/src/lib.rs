//! The control protocols of xlane, and the one codec, client and server loop they share.
//!
//! Two unix sockets (root-only) speak JSON lines: xlaned's control socket
//! ([`dataplane`]: xlanectl and the agent program the dataplane) and the agent's socket
//! ([`agent`]: the CNI plugin asks for addresses and attachment). Both use
//!
//! * [`codec`]: a request is `{"version":N, ...op}` on one line, a reply one JSON object on
//!   one line; a line that does not parse gets a typed [`ParseError`], which each
//!   protocol turns into its error reply; no line longer than [`MAX_LINE`];
//! * [`client`]: a blocking [`client::Client`] generic over the protocol, with a timeout;
//! * [`server`]: a mio loop serving one [`server::Handler`], which may answer a request
//!   later (deferred reply) while other connections go on being served, and into which
//!   the daemon feeds its other events.
#![forbid(unsafe_code)]

pub mod agent;
pub mod client;
pub mod codec;
pub mod dataplane;
pub mod observe;
pub mod server;

pub use client::ClientError;
pub use codec::{ErrorCode, ErrorReply, MAX_LINE, Message, ParseError};
pub use dataplane::*;

/// The MAC address of both protocols: one type with the dataplane's, serialised as its
/// `aa:bb:cc:dd:ee:ff` string.
pub use xlane_wire::{BadMac, Mac};
