use super::*;
use crate::client::Client;
use crate::codec::tests::{TestOp, TestReply};
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdStream;
use std::sync::mpsc;
use std::time::Duration;

/// Echo answers at once; Slow hands its responder to the test; a notification stops.
struct TestHandler {
    seen: Arc<Mutex<Vec<TestOp>>>,
    slow: mpsc::Sender<(u32, Responder<TestReply>)>,
}

impl Handler for TestHandler {
    type Op = TestOp;
    fn handle(&mut self, op: TestOp, responder: Responder<TestReply>) {
        self.seen.lock().unwrap().push(op.clone());
        match op {
            TestOp::Echo { text } => responder.reply(TestReply::Echo { text }),
            TestOp::Slow { id } => self.slow.send((id, responder)).unwrap(),
            TestOp::Stop => {}
        }
    }
    fn on_wake(&mut self, ctl: &mut Control) {
        ctl.stop();
    }
}

struct Running {
    path: PathBuf,
    notifier: Notifier,
    seen: Arc<Mutex<Vec<TestOp>>>,
    slow: mpsc::Receiver<(u32, Responder<TestReply>)>,
    thread: std::thread::JoinHandle<io::Result<()>>,
}

fn start(name: &str) -> Running {
    let dir = std::env::temp_dir().join(format!("xlane-api-{name}-{}", std::process::id()));
    let path = dir.join("s.sock");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&path, b"stale").unwrap();
    let server = Server::<TestOp>::bind(&path).unwrap();
    let notifier = server.notifier();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (tx, slow) = mpsc::channel();
    let mut h = TestHandler { seen: Arc::clone(&seen), slow: tx };
    let thread = std::thread::spawn(move || server.run(&mut h));
    Running { path, notifier, seen, slow, thread }
}

impl Running {
    fn client(&self) -> Client<TestOp> {
        Client::connect_with_timeout(&self.path, Some(Duration::from_secs(10))).unwrap()
    }
    fn stop(self) {
        self.notifier.notify().unwrap();
        self.thread.join().unwrap().unwrap();
        assert!(!self.path.exists(), "the socket is removed on stop");
        let _ = std::fs::remove_dir_all(self.path.parent().unwrap());
    }
}

fn echo(text: &str) -> TestOp {
    TestOp::Echo { text: text.into() }
}

fn code(r: TestReply) -> ErrorCode {
    r.as_error().unwrap_or_else(|| panic!("expected an error, got {r:?}")).0
}

