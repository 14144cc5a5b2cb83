#!/usr/bin/env bash
# Runs the same write load against a 3-member etcd and a 3-controller Berth,
# both on loopback with fsync on, and prints as its last line:
#   {"berth_writes_per_sec", "etcd_writes_per_sec", "berth_p99_ms", "etcd_p99_ms", "ratio"}
# Usage: bench/compare-etcd.sh [CLIENTS] [DURATION]   (defaults: 64 20s)
set -euo pipefail

clients="${1:-64}"
duration="${2:-20s}"
root="$(cd "$(dirname "$0")/.." && pwd)"
berth="${BERTH_BIN:-$root/target/release/berth}"
if [[ ! -x "$berth" && -x "${CARGO_TARGET_DIR:-/nonexistent}/release/berth" ]]; then
  berth="$CARGO_TARGET_DIR/release/berth"
fi
[[ -x "$berth" ]] || { echo "build berth first: cargo build --release --features berth/etcd" >&2; exit 1; }

if ! command -v etcd >/dev/null; then
  echo "installing Debian's etcd-server" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# etcd: three members, loopback only, default fsync behaviour.
cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
    --log-level error >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done

# Berth: three controllers, without TLS as this etcd runs (--insecure; a
# TLS comparison of both is the next benchmark step).
peers="1=127.0.0.1:27101,2=127.0.0.1:27102,3=127.0.0.1:27103"
for i in 1 2 3; do
  BERTH_LOG=warn "$berth" --insecure server --id "$i" --listen "127.0.0.1:2710$i" --data-dir "$work/berth$i" \
    --peers "$peers" >"$work/berth$i.log" 2>&1 &
  pids+=($!)
done

for _ in $(seq 100); do
  if "$berth" --insecure --server 127.0.0.1:27101 cluster status -o json 2>/dev/null | grep -q '"leader":[0-9]'; then break; fi
  sleep 0.2
done
sleep 2

out="$("$berth" --insecure --server 127.0.0.1:27101,127.0.0.1:27102,127.0.0.1:27103 bench store \
  --clients "$clients" --duration "$duration" \
  --etcd http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793 -o json)"
echo "$out"
python3 - "$out" <<'PY'
import json, sys
rows = {r["system"]: r for r in map(json.loads, sys.argv[1].splitlines())}
b, e = rows["berth"], rows["etcd"]
print(json.dumps({
    "berth_writes_per_sec": b["writes_per_sec"],
    "etcd_writes_per_sec": e["writes_per_sec"],
    "berth_p99_ms": b["p99_ms"],
    "etcd_p99_ms": e["p99_ms"],
    "ratio": round(b["writes_per_sec"] / e["writes_per_sec"], 2) if e["writes_per_sec"] else None,
}))
PY
