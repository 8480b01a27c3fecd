//! Issue 14 §5: `pending` never lies. A read right after an acknowledged upload either reflects it
//! (`pending: false`, `asOfEpoch` at or past the upload's epoch, the sample counted) or says it
//! does not yet (`pending: true`, `asOfEpoch` before it); a read that waits for the epoch reflects
//! it.

use serde_json::json;

use crate::common::{Server, UPSERT, batch, steps, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_is_true_until_accepted_input_is_visible() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    server.ready().await;
    let (mut pending_seen, mut last) = (0, 0);
    for i in 0..40_u32 {
        let start = format!("2024-03-01T10:{i:02}:00Z");
        let end = format!("2024-03-01T10:{i:02}:30Z");
        let body = batch(&format!("fresh-{i}"), "u-fresh", vec![steps(&format!("r{i}"), "watch", &start, &end, 1.0)]);
        let (status, ack) = server.post(UPSERT, &body).await;
        assert_eq!(status, 200, "{ack}");
        let epoch = ack["epoch"].as_u64().expect("epoch");
        last = epoch;
        let (status, read) = server.get("/v1/users/u-fresh/daily-rollups?metric=steps").await;
        assert_eq!(status, 200, "{read}");
        let as_of = read["asOfEpoch"].as_u64().expect("asOfEpoch");
        let count: i64 = read["rows"].as_array().expect("rows").iter().filter_map(|r| r["count"].as_i64()).sum();
        if read["pending"] == json!(false) {
            assert!(as_of >= epoch, "not pending, yet asOfEpoch {as_of} < the upload's epoch {epoch}: {read}");
            assert_eq!(count, i64::from(i) + 1, "not pending, yet the upload is missing: {read}");
        } else {
            assert_eq!(read["pending"], json!(true), "{read}");
            assert!(as_of < epoch, "pending, yet asOfEpoch {as_of} already covers epoch {epoch}: {read}");
            pending_seen += 1;
        }
    }
    let (status, read) =
        server.get(&format!("/v1/users/u-fresh/daily-rollups?metric=steps&minEpoch={last}&waitMs=20000")).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["pending"], json!(false), "{read}");
    let count: i64 = read["rows"].as_array().expect("rows").iter().filter_map(|r| r["count"].as_i64()).sum();
    assert_eq!(count, 40, "{read}");
    // How often a read beat the views is timing, not asserted; it shows the test saw both cases.
    eprintln!("pending seen in {pending_seen} of 40 immediate reads");
}
