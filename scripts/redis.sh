#!/usr/bin/env bash
# Redis for the "Redis Lua + PostgreSQL" benchmark baseline (bench/baseline_redis.py).
#
#   scripts/redis.sh up      start redis-server on 127.0.0.1:$REDIS_PORT (idempotent;
#                            installs Debian's redis-server when it is missing)
#   scripts/redis.sh down    stop it (idempotent)
#
# Data, log and pid live under .stack/redis/ (git-ignored).  Port: REDIS_PORT (56379),
# away from 6379 so that it never meets a system Redis.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REDIS_HOME="$ROOT/.stack/redis"
REDIS_PORT="${REDIS_PORT:-56379}"
REDIS_PID="$REDIS_HOME/redis.pid"
REDIS_LOG="$REDIS_HOME/redis.log"
REDIS_WAIT_S=30

log() { printf '%s\n' "$*" >&2; }
die() { log "redis: $*"; exit 1; }

ping() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -qx PONG; }

redis_pid() {
  # Pid from the pid file, only if that process is still a redis-server (pids get reused).
  [[ -f "$REDIS_PID" ]] || return 1
  local pid
  pid="$(cat "$REDIS_PID")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == redis-server* ]] || return 1
  echo "$pid"
}

install_redis() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  log "installing redis-server (apt-get install redis-server)..."
  mkdir -p "$REDIS_HOME"
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only if the plain install fails (a fresh machine's lists may be stale).
  if ! apt-get install -y -q redis-server >"$REDIS_HOME/apt.log" 2>&1; then
    apt-get update -q >>"$REDIS_HOME/apt.log" 2>&1 || true
    apt-get install -y -q redis-server >>"$REDIS_HOME/apt.log" 2>&1 \
      || { tail -n 20 "$REDIS_HOME/apt.log" >&2; die "apt-get install redis-server failed"; }
  fi
}

up() {
  install_redis
  if ping; then
    log "Redis already running on 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  mkdir -p "$REDIS_HOME"
  # Persistence off (no RDB snapshots, no AOF): the baseline gets Redis's fastest
  # setting, so the comparison is the most favourable one for it.  Its durable record
  # is the PostgreSQL orders row, not Redis.
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
    --save '' --appendonly no \
    --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" --dir "$REDIS_HOME" \
    || die "redis-server failed to start (see $REDIS_LOG)"
  local waited=0
  until ping; do
    ((waited++ < REDIS_WAIT_S * 10)) || { tail -n 20 "$REDIS_LOG" >&2; die "no PONG after ${REDIS_WAIT_S}s"; }
    sleep 0.1
  done
  log "Redis running on 127.0.0.1:$REDIS_PORT (pid $(cat "$REDIS_PID"))"
}

down() {
  local pid
  if ! pid="$(redis_pid)"; then
    log "Redis not running"
    return 0
  fi
  kill "$pid"
  local waited=0
  while [[ -e "/proc/$pid" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == redis-server* ]]; do
    ((waited++ < REDIS_WAIT_S * 10)) || die "pid $pid still running after ${REDIS_WAIT_S}s"
    sleep 0.1
  done
  rm -f "$REDIS_PID"
  log "Redis stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) log "usage: $0 up|down"; exit 2 ;;
esac
