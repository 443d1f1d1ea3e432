#!/usr/bin/env bash
# Installs what PulseBridge needs on Debian 12 (run as root, or with sudo available):
# mosquitto and its clients, the C libraries the Swift package links (and libcurl, which the
# static Swift runtime's URLSession links), the tools the tests
# use (openssl, zbar, stress-ng, Chromium, promtool, nats-server), the Debian packaging tools (dpkg-deb, fakeroot,
# lintian, man for the generated pages), Python's `cryptography` for the interoperability tests
# and `selenium` for the browser tests.
set -euo pipefail
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update
as_root apt-get install -y --no-install-recommends \
  mosquitto mosquitto-clients libmosquitto-dev \
  libgpiod-dev gpiod \
  libssl-dev openssl libsodium-dev libcrypt-dev \
  libqrencode-dev zbar-tools librsvg2-bin libsqlite3-dev \
  libcurl4-openssl-dev \
  stress-ng pkg-config python3 python3-pip procps \
  chromium chromium-driver \
  dpkg-dev fakeroot lintian man-db
# The interop fixtures are checked against an independent Ed25519 implementation.
if ! python3 -c 'import cryptography' 2>/dev/null; then
  python3 -m pip install --quiet cryptography || as_root apt-get install -y python3-cryptography
fi
# The payment page's browser tests drive Debian's Chromium through Selenium (nothing downloads a
# browser: the driver is /usr/bin/chromedriver).
if ! python3 -c 'import selenium' 2>/dev/null; then
  python3 -m pip install --quiet selenium
fi
# The agent's benchmark runs the naive Python peer (../shared/bench/peer_agent.py) beside it.
if ! python3 -c 'import paho.mqtt' 2>/dev/null; then
  python3 -m pip install --quiet paho-mqtt
fi
# `promtool check metrics` checks serve's /metrics. Only the tool is taken from Debian's
# prometheus package: installing the package would start a Prometheus server.
if ! command -v promtool >/dev/null; then
  tools=$(mktemp -d)
  chmod 755 "$tools"
  (cd "$tools" && as_root apt-get download prometheus 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  dpkg-deb --fsys-tarfile "$tools"/prometheus_*.deb | tar -x -C "$tools" ./usr/bin/promtool
  as_root install -m 755 "$tools/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tools"
fi
# nats-server for the clustered-broker tests (broker-config/nats-cluster.sh starts its own nodes):
# only the binary is taken from Debian's package, whose service would start a server.
if ! command -v nats-server >/dev/null; then
  tools=$(mktemp -d)
  chmod 755 "$tools"
  (cd "$tools" && as_root apt-get download nats-server 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  dpkg-deb --fsys-tarfile "$tools"/nats-server_*.deb | tar -x -C "$tools" ./usr/sbin/nats-server
  as_root install -m 755 "$tools/usr/sbin/nats-server" /usr/local/bin/nats-server
  rm -rf "$tools"
fi
# mosquitto's Debian service is not needed: tests and the demo start their own brokers.
