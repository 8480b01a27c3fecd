#!/usr/bin/env python3
"""Pathway peer: the cumulative daily rollups (DOMAIN.md M1: per 15-minute UTC slice the
best-ranked source's C1 shares; the day is the slice's local date in the batch's zone) maintained
by Pathway (a timely/differential engine under Python) over the workload written by
`e2e --write DIR`, fed in the same chunks of 10,000 sample operations as the DuckDB replays
(retractions, then insertions: see `Replay`), waiting for the chunk's output before the next.

    python3 benches/peers/pathway_rollups.py DIR [vitalflow_rows.json] [--chunk N]

Prints one JSON line: samples/s over the whole replay, chunk latency (commit → Pathway closed the
chunk's time) p50/max, peak RSS, and the check of the final rollups against vitalflow's
`daily_rollups` (same groups, same sums). Pinned: pathway 0.33.0 from PyPI.
"""
import json
import os
import resource
import sys
import threading
import time
from datetime import datetime, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from duckdb_rollups import CUMULATIVE, check, operations  # noqa: E402  (one parser for both peers)

import pathway as pw  # noqa: E402

SLICE_MS = 900_000
MARKER = ("__marker__", "m", "m")


class SampleSchema(pw.Schema):
    user_id: str = pw.column_definition(primary_key=True)
    source_id: str = pw.column_definition(primary_key=True)
    source_record_id: str = pw.column_definition(primary_key=True)
    metric: str
    start_ms: int
    end_ms: int
    value: float
    rank: int
    zone: str


@lru_cache(maxsize=None)
def zone_of(name):
    return ZoneInfo(name)


@lru_cache(maxsize=1 << 20)
def local_date(slice_index, zone):
    t = datetime.fromtimestamp(slice_index * SLICE_MS / 1000, tz=timezone.utc)
    return t.astimezone(zone_of(zone)).date().isoformat()


