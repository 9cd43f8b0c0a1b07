#!/usr/bin/env bash
# Bring this machine to the state meterward's tests (and real deployments on one box) need,
# idempotently: a Python environment from the lock file, a PostgreSQL >= 15 server on loopback,
# the TimescaleDB extension loaded in it, and a test Mosquitto broker (MQTT 5, persistence on).
#
#   scripts/bootstrap.sh                  ensure everything (installs only what is missing)
#   scripts/bootstrap.sh --check          report what is missing, change nothing (exit 1 if any)
#   scripts/bootstrap.sh --only python    one step (python, postgres, timescaledb, mosquitto, tools);
#                                         may be repeated
#
# Each step prints what it did and how long it took; a warm run (everything present) changes
# nothing. Service facts for the tests are written to $MW_STATE_DIR/test.env.
#
# Environment: MW_STATE_DIR (default <repo>/.state), MW_PYTHON (default python3),
# MW_TEST_MQTT_PORT (default 18830), MW_MOSQUITTO_BIN (default: mosquitto on PATH or /usr/sbin).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export MW_STATE_DIR=${MW_STATE_DIR:-$ROOT/.state}
export DEBIAN_FRONTEND=noninteractive
UV_VERSION=0.13.8
TEST_ROLE=mw_test
TEST_MQTT_PORT=${MW_TEST_MQTT_PORT:-18830}
VENV=$ROOT/.venv

mode=ensure
steps=()
while [ $# -gt 0 ]; do
  case "$1" in
    --check) mode=check ;;
    --only) shift; steps+=("${1:?--only needs a step name}") ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bootstrap: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#steps[@]} -gt 0 ] || steps=(python postgres timescaledb mosquitto tools)

mkdir -p "$MW_STATE_DIR"
changed=()
missing=()
say() { printf '%s\n' "$*"; }
did() { changed+=("$1: $2"); say "  $1: $2"; }
lack() { missing+=("$1"); say "  missing: $1"; }
die() { say "bootstrap: error: $*" >&2; exit 1; }
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "need root to run: $*"
  fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
  did apt "installed $*"
}

# ---------------------------------------------------------------- python
python_stamp() {
  cat "$ROOT/requirements/dev.lock" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1
}

step_python() {
  local py=${MW_PYTHON:-python3}
  command -v "$py" >/dev/null 2>&1 || { [ $mode = check ] && { lack "python3"; return; }; apt_install python3; }
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$("$py" -V 2>&1) is too old: meterward needs Python >= 3.11"
  local want; want=$(python_stamp)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.mw-stamp" 2>/dev/null)" = "$want" ] \
     && "$VENV/bin/python" -c 'import meterward' 2>/dev/null; then
    say "  python: $("$VENV/bin/python" -V) environment up to date"
    return
  fi
  if [ $mode = check ]; then lack "python environment .venv (out of date or absent)"; return; fi
  if [ ! -x "$VENV/bin/python" ]; then
    # Debian splits venv/ensurepip into python3-venv; without it `-m venv` fails.
    "$py" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
    "$py" -m venv "$VENV" || die "could not create $VENV"
    did python "created $VENV"
  fi
  if [ "$("$VENV/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION" \
      || die "could not install uv into $VENV"
  fi
  # uv must use the interpreter we chose, never download one.
  UV_PYTHON_DOWNLOADS=never "$VENV/bin/uv" pip sync -q --python "$VENV/bin/python" \
    "$ROOT/requirements/dev.lock" || die "installing requirements/dev.lock failed"
  UV_PYTHON_DOWNLOADS=never "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" \
    --no-deps -e "$ROOT" || die "installing meterward itself failed"
  printf '%s' "$want" > "$VENV/.mw-stamp"
  did python "installed the locked dependencies into .venv"
}

# ---------------------------------------------------------------- postgres
PG_MAJOR='' PG_CLUSTER='' PG_PORT=''

find_cluster() {
  # The newest cluster of version >= 15 (pg_lsclusters: Ver Cluster Port Status ...).
  local line
  line=$(pg_lsclusters --no-header 2>/dev/null | awk '$1 >= 15' | sort -k1,1nr | head -n 1) || true
  [ -n "$line" ] || return 1
  read -r PG_MAJOR PG_CLUSTER PG_PORT _ <<<"$line"
}

pg_status() { pg_lsclusters --no-header 2>/dev/null | awk -v v="$PG_MAJOR" -v c="$PG_CLUSTER" '$1 == v && $2 == c { print $4 }'; }
# From / : postgres may not be allowed into the caller's cwd (e.g. a checkout under /root).
pg_sql() { (cd / && runuser -u postgres -- psql -X -p "$PG_PORT" -Atqc "$1" postgres); }

