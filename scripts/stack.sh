#!/usr/bin/env bash
# Local dev/test stack without Docker: a real Kafka broker (KRaft, single node,
# jars from Maven Central) and a throwaway PostgreSQL cluster (Debian binaries).
#
#   scripts/stack.sh up      start both (idempotent; first run fetches jars / inits data)
#   scripts/stack.sh down    stop both (data is kept)
#   scripts/stack.sh status  say what runs (exit 0 when both run, 3 otherwise)
#   scripts/stack.sh kafka-kill | kafka-up | pg-stop | pg-up
#                            one server alone (the fault matrix, bench/faults.py)
#
# Everything lives under .stack/ at the repo root (git-ignored); `rm -rf .stack`
# after `down` gives a clean slate.  Ports: KAFKA_PORT (9092),
# KAFKA_CONTROLLER_PORT (9093), PG_PORT (55432).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="$ROOT/.stack"
LOGS="$STACK/logs"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
PG_PORT="${PG_PORT:-55432}"

KAFKA_HOME="$STACK/kafka"
KAFKA_LIB="$KAFKA_HOME/lib"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_CONF="$KAFKA_HOME/server.properties"
KAFKA_LOG4J="$KAFKA_HOME/log4j2.properties"
KAFKA_PID="$STACK/kafka.pid"
KAFKA_WAIT_S=90

PG_HOME="$STACK/pg"
PG_DATA="$PG_HOME/data"
PG_SOCK="$PG_HOME/run"   # unix socket here, not /var/run/postgresql (may not exist, is root's)
PG_LOG="$LOGS/postgres.log"

log() { printf '%s\n' "$*" >&2; }
die() { log "stack: $*"; exit 1; }

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp, no nc needed).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True when process $1 exists and is not a zombie.  Killed daemons are reparented
# to PID 1, which may reap them late, and kill -0 succeeds on a zombie.
alive() {
  local state
  state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null || true)"
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# ---------------------------------------------------------------- Kafka

kafka_pid() {
  # Pid from the pid file, only if that process is still our broker (pids get reused).
  [[ -f "$KAFKA_PID" ]] || return 1
  local pid cmdline
  pid="$(cat "$KAFKA_PID")"
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *" kafka.Kafka "* ]] || return 1
  echo "$pid"
}

kafka_adopt() {
  # The pid file is gone but our broker (same server.properties) still holds the
  # port: take it back instead of failing.  Needs ss (iproute2); optional.
  command -v ss >/dev/null || return 1
  local pid cmdline
  pid="$(ss -Hltnp "sport = :$KAFKA_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true)"
  [[ -n "$pid" ]] || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *" kafka.Kafka $KAFKA_CONF"* ]] || return 1
  echo "$pid" >"$KAFKA_PID"
  echo "$pid"
}

kafka_fetch_jars() {
  # Fetch once: a second `up` must not touch Maven.  Download into a temp dir and
  # rename, so an interrupted fetch is not mistaken for a complete one.
  if compgen -G "$KAFKA_LIB/kafka_2.13-*.jar" >/dev/null \
    && compgen -G "$KAFKA_LIB/kafka-tools-[0-9]*.jar" >/dev/null; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars)"
  log "fetching Kafka jars (once)..."
  local tmp="$KAFKA_LIB.tmp"
  rm -rf "$tmp"
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" >"$LOGS/maven.log" 2>&1 \
    || { tail -n 30 "$LOGS/maven.log" >&2; die "maven failed (see $LOGS/maven.log)"; }
  rm -rf "$KAFKA_LIB"
  mv "$tmp" "$KAFKA_LIB"
}

kafka_write_config() {
  # Rewritten on every `up` so that port variables take effect; the data stays.
  # Static quorum (controller.quorum.voters) rather than the dynamic one: with a
  # single fixed node it is simpler, and changing KAFKA_CONTROLLER_PORT later
  # cannot strand the voter set recorded in the metadata log.
  cat >"$KAFKA_CONF" <<EOF
# Written by scripts/stack.sh; edits are lost on the next \`up\`.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${KAFKA_CONTROLLER_PORT}
listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT},CONTROLLER://127.0.0.1:${KAFKA_CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=${KAFKA_DATA}

# One broker: every internal topic has a single replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Test-friendly: consumer groups form at once, sessions may be short.
group.initial.rebalance.delay.ms=0
# Down to 2 s: a worker with a standby may fail over in ~3 s (ORDERSTREAM_SESSION_TIMEOUT_S).
group.min.session.timeout.ms=2000

