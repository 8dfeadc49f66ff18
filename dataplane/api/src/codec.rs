//! The versioned JSON-lines codec both control protocols share.
//!
//! A request is one JSON object on one line: the protocol version beside the flattened
//! operation, `{"version":1,"op":"status"}`. A reply is one JSON object on one line.
//! [`parse`] turns a line into the typed operation or a typed [`ParseError`], from which
//! each protocol builds its error reply ([`ErrorReply::from_error`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Longest line either end accepts (a batch of ~100k changes fits comfortably). The
/// server answers a longer request with a `bad_request` error and closes that
/// connection; the client refuses to send a longer request or read a longer reply.
pub const MAX_LINE: usize = 64 << 20;

/// Error categories, shared by every protocol's error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a known request.
    BadRequest,
    /// Another protocol version.
    UnsupportedVersion,
    /// Well-formed but invalid (bad CIDR, VNI out of range, address in use, …).
    Invalid,
    /// The referenced object does not exist.
    NotFound,
    /// The daemon could not do it (interface setup failed, …).
    Failed,
}

/// A protocol's request operation: what follows `"version"` in a request line.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// The protocol version requests must carry.
    const VERSION: u32;
    /// The reply type.
    type Reply: ErrorReply;
}

/// A protocol's reply type: it can say that a request failed.
pub trait ErrorReply: Serialize + DeserializeOwned + Send + 'static {
    /// The error reply with this code and message.
    fn from_error(code: ErrorCode, message: String) -> Self;
    /// The code and message if this reply is an error (for logging).
    fn as_error(&self) -> Option<(ErrorCode, &str)>;
}

/// Declare a protocol: `protocol!(pub Op => Reply, version VERSION)` makes `Op` a
/// [`Message`] of that version answered by `Reply`, makes `Reply` an [`ErrorReply`]
/// through its `Error { code, message }` variant, and gives `Reply` an `error(code,
/// message)` constructor of the visibility given (`pub`, or `pub(crate)` for a private
/// protocol).
macro_rules! protocol {
    ($vis:vis $op:ident => $reply:ident, version $version:expr) => {
        impl $crate::codec::Message for $op {
            const VERSION: u32 = $version;
            type Reply = $reply;
        }

        impl $crate::codec::ErrorReply for $reply {
            fn from_error(code: $crate::codec::ErrorCode, message: String) -> Self {
                Self::Error { code, message }
            }
            fn as_error(&self) -> Option<($crate::codec::ErrorCode, &str)> {
                match self {
                    Self::Error { code, message } => Some((*code, message)),
                    _ => None,
                }
            }
        }

        impl $reply {
            /// An error reply.
            $vis fn error(code: $crate::codec::ErrorCode, message: impl Into<String>) -> Self {
                Self::Error { code, message: message.into() }
            }
        }
    };
}
pub(crate) use protocol;

/// The request envelope: `{"version":N, ...op}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<O> {
    /// Must be the protocol's [`Message::VERSION`].
    pub version: u32,
    /// What to do.
    #[serde(flatten)]
    pub op: O,
}

impl<O: Message> Envelope<O> {
    /// A request of the protocol's current version.
    #[must_use]
    pub fn new(op: O) -> Self {
        Self { version: O::VERSION, op }
    }
}

/// Why a request line was refused.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not a JSON value.
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// No numeric `"version"` member.
    #[error("missing \"version\"")]
    MissingVersion,
    /// Another protocol version.
    #[error("protocol version {got} is not supported (this end speaks {want})")]
    UnsupportedVersion {
        /// The version the request carried.
        got: u64,
        /// The version spoken here.
        want: u32,
    },
    /// JSON of the right version, but not a valid operation.
    #[error("{0}")]
    Invalid(#[source] serde_json::Error),
    /// The line exceeds [`MAX_LINE`].
    #[error("request longer than {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
}

impl ParseError {
    /// The error category a reply carries.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            Self::NotJson(_) | Self::MissingVersion | Self::Invalid(_) | Self::TooLong { .. } => ErrorCode::BadRequest,
        }
    }

    /// The error reply of protocol `R` for this failure.
    #[must_use]
    pub fn reply<R: ErrorReply>(&self) -> R {
        R::from_error(self.code(), self.to_string())
    }
}