step_postgres() {
  if ! command -v pg_lsclusters >/dev/null 2>&1 || ! find_cluster; then
    if [ $mode = check ]; then lack "PostgreSQL >= 15 server (apt-get install postgresql)"; return; fi
    apt_install postgresql
    if ! find_cluster; then
      local major; major=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf "%f\n" | sort -n | tail -n 1)
      [ "${major:-0}" -ge 15 ] || die "Debian's postgresql is ${major:-absent}; meterward needs >= 15"
      as_root pg_createcluster "$major" main >/dev/null
      find_cluster || die "no PostgreSQL cluster after pg_createcluster"
      did postgres "created cluster $PG_MAJOR/$PG_CLUSTER"
    fi
  fi
  if [ "$(pg_status)" != online ]; then
    if [ $mode = check ]; then lack "PostgreSQL $PG_MAJOR/$PG_CLUSTER is not running"; return; fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" "$PG_CLUSTER" start \
      || die "could not start PostgreSQL $PG_MAJOR/$PG_CLUSTER (see /var/log/postgresql)"
    did postgres "started cluster $PG_MAJOR/$PG_CLUSTER on port $PG_PORT"
  fi
  # Tests connect over TCP with a password, which works under Debian's default pg_hba
  # (scram on 127.0.0.1) as well as under trust. The role is a superuser because tests
  # create databases and the (untrusted) timescaledb extension.
  if [ "$(pg_sql "SELECT 1 FROM pg_roles WHERE rolname = '$TEST_ROLE'")" != 1 ]; then
    if [ $mode = check ]; then lack "PostgreSQL role $TEST_ROLE"; return; fi
    pg_sql "CREATE ROLE $TEST_ROLE LOGIN SUPERUSER PASSWORD '$TEST_ROLE'" >/dev/null
    did postgres "created test role $TEST_ROLE"
  fi
  say "  postgres: $PG_MAJOR/$PG_CLUSTER online on 127.0.0.1:$PG_PORT"
}

# ---------------------------------------------------------------- timescaledb
step_timescaledb() {
  [ -n "$PG_MAJOR" ] || find_cluster || { lack "timescaledb (needs PostgreSQL first)"; return; }
  # shellcheck source=scripts/lib/timescaledb.sh
  source "$ROOT/scripts/lib/timescaledb.sh"
  local state; state=$(tsdb_state "$PG_MAJOR" "$PG_CLUSTER" "$PG_PORT")
  if [ "$state" = loaded ]; then
    say "  timescaledb: $(pg_sql "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'") loaded in $PG_MAJOR/$PG_CLUSTER"
    return
  fi
  if [ $mode = check ]; then lack "timescaledb extension ($state in PostgreSQL $PG_MAJOR/$PG_CLUSTER)"; return; fi
  tsdb_ensure "$PG_MAJOR" "$PG_CLUSTER" "$PG_PORT" || die "timescaledb could not be made available"
  did timescaledb "was $state, now $(tsdb_state "$PG_MAJOR" "$PG_CLUSTER" "$PG_PORT")"
}

# ---------------------------------------------------------------- mosquitto
MQ_DIR=$MW_STATE_DIR/mosquitto

