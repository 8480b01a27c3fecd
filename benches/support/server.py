"""Shared pieces of the benches/support/*.py scripts: a vitalflow server to drive, JSON over HTTP.

`Server(binary, port, data)` wipes the data directory `data`, starts
`BINARY serve --data-dir DATA --listen 127.0.0.1:PORT` (output discarded, or with `log=True`
written to `DATA.log`, which lies outside the data directory and is not wiped), and offers:

- `wait_ready(tries)`: polls `/readyz` every 0.2 s, at most `tries` times; returns whether it
  answered (the scripts go on either way);
- `post(path, body)` and `get(path)`: JSON in and out over urllib, each request with `timeout`
  seconds; with `busy_retries=N`, `post` retries an HTTP 429 or 503 every 0.2 s, N tries in all
  (and returns None if every one was refused);
- `status_kb()`: VmHWM and VmRSS from /proc/PID/status (KiB, in the file's order: peak, then
  current); `rss_kb()` the same values as a list, `rss_mb()` as a dict in MB (KiB // 1024);
- `cpu_s()`: the server's user + system CPU seconds;
- `stop(kill=False)`: SIGTERM (or SIGKILL) and wait.

`iso(ms)` formats epoch milliseconds as UTC ISO 8601 with milliseconds (`...T12:00:00.000Z`);
`iso(ms, millis=False)` without them (`...T12:00:00Z`).

Plain stdlib; the scripts import it with `sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))`.
"""
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request


def iso(ms, millis=True):
    """UTC ISO 8601 of epoch milliseconds `ms`; with `millis=False` the milliseconds are dropped."""
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return s + (f".{ms % 1000:03d}Z" if millis else "Z")


class Server:
    """A vitalflow server on 127.0.0.1:PORT over a freshly wiped data directory (see the module docstring)."""

    def __init__(self, binary, port, data, log=False, timeout=900, busy_retries=0):
        self.base = f"http://127.0.0.1:{port}"
        self.timeout = timeout
        self.busy_retries = busy_retries
        shutil.rmtree(data, ignore_errors=True)
        if log:
            with open(data + ".log", "w") as out:
                self.proc = subprocess.Popen([binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                                             stdout=out, stderr=subprocess.STDOUT)
        else:
            self.proc = subprocess.Popen([binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def post(self, path, body):
        req = urllib.request.Request(self.base + path, json.dumps(body).encode(), {"content-type": "application/json"})
        for _ in range(max(self.busy_retries, 1)):
            try:
                return json.load(urllib.request.urlopen(req, timeout=self.timeout))
            except urllib.error.HTTPError as e:
                if not self.busy_retries or e.code not in (429, 503):
                    raise
                time.sleep(0.2)
        return None

    def get(self, path):
        return json.load(urllib.request.urlopen(self.base + path, timeout=self.timeout))

    def wait_ready(self, tries=100):
        for _ in range(tries):
            try:
                self.get("/readyz")
                return True
            except Exception:
                time.sleep(0.2)
        return False

    def status_kb(self):
        d = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM")):
                    d[line.split(":")[0]] = int(line.split()[1])
        return d

    def rss_kb(self):
        return list(self.status_kb().values())

    def rss_mb(self):
        return {k: v // 1024 for k, v in self.status_kb().items()}

    def cpu_s(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().split(")")[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, kill=False):
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait()
