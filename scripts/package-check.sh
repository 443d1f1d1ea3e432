#!/usr/bin/env bash
# CI's `package` stage (run as root, after the release build; scripts/test.sh package):
#   1. builds the Debian packages (scripts/package.sh) and runs lintian on them: no errors;
#   2. checks every unit with `systemd-analyze verify`;
#   3. runs every `sh` block of docs/install.md in order, in one bash: the packages installed
#      with dpkg, a fleet made, a unit provisioned, a payment credited through the installed
#      binaries against the broker configured by the broker package, then everything purged;
#   4. checks the machine is as it was: the same files outside /proc, /sys, /dev, /run, /tmp,
#      /var/log, /var/cache, /root and the repository, and the same users and groups.
# Where systemd is not running (a CI container), `systemctl` in the docs is a shell function
# here that runs the unit's own ExecStartPre/ExecStart lines as its User, and the edge agent
# gets simulated relay lines (--gpio sim:FILE). Nothing else stands in.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
bin=${PULSEBRIDGE_PACKAGE_BIN:-.build/release}
[ "$(id -u)" -eq 0 ] || { echo "package-check: run as root (it installs and purges packages)" >&2; exit 1; }
for p in pulsebridge-edge-agent pulsebridge-fleet-manager pulsebridge-payment-server pulsebridge-broker; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'installed\|config-files'; then
    echo "package-check: $p is installed on this machine already; purge it first (dpkg --purge $p)" >&2
    exit 1
  fi
done
for port in 1883 8883; do
  if ss -Hltn "sport = :$port" | grep -q .; then
    echo "package-check: port $port is in use; the broker package's mosquitto needs it (stop the other broker)" >&2
    exit 1
  fi
done
work=$(mktemp -d /tmp/pulsebridge-package-check.XXXXXX)
# The services' users write the simulated edge log here.
chmod 755 "$work"
dist=$work/dist

snapshot() {  # OUT: every file outside the volatile places, and the accounts
  find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/tmp \
    -o -path /var/log -o -path /var/cache -o -path /root -o -path "$repo" -o -path /work \
    -o -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/systemd/deb-systemd-helper-masked \
    -o -path /var/lib/systemd/deb-systemd-helper-enabled \) -prune -o -print 2>/dev/null \
    | grep -v -E '^/etc/(passwd|group|shadow|gshadow|subuid|subgid)-?$' | sort > "$1.files"
  for f in passwd group; do getent "$f" | sort > "$1.$f"; done
  (find /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked -print 2>/dev/null || true) \
    | sort > "$1.systemd-state"
}
snapshot "$work/before"
mosquitto_db_existed=no
[ -e /var/lib/mosquitto/mosquitto.db ] && mosquitto_db_existed=yes

echo "== packages"
scripts/package.sh --bin-dir "$bin" --out "$dist"
ls -l "$dist"