#[test]
fn socket_is_private_and_replaces_a_stale_file() {
    let s = start("mode");
    let meta = std::fs::metadata(&s.path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(s.client().call(echo("a")).unwrap(), TestReply::Echo { text: "a".into() });
    s.stop();
}

#[test]
fn garbage_and_wrong_versions_get_errors_and_the_connection_stays_usable() {
    let s = start("garbage");
    let mut c = s.client();
    assert_eq!(code(c.call_raw(b"\x00\xffgarbage\n").unwrap()), ErrorCode::BadRequest);
    assert_eq!(
        code(c.call_raw(b"{\"version\":9,\"op\":\"echo\",\"text\":\"x\"}\n").unwrap()),
        ErrorCode::UnsupportedVersion
    );
    assert_eq!(code(c.call_raw(b"{\"op\":\"echo\",\"text\":\"x\"}\n").unwrap()), ErrorCode::BadRequest);
    assert_eq!(code(c.call_raw(b"{\"version\":3,\"op\":\"reboot\"}\n").unwrap()), ErrorCode::BadRequest);
    // Blank lines are skipped; a last line without its newline is still answered.
    assert_eq!(
        c.call_raw(b"\n  \n{\"version\":3,\"op\":\"echo\",\"text\":\"b\"}\n").unwrap(),
        TestReply::Echo { text: "b".into() }
    );
    assert_eq!(c.call(echo("c")).unwrap(), TestReply::Echo { text: "c".into() });
    let mut raw = StdStream::connect(&s.path).unwrap();
    raw.write_all(b"{\"version\":3,\"op\":\"echo\",\"text\":\"d\"}").unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    BufReader::new(raw).read_line(&mut reply).unwrap();
    assert_eq!(reply, "{\"result\":\"echo\",\"text\":\"d\"}\n");
    s.stop();
}

#[test]
fn an_over_long_line_is_refused_and_closes_only_its_connection() {
    let s = start("long");
    let mut other = s.client();
    assert_eq!(other.call(echo("before")).unwrap(), TestReply::Echo { text: "before".into() });
    let mut c = s.client();
    let mut huge = vec![b'x'; MAX_LINE + 1024];
    huge.push(b'\n');
    let r = c.call_raw(&huge).unwrap();
    let Some((ErrorCode::BadRequest, message)) = r.as_error() else { panic!("{r:?}") };
    assert!(message.contains(&MAX_LINE.to_string()), "{message}");
    let after = c.call(echo("after"));
    assert!(matches!(after, Err(crate::ClientError::Closed)), "that connection is closed: {after:?}");
    // Never ended at all: refused as soon as it passes the limit.
    let mut c = s.client();
    assert_eq!(code(c.call_raw(&vec![b' '; MAX_LINE + 1]).unwrap()), ErrorCode::BadRequest);
    // The server stays up; other connections are served.
    assert_eq!(other.call(echo("after")).unwrap(), TestReply::Echo { text: "after".into() });
    assert_eq!(s.client().call(echo("new")).unwrap(), TestReply::Echo { text: "new".into() });
    s.stop();
}

#[test]
fn a_deferred_reply_keeps_order_and_other_connections_are_served_meanwhile() {
    let s = start("deferred");
    // Two requests in one write: the second waits for the first's deferred reply.
    let mut first = StdStream::connect(&s.path).unwrap();
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    first
        .write_all(b"{\"version\":3,\"op\":\"slow\",\"id\":1}\n{\"version\":3,\"op\":\"echo\",\"text\":\"next\"}\n")
        .unwrap();
    let (id, responder) = s.slow.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(id, 1);
    // Another connection is served while the first waits.
    assert_eq!(s.client().call(echo("other")).unwrap(), TestReply::Echo { text: "other".into() });
    assert_eq!(*s.seen.lock().unwrap(), [TestOp::Slow { id: 1 }, echo("other")], "`next` not read yet");
    // Completed from another thread, the reply goes out first, then `next` is handled.
    std::thread::spawn(move || responder.reply(TestReply::Slow { id: 1 })).join().unwrap();
    let mut lines = BufReader::new(first).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "{\"result\":\"slow\",\"id\":1}");
    assert_eq!(lines.next().unwrap().unwrap(), "{\"result\":\"echo\",\"text\":\"next\"}");
    s.stop();
}

#[test]
fn a_responder_dropped_unanswered_sends_an_error() {
    let s = start("dropped");
    let mut c = s.client();
    let waiter = std::thread::spawn(move || c.call(TestOp::Slow { id: 2 }).unwrap());
    let (_, responder) = s.slow.recv_timeout(Duration::from_secs(10)).unwrap();
    drop(responder);
    assert_eq!(code(waiter.join().unwrap()), ErrorCode::Failed);
    // A reply for a client that has gone is dropped quietly.
    let mut gone = StdStream::connect(&s.path).unwrap();
    gone.write_all(b"{\"version\":3,\"op\":\"slow\",\"id\":3}\n").unwrap();
    drop(gone);
    let (_, responder) = s.slow.recv_timeout(Duration::from_secs(10)).unwrap();
    responder.reply(TestReply::Slow { id: 3 });
    assert_eq!(s.client().call(echo("still")).unwrap(), TestReply::Echo { text: "still".into() });
    s.stop();
}

#[test]
fn a_registered_descriptor_reaches_the_handler() {
    struct FdHandler {
        reader: StdStream,
        got: Vec<(usize, u8)>,
    }
    impl Handler for FdHandler {
        type Op = TestOp;
        fn handle(&mut self, _op: TestOp, responder: Responder<TestReply>) {
            responder.reply(TestReply::Slow { id: u32::try_from(self.got.len()).unwrap() });
        }
        fn on_fd(&mut self, key: usize, ctl: &mut Control) {
            let mut b = [0u8; 1];
            while let Ok(1) = self.reader.read(&mut b) {
                self.got.push((key, b[0]));
                if b[0] == b'q' {
                    ctl.stop();
                }
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("xlane-api-fd-{}", std::process::id()));
    let path = dir.join("s.sock");
    let mut server = Server::<TestOp>::bind(&path).unwrap();
    let (reader, mut writer) = StdStream::pair().unwrap();
    reader.set_nonblocking(true).unwrap();
    assert_eq!(server.register_fd(reader.as_fd()).unwrap(), 0);
    let mut h = FdHandler { reader, got: Vec::new() };
    writer.write_all(b"aq").unwrap();
    server.run(&mut h).unwrap();
    assert_eq!(h.got, [(0, b'a'), (0, b'q')]);
    let _ = std::fs::remove_dir_all(dir);
}
