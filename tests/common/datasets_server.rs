//! A loopback stand-in for the Hugging Face datasets server (`/splits`, `/rows`), serving
//! datasets given as JSON, with injected failures (429 with `Retry-After`, 5xx) at chosen request
//! numbers. It records each request's path and `Authorization` header, and stops after
//! `max_requests` so no test can loop forever.

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// A failure answered instead of the real reply at request number `at` (1-based).
#[derive(Clone)]
pub struct Fault {
    pub at: usize,
    pub status: u16,
    pub retry_after: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
}

pub struct FakeDatasetsServer {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeDatasetsServer {
    pub fn paths(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|s| s.path.clone()).collect()
    }
}

/// `datasets`: `{name: {config: {split: {"features": [...], "rows": [{...}, ...]}}}}`.
fn answer(datasets: &Value, path: &str) -> (u16, Value) {
    let url = reqwest::Url::parse(&format!("http://fake{path}")).unwrap();
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let Some(ds) = q.get("dataset").and_then(|d| datasets.get(d)) else {
        return (404, json!({"error": "The dataset does not exist on the Hub."}));
    };
    match url.path() {
        "/splits" => {
            let mut splits = Vec::new();
            for (config, s) in ds.as_object().unwrap() {
                for split in s.as_object().unwrap().keys() {
                    splits.push(json!({"dataset": q["dataset"], "config": config, "split": split}));
                }
            }
            (200, json!({"splits": splits, "pending": [], "failed": []}))
        }
        "/rows" => {
            let Some(split) = q
                .get("config")
                .and_then(|c| ds.get(c))
                .and_then(|c| q.get("split").and_then(|s| c.get(s)))
            else {
                return (404, json!({"error": "Not found."}));
            };
            let offset: usize = q.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
            let length: usize = q.get("length").and_then(|o| o.parse().ok()).unwrap_or(100);
            if length > 100 {
                return (422, json!({"error": "Parameter 'length' must not be greater than 100"}));
            }
            let rows = split["rows"].as_array().unwrap();
            let page: Vec<Value> = rows
                .iter()
                .enumerate()
                .skip(offset)
                .take(length)
                .map(|(i, r)| json!({"row_idx": i, "row": r, "truncated_cells": []}))
                .collect();
            (
                200,
                json!({"features": split["features"], "rows": page, "num_rows_total": rows.len(), "num_rows_per_page": 100, "partial": false}),
            )
        }
        _ => (404, json!({"error": "Not found."})),
    }
}

pub fn fake_datasets_server(
    datasets: Value,
    faults: Vec<Fault>,
    max_requests: usize,
) -> FakeDatasetsServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().take(max_requests).enumerate() {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let head = super::read_request_head(&mut stream);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let authorization = head.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.trim().to_string())
            });
            log.lock().unwrap().push(Seen { path: path.clone(), authorization });
            let (status, body, extra) = match faults.iter().find(|f| f.at == n + 1) {
                Some(f) => (
                    f.status,
                    json!({"error": "injected failure"}),
                    f.retry_after.map(|r| format!("Retry-After: {r}\r\n")).unwrap_or_default(),
                ),
                None => {
                    let (s, b) = answer(&datasets, &path);
                    (s, b, String::new())
                }
            };
            let body = body.to_string();
            let header = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                if status == 200 { "OK" } else { "Error" },
                body.len()
            );
            let _ = stream.write_all(header.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    FakeDatasetsServer { url, seen }
}

/// A URL where nothing listens (a port bound, then released).
pub fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}
