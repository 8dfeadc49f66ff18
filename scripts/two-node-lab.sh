#!/usr/bin/env bash
# A two-node xlane lab in network namespaces, for trying xlaned by hand (as root).
#
#   scripts/two-node-lab.sh up      build, create the namespaces, start and configure xlaned
#   scripts/two-node-lab.sh down    stop xlaned (by PID) and remove every namespace
#
# Topology: fabric namespace "xl-fab" (bridge br0, 192.168.50.254) with nodes "xl-n1"
# (192.168.50.1, pods 10.244.1.0/24) and "xl-n2" (192.168.50.2, 10.244.2.0/24); pods
# "xl-p1" (10.244.1.2) and "xl-p3" (10.244.1.3) on node 1, "xl-p2" (10.244.2.2) on
# node 2. Nothing is attached to the root namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=/run/xlane-lab
BIN=target/release
NSES=(xl-fab xl-n1 xl-n2 xl-p1 xl-p2 xl-p3)

mac() { ip -n "$1" -o link show dev "$2" | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2; }

down() {
    for i in 1 2; do
        if [ -f "$RUN/n$i.pid" ]; then
            kill "$(cat "$RUN/n$i.pid")" 2>/dev/null || true
            rm -f "$RUN/n$i.pid"
        fi
    done
    sleep 0.5
    for n in "${NSES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
}

pod() { # pod-ns node-ns host-if ip gateway
    ip netns add "$1"
    ip -n "$1" link set lo up
    ip -n "$2" link add "$3" type veth peer name eth0 netns "$1"
    ip -n "$2" link set "$3" up
    ip -n "$1" addr add "$4/24" dev eth0
    ip -n "$1" link set eth0 mtu 1450 up
    ip -n "$1" route add default via "$5"
    # Software checksums: offloaded ones would reach the AF_XDP socket unfinished.
    ip netns exec "$1" "$BIN/xlanectl" netdev-tx-checksum eth0 off
}

up() {
    down
    cargo build --release --locked -p xlaned
    mkdir -p "$RUN"
    ip netns add xl-fab
    ip -n xl-fab link set lo up
    ip -n xl-fab link add br0 type bridge
    ip -n xl-fab addr add 192.168.50.254/24 dev br0
    ip -n xl-fab link set br0 up
    for i in 1 2; do
        ip netns add "xl-n$i"
        ip -n "xl-n$i" link set lo up
        ip -n xl-fab link add "n$i" type veth peer name eth0 netns "xl-n$i"
        ip -n xl-fab link set "n$i" master br0 up
        ip -n "xl-n$i" addr add "192.168.50.$i/24" dev eth0
        ip -n "xl-n$i" link set eth0 up
    done
    pod xl-p1 xl-n1 vp1 10.244.1.2 10.244.1.1
    pod xl-p3 xl-n1 vp3 10.244.1.3 10.244.1.1
    pod xl-p2 xl-n2 vp2 10.244.2.2 10.244.2.1
    for i in 1 2; do
        ip netns exec "xl-n$i" "$BIN/xlaned" --uplink eth0 --socket "$RUN/n$i.sock" \
            --vtep-ip "192.168.50.$i" --node-subnet "10.244.$i.0/24" >"$RUN/n$i.log" 2>&1 &
        echo $! >"$RUN/n$i.pid"
    done
    for i in 1 2; do
        for _ in $(seq 50); do [ -S "$RUN/n$i.sock" ] && break; sleep 0.1; done
    done
    ctl() { "$BIN/xlanectl" --socket "$RUN/$1.sock" "${@:2}"; }
    ctl n1 add-endpoint vp1 10.244.1.2 "$(mac xl-p1 eth0)"
    ctl n1 add-endpoint vp3 10.244.1.3 "$(mac xl-p3 eth0)"
    ctl n2 add-endpoint vp2 10.244.2.2 "$(mac xl-p2 eth0)"
    ctl n1 add-node 192.168.50.2 "$(mac xl-n2 eth0)"
    ctl n1 add-route 10.244.2.0/24 192.168.50.2
    ctl n2 add-node 192.168.50.1 "$(mac xl-n1 eth0)"
    ctl n2 add-route 10.244.1.0/24 192.168.50.1
    cat <<MSG

lab up. Try:
  ip netns exec xl-p1 ping 10.244.2.2                    # pod → pod across nodes
  ip netns exec xl-n1 ping 10.244.2.2                    # node → pod through xlane0
  $BIN/xlanectl --socket $RUN/n1.sock counters            # live counters
  $BIN/xlanectl --socket $RUN/n1.sock --json ports
  ip netns exec xl-n1 curl -s 127.0.0.1:9472/metrics      # Prometheus (if curl is installed)
logs: $RUN/n1.log $RUN/n2.log; stop: $0 down
MSG
}

case "${1:-}" in
up) up ;;
down) down ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
