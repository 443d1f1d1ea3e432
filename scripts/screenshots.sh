#!/usr/bin/env bash
# Retakes the screenshots in docs/screenshots: runs the Chromium tests (the payment page:
# Tests/PaymentServerTests, Tests/browser/pay_flow.py; the console: ConsoleBrowserTests,
# Tests/browser/console_flow.py) with their screenshots going there, and keeps the ones
# docs/payment-server.md and docs/console.md show.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$PWD/docs/screenshots"
scratch=$(mktemp -d)
swift build --build-tests
PULSEBRIDGE_BROWSER_TESTS=1 PULSEBRIDGE_SCREENSHOTS="$scratch" swift test --skip-build --filter "CustomerJourneyTests|ConsoleBrowserTests"
mkdir -p "$out"
for shot in approve-machine approve-checkout approve-result approve-profile uncertain-result offline-refused \
  console-login console-fleet console-fleet-offline console-alerts console-audit console-viewer-alerts console-payments console-revenue console-machine console-codes console-rollout console-firmware console-provision; do
  cp "$scratch/$shot.png" "$out/$shot.png"
done
rm -rf "$scratch"
echo "screenshots in $out"
