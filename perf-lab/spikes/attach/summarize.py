#!/usr/bin/env python3
"""Summarise a spike run: median [min–max] per attach kind, as a Markdown table.

usage: summarize.py results/<date>/results.jsonl [more.jsonl ...]
"""
import json
import statistics
import sys

ORDER = ["bridge", "xdp", "packet", "tap", "packet-nodrop"]
NAMES = {
    "bridge": "kernel bridge (baseline)",
    "xdp": "(a) veth + XDP → AF_XDP copy (today)",
    "packet": "(b) veth + AF_PACKET vnet_hdr",
    "tap": "(c') tap + vnet_hdr, read/write",
    "packet-nodrop": "(b) without the tcx drop",
}
COLS = [
    ("TCP ×1 Gbit/s", lambda r: r["tcp1_gbit"], 2),
    ("TCP ×4 Gbit/s", lambda r: r["tcp4_gbit"], 2),
    ("64 B UDP kpps", lambda r: r["udp_kpps"], 0),
    ("RR p50 µs", lambda r: r["rr_p50_us"], 0),
    ("RR p99 µs", lambda r: r["rr_p99_us"], 0),
    ("fwd CPU % TCP ×1", lambda r: r["cpu"]["tcp1"]["fwd"], 0),
    ("fwd CPU % UDP", lambda r: r["cpu"]["udp"]["fwd"], 0),
]


def cell(vals, digits):
    med = statistics.median(vals)
    return f"{med:.{digits}f} [{min(vals):.{digits}f}–{max(vals):.{digits}f}]"


def main():
    rows = [json.loads(l) for f in sys.argv[1:] for l in open(f) if l.strip()]
    ok = [r for r in rows if "error" not in r]
    kinds = [k for k in ORDER if any(r["kind"] == k for r in ok)]
    print("| attach | n | " + " | ".join(c[0] for c in COLS) + " |")
    print("|---|---:|" + "---:|" * len(COLS))
    for k in kinds:
        rs = [r for r in ok if r["kind"] == k]
        cells = [cell([f(r) for r in rs], d) for _, f, d in COLS]
        print(f"| {NAMES.get(k, k)} | {len(rs)} | " + " | ".join(cells) + " |")
    loads = [float(r["load"].split()[0]) for r in ok]
    if loads:
        print(f"\n1-minute load average during the runs: {min(loads):.2f}–{max(loads):.2f}")
    bad = [r for r in rows if "error" in r]
    for r in bad:
        print(f"\nfailed: {r['kind']} round {r['round']}: {r['error']}")
    # Retransmits (ordering/drops) and where the UDP frames were lost.
    print("\n| attach | TCP ×1 retransmits | TCP ×4 retransmits | UDP offered kpps | pod A tx drops (UDP) |")
    print("|---|---:|---:|---:|---:|")
    for k in kinds:
        rs = [r for r in ok if r["kind"] == k]
        med = lambda f: statistics.median([f(r) for r in rs])
        print(f"| {k} | {med(lambda r: r['tcp1_retr']):.0f} | {med(lambda r: r['tcp4_retr']):.0f} | "
              f"{med(lambda r: r['udp_offered_kpps']):.0f} | {med(lambda r: r.get('udp_a_tx_dropped', 0)):.0f} |")


if __name__ == "__main__":
    main()
