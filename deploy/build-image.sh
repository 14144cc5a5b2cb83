#!/usr/bin/env bash
# Builds the container image berth:dev with no registry at hand: a root
# filesystem holding the release `berth` binary with the shared libraries it
# links, busybox (a shell and the commands pods and health checks run) and
# nftables' `nft` (service rules of the agent's bridge network), imported
# with `docker import`.
#
#   deploy/build-image.sh                 # builds berth (cargo build --release)
#   BERTH_BIN=path/to/berth deploy/build-image.sh   # uses that binary
#   TAG=berth:test deploy/build-image.sh
#
# Needs Docker Engine, Debian's busybox-static and nftables.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${TAG:-berth:dev}"
bin="${BERTH_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked -p berth
  bin="${CARGO_TARGET_DIR:-target}/release/berth"
fi
[ -x "$bin" ] || { echo "no berth binary at $bin" >&2; exit 1; }
for tool in docker busybox nft ldd; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install docker.io busybox-static nftables)" >&2; exit 1; }
done
busybox_bin="$(command -v busybox)"
case "$(ldd "$busybox_bin" 2>&1 || true)" in
  *"not a dynamic"*) ;;
  *) echo "$busybox_bin is not static: install Debian's busybox-static" >&2; exit 1 ;;
esac

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

# Copies an executable and every shared library it loads, at the same paths.
copy_with_libs() {
  local exe="$1" dest="$2"
  install -D -m 0755 "$exe" "$root$dest"
  ldd "$exe" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' \
    | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
      done
}

copy_with_libs "$bin" /usr/local/bin/berth
# The release profile keeps line tables for backtraces; an image does
# without them (a fifth of the size).
if command -v strip >/dev/null; then strip "$root/usr/local/bin/berth"; fi
copy_with_libs "$(command -v nft)" /usr/sbin/nft
install -D -m 0755 "$busybox_bin" "$root/bin/busybox"
for applet in sh ash cat echo env false grep head hostname kill ls mkdir mktemp nslookup \
  ps rm sleep tail test timeout true wget httpd; do
  ln -s busybox "$root/bin/$applet"
done
mkdir -p "$root/tmp" "$root/var/lib/berth" "$root/run" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"

tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/sbin:/bin' \
  --change 'ENTRYPOINT ["/usr/local/bin/berth"]' \
  --change 'CMD ["--help"]' \
  --change 'EXPOSE 7000 9100' \
  - "$tag" >/dev/null
echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
