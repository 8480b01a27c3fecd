#!/usr/bin/env python3
"""DuckDB peer, the floor: one full GROUP BY of the cumulative daily rollups (DOMAIN.md M1: per
15-minute UTC slice the best-ranked source's C1 shares; the day is the slice's local date in the
batch's zone) over the final state of a workload written by `e2e --write DIR`. Checks the result
against vitalflow's `daily_rollups` (same groups, same sums) when given its rows as JSON.

    python3 benches/peers/duckdb_rollups.py DIR [vitalflow_rows.json]

Only the cumulative metrics (steps, active_energy) are compared; the other kinds are not computed.
"""
import json
import sys
import tempfile
import time

import duckdb

RANK = {"manual": 0, "watch": 1, "ring": 2, "band": 3, "chest_strap": 4, "phone": 5, "other": 6, "unknown": 7}
CUMULATIVE = ("steps", "active_energy")


def ms(iso):
    from datetime import datetime
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def final_state(path):
    """Replays batch bodies in arrival order: upserts, deletions (tombstones)."""
    state, tomb = {}, set()
    with open(path) as f:
        for line in f:
            b = json.loads(line)
            user, zone = b["userId"], b.get("deviceTimeZone") or "UTC"
            for s in b.get("samples", []):
                key = (user, s["sourceId"], s["sourceRecordId"])
                if key in tomb or s["metric"] not in CUMULATIVE:
                    continue
                state[key] = (s["metric"], ms(s["startAt"]), ms(s["endAt"]), float(s["value"]),
                              RANK.get(s.get("sourceClass", "unknown"), 7), zone)
            for d in b.get("deletions", []):
                key = (user, d["sourceId"], d["sourceRecordId"])
                tomb.add(key)
                state.pop(key, None)
    return state


FLOOR = """
WITH pieces AS (
  SELECT user_id, metric, source_id, rank, zone, k AS slice,
         value * (least(end_ms, (k + 1) * 900000) - greatest(start_ms, k * 900000)) / (end_ms - start_ms) AS share
  FROM samples, range(start_ms // 900000, (end_ms - 1) // 900000 + 1) AS r(k)
  WHERE end_ms > start_ms
), winners AS (
  SELECT user_id, metric, slice, min({'r': rank, 's': source_id}) AS best FROM pieces GROUP BY ALL
)
SELECT p.user_id, p.metric, strftime((to_timestamp(p.slice * 900) AT TIME ZONE p.zone)::date, '%Y-%m-%d') AS local_date,
       sum(p.share) AS sum
FROM pieces p JOIN winners w USING (user_id, metric, slice)
WHERE p.rank = w.best.r AND p.source_id = w.best.s
GROUP BY ALL
"""


def main():
    state = final_state(f"{sys.argv[1]}/batches.jsonl")
    con = duckdb.connect()
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as t:
        t.write("user_id,source_id,metric,start_ms,end_ms,value,rank,zone\n")
        for (u, src, _), (m, a, b, v, r, z) in state.items():
            t.write(f"{u},{src},{m},{a},{b},{v!r},{r},{z}\n")
    con.execute(f"CREATE TABLE samples AS SELECT * FROM read_csv('{t.name}', header = true)")
    n = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    started = time.perf_counter()
    rows = con.execute(FLOOR).fetchall()
    floor_s = time.perf_counter() - started
    out = {"peer": "duckdb", "duckdb": duckdb.__version__, "what": "full GROUP BY (floor), cumulative metrics",
           "samples": n, "groups": len(rows), "seconds": floor_s, "samples_per_s": n / floor_s}
    if len(sys.argv) > 2:
        want = {(r["user_id"], r["metric"], r["local_date"]): r["sum"]
                for r in json.load(open(sys.argv[2]))["rows"] if r["metric"] in CUMULATIVE}
        got = {(u, m, d): s for (u, m, d, s) in rows}
        bad = [k for k in set(want) | set(got) if abs(want.get(k, float("nan")) - got.get(k, float("nan"))) > 1e-6 * max(1.0, abs(want.get(k, 0.0)))]
        out["checked_against_vitalflow"] = {"groups": len(want), "mismatches": len(bad), "examples": [
            (k, want.get(k), got.get(k)) for k in sorted(bad)[:3]]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
