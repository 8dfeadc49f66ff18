//! Capture around the real driver: rx, tx and drop copies with their reasons, losses
//! when the pool is empty (and only then), nothing after a stop.

use super::Observer;
use super::capture::{CaptureFilter, CaptureRing, Direction, MIN_BUFFERS};
use crate::fixtures::{IPV4_DST, IPV4_SRC, fixture, set_ipv4_addr};
use crate::mem::{HEADROOM, MemFrames, MemPort};
use crate::testbed::{self, UPLINK};
use crate::{CoreCounters, Driver, DropReason, FrameMemory, Packet};
use std::sync::Arc;
use xlane_fib::{Fib, PortId};

const POD1: PortId = PortId(1);

struct Captured {
    driver: Driver<MemFrames, MemPort>,
    fib: Fib,
    ring: Arc<CaptureRing>,
}

impl Captured {
    fn new(filter: CaptureFilter, buffers: usize) -> Self {
        let mut tables = testbed::tables(2, 3);
        // Pod 5 is routed to but not served by this driver: no_egress_port.
        tables.upsert_endpoint(testbed::pod(5)).unwrap();
        let mut driver = Driver::new(MemFrames::default(), Arc::new(CoreCounters::default()));
        for id in 0..4 {
            driver.add_port(MemPort::new(PortId(id)));
        }
        let ring = Arc::new(CaptureRing::new(filter, 128, buffers, 1));
        let mut observer = Observer::new(0);
        observer.set_capture(Arc::clone(&ring));
        driver.set_observer(Some(Box::new(observer)));
        Self { driver, fib: tables.snapshot(), ring }
    }

    fn send(&mut self, port: PortId, frames: &[Vec<u8>]) {
        for f in frames {
            let mem = self.driver.mem_mut();
            let buf = mem.alloc().unwrap();
            mem.with_buffers(&[buf], |b| b[0][HEADROOM..HEADROOM + f.len()].copy_from_slice(f));
            let p = Packet { buf, head: u32::try_from(HEADROOM).unwrap(), len: u32::try_from(f.len()).unwrap() };
            self.driver.ports_mut()[usize::from(port.0)].rx.push_back(p);
        }
        self.driver.poll(&self.fib);
    }

    /// Everything captured so far: (direction, drop, bytes, original length).
    fn take(&self) -> Vec<(Direction, Option<DropReason>, Vec<u8>, u32)> {
        std::iter::from_fn(|| self.ring.pop())
            .map(|c| {
                let r = (c.direction, c.drop, c.bytes().to_vec(), c.orig_len);
                self.ring.recycle(c);
                r
            })
            .collect()
    }
}

fn spoofed() -> Vec<u8> {
    let mut f = fixture("encap_udp_in");
    set_ipv4_addr(&mut f, 14, IPV4_SRC, [10, 244, 1, 77]);
    f
}

fn to_unserved_pod() -> Vec<u8> {
    let mut f = fixture("local_in");
    set_ipv4_addr(&mut f, 14, IPV4_DST, [10, 244, 1, 6]);
    f
}

#[test]
fn received_frames_are_copied_as_received_and_drops_carry_their_reason() {
    let filter = CaptureFilter { port: POD1, rx: true, tx: false, drops: false };
    let mut c = Captured::new(filter, 8);
    let good = fixture("encap_udp_in");
    c.send(POD1, &[good.clone(), spoofed(), to_unserved_pod()]);
    c.send(PortId(2), &[fixture("local_in")]);
    let got = c.take();
    assert_eq!(got.len(), 3, "port 2 is not captured");
    assert_eq!((got[0].0, got[0].1, &got[0].2[..]), (Direction::Rx, None, &good[..]), "before the rewrite");
    assert_eq!(got[1].1, Some(DropReason::SpoofedSource));
    assert_eq!(got[2].1, Some(DropReason::NoEgressPort), "the driver's drop too");
    assert_eq!(c.ring.counts(), [(3, 0)]);
}

#[test]
fn a_drop_capture_takes_only_drops_and_gives_the_rest_back() {
    let filter = CaptureFilter { port: POD1, rx: false, tx: false, drops: true };
    let mut c = Captured::new(filter, 0);
    c.send(POD1, &[fixture("encap_udp_in"), fixture("encap_udp_in"), spoofed(), fixture("local_in")]);
    let got = c.take();
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), [Some(DropReason::SpoofedSource)]);
    assert_eq!(c.ring.counts(), [(1, 0)], "forwarded frames are neither captured nor lost");
}

#[test]
fn transmitted_frames_are_copied_as_they_leave_cut_to_the_snaplen() {
    let filter = CaptureFilter { port: UPLINK, rx: false, tx: true, drops: false };
    let mut c = Captured::new(filter, 8);
    let mut big = fixture("encap_udp_in");
    big.resize(300, 0);
    c.send(POD1, &[fixture("encap_udp_in"), to_unserved_pod()]);
    let sent: Vec<Packet<u32>> = c.driver.ports_mut()[0].tx.drain(..).collect();
    let wire = c.driver.mem().bytes(&sent[0]).to_vec();
    let got = c.take();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, &got[0].2[..], got[0].3 as usize), (Direction::Tx, &wire[..], wire.len()), "encapsulated");
    assert!(wire.len() < 128);
}

#[test]
fn an_empty_pool_loses_frames_counted_and_a_stop_takes_no_more() {
    let filter = CaptureFilter { port: POD1, rx: true, tx: false, drops: false };
    let mut c = Captured::new(filter, 0);
    let n = MIN_BUFFERS as u64;
    for _ in 0..3 {
        c.send(POD1, &vec![fixture("encap_udp_in"); 64]);
    }
    assert_eq!(c.ring.counts(), [(n, 192 - n)], "the reader took nothing: the pool ran dry");
    assert_eq!(c.take().len() as u64, n);
    c.send(POD1, &[fixture("encap_udp_in")]);
    assert_eq!(c.ring.counts(), [(n + 1, 192 - n)], "buffers given back are used again");
    c.ring.stop();
    c.send(POD1, &[fixture("encap_udp_in")]);
    assert_eq!(c.ring.counts(), [(n + 1, 192 - n)]);
    assert_eq!(c.driver.counters().snapshot().tx, 194, "forwarding never waited for the capture");
}
