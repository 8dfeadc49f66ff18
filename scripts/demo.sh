#!/usr/bin/env bash
# The xlane demo on a fresh machine: two nodes, proxy ARP, VXLAN encap/decap, ping and
# a bounded rate test, all through the real pipeline on in-memory ports.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked -p xlane-engine --example two_nodes
