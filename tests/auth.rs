//! Authentication and authorization end to end (docs/security.md): one server in auth mode `jwt`
//! with an HS256 secret and a JWKS of one RS256 and one ES256 key, and every route called with no
//! token, a bad token of each kind, each scope and another user's token. Plus: auth mode `none`
//! refuses a non-loopback address, request ids are per user, and only audit lines name a user.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::{Server, UPSERT, batch, steps, temp_dir};

const SECRET: &str = "an HS256 test secret that is long enough to be accepted";

// Test-only keys (generated for these tests; they protect nothing).
const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDa+hZ+w4mDx48q\n\
oaigAdDvE9eBIvd8rmnJPzLlPSR9IVJJXn/7hzjnVvQvaBnpMw0IZwOuoOT0fl4c\n\
Qz8dAgluZKQZnb33r1ndJdyMs5bhUA3v+EkUVCmLxziKjs1Mkzak9Nk+iHalzI0a\n\
AWQWNaZI8xs18xGLrXYMR1ltyAlLcLy4voy8N0xiXfMITV/xn19+ZP/2ovIH3WnI\n\
eYMx7IAcM+uatSW9l+s9YMZsty7+vr3wZd4bklGIQJYVcktMQJULZG2dDvEOkLgv\n\
2cDo+cs4XBOH33mIeHy/bUqH86DE7sVQNAapKJFxx+5d+4ZPSGYZsQ7IFzC5zjqU\n\
6C/cD1vlAgMBAAECggEATyvinDx4aLPrOF+whwGBGB+VaDRLRMIOr1txPF7J5Y/5\n\
n1tSbI+sbEANE2LRE3aIvMP6GdZEUX2q6w8JL6S/4jDy/+v/diDpHcMFpb18zMPT\n\
9jJPwdDYIJiMAdS1t3z2YdfBABH4y+NUFNXx6PHGyFNVQEE808KIjtHxLHcJnUNf\n\
JPQuP2X121zvxc2IfHKj4cafPzR5GuWwZUimjbFuhjilJBJ4P6UxLNIcf0Zdr1B5\n\
ADyviNN6r1DfomTNkerDXGjMbsbb9Q16oufywzOnsScZ9vnXqDHgorG1JR74ykt5\n\
ViJDN8iIwqqDw/zoHSs8H5jU9g5ylieTbW2t7fudtQKBgQD33vDdbOExZGWhjLEi\n\
MjsDkTwH13Po+l0pVyVK9Hoq7diInnVnpG4S9RP2J/MLwlVFJmqH7jfQcwY27IQu\n\
+epHrSpMOelXa/Gt+mF6rH4YJ0RgR0boOBO1O/RPtcALmQJHJ3lXKz1ht67f1Pxv\n\
8L64zsrYmYgwUMbhdD8SfRSrSwKBgQDiKI+U2EC1+LMr40rta5scKu6COxUlTRWl\n\
VJcFuk7neHWlrmkeSObD1JNe7krtqZ3ma4Ppe9VZwjnVAbT9jhGTPwuLoJX8Ymtb\n\
aEZJuW0zotRbmVH6fYFYzJROA3Sc3HJsOo9j5WFSapPkqhInwIao0lERUeeenfdl\n\
LIhzUfnnjwKBgCYOVpDIfLKmpWvuO+vyJllf3QWfMK6ecds9A/7EFlWs+sfO/FuT\n\
RUsn0Y7Dh29QwOLDCSwhiPQ6FMQuAAVuXWfv0ESvx4GikxKRFJJPFXUD4l2d0+cn\n\
ZO84a0QptXiSX2UpTFnzy5LLLtAy1ScioUWiikZDHEO+wyouPNjL13aNAoGBAIG0\n\
JXSF+cbjVU6sUoKLni+vZ46E+AGmje198Ac27J3P9hkJR/w4bzCMr+BX5d0b1BUc\n\
QFEd1iReQfCpw/VPD0FVfPedJ6fRgiSwTu9lSv28OvI1olB4vkABRGThknWL8Iul\n\
oir2mLQ9r4gLCdKGljQoOpomUSIlEoeR3MfWke59AoGBAMhjXgWPgcozP68OW7En\n\
bB8sa+YVPE1+LBFBLE+QBpsFVIIxzm9ia/+xzDEfHbxO191d4Rmr9hnBwHYkPdco\n\
1hi7qBsc4tT3Ahz+YoonJJvFbKTJxWFdHyURUiy4sRoaEA5qSmg/KCjOOakUXqcY\n\
oLKl4Lm6HtvsnKHo+29/a6z/\n\
-----END PRIVATE KEY-----";
const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA2voWfsOJg8ePKqGooAHQ\n\
7xPXgSL3fK5pyT8y5T0kfSFSSV5/+4c451b0L2gZ6TMNCGcDrqDk9H5eHEM/HQIJ\n\
bmSkGZ29969Z3SXcjLOW4VAN7/hJFFQpi8c4io7NTJM2pPTZPoh2pcyNGgFkFjWm\n\
SPMbNfMRi612DEdZbcgJS3C8uL6MvDdMYl3zCE1f8Z9ffmT/9qLyB91pyHmDMeyA\n\
HDPrmrUlvZfrPWDGbLcu/r698GXeG5JRiECWFXJLTECVC2RtnQ7xDpC4L9nA6PnL\n\
OFwTh995iHh8v21Kh/OgxO7FUDQGqSiRccfuXfuGT0hmGbEOyBcwuc46lOgv3A9b\n\
5QIDAQAB\n\
-----END PUBLIC KEY-----";
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgRgRGsLMZwSityfp2\n\
VBEQiC4JD4DhsirHPvrOAHi59G6hRANCAAREISdGceXXxRkTWOtsKsW5zqIL3dCU\n\
wVQD6AelrEo5m0ffB563H2CFS4nw5lgERKvQVUHbgyWPysmnnULi9hry\n\
-----END PRIVATE KEY-----";
const JWKS: &str = r#"{"keys": [{"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": "2voWfsOJg8ePKqGooAHQ7xPXgSL3fK5pyT8y5T0kfSFSSV5_-4c451b0L2gZ6TMNCGcDrqDk9H5eHEM_HQIJbmSkGZ29969Z3SXcjLOW4VAN7_hJFFQpi8c4io7NTJM2pPTZPoh2pcyNGgFkFjWmSPMbNfMRi612DEdZbcgJS3C8uL6MvDdMYl3zCE1f8Z9ffmT_9qLyB91pyHmDMeyAHDPrmrUlvZfrPWDGbLcu_r698GXeG5JRiECWFXJLTECVC2RtnQ7xDpC4L9nA6PnLOFwTh995iHh8v21Kh_OgxO7FUDQGqSiRccfuXfuGT0hmGbEOyBcwuc46lOgv3A9b5Q", "e": "AQAB"}, {"kty": "EC", "kid": "ec-1", "use": "sig", "crv": "P-256", "x": "RCEnRnHl18UZE1jrbCrFuc6iC93QlMFUA-gHpaxKOZs", "y": "R98HnrcfYIVLifDmWAREq9BVQduDJY_KyaedQuL2GvI"}]}"#;