/// Parse one request line (without or with its trailing newline).
///
/// # Errors
/// Why the line is not a request of `O`'s protocol and version.
pub fn parse<O: Message>(line: &[u8]) -> Result<O, ParseError> {
    if line.len() > MAX_LINE {
        return Err(ParseError::TooLong { limit: MAX_LINE });
    }
    let value: serde_json::Value = serde_json::from_slice(line).map_err(ParseError::NotJson)?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(O::VERSION) => {}
        Some(got) => return Err(ParseError::UnsupportedVersion { got, want: O::VERSION }),
        None => return Err(ParseError::MissingVersion),
    }
    serde_json::from_value::<Envelope<O>>(value).map(|e| e.op).map_err(ParseError::Invalid)
}

/// One request line, newline included.
///
/// # Errors
/// Serialization failure (a map with non-string keys; none of our types has one).
pub fn encode_request<O: Message>(op: O) -> Result<Vec<u8>, serde_json::Error> {
    encode(&Envelope::new(op))
}

/// One line of JSON (a reply, or an envelope), newline included.
///
/// # Errors
/// Serialization failure.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut v = serde_json::to_vec(value)?;
    v.push(b'\n');
    Ok(v)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A toy protocol for the codec and server tests.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
    pub(crate) enum TestOp {
        Echo { text: String },
        Slow { id: u32 },
        Stop,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "result", rename_all = "snake_case")]
    pub(crate) enum TestReply {
        Error { code: ErrorCode, message: String },
        Echo { text: String },
        Slow { id: u32 },
    }

    protocol!(pub(crate) TestOp => TestReply, version 3);

    /// The code of the error reply a protocol's parse gave (for each protocol's tests);
    /// panics on anything else.
    pub(crate) fn error_code<O: std::fmt::Debug, R: ErrorReply + std::fmt::Debug>(parsed: Result<O, R>) -> ErrorCode {
        match parsed {
            Err(reply) => reply.as_error().unwrap_or_else(|| panic!("not an error: {reply:?}")).0,
            Ok(op) => panic!("parsed: {op:?}"),
        }
    }

    #[test]
    fn envelope_is_version_beside_the_op() {
        let line = encode_request(TestOp::Echo { text: "hi".into() }).unwrap();
        assert_eq!(line, b"{\"version\":3,\"op\":\"echo\",\"text\":\"hi\"}\n");
        assert_eq!(parse::<TestOp>(&line).unwrap(), TestOp::Echo { text: "hi".into() });
        assert_eq!(encode(&TestReply::Slow { id: 7 }).unwrap(), b"{\"result\":\"slow\",\"id\":7}\n");
    }

    #[test]
    fn each_failure_has_its_type_and_code() {
        let err = |line: &[u8]| parse::<TestOp>(line).unwrap_err();
        assert!(matches!(err(b"\x00\xffgarbage"), ParseError::NotJson(_)));
        assert!(matches!(err(br#"{"op":"stop"}"#), ParseError::MissingVersion));
        assert!(matches!(err(br#"{"version":"3","op":"stop"}"#), ParseError::MissingVersion));
        assert!(matches!(err(br#"{"version":4,"op":"stop"}"#), ParseError::UnsupportedVersion { got: 4, want: 3 }));
        assert!(matches!(err(br#"{"version":3,"op":"explode"}"#), ParseError::Invalid(_)));
        assert!(matches!(err(br#"{"version":3,"op":"echo","text":1}"#), ParseError::Invalid(_)));
        assert!(matches!(err(&vec![b' '; MAX_LINE + 1]), ParseError::TooLong { limit: MAX_LINE }));
        assert_eq!(err(br#"{"version":4,"op":"stop"}"#).code(), ErrorCode::UnsupportedVersion);
        for bad in [&b"[1"[..], br#"{"op":"stop"}"#, br#"{"version":3,"op":"x"}"#] {
            assert_eq!(err(bad).code(), ErrorCode::BadRequest);
        }
        let reply: TestReply = err(b"nope").reply();
        let Some((ErrorCode::BadRequest, message)) = reply.as_error() else { panic!("{reply:?}") };
        assert!(message.starts_with("not JSON"), "{message}");
        let TestReply::Error { message, .. } = ParseError::TooLong { limit: MAX_LINE }.reply() else { panic!() };
        assert!(message.contains(&MAX_LINE.to_string()), "the error names the limit: {message}");
    }

    #[test]
    fn the_error_reply_is_one_variant_both_ways() {
        let reply = TestReply::error(ErrorCode::Invalid, "no");
        assert_eq!(reply, TestReply::from_error(ErrorCode::Invalid, "no".into()));
        assert_eq!(reply.as_error(), Some((ErrorCode::Invalid, "no")));
        assert_eq!(TestReply::Slow { id: 1 }.as_error(), None);
        assert_eq!(encode(&reply).unwrap(), b"{\"result\":\"error\",\"code\":\"invalid\",\"message\":\"no\"}\n");
    }
}
