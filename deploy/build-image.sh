#!/usr/bin/env bash
# Build the xlane image offline: no base image is pulled. Lays out a root filesystem
# (the binaries, the shared libraries ldd lists for them, busybox as sh/awk/grep/sed/…,
# bash and coreutils' install for cni/install.sh) and builds deploy/Containerfile.local FROM scratch with
# buildah (or podman). Same layout as deploy/Containerfile.
#
#   deploy/build-image.sh [--tag localhost/xlane:0.1.0] [--bin-dir DIR] [--save FILE.tar]
#
# Without --bin-dir the binaries are built (release, xlane-agent with --features kube).
# --save writes an OCI archive for `ctr -n k8s.io images import` or `podman load`.
# Needs: buildah or podman, busybox (busybox-static), bash, ldd, strip (binutils).
set -euo pipefail
cd "$(dirname "$0")/.."

tag=localhost/xlane:0.1.0
bin_dir=
save=
while (($#)); do
    case "$1" in
        --tag) tag=$2; shift 2 ;;
        --bin-dir) bin_dir=$2; shift 2 ;;
        --save) save=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$bin_dir" ]; then
    cargo build --release --locked -p xlaned -p xlane-cni -p xlane-agent --features xlane-agent/kube
    bin_dir=target/release
fi
for b in xlaned xlane-supervise xlanectl xlane-agent xlane; do
    [ -x "$bin_dir/$b" ] || { echo "build-image.sh: $bin_dir/$b missing" >&2; exit 1; }
done
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "build-image.sh: needs busybox (apt-get install busybox-static)" >&2; exit 1; }
if command -v buildah >/dev/null; then build=(buildah bud); elif command -v podman >/dev/null; then build=(podman build); else
    echo "build-image.sh: needs buildah or podman" >&2; exit 1
fi

ctx=$(mktemp -d /tmp/xlane-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
install -D -m 0755 -t "$root/usr/local/bin" "$bin_dir/xlaned" "$bin_dir/xlane-supervise" "$bin_dir/xlanectl" "$bin_dir/xlane-agent"
install -D -m 0755 "$bin_dir/xlane" "$root/usr/local/lib/xlane/xlane"
install -D -m 0755 cni/install.sh "$root/usr/local/share/xlane/install.sh"
# Debug sections stay out of the image (symbols stay: backtraces keep their names). A
# test build's binaries carry full debug info, hundreds of MB that every copy of the
# image (build storage, archive, the runtime's store) would repeat.
strip --strip-debug "$root"/usr/local/bin/* "$root/usr/local/lib/xlane/xlane"
install -D -m 0755 "$busybox" "$root/bin/busybox"
install -D -m 0755 "$(command -v bash)" "$root/bin/bash"
# coreutils' install (busybox-static has no install applet), for install.sh.
install -D -m 0755 "$(command -v install)" "$root/usr/bin/install"
# The shell tools the DaemonSet's commands and probes, and install.sh, use.
for tool in sh awk grep sed cat mv cp rm ls mkdir dirname env sleep; do
    ln -s busybox "$root/bin/$tool"
done
install -d "$root/tmp" "$root/etc" "$root/run" "$root/var/lib"
ln -s ../../bin/env "$root/usr/bin/env"
chmod 1777 "$root/tmp"
# Shared libraries (and the dynamic loader) at the paths the binaries ask for.
for f in "$root"/usr/local/bin/* "$root/usr/local/lib/xlane/xlane" "$root/bin/bash" "$root/usr/bin/install"; do
    ldd "$f" | awk '/=> \//{print $3} /^\t\//{print $1}'
done | sort -u | while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
cp deploy/Containerfile.local "$ctx/Containerfile"
"${build[@]}" -f "$ctx/Containerfile" -t "$tag" "$ctx"
if [ -n "$save" ]; then
    if command -v podman >/dev/null; then
        podman save --format oci-archive -o "$save" "$tag"
    else
        buildah push "$tag" "oci-archive:$save:$tag"
    fi
fi
echo "built $tag${save:+, saved to $save}"
