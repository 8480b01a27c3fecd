"""Cost of editing one long sample of the best source in `session_impacts` (issue 10, ADR 0007).

One user: source A (watch) with PERHOUR one-minute steps samples in every hour of 2024-06-01 and
02, and SPANS (env, default 1) samples of 24 h (each SPANSTEP ms, env, default 60000, earlier than
the last); then NSESS sessions of 24 h all overlapping the first 24 h sample. Then NEDITS times
one change, timed until visible (latency, server CPU seconds) while another user's one-sample
syncs are timed alongside: `edit` changes the first 24 h sample's value; `short` adds a one-minute
sample; `flip` adds a manual sample (every DURING window's best source changes) and deletes it.
Prints JSON lines with times (s) and the server's VmRSS/VmHWM (MB).

usage: BIN=path/to/vitalflow [SPANS=N SPANSTEP=MS] python3 benches/support/long_sample_edit.py PORT NSESS PERHOUR NEDITS [edit|short|flip]"""
import os, json, sys, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import Server, iso
port, nsess, perhour, nedits = map(int, sys.argv[1:5])
mode = sys.argv[5] if len(sys.argv) > 5 else "edit"
binary = os.environ["BIN"]
srv = Server(binary, port, f"/tmp/vitalflow-long-edit-{port}", log=True, timeout=900, busy_retries=100)
post, get, cpu, rss = srv.post, srv.get, srv.cpu_s, srv.rss_mb
srv.wait_ready(300)
H0 = 1717200000000  # 2024-06-01T00:00Z
HOUR = 3600_000
samples = []
for h in range(-2, 52):
    for j in range(perhour):
        s = H0 + h * HOUR + j * (HOUR // perhour) + 17
        samples.append({"sourceId": "A", "sourceRecordId": f"s{h}_{j}", "metric": "steps", "startAt": iso(s),
                        "endAt": iso(s + 60_000), "value": 1 + j % 7, "unit": "count", "sourceClass": "watch"})
for k in range(int(os.environ.get("SPANS", "1"))):
    samples.append({"sourceId": "A", "sourceRecordId": "big" if k == 0 else f"big{k}", "metric": "steps", "startAt": iso(H0 + 12 * HOUR + 1234 - k * int(os.environ.get("SPANSTEP", "60000"))),
                    "endAt": iso(H0 + 36 * HOUR + 1234 - k * int(os.environ.get("SPANSTEP", "60000"))), "value": 5000, "unit": "count", "sourceClass": "watch"})
t0 = time.time(); epoch = 0
for k in range(0, len(samples), 5000):
    epoch = post("/v1/health/samples/batch-upsert", {"requestId": f"r{k}", "userId": "u1", "deviceTimeZone": "UTC",
                 "samples": samples[k:k + 5000]})["epoch"]
get(f"/v1/users/u1/session-impacts?minEpoch={epoch}&waitMs=30000")
print(json.dumps({"phase": "samples", "n": len(samples), "s": round(time.time() - t0, 2), **rss()}), flush=True)
# 24 h sessions, all overlapping the big sample's day
changes = [{"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": f"x{i}", "productId": "p1",
            "startAt": iso(H0 + 12 * HOUR + 30 * 60_000 + i * 1001), "endAt": iso(H0 + 36 * HOUR + 30 * 60_000 + i * 1001 - 7),
            "quantity": 1.0}} for i in range(nsess)]
t0 = time.time()
for k in range(0, len(changes), 500):
    epoch = post("/v1/domain/changes", {"requestId": f"d{k}", "changes": changes[k:k + 500]})["epoch"]
while True:
    r = get(f"/v1/users/u1/session-impacts?sessionId=x0&minEpoch={epoch}&waitMs=30000")
    if not r["pending"]: break
print(json.dumps({"phase": "sessions", "n": nsess, "s": round(time.time() - t0, 2), **rss()}), flush=True)

def change(body):
    c0 = cpu(); t = time.time()
    e = post("/v1/health/samples/batch-upsert", body)["epoch"]
    while True:
        r = get(f"/v1/users/u1/session-impacts?sessionId=x0&minEpoch={e}&waitMs=30000")
        if not r["pending"]: break
    return round(time.time() - t, 3), round(cpu() - c0, 2)

probe_lat = []; stop = [False]
def probe():
    i = 0
    while not stop[0]:
        i += 1; t = time.time()
        e = post("/v1/health/samples/batch-upsert", {"requestId": f"p{i}", "userId": "other", "deviceTimeZone": "UTC",
                 "samples": [{"sourceId": "w", "sourceRecordId": f"p{i}", "metric": "heart_rate", "startAt": iso(H0 + i),
                              "endAt": iso(H0 + i), "value": 70, "unit": "bpm"}]})["epoch"]
        get(f"/v1/users/other/daily-rollups?minEpoch={e}&waitMs=30000")
        probe_lat.append(time.time() - t); time.sleep(0.05)
th = threading.Thread(target=probe); th.start(); time.sleep(0.5)
lat = []
for c in range(nedits):
    if mode == "edit":   # the 24 h sample's value changes
        lat.append(change({"requestId": f"e{c}", "userId": "u1", "deviceTimeZone": "UTC", "samples": [
            {"sourceId": "A", "sourceRecordId": "big", "metric": "steps", "startAt": iso(H0 + 12 * HOUR + 1234),
             "endAt": iso(H0 + 36 * HOUR + 1234), "value": 5001 + c, "unit": "count", "sourceClass": "watch"}]}))
    elif mode == "short":   # a 1-minute sample of the best source inside the sessions' hours
        lat.append(change({"requestId": f"e{c}", "userId": "u1", "deviceTimeZone": "UTC", "samples": [
            {"sourceId": "A", "sourceRecordId": f"n{c}", "metric": "steps", "startAt": iso(H0 + 20 * HOUR + 5000 + c),
             "endAt": iso(H0 + 20 * HOUR + 65000 + c), "value": 3, "unit": "count", "sourceClass": "watch"}]}))
    else:   # flip: a manual sample makes 'man' every DURING window's best; then delete it
        lat.append(change({"requestId": f"f{c}", "userId": "u1", "deviceTimeZone": "UTC", "samples": [
            {"sourceId": "man", "sourceRecordId": f"f{c}", "metric": "steps", "startAt": iso(H0 + 20 * HOUR),
             "endAt": iso(H0 + 20 * HOUR + 1000), "value": 100, "unit": "count", "sourceClass": "manual"}]}))
        lat.append(change({"requestId": f"u{c}", "userId": "u1", "deviceTimeZone": "UTC", "samples": [],
                           "deletions": [{"sourceId": "man", "sourceRecordId": f"f{c}"}]}))
stop[0] = True; th.join(); probe_lat.sort()
print(json.dumps({"other_user_max_s": round(probe_lat[-1], 3), "other_user_med_s": round(probe_lat[len(probe_lat) // 2], 3)}))
print(json.dumps({"phase": mode, "bin": binary, "nsess": nsess, "perhour": perhour, "lat_cpu": lat, **rss()}), flush=True)
srv.stop(kill=True)
