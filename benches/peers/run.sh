#!/usr/bin/env bash
# Runs the peers on the same workload as vitalflow and checks their daily rollups against
# vitalflow's. Usage: benches/peers/run.sh [small|S|M] [seed]   (small = 50 users × 30 days)
# Measured so far: DuckDB (floor and 10k-chunk replays). The Postgres projection and Pathway are
# not written yet.
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

cargo build --release --bin vitalflow
cargo bench --profile dev --bench e2e --no-run
python3 -c 'import duckdb, pandas' 2>/dev/null || pip install -q duckdb pandas

echo "# workload → $WORK/workload"
cargo bench --profile dev --bench e2e -- "${SIZE[@]}" --seed "$SEED" --write "$WORK/workload"

echo "# vitalflow (release, every view), same workload over HTTP"
VITALFLOW_SQL_ROW_LIMIT=100000000 target/release/vitalflow serve --data-dir "$WORK/data" \
  --listen "127.0.0.1:$PORT" >"$WORK/vitalflow.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "localhost:$PORT/readyz" >/dev/null && break; sleep 0.1; done
cargo bench --profile dev --bench e2e -- --url "http://127.0.0.1:$PORT" "${SIZE[@]}" --seed "$SEED"
curl -sf "localhost:$PORT/v1/sql" -H 'content-type: application/json' -d @- >"$WORK/vitalflow_rows.json" <<'JSON'
{"sql": "SELECT user_id, metric, CAST(local_date AS VARCHAR) AS local_date, sum FROM daily_rollups WHERE metric IN ('steps', 'active_energy')"}
JSON

echo "# DuckDB: floor and replays, each checked against vitalflow's rows"
python3 benches/peers/duckdb_rollups.py "$WORK/workload" "$WORK/vitalflow_rows.json" --replay
