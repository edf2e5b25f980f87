#!/usr/bin/env bash
# Stop the daemons that start.sh started (listed in $CK_SLURM_STATE_DIR/started), newest first.
# Idempotent: a daemon that is already gone is skipped; daemons start.sh did not start are left alone.
set -uo pipefail

STATE_DIR=${CK_SLURM_STATE_DIR:-/run/ck-test-slurm}
STARTED="$STATE_DIR/started"
[ -f "$STARTED" ] || exit 0
log() { echo "[slurm-stop] $*" >&2; }

stop_proc() {  # name, pid file (optional)
  local name=$1 pidfile=${2:-} pid=""
  [ -n "$pidfile" ] && [ -s "$pidfile" ] && pid=$(cat "$pidfile")
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then pid=$(pgrep -x "$name" | head -n1 || true); fi
  [ -z "$pid" ] && return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "$name ($pid) did not stop on SIGTERM; killing"
  kill -KILL "$pid" 2>/dev/null || true
}

if grep -qx slurmctld "$STARTED" && command -v scancel >/dev/null; then
  scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
fi
for d in slurmd slurmctld slurmdbd; do  # in parallel: each takes a second or two
  if grep -qx "$d" "$STARTED"; then
    stop_proc "$d" "/run/$d.pid" &
  fi
done
wait
if grep -qx mariadb "$STARTED"; then
  mysqladmin shutdown >/dev/null 2>&1 || true
  for _ in $(seq 100); do pgrep -x mariadbd >/dev/null || break; sleep 0.1; done
  for p in mariadbd-safe mysqld_safe mariadbd mysqld; do pgrep -x "$p" >/dev/null && stop_proc "$p"; done
fi
if grep -qx munged "$STARTED"; then
  stop_proc munged /run/munge/munged.pid
fi
rm -f "$STARTED"
log "stopped"
