//! The blocking client for either protocol (xlanectl, the agent towards xlaned, the CNI
//! plugin towards the agent, tests).

use crate::codec::{self, MAX_LINE, Message};
use std::io::{self, BufRead, Read, Write};
use std::marker::PhantomData;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A failure talking to a control socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket I/O.
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    /// No reply within the client's timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The request or the reply is longer than [`MAX_LINE`].
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    /// The request could not be encoded or the reply was not understood.
    #[error("unreadable reply: {0}")]
    Decode(#[from] serde_json::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// An earlier call failed midway; the connection is out of step.
    #[error("connection unusable after an earlier failure")]
    Broken,
}

impl From<ClientError> for io::Error {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Io(e) => e,
            ClientError::Timeout(_) => io::Error::new(io::ErrorKind::TimedOut, e),
            ClientError::Closed => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            other => io::Error::other(other),
        }
    }
}

/// A blocking client speaking `O`'s protocol: one request, one reply, in turn.
#[derive(Debug)]
pub struct Client<O> {
    reader: io::BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Option<Duration>,
    broken: bool,
    _op: PhantomData<fn(O)>,
}

impl<O: Message> Client<O> {
    /// How long a call waits for its reply unless told otherwise.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// Connect to the socket at `path`, with [`Self::DEFAULT_TIMEOUT`].
    ///
    /// # Errors
    /// Connection failure (nothing listens there).
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_with_timeout(path, Some(Self::DEFAULT_TIMEOUT))
    }

    /// Connect, waiting at most `timeout` for each reply (`None`: forever).
    ///
    /// # Errors
    /// Connection failure.
    pub fn connect_with_timeout(path: impl AsRef<Path>, timeout: Option<Duration>) -> Result<Self, ClientError> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(timeout)?;
        s.set_write_timeout(timeout)?;
        Ok(Self { reader: io::BufReader::new(s.try_clone()?), writer: s, timeout, broken: false, _op: PhantomData })
    }

    /// Send a request and wait for its reply.
    ///
    /// # Errors
    /// I/O, timeout or decoding failure (an error *reply* is `Ok`).
    pub fn call(&mut self, op: O) -> Result<O::Reply, ClientError> {
        let line = codec::encode_request(op)?;
        if line.len() > MAX_LINE + 1 {
            return Err(ClientError::TooLong);
        }
        self.call_raw(&line)
    }

    /// Send raw bytes (one or more lines, of any length: tests use it to send what
    /// [`Self::call`] would not) and read one reply line.
    ///
    /// # Errors
    /// I/O, timeout or decoding failure.
    pub fn call_raw(&mut self, bytes: &[u8]) -> Result<O::Reply, ClientError> {
        if self.broken {
            return Err(ClientError::Broken);
        }
        self.broken = true;
        if let Err(e) = self.writer.write_all(bytes) {
            // A server refusing an over-long request replies and closes before reading
            // it all: its reply is still there to read.
            if !matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset) {
                return Err(self.io_error(e));
            }
        }
        let mut line = Vec::new();
        let n =
            (&mut self.reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).map_err(|e| match e.kind() {
                io::ErrorKind::ConnectionReset => ClientError::Closed,
                _ => self.io_error(e),
            })?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
            return Err(ClientError::TooLong);
        }
        let reply = serde_json::from_slice(&line)?;
        self.broken = false;
        Ok(reply)
    }

    fn io_error(&self, e: io::Error) -> ClientError {
        match (e.kind(), self.timeout) {
            (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(t)) => ClientError::Timeout(t),
            _ => ClientError::Io(e),
        }
    }
}
