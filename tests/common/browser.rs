//! A real browser for the tests: Debian's chromium, headless, driven through the Chrome DevTools
//! Protocol over its WebSocket (navigate, run JavaScript in the page, take a screenshot).
//! `scripts/setup.sh --python` installs chromium; without it these tests fail and say so.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_binary() -> String {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return name.to_string();
        }
    }
    panic!("no chromium on PATH: the browser tests need it (`bash scripts/setup.sh --python` installs Debian's chromium)");
}

/// A plain HTTP GET on loopback (chromium's target list), its body as JSON. Chromium keeps the
/// connection open, so the body is read up to its Content-Length.
fn http_get_json(port: &str, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return serde_json::from_str(body).ok();
            }
        }
    }
}

impl Browser {
    /// Start headless chromium and attach to its first page.
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium_binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1200,900",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let browser_ws = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("chromium exited before listening:\n{seen}"))
                .unwrap();
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                break url.trim().to_string();
            }
            seen.push_str(&line);
            seen.push('\n');
        };
        // Keep draining stderr so chromium never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let port =
            browser_ws.split(':').nth(2).and_then(|p| p.split('/').next()).unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        let page_ws = loop {
            let list = http_get_json(&port, "/json/list");
            if let Some(url) = list.as_ref().and_then(|l| {
                l.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                    .as_str()
                    .map(str::to_string)
            }) {
                break url;
            }
            assert!(Instant::now() < deadline, "chromium listed no page target: {list:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (socket, _) = tungstenite::connect(page_ws.as_str()).expect("connecting to the page");
        let mut b = Browser { child, socket, next_id: 0, _profile: profile };
        b.call("Page.enable", serde_json::json!({}));
        b.call("Runtime.enable", serde_json::json!({}));
        b
    }

    /// One DevTools command; events that arrive meanwhile are skipped.
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.socket.read().expect("reading from chromium");
            let Message::Text(text) = m else { continue };
            let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({ "url": url }));
    }

    /// Evaluate JavaScript in the page; returns its value (promises awaited).
    pub fn eval(&mut self, js: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js} threw: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluate `js` until it is truthy; its value, or a panic naming `what` after `timeout`.
    pub fn wait_for(&mut self, js: &str, what: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(js);
            let truthy = match &v {
                serde_json::Value::Null => false,
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::String(s) => !s.is_empty(),
                serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what} ({js})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page as it is shown.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", serde_json::json!({ "format": "png" }));
        base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap()
    }
}

/// How many distinct colours a PNG has, and the share of its most common one: a blank page is one
/// colour, a page with text and widgets has many.
pub fn png_colour_stats(png: &[u8]) -> (usize, f64) {
    let img = image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap().to_rgb8();
    let mut counts = std::collections::HashMap::new();
    for p in img.pixels() {
        *counts.entry(p.0).or_insert(0usize) += 1;
    }
    let total = (img.width() * img.height()) as f64;
    let top = counts.values().copied().max().unwrap_or(0) as f64;
    (counts.len(), top / total)
}
