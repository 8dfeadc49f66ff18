//! `xlanectl capture`: ask xlaned for a capture, then copy the pcapng it streams on the
//! capture's own socket to a file or stdout, flushing each piece as it comes so that
//! `xlanectl capture ... -w - | tcpdump -r -` shows frames live. Ctrl-C (or the reader
//! of stdout going away) closes the socket, which ends the capture in xlaned.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use xlane_api::{CaptureSpec, Client, Op, Reply};

/// Run a capture to `out` ("-": stdout); false if xlaned refused it.
pub(crate) fn run(client: &mut Client, spec: CaptureSpec, out: &Path) -> anyhow::Result<bool> {
    let socket = match client.call(Op::CaptureStart(spec))? {
        Reply::CaptureReady { socket } => socket,
        Reply::Error { code, message } => {
            eprintln!("error ({code:?}): {message}");
            return Ok(false);
        }
        r => anyhow::bail!("unexpected reply {r:?}"),
    };
    let mut stream = UnixStream::connect(&socket).map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    let mut sink: Box<dyn Write> = if out.as_os_str() == "-" {
        Box::new(io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?)
    };
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        match sink.write_all(&buf[..n]).and_then(|()| sink.flush()) {
            Ok(()) => {}
            // Whoever read our stdout has gone: so does the capture.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e.into()),
        }
    }
    drop(stream);
    if let Ok(Reply::Counters(c)) = client.call(Op::Counters)
        && let Some(s) = c.capture
    {
        eprintln!("capture on port {}: {} frame(s) written, {} lost (reader too slow)", s.port, s.written, s.lost);
    }
    Ok(true)
}
