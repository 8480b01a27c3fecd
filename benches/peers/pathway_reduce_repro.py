#!/usr/bin/env python3
"""Reproducer for what the Pathway peer works around (pathway 0.33.0 from PyPI): when a row's
retraction and its replacement reach a `reduce` in the same commit, the reduce keeps the old value.

    python3 benches/peers/pathway_reduce_repro.py

Rows a=1, b=5; then a is replaced by 2 (delete + insert in one commit); then b is deleted. The sum
should go 6 → 7 → 2. Observed: 6, then nothing for the replacement, then 1 (the same happens with an
upsert session and `next(k="a", v=2.0)`, and per key with `groupby(k)`). Sending the deletion and
the insertion in two commits gives 6 → 5 → 7 → 2.
"""
import time

import pathway as pw


class S(pw.Schema):
    k: str
    v: float


class Sub(pw.io.python.ConnectorSubject):
    def run(self):
        self.next(k="a", v=1.0)
        self.next(k="b", v=5.0)
        self.commit()
        time.sleep(0.5)
        self.delete(k="a", v=1.0)
        self.next(k="a", v=2.0)
        self.commit()
        time.sleep(0.5)
        self.delete(k="b", v=5.0)
        self.commit()
        time.sleep(0.5)


t = pw.io.python.read(Sub(), schema=S, autocommit_duration_ms=None)
sums = t.reduce(s=pw.reducers.sum(pw.this.v))
pw.io.subscribe(sums, on_change=lambda key, row, time, is_addition: print(
    "sum", "+" if is_addition else "-", row["s"], flush=True))
pw.run(monitoring_level=pw.MonitoringLevel.NONE)
