#!/usr/bin/env bash
# Builds PulseBridge's Debian packages from a release build (docs/install.md):
#   scripts/package.sh [--bin-dir DIR] [--out DIR]
# DIR defaults: .build/release (what `swift build -c release --static-swift-stdlib` made) and
# dist/. Writes pulsebridge-edge-agent, pulsebridge-fleet-manager, pulsebridge-payment-server
# (VERSION_ARCH) and pulsebridge-broker (VERSION_all) with dpkg-deb, owned by root through
# fakeroot. The version is the one stamped into the binaries (`edge-agent --version`).
# Man pages are generated from each binary's own argument parser (packaging/manpage.py),
# completions from its `--generate-completion-script`: they cannot drift from the code.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.build/release
out=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "package.sh: unknown option $1 (--bin-dir DIR, --out DIR)" >&2; exit 2 ;;
  esac
done
for tool in dpkg-deb dpkg-shlibdeps fakeroot python3 gzip; do
  command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing; run scripts/setup.sh" >&2; exit 1; }
done
for b in edge-agent fleet-manager payment-server; do
  [ -x "$bin/$b" ] || { echo "package.sh: $bin/$b is missing; build with: swift build -c release --static-swift-stdlib" >&2; exit 1; }
done
# The Swift runtime is not a Debian package: it must be linked into the binaries.
for b in edge-agent fleet-manager payment-server; do
  if ldd "$bin/$b" | grep -q 'libswiftCore\|libFoundation'; then
    echo "package.sh: $bin/$b links the Swift runtime dynamically; build with --static-swift-stdlib" >&2
    exit 1
  fi
done

version=$("$bin/edge-agent" --version)
for b in fleet-manager payment-server; do
  v=$("$bin/$b" --version)
  [ "$v" = "$version" ] || { echo "package.sh: $b is version $v, edge-agent $version: build them together" >&2; exit 1; }
done
arch=$(dpkg --print-architecture)
# Who the packages name as their maintainer: set PULSEBRIDGE_MAINTAINER to your team's
# "Name <address>" for packages you publish.
maintainer=${PULSEBRIDGE_MAINTAINER:-"PulseBridge developers <pulsebridge@example.org>"}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d /tmp/pulsebridge-package.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Reproducible timestamps in the pages and archives.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

# The maintainer scripts with the shared systemd helpers put in where #SYSTEMD# stands.
maintainer_script() {  # SRC DEST
  python3 - "$1" "$2" <<'PY'
import sys
src, dest = sys.argv[1], sys.argv[2]
snippets = open("packaging/systemd-snippets.sh").read()
text = open(src).read().replace("#SYSTEMD#\n", snippets)
open(dest, "w").write(text)
PY
  chmod 755 "$2"
}

docs() {  # PACKAGE ROOT FILES...
  local package=$1 root=$2; shift 2
  local doc="$root/usr/share/doc/$package"
  install -d "$doc"
  for f in "$@"; do install -m 644 "$f" "$doc/"; done
  cat > "$doc/copyright" <<EOF
PulseBridge: cashless payment for coin-operated machines.

Copyright 2026 the PulseBridge developers.

The source is at the project's repository. No licence has been chosen for it yet; until one
is, no rights beyond running these packages are granted.
EOF
  printf '%s (%s) unstable; urgency=medium\n\n  * Built from the PulseBridge repository; its git log is the history.\n\n -- %s  %s\n' \
    "$package" "$version" "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" | gzip -9n > "$doc/changelog.gz"
}

binary() {  # NAME ROOT: the binary, its man page, its completions
  local name=$1 root=$2
  install -D -m 755 "$bin/$name" "$root/usr/bin/$name"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/$name"
  install -d "$root/usr/share/man/man1"
  python3 packaging/manpage.py "$bin/$name" "$version" | gzip -9n > "$root/usr/share/man/man1/$name.1.gz"
  install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"
  # bash-completion sources the file: no #! line.
  "$bin/$name" --generate-completion-script bash | sed '1{/^#!/d}' > "$root/usr/share/bash-completion/completions/$name"
  "$bin/$name" --generate-completion-script zsh > "$root/usr/share/zsh/vendor-completions/_$name"
  "$bin/$name" --generate-completion-script fish > "$root/usr/share/fish/vendor_completions.d/$name.fish"
  chmod 644 "$root/usr/share/bash-completion/completions/$name" "$root/usr/share/zsh/vendor-completions/_$name" \
    "$root/usr/share/fish/vendor_completions.d/$name.fish"
}

