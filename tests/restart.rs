//! Recovery: a crash (SIGKILL) in the middle of an upload keeps every acknowledged batch; after the
//! restart the views, the epochs and request idempotency carry on as if nothing happened.

use std::collections::BTreeMap;

use serde_json::json;

use crate::common::{Server, UPSERT, temp_dir};
use crate::fitbit::{batches, daily_sums, hourly, read_days};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_upload_keeps_every_acknowledged_batch() {
    let dir = temp_dir();
    let steps: Vec<_> = hourly("hourlySteps_merged.csv").into_iter().filter(|(u, _, _)| u.as_str() < "5").collect();
    let bodies = batches(&steps, "steps", "count", "rs");
    assert!(bodies.len() > 10);
    let half = bodies.len() / 2;

    let server = Server::start(dir.path());
    server.ready().await;
    let mut acked = BTreeMap::new();
    for b in &bodies[..half] {
        let (status, resp) = server.post(UPSERT, b).await;
        assert_eq!(status, 200);
        acked.insert(b["requestId"].as_str().unwrap_or("").to_owned(), resp);
    }
    // One more request in flight when the process dies.
    let (client, url, body) = (server.client.clone(), server.url(UPSERT), bodies[half].clone());
    let in_flight = tokio::spawn(async move { client.post(url).json(&body).send().await });
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let last_acked = acked.values().filter_map(|r| r["epoch"].as_u64()).max().unwrap_or(0);
    server.kill();
    let _ = in_flight.await;

    let server = Server::start(dir.path());
    server.ready().await;
    let (_, frontiers) = server.get("/v1/frontiers").await;
    assert!(frontiers["latestEpoch"].as_u64().unwrap_or(0) >= last_acked, "epochs never go back");
    for view in frontiers["views"].as_array().expect("views") {
        assert!(view["asOfEpoch"].as_u64().unwrap_or(0) >= last_acked, "ready means recovered: {view}");
    }
    // Every acknowledged batch is there: replaying one returns the stored response.
    for b in &bodies[..half] {
        let (status, resp) = server.post(UPSERT, b).await;
        assert_eq!(status, 200);
        assert_eq!(resp["replayed"], json!(true));
        let mut original = acked[b["requestId"].as_str().unwrap_or("")].clone();
        original["replayed"] = json!(true);
        assert_eq!(resp, original, "the stored response, replayed");
    }
    // A changed payload under an acknowledged key is still refused.
    let mut changed = bodies[0].clone();
    changed["samples"][0]["value"] = json!(123_456);
    assert_eq!(server.post(UPSERT, &changed).await.0, 409);

    // Finish the upload (the in-flight batch may or may not have committed: either is fine).
    let mut last_epoch = 0;
    for b in &bodies[half..] {
        let (status, resp) = server.post(UPSERT, b).await;
        assert_eq!(status, 200);
        last_epoch = last_epoch.max(resp["epoch"].as_u64().unwrap_or(0));
    }
    assert!(last_epoch > last_acked);
    let want = daily_sums(&steps);
    let users: std::collections::BTreeSet<&String> = want.keys().map(|(u, _)| u).collect();
    let mut before_restart = BTreeMap::new();
    for user in &users {
        let (_, got) = read_days(&server, user, "steps", last_epoch).await;
        for ((u, d), v) in want.iter().filter(|((u, _), _)| u == *user) {
            let (sum, _) = got[d.as_str()];
            assert!((sum - v).abs() <= 1e-9 * v.max(1.0), "{u} {d}: {sum} vs {v}");
        }
        before_restart.insert((*user).clone(), got);
    }

    // A clean restart gives identical views.
    server.stop();
    let server = Server::start(dir.path());
    server.ready().await;
    for user in &users {
        let (body, got) = read_days(&server, user, "steps", last_epoch).await;
        assert_eq!(body["pending"], json!(false));
        assert_eq!(&got, &before_restart[*user], "views identical after restart");
    }
    server.stop();
}
