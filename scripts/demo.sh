#!/usr/bin/env bash
# The PulseBridge demo fleet, from a fresh Debian 12 machine with Swift:
# installs the system packages, builds, and runs the demo (broker, fleet, three machines with
# simulated GPIO, the payment server with its payment pages, payments, fleet table, customer report), then stops everything it started.
#   scripts/demo.sh                 # run once
#   scripts/demo.sh --keep-running  # leave it running to explore; Ctrl-C stops it
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build -c release --static-swift-stdlib --product edge-agent
swift build -c release --static-swift-stdlib --product fleet-manager
swift build -c release --static-swift-stdlib --product payment-server
swift build -c release --static-swift-stdlib --product pulsebridge-demo
exec .build/release/pulsebridge-demo "$@"
