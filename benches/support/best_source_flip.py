"""Cost of a change of best source in `session_impacts` (issue 10, ADR 0007).

One user: NSAMPLES steps samples in hour H (2024-06-01T12:00Z) spread over NSRC sourceIds (env,
default 50; NSRC=1 puts them all under one source), or with `spanning` NSAMPLES samples of 24 h all
touching H; then NSESS sessions of length 0 inside H, so that their BEFORE and AFTER windows cover
H in part. Then NFLIPS times: a sample of an existing source (no change of best), a manual sample
over all of H (every window's best source changes) and its deletion, each timed until visible in
`session_impacts`, while another user's one-sample syncs are timed alongside (the stall every user
sees). Prints JSON lines with times (s) and the server's VmRSS/VmHWM (MB).

usage: BIN=path/to/vitalflow [NSRC=1] python3 benches/support/best_source_flip.py PORT NSAMPLES NSESS NFLIPS [spanning]"""
import os, json, sys, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import Server, iso
port, nsamp, nsess, nflips = map(int, sys.argv[1:5])
spanning = len(sys.argv) > 5 and sys.argv[5] == "spanning"
binary = os.environ["BIN"]
srv = Server(binary, port, f"/tmp/vitalflow-flip-{port}", log=True, timeout=900)
post, get, rss = srv.post, srv.get, srv.rss_mb
srv.wait_ready(200)
H = 1717243200000  # 2024-06-01T12:00Z
samples = []
for i in range(nsamp):
    if spanning:   # 24h samples from many sources, all touching hour H
        s = H - 12 * 3600_000 + (i * 1000) % 3600_000
        e = s + 24 * 3600_000
    else:          # short samples inside hour H
        s = H + (i * 113) % 3_590_000
        e = s + 1000 + i % 5000
    samples.append({"sourceId": f"app-{i % int(os.environ.get('NSRC','50')):05d}", "sourceRecordId": f"s{i}", "metric": "steps",
                    "startAt": iso(s), "endAt": iso(e), "value": 1 + i % 7, "unit": "count", "sourceClass": "phone"})
t0 = time.time(); epoch = 0
for k in range(0, len(samples), 5000):
    epoch = post("/v1/health/samples/batch-upsert", {"requestId": f"r{k}", "userId": "u1", "deviceTimeZone": "UTC",
                 "samples": samples[k:k + 5000]})["epoch"]
get(f"/v1/users/u1/{os.environ.get('ROUTE', 'session-impacts')}?minEpoch={epoch}&waitMs=900000")
print(json.dumps({"phase": "samples", "n": nsamp, "s": round(time.time() - t0, 2), **rss()}), flush=True)
# zero-length sessions inside hour H: BEFORE and AFTER both cover H in part
changes = [{"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": f"x{i}", "productId": "p1",
            "startAt": iso(H + 60_000 + i * 1001), "endAt": iso(H + 60_000 + i * 1001), "quantity": 1.0}}
           for i in range(nsess)]
t0 = time.time()
for k in range(0, len(changes), 500):
    epoch = post("/v1/domain/changes", {"requestId": f"d{k}", "changes": changes[k:k + 500]})["epoch"]
r = get(f"/v1/users/u1/session-impacts?minEpoch={epoch}&waitMs=900000")
print(json.dumps({"phase": "sessions", "n": nsess, "rows": len(r["rows"]), "s": round(time.time() - t0, 2), **rss()}), flush=True)

if nflips == 0:
    srv.stop(kill=True); sys.exit(0)
probe_lat = []
stop = [False]
def probe():
    i = 0
    while not stop[0]:
        i += 1
        t = time.time()
        e = post("/v1/health/samples/batch-upsert", {"requestId": f"p{i}", "userId": "other", "deviceTimeZone": "UTC",
                 "samples": [{"sourceId": "w", "sourceRecordId": f"p{i}", "metric": "heart_rate", "startAt": iso(H + i),
                              "endAt": iso(H + i), "value": 70, "unit": "bpm"}]})["epoch"]
        get(f"/v1/users/other/daily-rollups?minEpoch={e}&waitMs=900000")
        probe_lat.append(time.time() - t)
        time.sleep(0.05)

def change(tag, body):
    t = time.time()
    e = post("/v1/health/samples/batch-upsert", body)["epoch"]
    get(f"/v1/users/u1/session-impacts?sessionId=x0&minEpoch={e}&waitMs=900000")
    return time.time() - t

th = threading.Thread(target=probe); th.start()
time.sleep(0.5)
lat_noflip, lat_flip, lat_unflip = [], [], []
for c in range(nflips):
    # a phone sample of an existing source in H: no best change
    lat_noflip.append(change("n", {"requestId": f"n{c}", "userId": "u1", "deviceTimeZone": "UTC", "samples": [
        {"sourceId": "app-001", "sourceRecordId": f"n{c}", "metric": "steps", "startAt": iso(H + 1234 + c),
         "endAt": iso(H + 5000 + c), "value": 3, "unit": "count", "sourceClass": "phone"}]}))
    # a manual sample spanning all of H: every window's best becomes 'man'
    lat_flip.append(change("f", {"requestId": f"f{c}", "userId": "u1", "deviceTimeZone": "UTC", "samples": [
        {"sourceId": "man", "sourceRecordId": f"f{c}", "metric": "steps", "startAt": iso(H),
         "endAt": iso(H + 3600_000), "value": 100, "unit": "count", "sourceClass": "manual"}]}))
    lat_unflip.append(change("u", {"requestId": f"u{c}", "userId": "u1", "deviceTimeZone": "UTC", "samples": [],
                                    "deletions": [{"sourceId": "man", "sourceRecordId": f"f{c}"}]}))
stop[0] = True; th.join()
probe_lat.sort()
print(json.dumps({"phase": "changes", "noflip_s": [round(x, 3) for x in lat_noflip], "flip_s": [round(x, 3) for x in lat_flip],
                  "unflip_s": [round(x, 3) for x in lat_unflip], "other_user_max_s": round(probe_lat[-1], 3) if probe_lat else None,
                  "other_user_med_s": round(probe_lat[len(probe_lat) // 2], 3) if probe_lat else None, **rss()}), flush=True)
srv.stop(kill=True)
