#!/usr/bin/env bash
# Creates the dynamic-security file with its admin: the one broker account that may
# administer accounts. Run once per broker, before it first starts:
#   broker-config/bootstrap-dynsec.sh DATA_DIR --password-file FILE
#   broker-config/bootstrap-dynsec.sh DATA_DIR ADMIN_PASSWORD     (development: the password
#                                                                  shows in the process list)
# Then start the broker and run `fleet-manager init` with the admin password: it creates the
# roles `fleet-manager` (with broker administration) and `payment-server` with exactly the
# rights of PROTOCOL.md, and their clients. The admin password is needed only then.
set -euo pipefail
usage="usage: bootstrap-dynsec.sh DATA_DIR --password-file FILE"
dir=${1:?$usage}
if [ "${2:-}" = --password-file ]; then
  password=$(cat "${3:?$usage}")
else
  password=${2:?$usage}
fi
mkdir -p "$dir"
file="$dir/dynamic-security.json"
if [ -e "$file" ]; then
  echo "bootstrap-dynsec: $file exists already; not touching it" >&2
  exit 1
fi
# The password goes to mosquitto_ctrl's prompt on standard input, never on its command line.
printf '%s\n%s\n' "$password" "$password" | mosquitto_ctrl dynsec init "$file" admin >/dev/null
chmod 600 "$file"
# mosquitto started as root drops to its own user: the file and folder must be its own.
if id mosquitto >/dev/null 2>&1; then
  chown mosquitto: "$dir" "$file"
fi
echo "created $file with the admin account 'admin'"
