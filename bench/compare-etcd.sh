#!/usr/bin/env bash
# Runs the same write load against a 3-member etcd and a 3-controller Berth,
# both on loopback with fsync on, and prints as its last line:
#   {"tls", "berth_writes_per_sec", "etcd_writes_per_sec", "berth_p99_ms", "etcd_p99_ms", "ratio"}
# Usage: bench/compare-etcd.sh [--tls] [CLIENTS] [DURATION]   (defaults: 64 20s)
# Without --tls both run without TLS (Berth --insecure). With --tls etcd
# serves clients and peers over TLS and asks clients for a certificate, and
# Berth runs as it does by default: mutual TLS on every link, the benchmark
# writing as a controller (the raw store is for controllers alone).
set -euo pipefail

tls=false
if [[ "${1:-}" == "--tls" ]]; then
  tls=true
  shift
fi
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

# etcd's certificates: one CA, a certificate for the members (server and
# client use, since peers present it to each other) and one for the
# benchmark. P-256 keys, as Berth's.
etcd_certs() {
  local d="$work/etcd-pki"
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=etcd bench CA" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  local name
  for name in member client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
      -keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null
    openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
      -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n') \
      -out "$d/$name.crt" 2>/dev/null
  done
}

scheme=http
etcd_tls=()
etcd_client_tls=()
if $tls; then
  etcd_certs
  scheme=https
  pki="$work/etcd-pki"
  etcd_tls=(--cert-file "$pki/member.crt" --key-file "$pki/member.key" --client-cert-auth
    --trusted-ca-file "$pki/ca.crt"
    --peer-cert-file "$pki/member.crt" --peer-key-file "$pki/member.key" --peer-client-cert-auth
    --peer-trusted-ca-file "$pki/ca.crt")
  etcd_client_tls=(--etcd-ca "$pki/ca.crt" --etcd-cert "$pki/client.crt" --etcd-key "$pki/client.key")
fi

# etcd: three members, loopback only, default fsync behaviour.
cluster="e1=$scheme://127.0.0.1:23801,e2=$scheme://127.0.0.1:23802,e3=$scheme://127.0.0.1:23803"
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "$scheme://127.0.0.1:2379$i" --advertise-client-urls "$scheme://127.0.0.1:2379$i" \
    --listen-peer-urls "$scheme://127.0.0.1:2380$i" --initial-advertise-peer-urls "$scheme://127.0.0.1:2380$i" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
    "${etcd_tls[@]}" --log-level error >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done

# Berth: three controllers. Secure, they share a bootstrap secret and the
# benchmark writes as a controller, with a certificate from the CA that
# controller 1 made; the CLI reads the cluster's state with the admin
# credentials controller 1 wrote.
peers="1=127.0.0.1:27101,2=127.0.0.1:27102,3=127.0.0.1:27103"
security=(--insecure)
server_security=()
bench_identity=()
if $tls; then
  security=(--config "$work/berth1/admin.conf")
  server_security=(--token "bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')")
  bench_identity=(--controller-dir "$work/berth1")
fi
for i in 1 2 3; do
  insecure=()
  $tls || insecure=(--insecure)
  BERTH_LOG=warn "$berth" "${insecure[@]}" server --id "$i" --listen "127.0.0.1:2710$i" --data-dir "$work/berth$i" \
    --peers "$peers" "${server_security[@]}" >"$work/berth$i.log" 2>&1 &
  pids+=($!)
done

for _ in $(seq 150); do
  if { ! $tls || [[ -e "$work/berth1/admin.conf" ]]; } &&
    "$berth" "${security[@]}" --server 127.0.0.1:27101 cluster status -o json 2>/dev/null | grep -q '"leader":[0-9]'; then
    break
  fi
  sleep 0.2
done
sleep 2

out="$("$berth" "${security[@]}" --server 127.0.0.1:27101,127.0.0.1:27102,127.0.0.1:27103 bench store \
  --clients "$clients" --duration "$duration" "${bench_identity[@]}" \
  --etcd "$scheme://127.0.0.1:23791,$scheme://127.0.0.1:23792,$scheme://127.0.0.1:23793" "${etcd_client_tls[@]}" -o json)"
echo "$out"
python3 - "$out" "$tls" <<'PY'
import json, sys
rows = {r["system"]: r for r in map(json.loads, sys.argv[1].splitlines())}
b, e = rows["berth"], rows["etcd"]
print(json.dumps({
    "tls": sys.argv[2] == "true",
    "berth_writes_per_sec": b["writes_per_sec"],
    "etcd_writes_per_sec": e["writes_per_sec"],
    "berth_p99_ms": b["p99_ms"],
    "etcd_p99_ms": e["p99_ms"],
    "ratio": round(b["writes_per_sec"] / e["writes_per_sec"], 2) if e["writes_per_sec"] else None,
}))
PY