# Faster restarts: after a restart the controller keeps the old broker
# registration alive for broker.session.timeout.ms (default 9 s) and refuses the
# new one (DUPLICATE_BROKER_REGISTRATION) until then; fixed upstream by
# KAFKA-19130 (4.1), not in 4.0.x.  Loopback heartbeats make 4 s safe enough.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000

# Topics are created explicitly (orderstream topics create), with 8 partitions.
num.partitions=8
auto.create.topics.enable=false
EOF

  # Broker logs go to .stack/logs/kafka.log (size-capped) instead of the console.
  cat >"$KAFKA_LOG4J" <<EOF
# Written by scripts/stack.sh.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${LOGS}/kafka.log
appender.file.filePattern = ${LOGS}/kafka.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
# Per-request and per-partition state chatter is useless on a dev box.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

kafka_java() {
  # Plain java on the cached jars; tools get a quiet log4j config from kafka-tool.sh.
  java -Dlog4j2.configurationFile="$KAFKA_LOG4J" -cp "$KAFKA_LIB/*" "$@"
}

kafka_format() {
  # Format the KRaft metadata dir once; meta.properties marks a formatted dir.
  [[ -f "$KAFKA_DATA/meta.properties" ]] && return 0
  if [[ ! -s "$KAFKA_HOME/cluster.id" ]]; then
    kafka_java kafka.tools.StorageTool random-uuid >"$KAFKA_HOME/cluster.id.tmp" 2>>"$LOGS/kafka.out"
    mv "$KAFKA_HOME/cluster.id.tmp" "$KAFKA_HOME/cluster.id"
  fi
  log "formatting KRaft storage (cluster $(cat "$KAFKA_HOME/cluster.id"))..."
  mkdir -p "$KAFKA_DATA"
  kafka_java kafka.tools.StorageTool format -t "$(cat "$KAFKA_HOME/cluster.id")" -c "$KAFKA_CONF" \
    >>"$LOGS/kafka.out" 2>&1 || { tail -n 20 "$LOGS/kafka.out" >&2; die "kafka storage format failed"; }
}

kafka_up() {
  local pid
  if pid="$(kafka_pid)" || pid="$(kafka_adopt)"; then
    # server.properties is what the running broker was started with.
    local running_port
    running_port="$(sed -n 's/^advertised.listeners=.*:\([0-9]*\)$/\1/p' "$KAFKA_CONF" 2>/dev/null || true)"
    [[ -z "$running_port" || "$running_port" == "$KAFKA_PORT" ]] \
      || die "Kafka already runs on port $running_port, not $KAFKA_PORT: run \`$0 down\` first to change ports"
    if port_open "$KAFKA_PORT"; then
      log "Kafka already running (pid $pid) on 127.0.0.1:$KAFKA_PORT"
      return 0
    fi
    log "Kafka process $pid is up but port $KAFKA_PORT is not (yet) open; waiting"
  else
    rm -f "$KAFKA_PID"
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process (set KAFKA_PORT)"
    port_open "$KAFKA_CONTROLLER_PORT" \
      && die "port $KAFKA_CONTROLLER_PORT is taken by another process (set KAFKA_CONTROLLER_PORT)"
    command -v java >/dev/null || die "java not found (Java 17+ is needed for Kafka)"
    mkdir -p "$KAFKA_HOME"
    kafka_fetch_jars
    kafka_write_config
    kafka_format
    log "starting Kafka..."
    # setsid: own session, so the broker outlives this shell and a Ctrl-C in it;
    # cwd .stack/kafka so that stray JVM files (hs_err_*.log) land there.  The
    # subshell execs, so $! is the JVM's pid.  JVM flags as in Kafka's
    # kafka-server-start.sh, with a smaller heap.
    (
      cd "$KAFKA_HOME"
      exec setsid nohup java -Xms512m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
        -Dkafka.logs.dir="$LOGS" -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_CONF" \
        </dev/null >>"$LOGS/kafka.out" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$KAFKA_PID"
  fi

  # Ready = the port is open and the broker answers a metadata request
  # (topic listing needs the controller to have elected itself too).
  local start=$SECONDS
  printf 'waiting for Kafka on 127.0.0.1:%s ...' "$KAFKA_PORT" >&2
  while :; do
    if ! alive "$pid"; then
      log " died"
      tail -n 30 "$LOGS/kafka.out" "$LOGS/kafka.log" >&2 2>/dev/null || true
      rm -f "$KAFKA_PID"
      die "Kafka exited during startup (see $LOGS/kafka.log, $LOGS/kafka.out)"
    fi
    if port_open "$KAFKA_PORT" \
      && timeout 30 bash "$ROOT/scripts/kafka-tool.sh" kafka-topics \
        --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list >/dev/null 2>&1; then
      log " ok ($((SECONDS - start)) s)"
      return 0
    fi
    if ((SECONDS - start >= KAFKA_WAIT_S)); then
      log " timeout"
      die "Kafka did not answer within ${KAFKA_WAIT_S} s (see $LOGS/kafka.log); still running as pid $pid"
    fi
    printf '.' >&2
    sleep 1
  done
}

kafka_down() {
  local pid
  if ! { pid="$(kafka_pid)" || pid="$(kafka_adopt)"; }; then
    rm -f "$KAFKA_PID"
    log "Kafka: not running"
    return 0
  fi
  # SIGTERM lets the broker flush and close its logs (a clean shutdown
  # avoids log recovery on the next start); SIGKILL only as a last resort.
  printf 'stopping Kafka (pid %s) ...' "$pid" >&2
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 30; i++)); do
    alive "$pid" || break
    sleep 1
  done
  if alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    log " killed after 30 s"
  else
    log " ok ($i s)"
  fi
  rm -f "$KAFKA_PID"
}

