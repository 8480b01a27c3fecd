mod common;
use std::time::{Duration, Instant};
use vitalflow_serve::ServeConfig;
use vitalflow_serve::sql::SqlLimits;
#[tokio::test]
async fn chain_timing() {
    let limits = SqlLimits { timeout: Duration::from_secs(120), ..SqlLimits::default() };
    let app = common::router(ServeConfig { sql: limits, sql_timeout: Duration::from_secs(120), ..ServeConfig::default() });
    let shape = std::env::var("SHAPE").unwrap();
    for n in [100, 250, 500, 750, 1000, 2000] {
        let sql = match shape.as_str() {
            "from" => format!("SELECT count(*) FROM {}", (0..n).map(|i| format!("products p{i}")).collect::<Vec<_>>().join(", ")),
            "join" => format!("SELECT count(*) FROM products p0 {}", (1..n).map(|i| format!("JOIN products p{i} ON p{i}.product_id = p0.product_id")).collect::<Vec<_>>().join(" ")),
            "union" => (0..n).map(|_| "SELECT 1 AS x".to_owned()).collect::<Vec<_>>().join(" UNION ALL "),
            "cte" => { let mut s = "WITH c0 AS (SELECT 1 AS x)".to_owned(); for i in 1..n { s += &format!(", c{i} AS (SELECT x FROM c{})", i-1); } s + &format!(" SELECT * FROM c{}", n-1) }
            "case" => format!("SELECT {} 1 {} AS x", "CASE WHEN true THEN ".repeat(n).as_str(), " END".repeat(n)),
            "in" => format!("SELECT count(*) FROM steps WHERE steps IN ({})", (0..n*10).map(|i| i.to_string()).collect::<Vec<_>>().join(",")),
            "plus" => format!("SELECT 1{} AS x", "+1".repeat(n)),
            _ => panic!(),
        };
        eprintln!("{shape} {n}: start ({} bytes)", sql.len());
        let t = Instant::now();
        let (status, body) = common::query(&app, &sql).await;
        eprintln!("{shape} {n}: {status} {:?} {}", t.elapsed(), body["code"]);
    }
}