mosquitto_bin() {
  local bin=${MW_MOSQUITTO_BIN:-}
  if [ -z "$bin" ]; then bin=$(command -v mosquitto || true); fi
  if [ -z "$bin" ] && [ -x /usr/sbin/mosquitto ]; then bin=/usr/sbin/mosquitto; fi
  [ -n "$bin" ] && [ -x "$bin" ] && printf '%s' "$bin"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# As root, the broker drops to the mosquitto user, which then writes its pid file, log and
# persistence under $MQ_DIR. That works only if it may enter $MW_STATE_DIR (a checkout under
# /root, mode 0700, is out of its reach); otherwise the broker stays root. An existing
# root-owned $MQ_DIR keeps an earlier run's choice, so the config stays the same.
mosquitto_user() {
  if [ "$(id -u)" -eq 0 ] && id mosquitto >/dev/null 2>&1 \
     && runuser -u mosquitto -- test -x "$MW_STATE_DIR" 2>/dev/null \
     && { [ ! -d "$MQ_DIR" ] || [ "$(stat -c %u "$MQ_DIR")" != 0 ]; }; then
    printf mosquitto
  else
    printf root
  fi
}

MQ_USER=''
render_mosquitto_conf() {
  local user=$MQ_USER
  sed -e "s|@PORT@|$TEST_MQTT_PORT|g" -e "s|@STATE@|$MQ_DIR|g" -e "s|@USER@|$user|g" \
    "$ROOT/ops/mosquitto/test.conf"
}

step_mosquitto() {
  local bin
  if ! bin=$(mosquitto_bin); then
    if [ $mode = check ]; then lack "mosquitto broker binary (apt-get install mosquitto)"; return; fi
    apt_install mosquitto
    bin=$(mosquitto_bin) || die "mosquitto not found after installing it"
  fi
  MQ_USER=$(mosquitto_user)
  local pid=''
  [ -f "$MQ_DIR/mosquitto.pid" ] && pid=$(cat "$MQ_DIR/mosquitto.pid")
  local running=0
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && port_open "$TEST_MQTT_PORT"; then running=1; fi
  local conf_now=''
  [ -f "$MQ_DIR/mosquitto.conf" ] && conf_now=$(cat "$MQ_DIR/mosquitto.conf")
  # The test broker holds test data only. Persistent sessions of test clients that were killed
  # keep queueing copies of what later tests publish; past this size the broker's snapshots
  # stall it for seconds, so it starts afresh with an empty store.
  local db_bytes=0 stale=0
  [ -f "$MQ_DIR/mosquitto.db" ] && db_bytes=$(stat -c %s "$MQ_DIR/mosquitto.db")
  [ "$db_bytes" -gt $((256 * 1024 * 1024)) ] && stale=1
  if [ $running = 1 ] && [ $stale = 0 ] && [ "$conf_now" = "$(render_mosquitto_conf)" ]; then
    say "  mosquitto: $("$bin" -h 2>/dev/null | head -n 1 | awk '{print $3}') test broker on 127.0.0.1:$TEST_MQTT_PORT (pid $pid)"
    return
  fi
  if [ $mode = check ]; then
    if [ $stale = 1 ]; then lack "test broker store is $db_bytes bytes of stale sessions"; return; fi
    lack "test broker on 127.0.0.1:$TEST_MQTT_PORT is not running"; return
  fi
  if [ $running = 1 ]; then
    # SIGKILL when the store is dropped anyway: SIGTERM would first write it all out again.
    if [ $stale = 1 ]; then kill -9 "$pid"; else kill "$pid"; fi
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  fi
  if [ $stale = 1 ]; then
    rm -f "$MQ_DIR/mosquitto.db"
    did mosquitto "dropped a store of $db_bytes bytes left by stale test sessions"
  fi
  if port_open "$TEST_MQTT_PORT"; then
    die "port $TEST_MQTT_PORT is taken by another process; set MW_TEST_MQTT_PORT"
  fi
  mkdir -p "$MQ_DIR"
  render_mosquitto_conf > "$MQ_DIR/mosquitto.conf"
  if [ "$MQ_USER" = mosquitto ]; then chown mosquitto: "$MQ_DIR"; fi
  "$bin" -d -c "$MQ_DIR/mosquitto.conf" || die "mosquitto failed to start (see $MQ_DIR/mosquitto.log)"
  local i
  for i in $(seq 1 100); do port_open "$TEST_MQTT_PORT" && break; sleep 0.05; done
  port_open "$TEST_MQTT_PORT" || die "mosquitto did not open port $TEST_MQTT_PORT (see $MQ_DIR/mosquitto.log)"
  did mosquitto "started test broker on 127.0.0.1:$TEST_MQTT_PORT"
}

# ---------------------------------------------------------------- tools
# Command-line peers the tests use as independent clients (a Modbus master that is not ours).
TOOLS=(mbpoll)

step_tools() {
  local tool missing_tools=()
  for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing_tools+=("$tool")
  done
  if [ ${#missing_tools[@]} -eq 0 ]; then
    say "  tools: ${TOOLS[*]} present"
    return
  fi
  if [ $mode = check ]; then lack "test tools: ${missing_tools[*]} (apt-get install ${missing_tools[*]})"; return; fi
  apt_install "${missing_tools[@]}"
}

# ---------------------------------------------------------------- main
total_start=$(now)
say "bootstrap ($mode): ${steps[*]}"
for step in "${steps[@]}"; do
  case "$step" in
    python|postgres|timescaledb|mosquitto|tools) ;;
    *) die "unknown step '$step' (python, postgres, timescaledb, mosquitto, tools)" ;;
  esac
  t0=$(now)
  "step_$step"
  say "  [$step $(elapsed "$t0") s]"
done

if [ $mode = ensure ] && { [ -n "$PG_PORT" ] || find_cluster; }; then
  {
    printf 'MW_TEST_DATABASE_URL=postgresql://%s:%s@127.0.0.1:%s/postgres\n' "$TEST_ROLE" "$TEST_ROLE" "$PG_PORT"
    printf 'MW_TEST_MQTT_URL=mqtt://127.0.0.1:%s\n' "$TEST_MQTT_PORT"
  } > "$MW_STATE_DIR/test.env.new"
  if ! cmp -s "$MW_STATE_DIR/test.env.new" "$MW_STATE_DIR/test.env"; then
    mv "$MW_STATE_DIR/test.env.new" "$MW_STATE_DIR/test.env"
    did state "wrote $MW_STATE_DIR/test.env"
  else
    rm -f "$MW_STATE_DIR/test.env.new"
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  say "bootstrap: missing ${#missing[@]}: $(IFS=';'; echo "${missing[*]}") ($(elapsed "$total_start") s)"
  exit 1
fi
if [ $mode = check ]; then
  say "bootstrap: everything present ($(elapsed "$total_start") s)"
elif [ ${#changed[@]} -eq 0 ]; then
  say "bootstrap: changed nothing ($(elapsed "$total_start") s)"
else
  say "bootstrap: changed ${#changed[@]} thing(s) ($(elapsed "$total_start") s)"
fi