/// The header of an unsigned token, `{"alg":"none","typ":"JWT"}`, base64url.
const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

fn claims(sub: &str, scope: &str) -> Value {
    json!({"sub": sub, "scope": scope, "iat": now(), "exp": now() + 600})
}

fn sign(claims: &Value, alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn hs256(claims: &Value) -> String {
    sign(claims, Algorithm::HS256, None, &EncodingKey::from_secret(SECRET.as_bytes()).expect("key"))
}

fn rs256(claims: &Value, kid: &str) -> String {
    sign(claims, Algorithm::RS256, Some(kid), &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key"))
}

fn es256(claims: &Value, kid: &str) -> String {
    sign(claims, Algorithm::ES256, Some(kid), &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec key"))
}

/// The same claims with `alg: none` and no signature.
fn alg_none(claims: &Value) -> String {
    let signed = hs256(claims);
    let payload = signed.split('.').nth(1).expect("payload");
    format!("{ALG_NONE_HEADER}.{payload}.")
}

/// A directory holding the secret file and the JWKS file.
fn key_files(dir: &Path) -> (String, String) {
    let secret = dir.join("jwt-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("secret file");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, JWKS).expect("jwks file");
    (secret.display().to_string(), jwks.display().to_string())
}

/// `method path` with an optional bearer token and JSON body: (status, WWW-Authenticate, body).
async fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String, Value) {
    let mut req = match method {
        "GET" => server.client.get(server.url(path)),
        "POST" => server.client.post(server.url(path)),
        "DELETE" => server.client.delete(server.url(path)),
        other => panic!("method {other}"),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let challenge = resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (status, challenge, resp.json().await.unwrap_or(Value::Null))
}

struct Route {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    /// The body, given a unique request id.
    body: Option<fn(&str) -> Value>,
}

const ROUTES: [Route; 8] = [
    Route {
        name: "batch-upsert",
        method: "POST",
        path: UPSERT,
        body: Some(|rid| {
            batch(rid, "u1", vec![steps(rid, "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:01:00Z", 10.0)])
        }),
    },
    Route {
        name: "domain changes",
        method: "POST",
        path: "/v1/domain/changes",
        body: Some(|rid| {
            json!({"requestId": rid, "changes": [{"entity": "product", "op": "upsert",
                   "data": {"productId": "p1", "name": "Espresso", "category": "coffee"}}]})
        }),
    },
    Route {
        name: "profile",
        method: "POST",
        path: "/v1/users/u1/profile",
        body: Some(|_| json!({"timeZone": "Europe/Berlin"})),
    },
    Route { name: "per-user read", method: "GET", path: "/v1/users/u1/daily-rollups", body: None },
    Route { name: "sql", method: "POST", path: "/v1/sql", body: Some(|_| json!({"sql": "SELECT 1 AS one"})) },
    Route { name: "frontiers", method: "GET", path: "/v1/frontiers", body: None },
    Route { name: "healthz", method: "GET", path: "/healthz", body: None },
    Route { name: "readyz", method: "GET", path: "/readyz", body: None },
];

/// One caller of the matrix and the status it gets on each route, in the order of `ROUTES`.
struct Who {
    name: &'static str,
    token: Option<String>,
    expect: [u16; 8],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_caller_as_its_scopes_allow() {
    let dir = temp_dir();
    let keys = temp_dir();
    let (secret, jwks) = key_files(keys.path());
    let server = Server::start_with(
        dir.path(),
        &[("VITALFLOW_AUTH_JWT_SECRET_FILE", secret.as_str()), ("VITALFLOW_AUTH_JWKS_FILE", jwks.as_str())],
    );
    server.ready().await;

    let u1 = claims("u1", "health:write health:read");
    let mut expired = claims("u1", "health:write health:read analytics backend ops");
    expired["exp"] = json!(now() - 3600);
    let mut early = claims("u1", "health:write health:read analytics backend ops");
    early["nbf"] = json!(now() + 3600);
    let all = "health:write health:read analytics backend ops";
    let other_key = sign(
        &claims("u1", all),
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another secret of thirty-two bytes or more").expect("key"),
    );
    // Algorithm confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let confused = sign(
        &claims("u1", all),
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).expect("key"),
    );
    let minted = Command::new(env!("CARGO_BIN_EXE_vitalflow"))
        .args(["token", "--secret-file", &secret, "--sub", "u1", "--scope", "health:read", "--ttl", "5m"])
        .output()
        .expect("vitalflow token");
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let minted = String::from_utf8(minted.stdout).expect("utf-8").trim().to_owned();

    const U: u16 = 401;
    const F: u16 = 403;
    //            upsert domain profile read  sql  front healthz readyz
    let callers = [
        Who { name: "no token", token: None, expect: [U, U, U, U, U, U, 200, 200] },
        Who { name: "expired", token: Some(hs256(&expired)), expect: [U, U, U, U, U, U, 200, 200] },
        Who { name: "not yet valid", token: Some(hs256(&early)), expect: [U, U, U, U, U, U, 200, 200] },
        Who { name: "another key", token: Some(other_key), expect: [U, U, U, U, U, U, 200, 200] },
        Who { name: "alg none", token: Some(alg_none(&claims("u1", all))), expect: [U, U, U, U, U, U, 200, 200] },
        Who { name: "HS256 with the RSA key", token: Some(confused), expect: [U, U, U, U, U, U, 200, 200] },
        Who {
            name: "RS256 by the EC kid",
            token: Some(rs256(&claims("u1", all), "ec-1")),
            expect: [U, U, U, U, U, U, 200, 200],
        },
        Who { name: "garbage", token: Some("not.a.jwt".into()), expect: [U, U, U, U, U, U, 200, 200] },
        Who {
            name: "health:write u1",
            token: Some(hs256(&claims("u1", "health:write"))),
            expect: [200, F, 200, F, F, F, 200, 200],
        },
        Who {
            name: "health:read u1",
            token: Some(hs256(&claims("u1", "health:read"))),
            expect: [F, F, F, 200, 200, F, 200, 200],
        },
        Who {
            name: "backend",
            token: Some(hs256(&claims("svc", "backend"))),
            expect: [200, 200, 200, F, F, F, 200, 200],
        },
        Who {
            name: "analytics",
            token: Some(hs256(&claims("a", "analytics"))),
            expect: [F, F, F, 200, 200, F, 200, 200],
        },
        Who { name: "ops", token: Some(hs256(&claims("o", "ops"))), expect: [F, F, F, F, F, 200, 200, 200] },
        Who { name: "no scope", token: Some(hs256(&claims("u1", ""))), expect: [F, F, F, F, F, F, 200, 200] },
        // u2's own read rights give SQL over u2's rows, nothing of u1.
        Who {
            name: "u2 (another user)",
            token: Some(hs256(&claims("u2", "health:write health:read"))),
            expect: [F, F, F, F, 200, F, 200, 200],
        },
        Who { name: "RS256 u1", token: Some(rs256(&u1, "rsa-1")), expect: [200, F, 200, 200, 200, F, 200, 200] },
        Who { name: "ES256 u1", token: Some(es256(&u1, "ec-1")), expect: [200, F, 200, 200, 200, F, 200, 200] },
        Who { name: "token subcommand", token: Some(minted), expect: [F, F, F, 200, 200, F, 200, 200] },
    ];
    let mut failures = Vec::new();
    for (ci, who) in callers.iter().enumerate() {
        for (ri, route) in ROUTES.iter().enumerate() {
            let body = route.body.map(|b| b(&format!("m-{ci}-{ri}")));
            let (status, challenge, resp) =
                call(&server, route.method, route.path, who.token.as_deref(), body.as_ref()).await;
            if status != who.expect[ri] {
                failures
                    .push(format!("{} on {}: {status}, expected {} ({resp})", who.name, route.name, who.expect[ri]));
                continue;
            }
            match status {
                401 => {
                    let expected = if who.token.is_some() { "Bearer error=\"invalid_token\"" } else { "Bearer" };
                    if challenge != expected || resp["code"] != "UNAUTHENTICATED" {
                        failures.push(format!("{} on {}: challenge '{challenge}', body {resp}", who.name, route.name));
                    }
                }
                403 if resp["code"] != "FORBIDDEN" => {
                    failures.push(format!("{} on {}: body {resp}", who.name, route.name))
                }
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_belong_to_their_user_and_forbidden_writes_leave_nothing() {
    let dir = temp_dir();
    let keys = temp_dir();
    let (secret, _) = key_files(keys.path());
    let server = Server::start_with(dir.path(), &[("VITALFLOW_AUTH_JWT_SECRET_FILE", secret.as_str())]);
    server.ready().await;
    let a = hs256(&claims("user-a", "health:write"));
    let b = hs256(&claims("user-b", "health:write"));
    let sample = |rec: &str, v: f64| steps(rec, "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:01:00Z", v);

    // B uses "shared" first, with two samples.
    let b_body = batch("shared", "user-b", vec![sample("r1", 1.0), sample("r2", 2.0)]);
    let (status, _, b_resp) = call(&server, "POST", UPSERT, Some(&b), Some(&b_body)).await;
    assert_eq!((status, b_resp["accepted"].as_u64()), (200, Some(2)), "{b_resp}");
    // A reusing B's requestId for its own data: neither B's response replayed nor a conflict.
    let a_body = batch("shared", "user-a", vec![sample("r9", 9.0)]);
    let (status, _, a_resp) = call(&server, "POST", UPSERT, Some(&a), Some(&a_body)).await;
    assert_eq!(status, 200, "{a_resp}");
    assert_eq!((a_resp["accepted"].as_u64(), a_resp["replayed"].as_bool()), (Some(1), Some(false)), "{a_resp}");
    assert_ne!(a_resp["epoch"], b_resp["epoch"]);
    // A cannot replay (or read the outcome of) B's request by naming B's user.
    let (status, _, resp) = call(&server, "POST", UPSERT, Some(&a), Some(&b_body)).await;
    assert_eq!((status, resp["code"].as_str()), (403, Some("FORBIDDEN")), "{resp}");
    let (status, _, again) = call(&server, "POST", UPSERT, Some(&b), Some(&b_body)).await;
    assert_eq!(
        (status, again["replayed"].as_bool(), again["epoch"].clone()),
        (200, Some(true), b_resp["epoch"].clone())
    );

    // A forbidden batch is refused before the writer: its requestId is not recorded for user-b,
    // so B can use it with another payload.
    let forbidden = batch("unused", "user-b", vec![sample("x", 5.0)]);
    assert_eq!(call(&server, "POST", UPSERT, Some(&a), Some(&forbidden)).await.0, 403);
    let own = batch("unused", "user-b", vec![sample("y", 6.0)]);
    let (status, _, resp) = call(&server, "POST", UPSERT, Some(&b), Some(&own)).await;
    assert_eq!((status, resp["replayed"].as_bool(), resp["accepted"].as_u64()), (200, Some(false), Some(1)), "{resp}");
    server.stop();
}

/// Runs `vitalflow serve` with `args` and `env` (no auth variables inherited), returning its exit
/// status and stderr, or `None` if it is still running after `within`.
fn run_briefly(args: &[&str], env: &[(&str, &str)], within: Duration) -> Option<(bool, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitalflow"));
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("VITALFLOW_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn vitalflow");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("stderr");
            return Some((status.success(), err));
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn auth_none_refuses_a_non_loopback_address() {
    let dir = temp_dir();
    let data = dir.path().display().to_string();
    let (ok, stderr) =
        run_briefly(&["serve", "--listen", "0.0.0.0:0", "--data-dir", &data], &[], Duration::from_secs(30))
            .expect("vitalflow must refuse to start, not serve");
    assert!(!ok, "non-zero exit");
    assert!(stderr.contains("without authentication") && stderr.contains("VITALFLOW_AUTH_JWT_SECRET_FILE"), "{stderr}");
    // An explicit mode none does not get around it either.
    let (ok, _) = run_briefly(
        &["serve", "--listen", "[::]:0", "--data-dir", &data],
        &[("VITALFLOW_AUTH_MODE", "none")],
        Duration::from_secs(30),
    )
    .expect("refused");
    assert!(!ok);
    // A secret too short for HS256 is refused too.
    let keys = temp_dir();
    let short = keys.path().join("short");
    std::fs::write(&short, "tooshort").expect("write");
    let (ok, stderr) = run_briefly(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--auth-jwt-secret-file",
            &short.display().to_string(),
        ],
        &[],
        Duration::from_secs(30),
    )
    .expect("refused");
    assert!(!ok && stderr.contains("at least 32"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_audit_lines_name_a_user() {
    let dir = temp_dir();
    let keys = temp_dir();
    let (secret, _) = key_files(keys.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitalflow"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1", "--data-dir"])
        .arg(dir.path())
        // vitalflow's own crates at debug: none of their lines may name a user. DataFusion's and
        // sqlparser's debug output prints query plans, literals included, so it is capped at info
        // even when asked for by a more specific target (docs/security.md).
        .env(
            "VITALFLOW_LOG",
            "info,vitalflow=debug,vitalflow_ingest=debug,vitalflow_serve=debug,vitalflow_dataflows=debug,\
             sqlparser::parser=debug,datafusion_optimizer=trace,datafusion=debug",
        )
        .env("VITALFLOW_AUTH_JWT_SECRET_FILE", &secret)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (lines, stderr) = (lines.clone(), child.stderr.take().expect("stderr"));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        })
    };
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("listen line");
    let base = first.trim().rsplit(' ').next().expect("address").to_owned();
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let user = "user-7f3a9c";
    let token = hs256(&claims(user, "health:write health:read"));
    let body = batch("audit-1", user, vec![steps("r1", "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:01:00Z", 3.0)]);
    let r = client.post(format!("{base}{UPSERT}")).bearer_auth(&token).json(&body).send().await.expect("upsert");
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{base}/v1/users/{user}/profile"))
        .bearer_auth(&token)
        .json(&json!({"timeZone": "UTC"}))
        .send()
        .await
        .expect("profile");
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{base}/v1/sql"))
        .bearer_auth(&token)
        .json(&json!({"sql": "SELECT 'secret-literal' AS x"}))
        .send()
        .await
        .expect("sql");
    assert!(r.status().is_success(), "{}", r.status());
    let r = client.get(format!("{base}/v1/users/{user}/daily-rollups")).send().await.expect("unauthenticated read");
    assert_eq!(r.status(), 401);
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert!(child.wait().expect("wait").success());
    reader.join().expect("reader");
    let lines = lines.lock().expect("lines");
    // The audit target as the fmt layer prints it: `INFO audit: api call subject=…`.
    let is_audit = |l: &str| l.contains(" audit:");
    let audit: Vec<&String> = lines.iter().filter(|l| is_audit(l)).collect();
    assert!(
        audit.iter().any(|l| l.contains(user)
            && l.contains("/v1/health/samples/batch-upsert")
            && l.contains("audit-1")
            && l.contains("status=200")),
        "{audit:#?}"
    );
    assert!(audit.iter().any(|l| l.contains("/v1/users/{user_id}/profile")), "route templates, not paths: {audit:#?}");
    assert!(audit.iter().any(|l| l.contains("/v1/sql")), "{audit:#?}");
    let leaks: Vec<&String> =
        lines.iter().filter(|l| (l.contains(user) && !is_audit(l)) || l.contains("secret-literal")).collect();
    assert!(leaks.is_empty(), "log lines naming the user or SQL text outside audit lines: {leaks:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_a_jwks_url() {
    // The identity provider: a JWKS document over HTTP on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route("/.well-known/jwks.json", axum::routing::get(|| async { JWKS }));
    let provider = tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = temp_dir();
    let server = Server::start_with(dir.path(), &[("VITALFLOW_AUTH_JWKS_URL", url.as_str())]);
    server.ready().await;
    let read = "/v1/users/u1/daily-rollups";
    let u1 = claims("u1", "health:read");
    assert_eq!(call(&server, "GET", read, Some(&rs256(&u1, "rsa-1")), None).await.0, 200);
    assert_eq!(call(&server, "GET", read, Some(&es256(&u1, "ec-1")), None).await.0, 200);
    // No secret is configured: HS256 is refused, whatever it is signed with.
    assert_eq!(call(&server, "GET", read, Some(&hs256(&u1)), None).await.0, 401);
    server.stop();
    provider.abort();
}

/// The JWKS document with only the keys whose `kid` is in `kids`.
fn jwks_with(kids: &[&str]) -> String {
    let all: Value = serde_json::from_str(JWKS).expect("JWKS");
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.iter().any(|kid| k["kid"] == json!(kid)))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}

/// The provider rotates its keys: a periodic refresh picks the new key up and drops the old one;
/// a refresh that fails keeps the keys the server has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_refresh_follows_a_key_rotation_and_survives_a_failed_fetch() {
    // The provider's current answer: a JWKS document, or `None` for a 500. Counts its fetches.
    let document: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(Some(jwks_with(&["rsa-1"]))));
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().expect("addr"));
    let (doc, count) = (document.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let (doc, count) = (doc.clone(), count.clone());
            async move {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match doc.lock().expect("lock").clone() {
                    Some(d) => (axum::http::StatusCode::OK, d),
                    None => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                }
            }
        }),
    );
    let provider = tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = temp_dir();
    let server = Server::start_with(
        dir.path(),
        &[("VITALFLOW_AUTH_JWKS_URL", url.as_str()), ("VITALFLOW_AUTH_JWKS_REFRESH_SECS", "10")],
    );
    server.ready().await;
    let read = "/v1/users/u1/daily-rollups";
    let u1 = claims("u1", "health:read");
    let (old_key, new_key) = (rs256(&u1, "rsa-1"), es256(&u1, "ec-1"));
    assert_eq!(call(&server, "GET", read, Some(&old_key), None).await.0, 200);
    assert_eq!(call(&server, "GET", read, Some(&new_key), None).await.0, 401, "ec-1 is not published yet");

    // Rotation: the provider now publishes ec-1 only.
    *document.lock().expect("lock") = Some(jwks_with(&["ec-1"]));
    let start = Instant::now();
    while call(&server, "GET", read, Some(&new_key), None).await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(90), "the rotated key was never picked up");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(call(&server, "GET", read, Some(&old_key), None).await.0, 401, "the dropped key still verifies");

    // The provider fails: once a refresh has hit the failure, the keys are still the last good ones.
    *document.lock().expect("lock") = None;
    let seen = fetches.load(std::sync::atomic::Ordering::SeqCst);
    let start = Instant::now();
    while fetches.load(std::sync::atomic::Ordering::SeqCst) <= seen {
        assert!(start.elapsed() < Duration::from_secs(90), "no refresh after the provider failed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(call(&server, "GET", read, Some(&new_key), None).await.0, 200, "a failed refresh dropped the keys");
    server.stop();
    provider.abort();
}
