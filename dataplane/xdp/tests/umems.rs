//! A worker's two UMEMs (#16): frames copied between them by random transfers keep their
//! bytes, and no frame is ever leaked, handed out twice or freed twice — checked after
//! every step by counting each UMEM's free frames against the frames held (needs root:
//! registering a UMEM opens an AF_XDP socket).

use proptest::test_runner::{Config, TestRunner};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use xlane_engine::{FrameMemory, Packet};
use xlane_xdp::xsk::{TxChecksum, Umem, UmemId, UmemSettings, Umems};

const SHARED_FRAMES: u32 = 256;
const OWN_FRAMES: u32 = 128;

/// A packet the test holds, and the byte every one of its bytes is.
#[derive(Debug, Clone, Copy)]
struct Held {
    p: Packet<u64>,
    fill: u8,
}

fn write(umems: &mut Umems, p: Packet<u64>, fill: u8) {
    umems.with_buffers(&[p.buf], |b| b[0][p.head as usize..(p.head + p.len) as usize].fill(fill));
}

/// Every held packet's bytes, read through one lending of frames of both UMEMs.
fn check_bytes(umems: &mut Umems, held: &[Held]) {
    for chunk in held.chunks(64) {
        let bufs: Vec<u64> = chunk.iter().map(|h| h.p.buf).collect();
        umems.with_buffers(&bufs, |slices| {
            for (s, h) in slices.iter().zip(chunk) {
                let bytes = &s[h.p.head as usize..(h.p.head + h.p.len) as usize];
                assert!(bytes.iter().all(|&b| b == h.fill), "packet {:#x} kept its bytes", h.p.buf);
            }
        });
    }
}

fn frames_accounted(umems: &Umems, own: UmemId, held: &[Held]) {
    let in_own = held.iter().filter(|h| UmemId::of(h.p.buf) == own).count();
    assert_eq!(umems.shared().free_frames() + held.len() - in_own, SHARED_FRAMES as usize, "shared UMEM");
    assert_eq!(umems.get(own).free_frames() + in_own, OWN_FRAMES as usize, "own UMEM");
    let distinct: HashSet<u64> = held.iter().map(|h| h.p.buf).collect();
    assert_eq!(distinct.len(), held.len(), "no frame held twice");
}

/// `steps` random operations from `seed`; returns the transfers made.
fn run(seed: u64, steps: u32) -> u64 {
    let settings = UmemSettings { frames: SHARED_FRAMES, fill_ring: 64, rx_tx_ring: 64, ..UmemSettings::default() };
    let mut umems = Umems::new(Umem::new(settings).unwrap());
    let own = umems.add(OWN_FRAMES, TxChecksum::Off).unwrap();
    assert!(!own.is_shared() && umems.len() == 2);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut held: Vec<Held> = Vec::new();
    let mut transfers = 0;
    for step in 0..steps {
        match rng.gen_range(0..100) {
            // Allocate in either UMEM and write a packet.
            0..=19 => {
                let buf =
                    if rng.gen_bool(0.5) { umems.alloc() } else { umems.get_mut(own).alloc().map(|a| own.tag(a)) };
                if let Some(buf) = buf {
                    let head = rng.gen_range(0..=256u32);
                    let len = rng.gen_range(1..=(2048 - head).min(1514));
                    let h = Held { p: Packet { buf, head, len }, fill: rng.r#gen() };
                    write(&mut umems, h.p, h.fill);
                    held.push(h);
                }
            }
            // Transfer a packet into the other UMEM (dropped if it is full).
            20..=69 if !held.is_empty() => {
                let k = rng.gen_range(0..held.len());
                let to = if UmemId::of(held[k].p.buf) == own { UmemId::SHARED } else { own };
                transfers += 1;
                match umems.copy_into(held[k].p, to) {
                    Some(q) => {
                        assert_eq!(UmemId::of(q.buf), to);
                        assert_eq!((q.head, q.len), (held[k].p.head, held[k].p.len));
                        held[k].p = q;
                    }
                    None => {
                        held.swap_remove(k);
                    }
                }
            }
            // Release one.
            70..=89 if !held.is_empty() => {
                let h = held.swap_remove(rng.gen_range(0..held.len()));
                umems.release(h.p.buf);
            }
            // Release one twice: the second is ignored, not a second free frame.
            90..=91 if !held.is_empty() => {
                let h = held.swap_remove(rng.gen_range(0..held.len()));
                umems.release(h.p.buf);
                umems.release(h.p.buf);
            }
            _ => {}
        }
        frames_accounted(&umems, own, &held);
        if step % 4096 == 0 {
            check_bytes(&mut umems, &held);
        }
    }
    check_bytes(&mut umems, &held);
    for h in held.drain(..) {
        umems.release(h.p.buf);
    }
    frames_accounted(&umems, own, &held);
    umems.remove_if_unused(own);
    assert_eq!(umems.len(), 1, "an own UMEM with no socket is unmapped");
    transfers
}

#[test]
fn ten_million_random_transfers_leak_nothing_and_free_nothing_twice() {
    if !xlane_netlab::privileged("ten_million_random_transfers_leak_nothing_and_free_nothing_twice") {
        return;
    }
    let mut runner = TestRunner::new(Config { cases: 10, ..Config::default() });
    let total = std::cell::Cell::new(0u64);
    runner
        .run(&proptest::num::u64::ANY, |seed| {
            total.set(total.get() + run(seed, 2_000_000));
            Ok(())
        })
        .unwrap();
    assert!(total.get() >= 9_000_000, "{} transfers", total.get());
}
