#!/usr/bin/env bash
# The xlane demo on a fresh machine, as root: builds xlane, then a lab of nodes in
# network namespaces (a fabric bridge as the underlay; xlaned and xlane-agent on each
# node), attaches pods through the CNI plugin, runs ping, a TCP transfer and a UDP
# packet-rate test between nodes, prints a summary and tears everything down (also on
# Ctrl-C; a rerun after a crash cleans up first).
#
#   scripts/demo.sh [--nodes N] [--tcp-mb MB] [--udp-seconds S] [--quick] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (network namespaces, XDP)" >&2
    exit 1
fi
if ! command -v ping >/dev/null; then
    echo "installing iputils-ping"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iputils-ping >/dev/null
fi
cargo build --release --locked -q -p xlaned -p xlane-agent -p xlane-cni -p xlane-lab
exec target/release/xlane-lab demo "$@"
