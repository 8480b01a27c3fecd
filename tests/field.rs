//! The field regression suite: every `tests/field/*.json` case (format in `tests/field/README.md`)
//! is sent to one real server, and every read it lists is checked over HTTP or SQL. Each case is a
//! pitfall that real health data has shown (double counting, day boundaries, units, sleep
//! attribution); the expected numbers are worked out by hand from DOMAIN.md in the file itself.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::{Server, temp_dir};

/// `tests/field/` of the package under test (`cargo test` sets CARGO_MANIFEST_DIR at run time too).
fn field_dir() -> PathBuf {
    let root =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    root.join("tests/field")
}

/// Every case file, in name order.
fn case_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(field_dir())
        .expect("tests/field/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// G4's float tolerance: `1e-9 × max(1, |x|)`.
fn same_number(want: f64, got: f64) -> bool {
    (want - got).abs() <= 1e-9 * want.abs().max(1.0)
}

/// Compares `got` rows with `want` rows: same number, in order; each field named in a wanted row
/// must match (numbers within tolerance); fields a wanted row leaves out are not checked.
fn compare_rows(want: &[Value], got: &[Value]) -> Result<(), String> {
    if want.len() != got.len() {
        return Err(format!("{} rows wanted, {} read: {}", want.len(), got.len(), Value::from(got.to_vec())));
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let fields = w.as_object().ok_or_else(|| format!("wanted row {i} is not an object"))?;
        for (name, wv) in fields {
            let gv = g.get(name).unwrap_or(&Value::Null);
            let ok = match (wv.as_f64(), gv.as_f64()) {
                (Some(a), Some(b)) => same_number(a, b),
                _ => wv == gv,
            };
            if !ok {
                return Err(format!("row {i}, field {name}: wanted {wv}, read {gv} (row {g})"));
            }
        }
    }
    Ok(())
}

fn text<'a>(v: &'a Value, key: &str, file: &Path) -> &'a str {
    v[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("{}: `{key}` must be a non-empty string", file.display()))
}

/// Sends one case's requests and makes its reads; returns the failures, each naming the case.
async fn run_case(server: &Server, file: &Path, case: &Value) -> Vec<String> {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let user = text(case, "userId", file);
    text(case, "faultClass", file);
    text(case, "comment", file);
    let fill = |s: &str| s.replace("{userId}", user);
    let mut failures = Vec::new();
    let mut epoch = 0_u64;
    for (i, req) in case["requests"].as_array().expect("`requests` is an array").iter().enumerate() {
        let path = fill(text(req, "path", file));
        let body = &req["body"];
        if let Some(u) = body.get("userId") {
            assert_eq!(u, &json!(user), "{name}: request {i} is for another user than the case's");
        }
        let (status, resp) = server.post(&path, body).await;
        if status != 200 {
            failures.push(format!("{name}: request {i} answered {status}: {resp}"));
            continue;
        }
        let want_rejected = req.get("expectRejected").cloned().unwrap_or_else(|| json!([]));
        let rejected: Vec<Value> = resp["rejected"]
            .as_array()
            .map(|a| a.iter().map(|r| json!({"index": r["index"], "code": r["code"]})).collect())
            .unwrap_or_default();
        if Value::from(rejected.clone()) != want_rejected {
            failures.push(format!("{name}: request {i} rejected {rejected:?}, wanted {want_rejected}"));
        }
        epoch = epoch.max(resp["epoch"].as_u64().unwrap_or(0));
    }
    for (i, check) in case["checks"].as_array().expect("`checks` is an array").iter().enumerate() {
        text(check, "arithmetic", file);
        let want = check["rows"].as_array().unwrap_or_else(|| panic!("{name}: check {i} has no `rows`"));
        let got = if let Some(path) = check["http"].as_str() {
            let path = fill(path);
            let sep = if path.contains('?') { '&' } else { '?' };
            let (status, body) = server.get(&format!("{path}{sep}minEpoch={epoch}&waitMs=20000")).await;
            if status != 200 || body["pending"] != json!(false) {
                failures.push(format!("{name}: check {i} GET {path} answered {status}: {body}"));
                continue;
            }
            body["rows"].clone()
        } else if let Some(sql) = check["sql"].as_str() {
            let (status, body) = server.sql_at(&fill(sql), epoch).await;
            if status != 200 {
                failures.push(format!("{name}: check {i} SQL answered {status}: {body}"));
                continue;
            }
            body["rows"].clone()
        } else {
            panic!("{name}: check {i} has neither `http` nor `sql`");
        };
        if let Err(e) = compare_rows(want, got.as_array().map_or(&[], Vec::as_slice)) {
            failures.push(format!("{name}: check {i} ({}): {e}", check["arithmetic"]));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_cases_hold_over_http_and_sql() {
    let files = case_files();
    assert!(!files.is_empty(), "no cases in {}", field_dir().display());
    let cases: Vec<(PathBuf, Value)> = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let case = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (f, case)
        })
        .collect();
    // One server for every case, so each case has its own user.
    let mut users: Vec<&str> = cases.iter().map(|(f, c)| text(c, "userId", f)).collect();
    users.sort_unstable();
    let before = users.len();
    users.dedup();
    assert_eq!(users.len(), before, "two field cases share a userId");

    let dir = temp_dir();
    let server = Server::start(dir.path());
    server.ready().await;
    let mut failures = Vec::new();
    for (file, case) in &cases {
        failures.extend(run_case(&server, file, case).await);
    }
    assert!(failures.is_empty(), "{} field check(s) failed:\n{}", failures.len(), failures.join("\n"));
    server.stop();
}