echo "== lintian"
# Errors fail the stage; warnings are printed (docs/install.md explains the ones kept).
lintian_status=0
lintian --fail-on error --tag-display-limit 0 "$dist"/*.deb > "$work/lintian.txt" 2>&1 || lintian_status=$?
grep -v '^running with root privileges' "$work/lintian.txt" || true
[ "$lintian_status" -eq 0 ] || { echo "package-check: lintian found errors (above)" >&2; exit 1; }

echo "== systemd-analyze verify"
mkdir -p "$work/units"
for deb in "$dist"/*.deb; do dpkg-deb -x "$deb" "$work/units"; done
# The units name their binaries by their installed paths; verify against the extracted ones.
for unit in "$work"/units/lib/systemd/system/*.service; do
  sed -e "s|/usr/bin/|$work/units/usr/bin/|g" "$unit" > "$work/$(basename "$unit")"
  # Any complaint fails (an unknown key is only a warning to systemd: it would be ignored).
  complaints=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$work/$(basename "$unit")" 2>&1) \
    || { echo "$complaints" >&2; exit 1; }
  [ -z "$complaints" ] || { echo "package-check: systemd-analyze verify $(basename "$unit"):" >&2; echo "$complaints" >&2; exit 1; }
  echo "$(basename "$unit"): verified"
done

echo "== man pages and completions"
for page in "$work"/units/usr/share/man/man1/*.1.gz; do
  name=$(basename "$page" .1.gz)
  warnings=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null || true)
  [ -z "$warnings" ] || { echo "package-check: man $name: $warnings" >&2; exit 1; }
  # Every subcommand the binary has is in its page (generated from the same description).
  for sub in $("$work/units/usr/bin/$name" --experimental-dump-help | python3 -c '
import json, sys
print(" ".join(s["commandName"] for s in json.load(sys.stdin)["command"].get("subcommands", []) if s["commandName"] != "help"))'); do
    MANWIDTH=200 man -l "$page" 2>/dev/null | grep -q "$name $sub" \
      || { echo "package-check: man $name has no section for '$name $sub'" >&2; exit 1; }
  done
  bash -n "$work/units/usr/share/bash-completion/completions/$name"
  (source "$work/units/usr/share/bash-completion/completions/$name" && complete -p "$name" >/dev/null) \
    || { echo "package-check: the bash completion for $name does not register" >&2; exit 1; }
  echo "$name: man page and completions"
done

echo "== docs/install.md"
services=$work/services
mkdir -p "$services"
cat > "$work/install.sh" <<EOF
set -euo pipefail
cd "$repo"
if [ ! -d /run/systemd/system ]; then
  # No systemd here: run the units' own commands (see scripts/package-check.sh).
  systemctl() { "$repo/scripts/unit-runner.sh" "$services" "\$@"; }
fi
export PULSEBRIDGE_SIMULATED_GPIO="$work/edges.jsonl"
ln -sfn "$dist" dist.package-check
EOF
# The upgrade step is made a real one: before it, an older packaged version is `current` (as
# after installing last month's package); after it, the new version must be `current`, the old
# one `previous`, and the agent must have passed the health check postinst armed.
cat > "$work/before-upgrade.sh" <<'EOF'
fw=/var/lib/pulsebridge-firmware
install -d -m 755 -o pulsebridge -g pulsebridge "$fw/versions/0.0.1"
install -m 755 -o pulsebridge -g pulsebridge "$fw/$(readlink "$fw/current")/edge-agent" "$fw/versions/0.0.1/edge-agent"
ln -sfn versions/0.0.1 "$fw/current"
EOF
cat > "$work/after-upgrade.sh" <<EOF
version=\$(edge-agent --version)
[ "\$(readlink /var/lib/pulsebridge-firmware/current)" = "versions/\$version" ] \\
  || { echo "package-check: the upgrade did not make \$version current" >&2; exit 1; }
[ "\$(readlink /var/lib/pulsebridge-firmware/previous)" = versions/0.0.1 ] \\
  || { echo "package-check: the upgrade did not keep 0.0.1 as previous" >&2; exit 1; }
# The agent clears the pending file once it is online with the new version (it paid above).
for _ in \$(seq 300); do [ -e /var/lib/pulsebridge/firmware-pending.json ] || break; sleep 0.1; done
[ ! -e /var/lib/pulsebridge/firmware-pending.json ] \\
  || { echo "package-check: the upgrade's health check never passed" >&2; exit 1; }
grep -q "firmware \$version is healthy" "$services"/*.log \\
  || { echo "package-check: the agent did not confirm the upgraded version" >&2; exit 1; }
echo "upgrade: 0.0.1 -> \$version, health check passed"
EOF
python3 - "$repo/docs/install.md" "$work" >> "$work/install.sh" <<'PY'
import sys
blocks, current, heading = [], None, ""
for line in open(sys.argv[1]).read().split("\n"):
    if current is None and line.startswith("## "):
        heading = line
    elif current is None and line == "```sh":
        current = []
    elif current is not None and line == "```":
        blocks.append((heading, "\n".join(current))); current = None
    elif current is not None:
        current.append(line)
upgrades = [i for i, (h, _) in enumerate(blocks) if h == "## Upgrade"]
assert len(upgrades) == 1, "docs/install.md: one sh block under ## Upgrade"
for i, (_, b) in enumerate(blocks):
    if "swift build" in b:
        continue  # the release build is what this stage packages; it exists already
    print('echo "== install.md step %d"' % (i + 1))
    if i in upgrades:
        print('source "%s/before-upgrade.sh"' % sys.argv[2])
    print(b.replace("dist/", "dist.package-check/"))
    if i in upgrades:
        print('source "%s/after-upgrade.sh"' % sys.argv[2])
PY
status=0
bash "$work/install.sh" 2>&1 | tee "$work/install.log" || status=$?
rm -f dist.package-check
# Whatever the steps left running (the unit runner's services, mosquitto).
scripts/unit-runner.sh "$services" stop-all || true
if [ "$status" -ne 0 ]; then
  echo "package-check: a docs/install.md step failed (exit $status); services' logs:" >&2
  tail -n 40 "$services"/*.log >&2 || true
  for p in pulsebridge-edge-agent pulsebridge-payment-server pulsebridge-fleet-manager pulsebridge-broker; do
    dpkg --purge "$p" >/dev/null 2>&1 || true
  done
  exit 1
fi
grep -q ": credited; amount 400 JPY" "$work/install.log" || { echo "package-check: the payment was not credited" >&2; exit 1; }
# Each installed binary said the version the packages carry.
version=$("$bin/edge-agent" --version)
[ "$(grep -cx "$version" "$work/install.log")" -ge 3 ] \
  || { echo "package-check: the installed binaries did not all report version $version" >&2; exit 1; }
[ -s "$work/edges.jsonl" ] || { echo "package-check: the agent fired no edges" >&2; exit 1; }

echo "== the machine as it was"
# mosquitto's own persistence file, written because the steps ran Debian's mosquitto; it
# belongs to the mosquitto package, not to PulseBridge's.
if [ "$mosquitto_db_existed" = no ]; then rm -f /var/lib/mosquitto/mosquitto.db; fi
snapshot "$work/after"
differences=0
for part in files passwd group systemd-state; do
  if ! diff -u "$work/before.$part" "$work/after.$part"; then differences=1; fi
done
[ "$differences" -eq 0 ] || { echo "package-check: install + purge left the machine changed (above)" >&2; exit 1; }
rm -rf "$work"
echo "package-check: packages built, lintian clean, units verified, installed, paid, purged; nothing left behind"
