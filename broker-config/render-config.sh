#!/usr/bin/env bash
# Renders broker-config/mosquitto.conf for one host: where its certificates and data live,
# its ports and the dynamic-security plugin's path. Prints the configuration.
#   broker-config/render-config.sh [--pki DIR] [--data DIR] [--tls-port N] [--local-port N]
#                                  [--tls-bind ADDRESS] [--plugin PATH]
#                                  [--log-dest syslog|stderr|file:PATH]
#   broker-config/render-config.sh --files [--identities DIR] [--pid-file FILE] [--manager-port N] ...
#     renders mosquitto-files.conf instead (the password-file administration, docs/scale.md).
# Defaults are the Debian service's: /etc/pulsebridge/broker, /var/lib/mosquitto, 8883, 1883,
# the plugin found beside libmosquitto, syslog.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pki=/etc/pulsebridge/broker
data=/var/lib/mosquitto
tls_port=8883
tls_bind=""
local_port=1883
log_dest=syslog
plugin=""
files=false
identities=/var/lib/pulsebridge/broker
pid_file=/run/mosquitto/mosquitto.pid
manager_port=1884
while [ $# -gt 0 ]; do
  case "$1" in
    --pki) pki=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --tls-port) tls_port=$2; shift 2 ;;
    --tls-bind) tls_bind=" $2"; shift 2 ;;
    --local-port) local_port=$2; shift 2 ;;
    --plugin) plugin=$2; shift 2 ;;
    --log-dest) log_dest=$2; shift 2 ;;
    --files) files=true; shift ;;
    --identities) identities=$2; shift 2 ;;
    --pid-file) pid_file=$2; shift 2 ;;
    --manager-port) manager_port=$2; shift 2 ;;
    *) echo "render-config: unknown option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done
if [ "$files" = false ] && [ -z "$plugin" ]; then
  for candidate in /usr/lib/*/mosquitto_dynamic_security.so /usr/lib/mosquitto_dynamic_security.so /usr/local/lib/mosquitto_dynamic_security.so; do
    if [ -e "$candidate" ]; then plugin=$candidate; break; fi
  done
fi
if [ "$files" = false ] && { [ -z "$plugin" ] || [ ! -e "$plugin" ]; }; then
  echo "render-config: the dynamic-security plugin was not found; install mosquitto 2 or pass --plugin PATH" >&2
  exit 1
fi
for f in ca.crt server.crt server.key; do
  [ -e "$pki/$f" ] || { echo "render-config: $pki/$f is missing (make-dev-ca.sh makes a development set)" >&2; exit 1; }
done
case "$log_dest" in
  syslog|stderr) log_line="log_dest $log_dest" ;;
  file:*) log_line="log_dest file ${log_dest#file:}" ;;
  *) echo "render-config: --log-dest must be syslog, stderr or file:PATH" >&2; exit 2 ;;
esac
if [ "$files" = true ]; then
  sed -e "s#/etc/pulsebridge/broker/#$pki/#g" \
      -e "s#/var/lib/pulsebridge/broker/#$identities/#g" \
      -e "s#^pid_file .*#pid_file $pid_file#" \
      -e "s#^persistence_location .*#persistence_location $data/#" \
      -e "s#^listener 8883\$#listener $tls_port$tls_bind#" \
      -e "s#^listener 1883 127.0.0.1\$#listener $local_port 127.0.0.1#" \
      -e "s#^listener 1884 127.0.0.1\$#listener $manager_port 127.0.0.1#" \
      -e "s#^log_dest .*#$log_line#" \
      "$here/mosquitto-files.conf"
  exit 0
fi
sed -e "s#/etc/pulsebridge/broker#$pki#g" \
    -e "s#/var/lib/mosquitto/dynamic-security.json#$data/dynamic-security.json#" \
    -e "s#^persistence_location .*#persistence_location $data/#" \
    -e "s#^listener 8883\$#listener $tls_port$tls_bind#" \
    -e "s#^listener 1883 127.0.0.1\$#listener $local_port 127.0.0.1#" \
    -e "s#^plugin .*#plugin $plugin#" \
    -e "s#^log_dest .*#$log_line#" \
    "$here/mosquitto.conf"