def shares(start_ms, end_ms, value):
    """C1: the value split over the 15-minute UTC slices the interval overlaps, by overlap."""
    if end_ms <= start_ms:
        return ()
    out = []
    for k in range(start_ms // SLICE_MS, (end_ms - 1) // SLICE_MS + 1):
        overlap = min(end_ms, (k + 1) * SLICE_MS) - max(start_ms, k * SLICE_MS)
        out.append((k, value * overlap / (end_ms - start_ms)))
    return tuple(out)


class Replay(pw.io.python.ConnectorSubject):
    """Sends the operations in chunks and waits for each chunk's output before the next one.

    A chunk is its final word per key (as in the DuckDB replay), sent as two commits: first the
    retractions of the rows it replaces or deletes, then, once Pathway has closed their time, the
    new rows. Pathway 0.33.0 loses an update whose retraction and insertion reach a `reduce` in the
    same time (reproducer in benches/README.md), so one commit per chunk, or an upsert session,
    leaves edited groups stale. A marker row, its own group in the output, tells when each commit's
    time has closed (`on_time_end` fires only for times that change the output)."""

    def __init__(self, ops, chunk, closed):
        super().__init__()
        self.ops, self.chunk, self.closed = ops, chunk, closed
        self.latencies = []

    @property
    def _deletions_enabled(self):
        return True  # Pathway finds `self.delete` by reading `run`; here it is called through `send`.

    def send(self, fn, key, row):
        metric, a, b, v, rank, zone = row
        fn(user_id=key[0], source_id=key[1], source_record_id=key[2], metric=metric, start_ms=a, end_ms=b,
           value=v, rank=rank, zone=zone)

    def run(self):
        current = {}
        for n, i in enumerate(range(0, len(self.ops), self.chunk), start=1):
            last = {}
            for op, key, row in self.ops[i:i + self.chunk]:
                last[key] = row if op == "u" else None
            # The marker's own rollup group sums to the chunk number once the chunk is through.
            last[MARKER] = ("marker", 0, SLICE_MS, float(n), 0, "UTC")
            started = time.perf_counter()
            for key, row in last.items():
                old = current.get(key)
                if old is not None and old != row:
                    self.send(self.delete, key, old)
            self.commit()
            if n > 1:
                # The retractions' time must close before the insertions are sent (see above).
                self.closed.wait_for(-float(n - 1))
            for key, row in last.items():
                old = current.get(key)
                if row is not None and old != row:
                    self.send(self.next, key, row)
                if row is None:
                    current.pop(key, None)
                else:
                    current[key] = row
            self.commit()
            self.closed.wait_for(float(n))
            self.latencies.append(time.perf_counter() - started)


class Closed:
    """The marker in the output (its chunk number, negated once retracted), as of the last time
    Pathway closed."""

    def __init__(self):
        self.seen = self.done = 0.0
        self.cv = threading.Condition()

    def on_marker(self, value, present):
        self.seen = value if present else -value

    def on_time_end(self, time):  # noqa: ARG002 (Pathway passes it by name)
        with self.cv:
            self.done = self.seen
            self.cv.notify_all()

    def wait_for(self, value):
        with self.cv:
            if not self.cv.wait_for(lambda: self.done == value, timeout=600):
                raise TimeoutError(f"chunk {value:.0f}: no output from Pathway in 600 s")


def rollups(samples):
    pieces = samples.select(
        pw.this.user_id,
        pw.this.metric,
        pw.this.zone,
        best=pw.apply_with_type(lambda r, s: f"{r}|{s}", str, pw.this.rank, pw.this.source_id),
        piece=pw.apply(shares, pw.this.start_ms, pw.this.end_ms, pw.this.value),
    ).flatten(pw.this.piece)
    pieces = pieces.select(
        pw.this.user_id, pw.this.metric, pw.this.zone, pw.this.best,
        slot=pw.apply_with_type(lambda p: p[0], int, pw.this.piece),
        share=pw.apply_with_type(lambda p: p[1], float, pw.this.piece),
    )
    winners = pieces.groupby(pw.this.user_id, pw.this.metric, pw.this.slot).reduce(
        pw.this.user_id, pw.this.metric, pw.this.slot, best=pw.reducers.min(pw.this.best))
    won = pieces.join(
        winners,
        pieces.user_id == winners.user_id, pieces.metric == winners.metric,
        pieces.slot == winners.slot, pieces.best == winners.best,
    ).select(pieces.user_id, pieces.metric, local_date=pw.apply_with_type(local_date, str, pieces.slot, pieces.zone),
             share=pieces.share)
    return won.groupby(pw.this.user_id, pw.this.metric, pw.this.local_date).reduce(
        pw.this.user_id, pw.this.metric, pw.this.local_date, sum=pw.reducers.sum(pw.this.share))


def main():
    argv = sys.argv[1:]
    chunk = 10_000
    if "--chunk" in argv:
        i = argv.index("--chunk")
        chunk = int(argv[i + 1])
        del argv[i:i + 2]
    args = argv
    ops = operations(f"{args[0]}/batches.jsonl")
    closed = Closed()
    subject = Replay(ops, chunk, closed)
    samples = pw.io.python.read(subject, schema=SampleSchema, autocommit_duration_ms=None)
    state = {}

    def on_change(key, row, time, is_addition):  # noqa: ARG001 (keyword names are Pathway's)
        if row["user_id"] == MARKER[0]:
            closed.on_marker(row["sum"], is_addition)
        elif is_addition:
            state[key] = (row["user_id"], row["metric"], row["local_date"], row["sum"])
        elif state.get(key) == (row["user_id"], row["metric"], row["local_date"], row["sum"]):
            del state[key]

    pw.io.subscribe(rollups(samples), on_change=on_change, on_time_end=closed.on_time_end)
    started = time.perf_counter()
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
    wall = time.perf_counter() - started
    lat = sorted(subject.latencies)
    out = {
        "peer": "pathway", "pathway": pw.__version__,
        "what": f"M1 daily rollups (cumulative metrics), {chunk}-operation chunks, waiting for each chunk's output",
        "chunks": len(lat), "operations": len(ops), "seconds": sum(lat), "wall_seconds": wall,
        "samples_per_s": len(ops) / sum(lat) if lat else 0.0,
        "chunk_ms_p50": 1000 * lat[len(lat) // 2] if lat else None, "chunk_ms_max": 1000 * lat[-1] if lat else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if len(args) > 1:
        want = {(r["user_id"], r["metric"], r["local_date"]): r["sum"]
                for r in json.load(open(args[1]))["rows"] if r["metric"] in CUMULATIVE}
        out["checked_against_vitalflow"] = check(want, list(state.values()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
