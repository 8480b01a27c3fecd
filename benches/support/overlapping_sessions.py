"""Memory of `session_impacts` when one user has many overlapping sessions (issue 10).

One user: heart rate every 30 s and steps every minute over 30 hours (5,400 samples), then SESSIONS
consumption sessions of 10 hours, all overlapping. Prints the time until every impact is visible,
the server's peak and current RSS (KiB), and a digest of the rows (equal digests: equal views).

HR_EVERY_S (default 30) sets the heart-rate interval: 2 gives 54,000 heart-rate samples, the dense
case of the issue-10 break attempt.

Then CHANGES single heart-rate samples (default 10) are sent one at a time, each into an hour every
session covers, and the time until each is visible in `session_impacts` is reported (median, max).

usage: python3 benches/support/overlapping_sessions.py BINARY PORT SESSIONS [CHANGES [HR_EVERY_S]]
"""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import Server, iso as iso_ms
binary, port, nsess = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
srv = Server(binary, port, f"/tmp/vitalflow-overlap-{port}", timeout=600)
post, get = srv.post, srv.get
def rss(): return [str(kb) for kb in srv.rss_kb()]   # this script has always printed them as strings
srv.wait_ready(100)
t0 = 1717200000000  # 2024-06-01T00:00Z
def iso(ms): return iso_ms(ms, millis=False)   # whole seconds: the timestamps (and digests) of the published runs
# heart rate every HR_EVERY_S seconds and steps per minute over 30 hours
hr_every = int(sys.argv[5]) if len(sys.argv) > 5 else 30
samples = []
for i in range(30 * 3600 // hr_every):
    t = t0 + i * hr_every * 1000
    samples.append({"sourceId": "watch", "sourceRecordId": f"h{i}", "metric": "heart_rate",
                    "startAt": iso(t), "endAt": iso(t), "value": 60 + i % 40, "unit": "bpm"})
for i in range(30 * 60):
    t = t0 + i * 60_000
    samples.append({"sourceId": "watch", "sourceRecordId": f"s{i}", "metric": "steps",
                    "startAt": iso(t), "endAt": iso(t + 60_000), "value": 10 + (2 * i) % 7, "unit": "count"})
epoch = 0
for k in range(0, len(samples), 2000):
    epoch = post("/v1/health/samples/batch-upsert", {"requestId": f"r{k}", "userId": "u1", "deviceTimeZone": "UTC",
                 "samples": samples[k:k + 2000]})["epoch"]
changes = [{"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": f"s{i}", "productId": "p1",
            "startAt": iso(t0 + 10 * 3600_000 + i * 1000), "endAt": iso(t0 + 20 * 3600_000 + i * 1000), "quantity": 1.0}}
           for i in range(nsess)]
for k in range(0, len(changes), 500):
    epoch = post("/v1/domain/changes", {"requestId": f"d{k}", "changes": changes[k:k + 500]})["epoch"]
start = time.time()
r = get(f"/v1/users/u1/session-impacts?minEpoch={epoch}&waitMs=600000")
took = time.time() - start
rows = r["rows"]
print(json.dumps({"binary": binary, "sessions": nsess, "samples": len(samples), "visible_s": round(took, 1),
                  "peak_and_current_rss_kb": rss(), "rows": len(rows), "digest": __import__("hashlib").sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]}))
nchanges = int(sys.argv[4]) if len(sys.argv) > 4 else 10
lat = []
for c in range(nchanges):
    t = t0 + 15 * 3600_000 + c * 7_000
    body = {"requestId": f"c{c}", "userId": "u1", "deviceTimeZone": "UTC", "samples": [
        {"sourceId": "watch", "sourceRecordId": f"c{c}", "metric": "heart_rate", "startAt": iso(t), "endAt": iso(t),
         "value": 100 + c, "unit": "bpm"}]}
    start = time.time()
    e = post("/v1/health/samples/batch-upsert", body)["epoch"]
    get(f"/v1/users/u1/session-impacts?sessionId=s0&minEpoch={e}&waitMs=600000")
    lat.append(time.time() - start)
lat.sort()
if not lat:
    srv.stop(); sys.exit(0)
print(json.dumps({"changes": nchanges, "change_visible_median_s": round(lat[len(lat) // 2], 3),
                  "change_visible_max_s": round(lat[-1], 3), "peak_and_current_rss_kb": rss()}))
srv.stop()
