//! A closed-loop load generator for the server: N clients, each sending its next request as soon as
//! the previous one is answered, for a fixed time. The load test and the serving benchmark both
//! use it, so the numbers in `benches/README.md` and the test's are measured the same way.

use std::time::{Duration, Instant};

use serde::Serialize;

/// What a load run saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub seconds: f64,
    pub requests: usize,
    pub ok: usize,
    /// 4xx other than 429.
    pub client_errors: usize,
    pub busy: usize,
    pub server_errors: usize,
    /// Connection failures and timeouts (no HTTP answer).
    pub transport_errors: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Successful requests per second.
    pub throughput_rps: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} clients, {:.1} s: {} requests ({} ok, {} 4xx, {} 429, {} 5xx, {} transport errors), {:.2} ok/s, latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            self.clients,
            self.seconds,
            self.requests,
            self.ok,
            self.client_errors,
            self.busy,
            self.server_errors,
            self.transport_errors,
            self.throughput_rps,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

/// The `q` quantile (0–1) of sorted values, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `clients` concurrent clients POST `body` to `url` for `duration`; latencies of successful
/// requests only.
pub async fn run_load(
    url: &str,
    body: serde_json::Value,
    clients: usize,
    duration: Duration,
    token: Option<&str>,
) -> LoadReport {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .pool_max_idle_per_host(clients)
        .build()
        .expect("an HTTP client");
    let start = Instant::now();
    let end = start + duration;
    let body = serde_json::to_vec(&body).expect("serialisable");
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (http, url, body, token) =
            (http.clone(), url.to_string(), body.clone(), token.map(str::to_string));
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(Option<u16>, f64)> = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                let mut req = http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(tok) = &token {
                    req = req.bearer_auth(tok);
                }
                let status = match req.send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        Some(s)
                    }
                    Err(_) => None,
                };
                seen.push((status, t.elapsed().as_secs_f64() * 1e3));
            }
            seen
        }));
    }
    let mut report = LoadReport { clients, ..Default::default() };
    let mut latencies = Vec::new();
    for t in tasks {
        for (status, ms) in t.await.unwrap_or_default() {
            report.requests += 1;
            match status {
                Some(200..=299) => {
                    report.ok += 1;
                    latencies.push(ms);
                }
                Some(429) => report.busy += 1,
                Some(400..=499) => report.client_errors += 1,
                Some(_) => report.server_errors += 1,
                None => report.transport_errors += 1,
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    report.p50_ms = quantile(&latencies, 0.50);
    report.p99_ms = quantile(&latencies, 0.99);
    report.max_ms = latencies.last().copied().unwrap_or(f64::NAN);
    report.throughput_rps = report.ok as f64 / report.seconds;
    report
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
