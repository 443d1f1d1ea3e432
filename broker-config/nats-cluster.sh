#!/usr/bin/env bash
# A 3-node nats-server cluster (JetStream MQTT) on loopback, for tests, CI, benchmarks and the
# demo: PulseBridge's "survive a node" deployment (docs/scale.md). Every node includes
# DIR/auth.conf, the users file `fleet-manager` writes (--broker-admin nats-users).
#
#   broker-config/nats-cluster.sh start DIR BASE   node i (1..3): NATS BASE+i, cluster BASE+10+i,
#                                                  MQTT BASE+20+i, monitoring BASE+30+i
#   broker-config/nats-cluster.sh kill DIR N       kill -9 node N (1..3)
#   broker-config/nats-cluster.sh restart DIR N    start node N again (its data kept)
#   broker-config/nats-cluster.sh stop DIR         stop every node
#
# Each node: DIR/nN.conf, DIR/nN.pid, DIR/nN.log, JetStream data in DIR/data/nN. `start` waits
# until every node answers /healthz ok (JetStream ready), at most 30 s.
# PB_NATS_CONSUMER_REPLICAS (default 3) sets mqtt.consumer_replicas, for the benchmark.
set -euo pipefail
command -v nats-server >/dev/null || { echo "nats-cluster: nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
action=${1:?"usage: $0 start DIR BASE | kill DIR N | restart DIR N | stop DIR"}
dir=${2:?"the cluster's folder is missing"}

wait_healthy() {
  local port=$1 i
  for i in $(seq 300); do
    if python3 - "$port" <<'PY' 2>/dev/null; then return 0; fi
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1) as r:
    sys.exit(0 if b'"ok"' in r.read() else 1)
PY
    sleep 0.1
  done
  echo "nats-cluster: the node with monitoring port $port is not healthy after 30 s" >&2
  return 1
}

launch() {
  local n=$1
  nats-server -c "$dir/n$n.conf" >> "$dir/n$n.log" 2>&1 &
}

monitor_port() { sed -n 's/^http: 127.0.0.1:\([0-9]*\)$/\1/p' "$dir/n$1.conf"; }

case "$action" in
  start)
    base=${3:?"the base port is missing"}
    mkdir -p "$dir/data"
    if [ ! -e "$dir/auth.conf" ]; then
      # Until fleet-manager writes the users: one user nobody knows, allowed nothing useful
      # (an empty users list would let anyone in).
      cat > "$dir/auth.conf" <<AUTH
authorization {
  users: [
    { user: "pulsebridge-placeholder", password: "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')",
      permissions: { publish: { allow: ["pulsebridge.placeholder"] }, subscribe: { allow: ["pulsebridge.placeholder"] } } }
  ]
}
AUTH
      chmod 600 "$dir/auth.conf"
    fi
    for n in 1 2 3; do
      cat > "$dir/n$n.conf" <<CONF
server_name: n$n
listen: 127.0.0.1:$((base + n))
http: 127.0.0.1:$((base + 30 + n))
pid_file: "$dir/n$n.pid"
jetstream { store_dir: "$dir/data/n$n", max_memory_store: 256MB, max_file_store: 1GB }
cluster {
  name: pulsebridge
  listen: 127.0.0.1:$((base + 10 + n))
  routes: [ nats-route://127.0.0.1:$((base + 11)), nats-route://127.0.0.1:$((base + 12)), nats-route://127.0.0.1:$((base + 13)) ]
}
mqtt {
  listen: 127.0.0.1:$((base + 20 + n))
  # Sessions, messages and retained messages replicated on all three nodes.
  stream_replicas: 3
  # Each QoS 1 subscription is a JetStream consumer, replicated like the streams (3): set up
  # in ~1.9 s per unit instead of ~14 ms with one replica, but a consumer with one replica
  # dies with its node, and what it had not delivered is lost (a result, a completion).
  consumer_replicas: ${PB_NATS_CONSUMER_REPLICAS:-3}
  ack_wait: "10s"
  max_ack_pending: 1024
}
include ./auth.conf
CONF
      launch "$n"
    done
    for n in 1 2 3; do wait_healthy "$(monitor_port "$n")"; done
    ;;
  kill)
    n=${3:?"which node (1..3)?"}
    kill -9 "$(cat "$dir/n$n.pid")"
    ;;
  restart)
    n=${3:?"which node (1..3)?"}
    launch "$n"
    wait_healthy "$(monitor_port "$n")"
    ;;
  stop)
    for n in 1 2 3; do
      [ -e "$dir/n$n.pid" ] && kill "$(cat "$dir/n$n.pid")" 2>/dev/null || true
    done
    for n in 1 2 3; do
      for i in $(seq 100); do
        [ -e "$dir/n$n.pid" ] && kill -0 "$(cat "$dir/n$n.pid")" 2>/dev/null || break
        sleep 0.1
      done
      [ -e "$dir/n$n.pid" ] && kill -9 "$(cat "$dir/n$n.pid")" 2>/dev/null || true
    done
    ;;
  *) echo "nats-cluster: unknown action $action" >&2; exit 2 ;;
esac