shlib_depends() {  # ROOT BINARY: the shared libraries' packages, as dpkg-shlibdeps finds them
  local root=$1 file=$2
  mkdir -p "$work/shlibs/debian"
  printf 'Source: pulsebridge\n\nPackage: pulsebridge\nArchitecture: any\n' > "$work/shlibs/debian/control"
  (cd "$work/shlibs" && dpkg-shlibdeps -O "$root/$file" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
}

control() {  # ROOT PACKAGE ARCH DEPENDS DESCRIPTION...
  local root=$1 package=$2 pkg_arch=$3 depends=$4; shift 4
  install -d "$root/DEBIAN"
  local size
  size=$(du -k -s --exclude=DEBIAN "$root" | cut -f1)
  {
    echo "Package: $package"
    echo "Version: $version"
    echo "Architecture: $pkg_arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $size"
    echo "Depends: $depends"
    echo "Section: misc"
    echo "Priority: optional"
    echo "Homepage: https://github.com/pulsebridge/pulsebridge"
    printf 'Description: %s\n' "$1"; shift
    for line in "$@"; do
      if [ -z "$line" ]; then echo " ."; else echo " $line"; fi
    done
  } > "$root/DEBIAN/control"
  if [ -d "$root/etc" ]; then
    (cd "$root" && find etc -type f | sed 's|^|/|' | sort) > "$root/DEBIAN/conffiles"
  fi
  (cd "$root" && find . -path ./DEBIAN -prune -o -type f -print0 | sort -z | xargs -0 md5sum | sed 's|  \./|  |') \
    > "$root/DEBIAN/md5sums"
}

build() {  # ROOT PACKAGE ARCH
  local root=$1 package=$2 pkg_arch=$3
  find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  fakeroot dpkg-deb --root-owner-group -Zxz -z2 --build "$root" "$out/${package}_${version}_${pkg_arch}.deb" >/dev/null
  echo "$out/${package}_${version}_${pkg_arch}.deb"
}

daemon() {  # DIR BINARY: a daemon's package tree in $work/DIR (sets root): the binary, the unit
  # packaging/DIR/pulsebridge-DIR.service, the maintainer scripts packaging/DIR/{postinst,prerm,postrm}
  root=$work/$1
  binary "$2" "$root"
  install -D -m 644 "packaging/$1/pulsebridge-$1.service" "$root/lib/systemd/system/pulsebridge-$1.service"
  install -d "$root/DEBIAN"
  for s in postinst prerm postrm; do maintainer_script "packaging/$1/$s" "$root/DEBIAN/$s"; done
}

# pulsebridge-edge-agent
daemon edge-agent edge-agent
install -D -m 644 packaging/edge-agent/edge-agent.toml "$root/etc/pulsebridge/edge-agent.toml"
docs pulsebridge-edge-agent "$root" docs/install.md docs/bundle.md docs/firmware.md docs/operations.md
control "$root" pulsebridge-edge-agent "$arch" "$(shlib_depends "$root" usr/bin/edge-agent), adduser" \
  "PulseBridge edge agent: cashless payments to coin pulses" \
  "Runs on the small Linux unit inside a coin laundry, car wash or vending" \
  "machine. It verifies signed payment completions that arrive over MQTT and" \
  "fires relay contacts on the machine's fee input with exactly the pulses its" \
  "coin mechanism would give, then reports the result." \
  "" \
  "Installs the agent, its systemd unit (started once /etc/pulsebridge/bundle.json" \
  "exists), the pulsebridge system user in the gpio group and its state folders."
build "$root" pulsebridge-edge-agent "$arch"

# pulsebridge-fleet-manager
daemon fleet-manager fleet-manager
install -D -m 644 packaging/fleet-manager/fleet-manager.toml "$root/etc/pulsebridge/fleet-manager.toml"
docs pulsebridge-fleet-manager "$root" docs/install.md docs/operations.md docs/firmware.md docs/bundle.md docs/protocol.md
install -d "$root/usr/share/doc/pulsebridge-fleet-manager/examples"
install -m 644 docs/examples/*.json "$root/usr/share/doc/pulsebridge-fleet-manager/examples/"
control "$root" pulsebridge-fleet-manager "$arch" "$(shlib_depends "$root" usr/bin/fleet-manager), adduser" \
  "PulseBridge fleet manager: provision, watch and configure units" \
  "The operator's command line and service: provisions units with their broker" \
  "identities and bundles, watches them, pushes configuration, keys and firmware," \
  "and keeps every transaction with its user ID in its registry." \
  "" \
  "Installs fleet-manager, the serve unit (started once a fleet exists in" \
  "/var/lib/pulsebridge-fleet), the pulsebridge-fleet system user, the man" \
  "page and bash, zsh and fish completions."
build "$root" pulsebridge-fleet-manager "$arch"

# pulsebridge-payment-server
daemon payment-server payment-server
docs pulsebridge-payment-server "$root" docs/install.md docs/payment-server.md
install -D -m 644 packaging/payment-server/payment-server.toml "$root/usr/share/doc/pulsebridge-payment-server/examples/payment-server.toml"
control "$root" pulsebridge-payment-server "$arch" "$(shlib_depends "$root" usr/bin/payment-server), adduser" \
  "PulseBridge payment server: the page behind a machine's payment code" \
  "Serves the mobile payment page a machine's payment code points at, runs the" \
  "payment through a provider, sends the signed completion to the machine and" \
  "captures or voids on its result; keeps receipts and the customer information" \
  "the operator collects." \
  "" \
  "Installs payment-server, its unit (started once" \
  "/etc/pulsebridge/payment-server.toml exists) and the pulsebridge-pay" \
  "system user."
build "$root" pulsebridge-payment-server "$arch"

# pulsebridge-broker
root=$work/broker
install -D -m 644 packaging/broker/pulsebridge.conf "$root/etc/mosquitto/conf.d/pulsebridge.conf"
install -D -m 755 broker-config/make-dev-ca.sh "$root/usr/share/pulsebridge-broker/make-dev-ca.sh"
install -D -m 755 broker-config/bootstrap-dynsec.sh "$root/usr/share/pulsebridge-broker/bootstrap-dynsec.sh"
docs pulsebridge-broker "$root" docs/install.md broker-config/mosquitto.conf
install -d "$root/DEBIAN"
for s in postinst postrm; do maintainer_script "packaging/broker/$s" "$root/DEBIAN/$s"; done
control "$root" pulsebridge-broker all "mosquitto (>= 2.0), mosquitto-clients (>= 2.0), openssl" \
  "PulseBridge's MQTT broker setup for Debian's mosquitto" \
  "A drop-in configuration for mosquitto: TLS for units on port 8883, plain MQTT" \
  "on loopback for the fleet manager and payment servers, dynamic security with" \
  "per-unit identities, persistence of sessions and retained status." \
  "" \
  "Makes a self-signed certificate set for this host if there is none (replace it" \
  "with your fleet CA's) and the dynamic-security admin account."
build "$root" pulsebridge-broker all
