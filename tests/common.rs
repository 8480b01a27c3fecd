//! A real vitalflow process for tests: started on an ephemeral port in a temporary data directory,
//! stopped with SIGTERM or killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub client: reqwest::Client,
}

impl Server {
    /// Starts `vitalflow serve` on `data_dir` with extra environment variables.
    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_logging_to(data_dir, env, Stdio::inherit())
    }

    /// As [`Server::start_with`], with the process's log (its stderr) sent to `stderr`.
    pub fn start_logging_to(data_dir: &Path, env: &[(&str, &str)], stderr: impl Into<Stdio>) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitalflow"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers", "2", "--data-dir"])
            .arg(data_dir)
            .env("VITALFLOW_LOG", "warn")
            // Tests load users faster than a phone would; the rate limit has its own test.
            .env("VITALFLOW_USER_RATE", "0")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn vitalflow");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listen line");
        let base = line.trim().rsplit(' ').next().expect("address").to_owned();
        assert!(base.starts_with("http://") || base.starts_with("https://"), "unexpected first line: {line}");
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(120));
        // Over HTTPS the client trusts the test certificate the server was started with.
        if let Some((_, cert)) = env.iter().find(|(k, _)| *k == "VITALFLOW_TLS_CERT_FILE") {
            let pem = std::fs::read(cert).expect("the test certificate");
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("a PEM certificate"));
        }
        let client = client.build().expect("client");
        Server { child: Some(child), base, client }
    }

    pub fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, &[])
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) {
        for _ in 0..1200 {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("vitalflow did not become ready");
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.client.post(self.url(path)).json(body).send().await.expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn sql(&self, sql: &str) -> (u16, Value) {
        self.post("/v1/sql", &json!({ "sql": sql })).await
    }

    /// SQL once every view reflects `epoch`.
    pub async fn sql_at(&self, sql: &str, epoch: u64) -> (u16, Value) {
        self.post("/v1/sql", &json!({ "sql": sql, "minEpoch": epoch, "waitMs": 20000 })).await
    }

    /// SIGTERM, then waits for the process to end; panics, naming the exit code or the signal,
    /// unless it exited with status 0.
    pub fn stop(mut self) {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.child.take().expect("child");
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let status = child.wait().expect("wait for vitalflow");
        assert!(
            status.success(),
            "vitalflow did not exit cleanly on SIGTERM: code {:?}, signal {:?}, core dumped {}",
            status.code(),
            status.signal(),
            status.core_dumped()
        );
    }

    /// SIGKILL: a crash, no chance to flush anything.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// `../shared/datasets/fitabase/` relative to the repository.
pub fn fitabase() -> PathBuf {
    // `cargo test` sets CARGO_MANIFEST_DIR when it runs the tests too; prefer that over the build's.
    let root =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    root.join("../shared/datasets/fitabase")
}

/// A steps sample body with defaults.
pub fn steps(rec: &str, source: &str, start: &str, end: &str, value: f64) -> Value {
    json!({"sourceId": source, "sourceRecordId": rec, "metric": "steps", "startAt": start, "endAt": end,
           "value": value, "unit": "count"})
}

/// A batch-upsert body.
pub fn batch(request_id: &str, user: &str, samples: Vec<Value>) -> Value {
    json!({"requestId": request_id, "userId": user, "samples": samples})
}

pub const UPSERT: &str = "/v1/health/samples/batch-upsert";

impl Server {
    /// Waits up to `timeout` for the process to exit by itself; its exit status, if it did.
    pub fn wait_exit(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `vitalflow serve` on `data_dir` expecting it to fail at startup; returns its exit status
/// (`None` if it was still running after 60 s, then killed) and what it wrote to stderr.
pub fn start_expecting_failure(data_dir: &Path, env: &[(&str, &str)]) -> (Option<std::process::ExitStatus>, String) {
    let log = data_dir.with_extension("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitalflow"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers", "1", "--data-dir"])
        .arg(data_dir)
        .env("VITALFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("stderr file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn vitalflow");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (status, stderr)
}

impl Server {
    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The server's peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }
}
