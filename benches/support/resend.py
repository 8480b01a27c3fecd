"""Resends: what a batch of samples already stored costs the writer (benches/README.md, "The writer:
one B-tree descent for a new sample").

Against a running vitalflow at 127.0.0.1:PORT (fresh data directory): first 48,000 heart-rate
samples of history (8 users × 12 batches of 500), then one batch of 500 steps samples per user;
then 8 clients each send their user's steps batch 40 more times under new request ids (every
sample `unchanged`). Prints the time of the resends and, with PID, the bytes the server wrote
during them (/proc/PID/io).

    target/release/vitalflow serve --data-dir /tmp/vf-resend --listen 127.0.0.1:18081 &
    python3 benches/support/resend.py 18081 $!
"""
import http.client
import json
import sys
import threading
import time
import uuid

PORT = int(sys.argv[1])
PID = sys.argv[2] if len(sys.argv) > 2 else None
USERS, ROUNDS = 8, 40


def post(conn, body):
    conn.request("POST", "/v1/health/samples/batch-upsert", body, {"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    assert r.status == 200, data
    return json.loads(data)


def history(u, b):
    def at(i):
        m = b * 500 + i
        return f"2024-05-{1 + m // 1440 % 28:02d}T{m % 1440 // 60:02d}:{m % 60:02d}:00Z"
    samples = [{"sourceId": "phone", "sourceRecordId": f"h{u}-{b}-{i}", "metric": "heart_rate",
                "startAt": at(i), "endAt": at(i), "value": 70, "unit": "count/min"} for i in range(500)]
    return json.dumps({"requestId": f"hist-{u}-{b}", "userId": f"user-{u}", "samples": samples}).encode()


def steps(u, request_id):
    samples = [{"sourceId": "watch", "sourceRecordId": f"{u}-{i:05d}-{uuid.UUID(int=i * 7919 + u).hex}",
                "metric": "steps",
                "startAt": f"2024-06-{1 + i // 144:02d}T{(i % 144) // 6:02d}:{(i % 6) * 10:02d}:00Z",
                "endAt": f"2024-06-{1 + i // 144:02d}T{(i % 144) // 6:02d}:{(i % 6) * 10 + 9:02d}:00Z",
                "value": 10 + i % 50, "unit": "count", "sourceClass": "watch"} for i in range(0, 3000, 6)]
    return json.dumps({"requestId": request_id, "userId": f"user-{u}", "samples": samples}).encode()


def written():
    if PID is None:
        return 0
    with open(f"/proc/{PID}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


conn = http.client.HTTPConnection("127.0.0.1", PORT)
for u in range(USERS):
    for b in range(12):
        post(conn, history(u, b))
    post(conn, steps(u, f"first-{u}"))


def resend(u):
    c = http.client.HTTPConnection("127.0.0.1", PORT)
    for r in range(ROUNDS):
        out = post(c, steps(u, f"resend-{u}-{r}"))
        assert out["unchanged"] == 500, out


before, start = written(), time.time()
threads = [threading.Thread(target=resend, args=(u,)) for u in range(USERS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"resend: {USERS * ROUNDS} batches of 500 unchanged samples in {time.time() - start:.2f} s"
      + (f", {(written() - before) / 1048576:.0f} MiB written" if PID else ""))
