#!/usr/bin/env bash
# Every test of the project, on a fresh machine of the lab's kind, as root.
# Installs the system packages the tests need (ping, etcd, protoc for the etcd client,
# Debian's CNI reference plugins, iptables for portmap, busybox, podman + runc, DPDK's
# testpmd as a vhost-user frontend, tcpdump, traceroute, tracepath, iperf3, perf,
# containerd, buildah, systemd-analyze) and PyPI's kubernetes-validate, then lints, builds and tests.
# Privileged tests (namespaces, XDP, AF_XDP) run for real; with CI=true a missing
# privilege or tool fails them instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

log "toolchain: $(cargo --version)"

need=()
command -v ping >/dev/null || need+=(iputils-ping)
command -v etcd >/dev/null || need+=(etcd-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -d /usr/include/google/protobuf ] || need+=(libprotobuf-dev)
[ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
[ -x /usr/sbin/iptables ] || need+=(iptables)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/bin/dpdk-testpmd ] || need+=(dpdk dpdk-dev)
# Seeing packets: capture read back by tcpdump, hops listed by traceroute/tracepath.
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v traceroute >/dev/null || need+=(traceroute)
command -v tracepath >/dev/null || need+=(iputils-tracepath)
# Where the time goes: xlane-lab profile runs iperf3 under perf record.
command -v iperf3 >/dev/null || need+=(iperf3)
command -v perf >/dev/null || need+=(linux-perf)
# Pods through containerd's CRI (ctr imports the local images buildah builds).
command -v containerd >/dev/null || need+=(containerd)
command -v buildah >/dev/null || need+=(buildah)
# systemd-analyze checks deploy/systemd's units (not in minimal Debian images).
command -v systemd-analyze >/dev/null || need+=(systemd)
# QEMU 7.2 for the vhost-user handshake test (no guest is booted, so no GUI or firmware
# extras: installed without recommends).
bare=()
[ -x /usr/bin/qemu-system-x86_64 ] || bare+=(qemu-system-x86)
if ((${#need[@]} + ${#bare[@]})); then
    log "installing ${need[*]} ${bare[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "need root to install ${need[*]} ${bare[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    if ((${#need[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if ((${#bare[@]})); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${bare[@]}" >/dev/null
    fi
fi
# PyPI's kubernetes-validate (its Kubernetes schemas ship in the package, so it checks
# deploy/kubernetes/xlane.yaml offline; control/agent/tests/manifest.rs runs it).
if ! command -v kubernetes-validate >/dev/null; then
    log "installing kubernetes-validate (pip)"
    python3 -m pip install -q kubernetes-validate
    # A pyenv-managed Python makes the new command visible only after a rehash.
    if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "warning: not root: privileged tests will be skipped (CI runs them as root)" >&2
fi

log "format and lints (default features, and all features: etcd, kube)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

log "unit, fixture, property, XDP, AF_XDP and end-to-end tests"
cargo test --workspace --locked

log "the agent's etcd datastore against real etcd (single member and a three-member cluster)"
cargo test -p xlane-agent --features etcd --locked --test etcd

log "the agent's kube datastore: its unit tests and the API contract tests (in-test API server)"
cargo test -p xlane-agent --features kube --locked --lib store::kube
cargo test -p xlane-agent --features kube --locked --test kube_contract

log "pods through containerd's CRI on two lab nodes (local pause/busybox images, own containerd per node)"
cargo test -p xlane-deploy-e2e --features cri --locked --test cri

log "benches, once each in test mode (they check their own inputs)"
cargo test -p xlane-benches --benches --locked

log "the in-memory two-node example (pipeline only)"
cargo run --release --locked -p xlane-engine --example two_nodes

log "the README's demo, short (namespace lab, CNI pods, ping/TCP/UDP, teardown)"
./scripts/demo.sh --quick

log "all tests passed"
