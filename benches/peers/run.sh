#!/usr/bin/env bash
# Runs vitalflow and its peers on the same workload, in the same run, and checks every peer's daily
# rollups against vitalflow's before its time counts:
#   1. the original design in Postgres (benches/peers/postgres.rs, tokio-postgres);
#   2. DuckDB (PyPI duckdb==2.0.1): the floor (one full GROUP BY) and two 10k-chunk replays;
#   3. Pathway (PyPI pathway==0.33.0): the same rollup fed in the same 10k chunks.
# Usage: benches/peers/run.sh [small|S|M] [seed]   (small = 50 users × 30 days)
# PostgreSQL: $DATABASE_URL if set, else `.ci/services.sh start` (Debian's package, loopback).
# Output: one JSON line per contender, also in $WORK/results.jsonl, then the ratios to vitalflow.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${1:-small}
SEED=${2:-3}
case "$SCALE" in
small) SIZE=(--users 50 --days 30) ;;
S | M) SIZE=(--scale "$SCALE") ;;
*) echo "usage: $0 [small|S|M] [seed]" >&2; exit 2 ;;
esac
WORK=${VITALFLOW_PEERS_DIR:-/tmp/vitalflow-peers-$SCALE-$SEED}
PORT=${VITALFLOW_PEERS_PORT:-18090}
rm -rf "$WORK" && mkdir -p "$WORK"
RESULTS=$WORK/results.jsonl

cargo build --release --bin vitalflow
cargo bench --profile dev --bench e2e --no-run
cargo bench --profile dev --bench peer_postgres --no-run
python3 -c 'import duckdb, pandas' 2>/dev/null || pip install -q duckdb==2.0.1 pandas==2.2.3
python3 -c 'import pathway' 2>/dev/null || pip install -q pathway==0.33.0
if [ -z "${DATABASE_URL:-}" ]; then
    .ci/services.sh start >/dev/null
    # shellcheck disable=SC1091
    source /tmp/vitalflow-services/env
fi

echo "# workload → $WORK/workload"
cargo bench --profile dev --bench e2e -- "${SIZE[@]}" --seed "$SEED" --write "$WORK/workload"

echo "# vitalflow (release, every view), same workload over HTTP"
VITALFLOW_SQL_ROW_LIMIT=100000000 target/release/vitalflow serve --data-dir "$WORK/data" \
  --listen "127.0.0.1:$PORT" >"$WORK/vitalflow.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "localhost:$PORT/readyz" >/dev/null && break; sleep 0.1; done
cargo bench --profile dev --bench e2e -- --url "http://127.0.0.1:$PORT" "${SIZE[@]}" --seed "$SEED" \
  | tee -a "$RESULTS"
curl -sf "localhost:$PORT/v1/sql" -H 'content-type: application/json' -d @- >"$WORK/vitalflow_rows.json" <<'JSON'
{"sql": "SELECT user_id, metric, CAST(local_date AS VARCHAR) AS local_date, sum FROM daily_rollups WHERE metric IN ('steps', 'active_energy')"}
JSON
kill $SERVER 2>/dev/null || true

echo "# DuckDB: floor and replays"
python3 benches/peers/duckdb_rollups.py "$WORK/workload" "$WORK/vitalflow_rows.json" --replay | tee -a "$RESULTS"

echo "# Pathway: 10k chunks, waiting for each chunk's output"
python3 benches/peers/pathway_rollups.py "$WORK/workload" "$WORK/vitalflow_rows.json" 2>"$WORK/pathway.log" \
  | tee -a "$RESULTS"

echo "# Postgres: the original projection, 10k chunks"
DB=vf_peer_$$
psql "$DATABASE_URL" -qc "CREATE DATABASE $DB"
cargo bench --profile dev --bench peer_postgres -- "$WORK/workload" "$WORK/vitalflow_rows.json" \
  "${DATABASE_URL%/*}/$DB" | tee -a "$RESULTS"
psql "$DATABASE_URL" -qc "DROP DATABASE $DB"

echo "# summary: samples/s and peer ÷ vitalflow (every check must say 0 mismatches)"
python3 - "$RESULTS" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
vf = next(l for l in lines if "peer" not in l)
rate = vf["samples_per_s_visible"]
print(json.dumps({"contender": "vitalflow", "samples_per_s": rate, "what": "every view, HTTP ingest to visible"}))
bad = 0
for l in (l for l in lines if "peer" in l):
    check = l.get("checked_against_vitalflow", {})
    bad += check.get("mismatches", 1)
    print(json.dumps({"contender": l["peer"], "what": l["what"], "samples_per_s": l["samples_per_s"],
                      "ratio_to_vitalflow": l["samples_per_s"] / rate, "groups": check.get("groups"),
                      "mismatches": check.get("mismatches")}))
sys.exit(1 if bad else 0)
PY
