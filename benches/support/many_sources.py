"""Memory and change cost of `session_impacts` when one user's samples carry many `sourceId`s (issue 10).

One user: SOURCES distinct sourceIds, each with one 10-minute steps sample in the same hour
(2024-06-01T12:00Z), then SESSIONS consumption sessions that all cover that hour. With
`--partial`, the sessions instead start inside that hour (one second apart), so the hour is one they
only partly cover. With `--short`, each source's sample lasts 5 s inside one minute (12:05) and
the sessions last 20 s inside that minute (windows shorter than a minute). Prints the time until every impact is visible, the server's peak and current RSS
(KiB) and a digest of the rows (equal digests: equal views); then CHANGES single steps samples
(default 10) of a new source are sent one at a time into that hour, and the time until each is
visible in `session_impacts` is reported (median, max).

usage: python3 benches/support/many_sources.py BINARY PORT SOURCES SESSIONS [CHANGES] [--partial | --short]
"""
import hashlib, json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import Server, iso
args = [a for a in sys.argv[1:] if not a.startswith("--")]
partial = "--partial" in sys.argv
short = "--short" in sys.argv
binary, port, nsrc, nsess = args[0], int(args[1]), int(args[2]), int(args[3])
nchanges = int(args[4]) if len(args) > 4 else 10
srv = Server(binary, port, f"/tmp/vitalflow-sources-{port}", timeout=900)
post, get = srv.post, srv.get
srv.wait_ready(100)
hour = 1717243200000  # 2024-06-01T12:00Z
def extent(i):
    if short:
        s = hour + 300_000 + (i * 7) % 55_000
        return s, s + 5_000
    s = hour + (i * 7_000) % 3_000_000
    return s, s + 600_000
samples = [{"sourceId": f"app-{i:05d}", "sourceRecordId": f"s{i}", "metric": "steps",
            "startAt": iso(extent(i)[0]), "endAt": iso(extent(i)[1]),
            "value": 10 + i % 7, "unit": "count"} for i in range(nsrc)]
epoch = 0
start = time.time()
for k in range(0, len(samples), 2000):
    epoch = post("/v1/health/samples/batch-upsert", {"requestId": f"r{k}", "userId": "u1", "deviceTimeZone": "UTC",
                 "samples": samples[k:k + 2000]})["epoch"]
def session(i):
    if short:
        s, length = hour + 300_000 + (i * 37) % 40_000, 20_000
    else:
        s, length = (hour + i * 1000 if partial else hour - 5 * 3600_000 + i * 1000), 10 * 3600_000
    return {"userId": "u1", "sessionId": f"s{i}", "productId": "p1", "startAt": iso(s),
            "endAt": iso(s + length), "quantity": 1.0}
changes = [{"entity": "session", "op": "upsert", "data": session(i)} for i in range(nsess)]
for k in range(0, len(changes), 500):
    epoch = post("/v1/domain/changes", {"requestId": f"d{k}", "changes": changes[k:k + 500]})["epoch"]
r = get(f"/v1/users/u1/session-impacts?minEpoch={epoch}&waitMs=900000")
took = time.time() - start
rows = r["rows"]
if os.environ.get("DUMP_ROWS"):
    json.dump(rows, open(os.environ["DUMP_ROWS"], "w"), sort_keys=True, indent=0)
print(json.dumps({"binary": binary, "sources": nsrc, "sessions": nsess, "partial": partial, "short": short, "visible_s": round(took, 1),
                  "peak_and_current_rss_kb": srv.rss_kb(), "rows": len(rows),
                  "digest": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]}))
lat = []
for c in range(nchanges):
    t = hour + 300_000 + c * 3_000 if short else hour + 60_000 + c * 61_000
    body = {"requestId": f"c{c}", "userId": "u1", "deviceTimeZone": "UTC", "samples": [
        {"sourceId": f"new-{c}", "sourceRecordId": f"c{c}", "metric": "steps", "startAt": iso(t),
         "endAt": iso(t + (2_000 if short else 120_000)), "value": 5 + c, "unit": "count"}]}
    t0 = time.time()
    e = post("/v1/health/samples/batch-upsert", body)["epoch"]
    get(f"/v1/users/u1/session-impacts?sessionId=s0&minEpoch={e}&waitMs=900000")
    lat.append(time.time() - t0)
lat.sort()
if lat:
    print(json.dumps({"changes": nchanges, "change_visible_median_s": round(lat[len(lat) // 2], 3),
                      "change_visible_max_s": round(lat[-1], 3), "peak_and_current_rss_kb": srv.rss_kb()}))
srv.stop()
