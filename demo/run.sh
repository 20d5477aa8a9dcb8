#!/usr/bin/env bash
# The sockspan demo: a small online-prediction chain nobody instrumented, with one deliberately
# slow service and one slow network hop, traced by sockspan with its store and web UI.
#
#   curl → gateway ─┬─▶ features   (127.0.0.1; sleeps 60 ms per request: the slow service)
#                   └─▶ model      (in network namespace sockspan-demo, behind a veth pair whose
#                                   egress is shaped to 4 Mbit/s with tbf: 40 kB answers take
#                                   ~80 ms to cross: the slow hop)
#
# Usage: demo/run.sh [--check]   (root; SOCKSPAN_BIN names the agent binary)
#   --check  drive traffic, print the blame table, exit 0 only if it names both culprits.
#   without  the same, then keep everything running for the browser until Ctrl-C.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
bin="${SOCKSPAN_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/sockspan}"
check=0
[ "${1:-}" = "--check" ] && check=1
ns=sockspan-demo
work="$(mktemp -d /tmp/sockspan-demo.XXXXXX)"
ui_port="${SOCKSPAN_DEMO_UI_PORT:-16686}"
pids=()

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del ssd-host 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say() { echo "demo: $*" >&2; }

# A namespace for the model and a shaped link to it. 10.231.0.0/30 exists only inside this
# machine: the host end and the namespace end of the veth pair made here.
ip netns del "$ns" 2>/dev/null || true
ip link del ssd-host 2>/dev/null || true
ip netns add "$ns"
ip link add ssd-host type veth peer name ssd-ns
ip link set ssd-ns netns "$ns"
ip addr add 10.231.0.1/30 dev ssd-host
ip link set ssd-host up
ip netns exec "$ns" ip addr add 10.231.0.2/30 dev ssd-ns
ip netns exec "$ns" ip link set ssd-ns up
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" tc qdisc add dev ssd-ns root tbf rate 4mbit burst 16kb latency 800ms
say "model's link shaped: $(ip netns exec "$ns" tc qdisc show dev ssd-ns | head -1)"

gateway=$(free_port); features=$(free_port); model=$(free_port)
wait_ready() { # file
  for _ in $(seq 1 100); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.1; done
  say "a service did not start: $(cat "$1")"; exit 1
}
ip netns exec "$ns" env OTEL_SERVICE_NAME=model MODEL_LISTEN=10.231.0.2 MODEL_PAD_BYTES=40000 MODEL_DELAY_MS=5 \
  python3 "$root/tests/fixtures/chain.py" model "$model" > "$work/model.log" 2>&1 &
pids+=($!)
env OTEL_SERVICE_NAME=features FEATURES_DELAY_MS=60 python3 "$root/tests/fixtures/chain.py" features "$features" > "$work/features.log" 2>&1 &
pids+=($!)
env OTEL_SERVICE_NAME=gateway MODEL_HOST=10.231.0.2 python3 "$root/tests/fixtures/chain.py" frontend "$gateway" "$features" "$model" > "$work/gateway.log" 2>&1 &
pids+=($!)
wait_ready "$work/model.log"; wait_ready "$work/features.log"; wait_ready "$work/gateway.log"
say "gateway :$gateway → features :$features, model 10.231.0.2:$model (namespace $ns)"

"$bin" run --store "$work/traces.redb" --ui "127.0.0.1:$ui_port" --link-delay-ms 300 > "$work/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do grep -q "capture path attached" "$work/agent.log" && break; sleep 0.1; done
grep -q "capture path attached" "$work/agent.log" || { say "the agent did not start:"; cat "$work/agent.log" >&2; exit 1; }

say "sending 40 requests, 4 at a time"
seq 1 40 | xargs -P 4 -I{} curl -sf -o /dev/null --max-time 20 "http://127.0.0.1:$gateway/predict/{}"
sleep 1.5

echo
echo "web UI: http://127.0.0.1:$ui_port/   (Search: gateway; Why is it slow: gateway GET /predict/{id})"
echo
"$bin" blame --service gateway --operation 'GET /predict/{id}' --percentile 99 --api "http://127.0.0.1:$ui_port" | tee "$work/blame.txt"

if [ "$check" = 1 ]; then
  top=$(sed -n '3,5p' "$work/blame.txt")
  if grep -q 'service features$' <<<"$top" && grep -q 'hop gateway → model$' <<<"$top"; then
    echo "demo: OK: the blame table names the slow service (features) and the slow hop (gateway → model)"
    exit 0
  fi
  echo "demo: FAILED: the top rows do not name both culprits" >&2
  exit 1
fi
echo
echo "everything keeps running for the browser; Ctrl-C stops it and removes the namespace"
wait "${pids[-1]}"
