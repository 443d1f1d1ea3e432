#!/usr/bin/env bash
# Creates the dynamic-security file with its admin: the one broker account that may
# administer accounts. Run once per broker, before it first starts:
#   broker-config/bootstrap-dynsec.sh DATA_DIR ADMIN_PASSWORD
# Then start the broker and run `fleet-manager init` with the admin password: it creates the
# roles `fleet-manager` (with broker administration) and `payment-server` with exactly the
# rights of PROTOCOL.md, and their clients. The admin password is needed only then.
set -euo pipefail
dir=${1:?usage: bootstrap-dynsec.sh DATA_DIR ADMIN_PASSWORD}
password=${2:?usage: bootstrap-dynsec.sh DATA_DIR ADMIN_PASSWORD}
mkdir -p "$dir"
file="$dir/dynamic-security.json"
if [ -e "$file" ]; then
  echo "bootstrap-dynsec: $file exists already; not touching it" >&2
  exit 1
fi
mosquitto_ctrl dynsec init "$file" admin "$password" >/dev/null
chmod 600 "$file"
# mosquitto started as root drops to its own user: the file and folder must be its own.
if id mosquitto >/dev/null 2>&1; then
  chown mosquitto: "$dir" "$file"
fi
echo "created $file with the admin account 'admin'"
