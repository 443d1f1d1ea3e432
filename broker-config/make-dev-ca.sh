#!/usr/bin/env bash
# Makes a development certificate authority and a broker certificate for 127.0.0.1/localhost.
#   broker-config/make-dev-ca.sh OUT_DIR [SERVER_NAME]
# Writes ca.crt, ca.key, server.crt, server.key into OUT_DIR. Development and tests only:
# a production fleet CA lives offline and signs with a key no script can read.
set -euo pipefail
out=${1:?usage: make-dev-ca.sh OUT_DIR [SERVER_NAME]}
name=${2:-localhost}
mkdir -p "$out"
cd "$out"
# EC P-256 keys: small, fast handshakes on small devices.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.crt -days 825 -subj "/CN=PulseBridge development CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server.key -out server.csr -subj "/CN=$name" 2>/dev/null
# The client checks the broker's name: the certificate names loopback and $name.
printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' "$name" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -out server.crt -days 825 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
# mosquitto started as root drops to its own user, which must read the broker's key.
if id mosquitto >/dev/null 2>&1; then
  chgrp mosquitto server.key && chmod 640 server.key
fi
echo "wrote $out/ca.crt, ca.key, server.crt, server.key"
