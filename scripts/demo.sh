#!/usr/bin/env bash
# Runs the whole platform on one machine: migrations, demo data, a Celery worker for both
# queues and the ASGI web server (HTTP + websockets). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HOST=${DEMO_HOST:-127.0.0.1}
PORT=${DEMO_PORT:-8000}
VAR="${THYROCINE_VAR_DIR:-var}"  # database, media and logs of this demo
mkdir -p "$VAR"

$PY manage.py migrate --noinput
$PY manage.py seed_demo

# Synthetic cases for the demo centres C1 and C2 (ml.synthetic: real MP4 sweeps with burned-in
# fake names), imported as a hospital's manifest would be; the worker started below processes
# them. A restart imports nothing twice (import_cases skips files it already has).
CASES="$VAR/demo-cases"
if [ ! -f "$CASES/manifest.csv" ]; then
  echo "Generating synthetic demo cases in $CASES ..."
  $PY -m ml.synthetic "$CASES" --centres 2 --nodules 4 --seed 0 --frames 32 >/dev/null 2>&1
fi
$PY manage.py import_cases "$CASES/manifest.csv" --no-progress \
  || echo "import_cases rejected some demo rows (reasons above)" >&2
# Annotations from the generator's ground truth, in every review state (idempotent).
$PY manage.py seed_demo_annotations "$CASES"
# A finished reader study over the demo cases, read by simulated readers (deterministic).
$PY manage.py seed_demo_reader_study

# Training runs get a worker of their own (queue "training"), so that a run never holds up
# the worker below (video processing, probes, predictions).
export TRAINING_QUEUE=training

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# One worker consumes both queues here; docker-compose.yml runs one per queue.
.venv/bin/celery -A webapp worker -Q cpu,gpu --pool=solo --concurrency=1 \
  --without-gossip --without-mingle --loglevel=INFO >"$VAR/worker.log" 2>&1 &
pids+=($!)
.venv/bin/celery -A webapp worker -Q training --pool=solo --concurrency=1 -n training@%h \
  --without-gossip --without-mingle --loglevel=INFO \
  >"$VAR/training-worker.log" 2>&1 &
pids+=($!)
.venv/bin/daphne -b "$HOST" -p "$PORT" webapp.asgi:application >"$VAR/web.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 60); do
  if $PY - "$HOST" "$PORT" <<'PYEOF' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/accounts/login/", timeout=2)
PYEOF
  sleep 1
done

# The demo's model: once the cases are processed, a small model trains on them in the training
# worker, is promoted, and every video gets a prediction with heatmaps (webapp/training/demo.py;
# progress in demo-model.log beside the database; a restart keeps the model).
$PY manage.py demo_model >"$VAR/demo-model.log" 2>&1 &

echo
echo "ThyroCine is running at http://$HOST:$PORT/  (logs: $VAR/web.log, $VAR/worker.log; Ctrl-C stops)"
echo
wait -n "${pids[@]}"
