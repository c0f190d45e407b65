#!/usr/bin/env bash
# The production deployment as three processes against the PostgreSQL instance (`make deploy`, README):
#   a gRPC code server (our definitions; it also launches the runs), dagster-daemon (sensor, schedules,
#   run queue) and dagster-webserver (the UI), each a separate process talking to the code server over gRPC.
# Each is started through `python -m telemetry_pipeline.instance`, which sets our Dagster settings
# (RUN_BOOKKEEPING) in its environment. In production run the same three commands as services.
# Stops all three when one exits or on Ctrl-C/SIGTERM.
set -euo pipefail

: "${DAGSTER_POSTGRES_URL:?set DAGSTER_POSTGRES_URL=postgresql://user:password@host:port/db}"
BIN=${BIN:-.venv/bin}
WEBSERVER_HOST=${WEBSERVER_HOST:-127.0.0.1}
WEBSERVER_PORT=${WEBSERVER_PORT:-3000}
CODE_SERVER_PORT=${CODE_SERVER_PORT:-4266}
export TELEMETRY_PIPELINE_HOME=${TELEMETRY_PIPELINE_HOME:-$PWD/.telemetry_pipeline}
export DAGSTER_HOME=${DAGSTER_HOME:-$TELEMETRY_PIPELINE_HOME/dagster_home}

mkdir -p "$DAGSTER_HOME"
[ -e "$DAGSTER_HOME/dagster.yaml" ] || cp "$(dirname "$0")/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
if ! grep -q PooledPostgresStorage "$DAGSTER_HOME/dagster.yaml"; then
  echo "$DAGSTER_HOME/dagster.yaml is not the PostgreSQL instance (deploy/dagster.yaml): set DAGSTER_HOME" \
       "to another folder, or copy deploy/dagster.yaml there" >&2
  exit 2
fi

pids=()
stop() { trap - EXIT INT TERM; kill "${pids[@]}" 2>/dev/null || true; wait || true; }
trap stop EXIT
trap 'exit 143' INT TERM
start() { "$BIN/python" -m telemetry_pipeline.instance "$@" & pids+=("$!"); }

start "$BIN/dagster" code-server start -h 127.0.0.1 -p "$CODE_SERVER_PORT" \
  -m telemetry_pipeline.definitions -a defs --location-name telemetry_pipeline
grpc=(--grpc-host 127.0.0.1 --grpc-port "$CODE_SERVER_PORT")
# The daemon and the webserver retry until the code server answers.
start "$BIN/dagster-daemon" run "${grpc[@]}"
start "$BIN/dagster-webserver" -h "$WEBSERVER_HOST" -p "$WEBSERVER_PORT" "${grpc[@]}"
# Dagster OSS has no login: operators reach the webserver above through an authenticating proxy; viewers get this
# one, which launches nothing and changes nothing (README, Production).
if [ -n "${VIEWER_PORT:-}" ]; then
  start "$BIN/dagster-webserver" --read-only -h "$WEBSERVER_HOST" -p "$VIEWER_PORT" "${grpc[@]}"
fi
echo "deploy: code server :$CODE_SERVER_PORT, daemon, webserver http://$WEBSERVER_HOST:$WEBSERVER_PORT (pids ${pids[*]})" >&2
wait -n
