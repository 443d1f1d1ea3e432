#!/usr/bin/env bash
# Stands in for `systemctl` where systemd is not running (CI containers), for
# scripts/package-check.sh: runs a unit's own ExecStartPre and ExecStart lines, as its User,
# with its Environment and EnvironmentFile, in the background, logging to DIR/UNIT.log.
#   unit-runner.sh DIR enable --now UNIT...   start UNIT...   restart UNIT...
#   unit-runner.sh DIR stop UNIT...           disable --now UNIT...
#   unit-runner.sh DIR is-active UNIT         stop-all
# The edge agent is given simulated relay lines ($PULSEBRIDGE_SIMULATED_GPIO) because there
# are no GPIO chips here. Units that are not installed are an error, as with systemctl.
set -euo pipefail
dir=$1; shift
command=${1:?usage: unit-runner.sh DIR COMMAND [UNIT...]}; shift
[ "${1:-}" = --now ] && { now=yes; shift; } || now=no

unit_file() {
  local name=${1%.service}.service
  for d in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
    [ -e "$d/$name" ] && { echo "$d/$name"; return; }
  done
  echo "unit-runner: Unit $name not found." >&2
  return 5
}

value() { sed -n "s/^$2=//p" "$1" | tail -n 1; }

start() {
  local unit=${1%.service} file user envfile pid
  file=$(unit_file "$unit")
  pid=$(cat "$dir/$unit.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return; fi
  # ConditionPathExists=: not met, not started (as systemd does).
  local condition
  condition=$(value "$file" ConditionPathExists)
  if [ -n "$condition" ] && [ ! -e "$condition" ]; then
    echo "unit-runner: $unit: condition not met ($condition missing); not started" >&2
    return
  fi
  user=$(value "$file" User); user=${user:-root}
  envfile=$(value "$file" EnvironmentFile); envfile=${envfile#-}
  local env=()
  while IFS= read -r e; do [ -n "$e" ] && env+=("$e"); done < <(sed -n 's/^Environment=//p' "$file")
  if [ -n "$envfile" ] && [ -r "$envfile" ]; then
    while IFS= read -r e; do env+=("$e"); done < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$envfile" | sed 's/"//g')
  fi
  local pre
  while IFS= read -r pre; do
    [ -z "$pre" ] && continue
    local privileged=no
    if [[ "$pre" == +* ]]; then privileged=yes; pre=${pre#+}; fi
    pre=${pre#-}
    if [ "$user" = root ] || [ "$privileged" = yes ]; then
      env "${env[@]}" bash -c "$pre"
    else
      runuser -u "$user" -- env "${env[@]}" bash -c "$pre"
    fi
  done < <(sed -n 's/^ExecStartPre=//p' "$file")
  local exec
  exec=$(value "$file" ExecStart)
  # $VAR from the environment files, as systemd expands them (split on whitespace).
  exec=$(env "${env[@]}" bash -c "printf '%s' \"$exec\"")
  if [ "$unit" = pulsebridge-edge-agent ] && [ -n "${PULSEBRIDGE_SIMULATED_GPIO:-}" ]; then
    exec="$exec --gpio sim:$PULSEBRIDGE_SIMULATED_GPIO"
    touch "$PULSEBRIDGE_SIMULATED_GPIO" && chown "$user" "$PULSEBRIDGE_SIMULATED_GPIO"
  fi
  # StateDirectory= folders, as systemd creates them for the service user.
  local state mode
  mode=$(value "$file" StateDirectoryMode); mode=${mode:-0755}
  for state in $(value "$file" StateDirectory); do
    install -d -m "$mode" -o "$user" "/var/lib/$state"
  done
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  setsid runuser -u "$user" -- env "${env[@]}" $exec >> "$dir/$unit.log" 2>&1 < /dev/null &
  echo $! > "$dir/$unit.pid"
}

stop() {
  local unit=${1%.service} pid
  pid=$(cat "$dir/$unit.pid" 2>/dev/null || true)
  [ -z "$pid" ] && return
  # The whole session (runuser and what it runs): SIGTERM, as systemd sends, then wait.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 450); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$dir/$unit.pid"
}

case "$command" in
  enable|start|restart)
    for u in "$@"; do
      unit_file "$u" >/dev/null
      if [ "$command" = restart ]; then stop "$u"; fi
      if [ "$command" != enable ] || [ "$now" = yes ]; then start "$u"; fi
    done ;;
  stop|disable)
    for u in "$@"; do
      if [ "$command" = stop ] || [ "$now" = yes ]; then stop "$u"; fi
    done ;;
  is-active)
    pid=$(cat "$dir/${1%.service}.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo active; else echo inactive; exit 3; fi ;;
  stop-all)
    for f in "$dir"/*.pid; do [ -e "$f" ] && stop "$(basename "$f" .pid)"; done ;;
  *)
    echo "unit-runner: '$command' is not supported here (enable --now, start, restart, stop, disable --now, is-active)" >&2
    exit 1 ;;
esac
