#!/usr/bin/env bash
# Every test PulseBridge has, the way CI runs them (after scripts/setup.sh). Each stage prints
# how long it took and the running total.
#   scripts/test.sh                 all stages: debug release package gpiod2 asan tsan
#   scripts/test.sh debug release   only these
# Stages:
#   debug    the whole suite, debug build (swift test)
#   release  release build; the whole suite again with every edge-agent, fleet-manager,
#            payment-server and demo process the tests start being the release binary, plus the
#            operator journey (docs/operations.md, docs/firmware.md, docs/payment-server.md
#            executed step by step); then the NATS cluster with a node killed, and customers
#            paying in headless Chromium, each on their own
#   package  the Debian packages of that release build (scripts/package-check.sh): lintian,
#            dpkg -i, systemd-analyze verify, a payment through the installed binaries,
#            purge, and the machine as it was before (root; sudo otherwise)
#   gpiod2   the agent's GPIO layer compiled against libgpiod 2.x (Debian 13) built from its
#            sources, and its C layer run against 1.x and 2.x (scripts/gpiod2-check.sh)
#   asan     the suite under AddressSanitizer, optimised (-O): use-after-free that debug hides
#   tsan     ThreadSanitizer: the whole suite instrumented, with the processes it starts being
#            the debug binaries (an instrumented agent is 5-15x slower, which turns the
#            fleet-sized tests into timeouts); then the agent's own suites again with
#            instrumented agents, and the MQTT and pulse-engine suites
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then stages=("$@"); else stages=(debug release package gpiod2 asan tsan); fi
total_start=$SECONDS
stage() {
  local name=$1; shift
  local start=$SECONDS
  echo "::: $name: $*"
  "$@"
  echo "::: $name took $((SECONDS - start)) s (total $((SECONDS - total_start)) s)"
}
for s in "${stages[@]}"; do
  case "$s" in
    debug)
      stage debug swift test ;;
    release)
      # --static-swift-stdlib: the binaries the packages ship, carrying the Swift runtime.
      stage release-build swift build -c release --static-swift-stdlib
      stage release-tests-build swift build --build-tests
      stage release-e2e env PULSEBRIDGE_BIN_DIR=.build/release PULSEBRIDGE_RELEASE_BIN=.build/release swift test --skip-build
      # The 3-node NATS cluster with release agents and a node killed, alone (docs/scale.md).
      stage release-cluster env PULSEBRIDGE_BIN_DIR=.build/release PULSEBRIDGE_CLUSTER_TESTS=1 \
        swift test --skip-build --filter ClusterTests
      # Customers in headless Chromium, alone: a browser beside the timing tests would starve them.
      stage release-browser env PULSEBRIDGE_BIN_DIR=.build/release PULSEBRIDGE_BROWSER_TESTS=1 \
        swift test --skip-build --filter "CustomerJourneyTests|ConsoleBrowserTests" ;;
    package)
      # The Debian packages from that release build: built, lintian, installed with dpkg,
      # a payment through the installed binaries, purged, the machine as it was (as root).
      if [ "$(id -u)" -eq 0 ]; then
        stage package scripts/package-check.sh
      else
        stage package sudo scripts/package-check.sh
      fi ;;
    gpiod2)
      # The GPIO layer against libgpiod 2.x (built from source) beside 1.x.
      stage gpiod2 scripts/gpiod2-check.sh ;;
    asan)
      stage asan env LSAN_OPTIONS="suppressions=$PWD/scripts/lsan-suppressions.txt:print_suppressions=0" \
        swift test --sanitize=address -Xswiftc -O --scratch-path .build-asan ;;
    tsan)
      stage tsan-debug-binaries swift build
      stage tsan env PULSEBRIDGE_BIN_DIR=.build/debug swift test --sanitize=thread --scratch-path .build-tsan
      stage tsan-instrumented-agents swift test --skip-build --sanitize=thread --scratch-path .build-tsan \
        --filter 'DecisionTableTests|IntegrityTests|ResilienceTests|MQTTTests|RelayOutputTests' ;;
    *)
      echo "test.sh: unknown stage '$s' (debug, release, package, gpiod2, asan, tsan)" >&2; exit 2 ;;
  esac
done
echo "::: all stages passed in $((SECONDS - total_start)) s"
