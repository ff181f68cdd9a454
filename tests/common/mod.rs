//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use prompt2model::config::Paths;
use prompt2model::registry::Registry;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared mirror; tests that re-score the recorded runs need it (CI has it beside the clone).
pub fn mirror() -> PathBuf {
    let dir = std::env::var_os("P2M_MIRROR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared/mirror"));
    assert!(
        dir.join("MANIFEST.tsv").is_file(),
        "these tests need the data mirror at {} (set P2M_MIRROR to its folder)",
        dir.display()
    );
    dir
}

/// A registry over the real data/ and the mirror, with a private cache and no network.
pub fn mirror_registry(cache: &std::path::Path) -> Registry {
    Registry::load(Paths::with(&repo_root(), Some(mirror()), cache.to_path_buf(), true)).expect("registry loads")
}

/// One canned HTTP response.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A loopback HTTP server that answers successive requests with the given replies (the last one
/// repeats), counts requests, and stops after `max_requests` so no test can loop forever.
pub struct TestServer {
    pub url: String,
    pub requests: Arc<Mutex<usize>>,
}

pub fn serve(replies: Vec<Reply>, max_requests: usize) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(0usize));
    let counter = requests.clone();
    thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let n = {
                let mut c = counter.lock().unwrap();
                *c += 1;
                *c
            };
            let reply = replies.get(n - 1).or(replies.last()).cloned().unwrap();
            let reason = if reply.status == 200 { "OK" } else { "Error" };
            let header = format!(
                "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                reply.status,
                reply.body.len()
            );
            let _ = stream.write_all(header.as_bytes());
            let _ = stream.write_all(&reply.body);
        }
    });
    TestServer { url, requests }
}
