#!/usr/bin/env bash
# The whole deployment on 127.0.0.1: a TLS SuperLink with SuperNode authentication, three
# registered SuperNodes training on their own data files, fedge's ServerApp (train, compress,
# sign, redistribute), then `fedge infer` against node 0's model store.
# Every process it starts is stopped on exit, success or failure.
#
#   bash deploy/demo-loopback.sh [WORK_DIR]      (WORK_DIR must not exist; default: a temp dir)
#   ROUNDS=3 bash deploy/demo-loopback.sh        (settings: ROUNDS, NODES)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
APP="$(dirname "$HERE")"
WORK="${1:-$(mktemp -d -t fedge-demo-XXXXXX)}"
NODES="${NODES:-3}"
ROUNDS="${ROUNDS:-3}"
if [ -e "$WORK" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
  echo "error: $WORK exists and is not empty" >&2; exit 2
fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

# Flower: its own home, no telemetry, no update checks, no `uv sync` of the app per run.
export FLWR_HOME="$WORK/flwr-home" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
  FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start() {  # start a command in its own process group, logging to $WORK/logs/NAME.log
  local name="$1"; shift
  setsid "$@" >"$WORK/logs/$name.log" 2>&1 &
  PIDS+=("$!")
}
mkdir -p "$WORK/logs" "$FLWR_HOME"
T0=$(date +%s)

echo "== keys and certificates"
python3 "$HERE/gen_certs.py" --out "$WORK/certs" --nodes "$NODES"
python3 "$HERE/make_node_data.py" --out "$WORK/data" --nodes "$NODES"
C="$WORK/certs"

echo "== SuperLink (TLS, SuperNode authentication)"
PORT=$(free_port)
start superlink flower-superlink --ssl-ca-certfile "$C/ca.crt" --ssl-certfile "$C/superlink.crt" \
  --ssl-keyfile "$C/superlink.key" --enable-supernode-auth --host 127.0.0.1 --port "$PORT"
cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "fedge-demo"

[superlink.fedge-demo]
address = "127.0.0.1:$PORT"
root-certificates = "$C/ca.crt"
TOML
for _ in $(seq 60); do flwr supernode list fedge-demo >/dev/null 2>&1 && break; sleep 0.5; done

echo "== registering and starting $NODES SuperNodes"
for i in $(seq 0 $((NODES - 1))); do
  flwr supernode register "$C/supernode-$i.pub" fedge-demo >/dev/null
  start "supernode-$i" flower-supernode --root-certificates "$C/ca.crt" --superlink "127.0.0.1:$PORT" \
    --auth-supernode-private-key "$C/supernode-$i" --port "$(free_port)" \
    --node-config "partition-id=$i num-partitions=$NODES data-file='$WORK/data/node-$i.npz' model-store='$WORK/stores/node-$i' trusted-key='$C/signing.pub'"
done

echo "== federated training, compression, signed redistribution"
cd "$APP"
flwr run . fedge-demo --stream --run-config \
  "clients=$NODES rounds=$ROUNDS partition='iid' out='$WORK/run' private-key='$C/signing.key' round-timeout=120.0 auto-students='deep-small' student-rounds=5" \
  >"$WORK/logs/flwr-run.log" 2>&1 || true
for _ in $(seq 600); do [ -f "$WORK/run/results.json" ] && break; sleep 0.5; done
if [ ! -f "$WORK/run/results.json" ]; then
  echo "error: the run did not finish; see $WORK/logs" >&2; exit 1
fi
python3 - "$WORK/run/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"teacher {100 * r['teacher']['accuracy']:.2f} %, student {100 * r['student']['accuracy']:.2f} %, "
      f"{r['student']['size_ratio']:.1f}x smaller")
for c in r["clients"]:
    print(f"  node {c['partition_id']}: installed={c['installed']} local accuracy={c['accuracy']} ({c['reason']})")
if not all(c["installed"] for c in r["clients"]):
    sys.exit("error: not every node installed the bundle")
PY

echo "== fedge infer on node 0 (its own model store, its own data)"
python3 -c "import numpy as np; d = np.load('$WORK/data/node-0.npz'); np.save('$WORK/sample.npy', d['x_test'][:8]); print('true labels:', d['y_test'][:8].tolist())"
echo "predicted:  $(fedge infer --model-dir "$WORK/stores/node-0" --trusted-key "$C/signing.pub" "$WORK/sample.npy" | tr '\n' ' ')"
echo "== done in $(( $(date +%s) - T0 )) s; everything is in $WORK"
