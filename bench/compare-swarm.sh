#!/usr/bin/env bash
# Starts the same workload (N replicas of `sleep 3600` from the same locally
# imported busybox image) on Berth's docker runtime and on Docker Swarm
# (`docker service create --replicas N`, Swarm's defaults), on this
# machine's engine, in the same run; repeats RUNS times and prints the
# medians, the last line being:
#   {"pods", "berth_all_running_s", "swarm_all_running_s", "speedup"}
# (speedup = swarm / berth). Leaves the engine as it found it: a swarm it
# created is left again, its service and containers removed.
# Usage: bench/compare-swarm.sh [PODS] [RUNS]   (defaults: 100 3)
# SWARM_NETWORK=host gives Swarm's tasks the host network, as Berth's pods
# have until pod networking lands (Swarm's default attaches each task to a
# bridge, with a veth and iptables rules of its own).
# Start dockerd with DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: otherwise every
# Swarm task asks a registry first, which fails here and doubles its time.
set -euo pipefail

pods="${1:-100}"
runs="${2:-3}"
image="berth-bench/busybox:1"
service="berth-compare-swarm"
root="$(cd "$(dirname "$0")/.." && pwd)"
berth="${BERTH_BIN:-$root/target/release/berth}"
if [[ ! -x "$berth" && -x "${CARGO_TARGET_DIR:-/nonexistent}/release/berth" ]]; then
  berth="$CARGO_TARGET_DIR/release/berth"
fi
[[ -x "$berth" ]] || { echo "build berth first: cargo build --release" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "no Docker Engine answers: start dockerd (with DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1)" >&2; exit 1; }

created_swarm=no
cleanup() {
  docker service rm "$service" >/dev/null 2>&1 || true
  # Service containers linger a moment after the service goes.
  for _ in $(seq 1 60); do
    [[ -z "$(docker ps -aq --filter "label=com.docker.swarm.service.name=$service")" ]] && break
    sleep 1
  done
  if [[ $created_swarm == yes ]]; then docker swarm leave --force >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

now() { date +%s.%N; }

swarm_run() {
  local start end
  start=$(now)
  docker service create --detach --quiet --name "$service" --replicas "$pods" \
    ${SWARM_NETWORK:+--network "$SWARM_NETWORK"} "$image" sleep 3600 >/dev/null
  while [[ "$(docker service ls --filter "name=$service" --format '{{.Replicas}}')" != "$pods/$pods" ]]; do
    sleep 0.1
    if (( $(echo "$(now) - $start > 600" | bc) )); then echo "swarm did not start $pods tasks in 600 s" >&2; exit 1; fi
  done
  end=$(now)
  docker service rm "$service" >/dev/null
  for _ in $(seq 1 120); do
    [[ -z "$(docker ps -aq --filter "label=com.docker.swarm.service.name=$service")" ]] && break
    sleep 1
  done
  echo "$end - $start" | bc
}

berth_run() {
  "$berth" bench startup --pods "$pods" --runtime docker --image "$image" -o json \
    | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["all_running_s"])'
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# Made here, not in swarm_run's subshell, so that cleanup knows.
if [[ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]]; then
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  created_swarm=yes
fi

berth_times=()
swarm_times=()
for r in $(seq 1 "$runs"); do
  b=$(berth_run)
  s=$(swarm_run)
  echo "run $r: berth ${b}s, swarm ${s}s" >&2
  berth_times+=("$b")
  swarm_times+=("$s")
done
b=$(printf '%s\n' "${berth_times[@]}" | median)
s=$(printf '%s\n' "${swarm_times[@]}" | median)
python3 -c "import json; b=$b; s=$s; print(json.dumps({'pods': $pods, 'berth_all_running_s': round(b, 3), 'swarm_all_running_s': round(s, 3), 'speedup': round(s / b, 2)}))"
