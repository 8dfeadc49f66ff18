#!/usr/bin/env bash
# Install the xlane CNI plugin on a node: the plugin binary into the CNI bin directory
# (named as its type, `xlane`) and a conflist into the CNI configuration directory.
#
#   cni/install.sh [--bin-dir /opt/cni/bin]... [--conf-dir /etc/cni/net.d]
#                  [--agent-socket /run/xlane/agent.sock] [--cni-version 1.0.0]
#                  [--binary target/release/xlane] [--conflist FILE]
#
# Without --binary the plugin is built (cargo build --release -p xlane-cni). --bin-dir
# may be repeated (e.g. /opt/cni/bin and Debian containerd's /usr/lib/cni). --conflist
# installs that file (e.g. the DaemonSet's ConfigMap) instead of the generated one.
# Binary and conflist are written atomically; existing ones are replaced. The node also
# needs xlaned and xlane-agent running (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dirs=()
conf_dir=/etc/cni/net.d
agent_socket=/run/xlane/agent.sock
cni_version=1.0.0
binary=
conflist=
while (($#)); do
    case "$1" in
        --bin-dir) bin_dirs+=("$2"); shift 2 ;;
        --conf-dir) conf_dir=$2; shift 2 ;;
        --agent-socket) agent_socket=$2; shift 2 ;;
        --cni-version) cni_version=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --conflist) conflist=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$cni_version" in
    0.4.0|1.0.0|1.1.0) ;;
    *) echo "install.sh: cniVersion $cni_version is not one of 0.4.0, 1.0.0, 1.1.0" >&2; exit 2 ;;
esac
((${#bin_dirs[@]})) || bin_dirs=(/opt/cni/bin)
if [ -z "$binary" ]; then
    cargo build --release --locked -p xlane-cni
    binary=target/release/xlane
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }
[ -z "$conflist" ] || [ -r "$conflist" ] || { echo "install.sh: cannot read $conflist" >&2; exit 1; }

for bin_dir in "${bin_dirs[@]}"; do
    install -d "$bin_dir"
    install -m 0755 "$binary" "$bin_dir/xlane.tmp"
    mv -f "$bin_dir/xlane.tmp" "$bin_dir/xlane"
done
install -d "$conf_dir"
if [ -n "$conflist" ]; then
    cat "$conflist" >"$conf_dir/.10-xlane.conflist.tmp"
else
    cat >"$conf_dir/.10-xlane.conflist.tmp" <<JSON
{
  "cniVersion": "$cni_version",
  "name": "xlane",
  "plugins": [
    { "type": "xlane", "agentSocket": "$agent_socket" }
  ]
}
JSON
fi
mv -f "$conf_dir/.10-xlane.conflist.tmp" "$conf_dir/10-xlane.conflist"
echo "installed xlane into ${bin_dirs[*]} and $conf_dir/10-xlane.conflist"
