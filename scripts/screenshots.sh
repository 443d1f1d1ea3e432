#!/usr/bin/env bash
# Retakes the payment page screenshots in docs/screenshots: runs the Chromium journey test
# (Tests/PaymentServerTests, Tests/browser/pay_flow.py) with its screenshots going there, and
# keeps the ones docs/payment-server.md shows.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$PWD/docs/screenshots"
scratch=$(mktemp -d)
swift build --build-tests
PULSEBRIDGE_BROWSER_TESTS=1 PULSEBRIDGE_SCREENSHOTS="$scratch" swift test --skip-build --filter CustomerJourneyTests
mkdir -p "$out"
for shot in approve-machine approve-checkout approve-result approve-profile uncertain-result offline-refused; do
  cp "$scratch/$shot.png" "$out/$shot.png"
done
rm -rf "$scratch"
echo "screenshots in $out"
