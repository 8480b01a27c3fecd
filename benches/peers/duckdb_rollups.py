#!/usr/bin/env python3
"""DuckDB peer, the floor: one full GROUP BY of the cumulative daily rollups (DOMAIN.md M1: per
15-minute UTC slice the best-ranked source's C1 shares; the day is the slice's local date in the
batch's zone) over the final state of a workload written by `e2e --write DIR`. Checks the result
against vitalflow's `daily_rollups` (same groups, same sums) when given its rows as JSON.

    python3 benches/peers/duckdb_rollups.py DIR [vitalflow_rows.json] [--replay]

With `--replay` it also replays the batches in arrival order in chunks of 10,000 sample operations,
(a) recomputing the whole rollup after each chunk and (b) recomputing only the touched
`(user, metric, local_date)` groups, and checks both final results too (needs pandas).

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


def final_state(ops):
    """The state the operations leave: the last upsert per key, deleted keys gone."""
    state = {}
    for op, key, row in ops:
        if op == "u":
            state[key] = row
        else:
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


def operations(path):
    """Sample operations in arrival order: ('u', key, row) upserts and ('d', key, None) deletions,
    tombstones applied (an upsert after a deletion of its key is stale)."""
    ops, tomb = [], set()
    with open(path) as f:
        for line in f:
            b = json.loads(line)
            user, zone = b["userId"], b.get("deviceTimeZone") or "UTC"
            for s in b.get("samples", []):
                key = (user, s["sourceId"], s["sourceRecordId"])
                if key in tomb or s["metric"] not in CUMULATIVE:
                    continue
                ops.append(("u", key, (s["metric"], ms(s["startAt"]), ms(s["endAt"]), float(s["value"]),
                                       RANK.get(s.get("sourceClass", "unknown"), 7), zone)))
            for d in b.get("deletions", []):
                key = (user, d["sourceId"], d["sourceRecordId"])
                tomb.add(key)
                ops.append(("d", key, None))
    return ops


TOUCHED = """
SELECT DISTINCT user_id, metric, strftime((to_timestamp(k * 900) AT TIME ZONE zone)::date, '%Y-%m-%d') AS local_date
FROM changed, range(start_ms // 900000, (end_ms - 1) // 900000 + 1) AS r(k) WHERE end_ms > start_ms
"""


def replay(ops, touched_only, chunk=10_000):
    """Applies `ops` in chunks to a samples table and keeps `rollups` current after every chunk."""
    import pandas as pd
    con = duckdb.connect()
    con.execute("CREATE TABLE samples (user_id VARCHAR, source_id VARCHAR, source_record_id VARCHAR, metric VARCHAR, "
                "start_ms BIGINT, end_ms BIGINT, value DOUBLE, rank INTEGER, zone VARCHAR, "
                "PRIMARY KEY (user_id, source_id, source_record_id))")
    con.execute("CREATE TABLE rollups (user_id VARCHAR, metric VARCHAR, local_date VARCHAR, sum DOUBLE)")
    cols = ["user_id", "source_id", "source_record_id", "metric", "start_ms", "end_ms", "value", "rank", "zone"]
    latencies, n = [], 0
    for i in range(0, len(ops), chunk):
        part = ops[i:i + chunk]
        last = {}
        for op, key, row in part:
            last[key] = (op, row)  # the chunk's final word per key
        keys = pd.DataFrame([k for k in last], columns=cols[:3])
        ups = pd.DataFrame([k + row for k, (op, row) in last.items() if op == "u"], columns=cols)
        started = time.perf_counter()
        con.register("keys", keys)
        con.register("ups", ups)
        if touched_only:
            # Old and new versions both touch groups.
            con.execute("CREATE OR REPLACE TEMP TABLE changed AS SELECT s.* FROM samples s JOIN keys USING "
                        "(user_id, source_id, source_record_id) UNION ALL SELECT * FROM ups")
            con.execute(f"CREATE OR REPLACE TEMP TABLE touched AS {TOUCHED}")
        con.execute("DELETE FROM samples USING keys WHERE samples.user_id = keys.user_id AND "
                    "samples.source_id = keys.source_id AND samples.source_record_id = keys.source_record_id")
        con.execute("INSERT INTO samples SELECT * FROM ups")
        if touched_only:
            restricted = FLOOR.replace("FROM samples,", "FROM (SELECT s.* FROM samples s WHERE (s.user_id, s.metric) IN "
                                       "(SELECT user_id, metric FROM touched)) AS samples,")
            con.execute("DELETE FROM rollups USING touched t WHERE rollups.user_id = t.user_id AND "
                        "rollups.metric = t.metric AND rollups.local_date = t.local_date")
            con.execute(f"INSERT INTO rollups SELECT x.* FROM ({restricted}) x JOIN touched t USING (user_id, metric, local_date)")
        else:
            con.execute(f"CREATE OR REPLACE TABLE rollups AS {FLOOR}")
        latencies.append(time.perf_counter() - started)
        n += len(part)
        con.unregister("keys")
        con.unregister("ups")
    rows = con.execute("SELECT * FROM rollups").fetchall()
    latencies.sort()
    total = sum(latencies)
    return rows, {"chunks": len(latencies), "operations": n, "seconds": total, "samples_per_s": n / total,
                  "chunk_ms_p50": 1000 * latencies[len(latencies) // 2], "chunk_ms_max": 1000 * latencies[-1]}


def check(want, rows):
    got = {(u, m, d): s for (u, m, d, s) in rows}
    bad = [k for k in set(want) | set(got)
           if abs(want.get(k, float("nan")) - got.get(k, float("nan"))) > 1e-6 * max(1.0, abs(want.get(k, 0.0)))]
    return {"groups": len(want), "mismatches": len(bad), "examples": [(k, want.get(k), got.get(k)) for k in sorted(bad)[:3]]}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    ops = operations(f"{args[0]}/batches.jsonl")
    state = final_state(ops)
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
    want = None
    if len(args) > 1:
        want = {(r["user_id"], r["metric"], r["local_date"]): r["sum"]
                for r in json.load(open(args[1]))["rows"] if r["metric"] in CUMULATIVE}
        out["checked_against_vitalflow"] = check(want, rows)
    print(json.dumps(out))
    if "--replay" in sys.argv:
        for touched_only, name in ((False, "replay, full recompute per 10k chunk"), (True, "replay, touched groups per 10k chunk")):
            rows, figures = replay(ops, touched_only)
            line = {"peer": "duckdb", "what": name, **figures}
            if want is not None:
                line["checked_against_vitalflow"] = check(want, rows)
            print(json.dumps(line))


if __name__ == "__main__":
    main()
