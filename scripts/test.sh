#!/usr/bin/env bash
# Every test PulseBridge has, the way CI runs them (after scripts/setup.sh). Each stage prints
# how long it took and the running total.
#   scripts/test.sh                 all stages: debug release asan tsan
#   scripts/test.sh debug release   only these
# Stages:
#   debug    the whole suite, debug build (swift test)
#   release  release build; the whole suite again with every edge-agent, fleet-manager,
#            payment-server and demo process the tests start being the release binary, plus the
#            operator journey (docs/operations.md, docs/firmware.md, docs/payment-server.md
#            executed step by step); then customers paying in headless Chromium, on their own
#   asan     the suite under AddressSanitizer, optimised (-O): use-after-free that debug hides
#   tsan     ThreadSanitizer: the whole suite instrumented, with the processes it starts being
#            the debug binaries (an instrumented agent is 5-15x slower, which turns the
#            fleet-sized tests into timeouts); then the agent's own suites again with
#            instrumented agents, and the MQTT and pulse-engine suites
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then stages=("$@"); else stages=(debug release asan tsan); fi
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
      stage release-build swift build -c release
      stage release-tests-build swift build --build-tests
      stage release-e2e env PULSEBRIDGE_BIN_DIR=.build/release PULSEBRIDGE_RELEASE_BIN=.build/release swift test --skip-build
      # Customers in headless Chromium, alone: a browser beside the timing tests would starve them.
      stage release-browser env PULSEBRIDGE_BIN_DIR=.build/release PULSEBRIDGE_BROWSER_TESTS=1 \
        swift test --skip-build --filter CustomerJourneyTests ;;
    asan)
      stage asan env LSAN_OPTIONS="suppressions=$PWD/scripts/lsan-suppressions.txt:print_suppressions=0" \
        swift test --sanitize=address -Xswiftc -O --scratch-path .build-asan ;;
    tsan)
      stage tsan-debug-binaries swift build
      stage tsan env PULSEBRIDGE_BIN_DIR=.build/debug swift test --sanitize=thread --scratch-path .build-tsan
      stage tsan-instrumented-agents swift test --skip-build --sanitize=thread --scratch-path .build-tsan \
        --filter 'DecisionTableTests|IntegrityTests|ResilienceTests|MQTTTests|RelayOutputTests' ;;
    *)
      echo "test.sh: unknown stage '$s' (debug, release, asan, tsan)" >&2; exit 2 ;;
  esac
done
echo "::: all stages passed in $((SECONDS - total_start)) s"