# ---------------------------------------------------------------- PostgreSQL

PG_BIN=""

pg_lookup_bin() {
  # Newest installed major version of Debian's postgresql, if any.
  local initdb
  initdb="$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | grep -v '\*' | sort -V | tail -n 1 || true)"
  [[ -n "$initdb" ]] || return 1
  PG_BIN="$(dirname "$initdb")"
}

pg_install() {
  # Fresh CI machines have no PostgreSQL: install Debian's package (it also
  # creates the `postgres` user).  apt-get update only if the plain install fails.
  pg_lookup_bin && return 0
  log "installing PostgreSQL (apt-get install postgresql)..."
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q postgresql >"$LOGS/apt.log" 2>&1; then
    apt-get update -q >>"$LOGS/apt.log" 2>&1 || true
    apt-get install -y -q postgresql >>"$LOGS/apt.log" 2>&1 \
      || { tail -n 20 "$LOGS/apt.log" >&2; die "apt-get install postgresql failed"; }
  fi
  pg_lookup_bin || die "postgresql installed but no initdb found"
}

# PostgreSQL refuses to run as root: every server-side command runs as `postgres`.
as_pg() { runuser -u postgres -- "$@"; }

pg_make_traversable() {
  # The postgres user must reach .stack/pg through the repo path; add o+x
  # (search, not read) to any directory on the way that denies it.
  local dir="$STACK" parts=()
  while [[ "$dir" != "/" ]]; do
    parts=("$dir" "${parts[@]}")
    dir="$(dirname "$dir")"
  done
  for dir in "${parts[@]}"; do
    as_pg test -x "$dir" || chmod o+x "$dir"
  done
}

pg_running() {
  # pg_ctl status alone is fooled by a killed postmaster that is not reaped yet.
  local pid
  pid="$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" \
    && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_psql() {
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres "$@"
}

pg_up() {
  pg_install
  id postgres >/dev/null 2>&1 || die "no 'postgres' user (is the postgresql package installed?)"

  if pg_running; then
    local running_port
    running_port="$(sed -n 's/^port = \([0-9]*\)$/\1/p' "$PG_DATA/orderstream.conf" 2>/dev/null || true)"
    [[ -z "$running_port" || "$running_port" == "$PG_PORT" ]] \
      || die "PostgreSQL already runs on port $running_port, not $PG_PORT: run \`$0 down\` first to change ports"
    log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
  else
    port_open "$PG_PORT" && die "port $PG_PORT is taken by another process (set PG_PORT)"
    mkdir -p "$PG_HOME" "$PG_SOCK"
    chown postgres:postgres "$PG_HOME" "$PG_SOCK"
    pg_make_traversable
    # pg_ctl writes the log as postgres, so the file must be theirs.
    touch "$PG_LOG" && chown postgres:postgres "$PG_LOG"

    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
      log "initialising PostgreSQL cluster (once)..."
      rm -rf "$PG_DATA"
      # Local socket: trust (only root/postgres can reach it, used for admin);
      # TCP: password (scram-sha-256), as in production.
      as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >>"$PG_LOG" 2>&1 \
        || { tail -n 20 "$PG_LOG" >&2; die "initdb failed"; }
      echo "include 'orderstream.conf'" >>"$PG_DATA/postgresql.conf"
    fi
    # Rewritten on every start so that PG_PORT takes effect.  Durability
    # settings stay at their defaults on purpose (tests must see real commits).
    as_pg tee "$PG_DATA/orderstream.conf" >/dev/null <<EOF
# Written by scripts/stack.sh; edits are lost on the next \`up\`.
listen_addresses = '127.0.0.1'
port = ${PG_PORT}
unix_socket_directories = '${PG_SOCK}'
max_connections = 200
shared_buffers = 256MB
EOF
    # After a crash the dead postmaster may linger as a zombie for a few
    # seconds, and PostgreSQL refuses to start while the pid in its lock file exists.
    local old i
    old="$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
    for ((i = 0; i < 30; i++)); do
      [[ "$old" =~ ^[0-9]+$ && -e "/proc/$old" ]] || break
      sleep 0.5
    done
    log "starting PostgreSQL..."
    local out
    out="$(as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start 2>&1)" \
      || { log "$out"; tail -n 20 "$PG_LOG" >&2; die "PostgreSQL did not start (see $PG_LOG)"; }
  fi

  local start=$SECONDS
  printf 'waiting for PostgreSQL on 127.0.0.1:%s ...' "$PG_PORT" >&2
  until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; do
    if ((SECONDS - start >= 60)); then
      log " timeout"
      die "PostgreSQL did not answer within 60 s (see $PG_LOG)"
    fi
    printf '.' >&2
    sleep 1
  done
  log " ok ($((SECONDS - start)) s)"

  # Role and database, idempotently (cheap enough to check on every `up`).
  pg_psql -d postgres <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orderstream') THEN
    CREATE ROLE orderstream LOGIN CREATEDB PASSWORD 'orderstream';
  END IF;
END
$$;
SQL
  if [[ "$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'orderstream'")" != 1 ]]; then
    pg_psql -d postgres -c "CREATE DATABASE orderstream OWNER orderstream"
  fi
}

pg_down() {
  if [[ ! -d "$PG_DATA" ]]; then
    log "PostgreSQL: not running"
    return 0
  fi
  pg_lookup_bin || die "PostgreSQL binaries not found"
  if pg_running; then
    printf 'stopping PostgreSQL ...' >&2
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
    log " ok"
  else
    log "PostgreSQL: not running"
  fi
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local start=$SECONDS
  mkdir -p "$LOGS"
  kafka_up
  pg_up
  log "stack up in $((SECONDS - start)) s (logs in .stack/logs/)"
  echo "ORDERSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
  echo "ORDERSTREAM_DATABASE_URL=postgresql://orderstream:orderstream@127.0.0.1:$PG_PORT/orderstream"
}

cmd_down() {
  kafka_down
  pg_down
}

cmd_status() {
  local rc=0 pid
  if { pid="$(kafka_pid)" || pid="$(kafka_adopt)"; } && port_open "$KAFKA_PORT"; then
    echo "kafka: running (pid $pid) on 127.0.0.1:$KAFKA_PORT"
  elif [[ -n "${pid:-}" ]]; then
    echo "kafka: starting (pid $pid), port $KAFKA_PORT not open yet"
    rc=3
  else
    echo "kafka: stopped"
    rc=3
  fi
  if [[ -f "$PG_DATA/postmaster.pid" ]] && pg_lookup_bin && pg_running; then
    echo "postgres: running (pid $(head -n 1 "$PG_DATA/postmaster.pid")) on 127.0.0.1:$PG_PORT"
  else
    echo "postgres: stopped"
    rc=3
  fi
  return "$rc"
}

kafka_kill() {
  # kill -9: no shutdown, no flush; what a crashed machine does to the broker.
  local pid
  pid="$(kafka_pid)" || pid="$(kafka_adopt)" || die "Kafka is not running"
  kill -KILL "$pid"
  while alive "$pid"; do sleep 0.1; done
  rm -f "$KAFKA_PID"
  log "Kafka (pid $pid) killed"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kafka-kill) kafka_kill ;;
  kafka-up) mkdir -p "$LOGS"; kafka_up ;;
  pg-stop) pg_down ;;
  pg-up) mkdir -p "$LOGS"; pg_up ;;
  *)
    echo "usage: $0 up|down|status|kafka-kill|kafka-up|pg-stop|pg-up" >&2
    exit 2
    ;;
esac
