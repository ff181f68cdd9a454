//! Serving throughput and latency of a packaged model, batching on vs off, at 1, 8 and 32
//! concurrent clients (closed loop, loopback), with the same load generator as the load test.
//!
//! ```sh
//! cargo bench --bench serve -- runs/temporal-recorded [--seconds 20] [--input TEXT]
//! ```
//! The model is the packaged model of a run made by `p2m run` (or a model folder). Prints a
//! Markdown table for `benches/README.md`.

use std::time::Duration;

use prompt2model::serve::{self, load::run_load, ServeConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut target = None;
    let mut seconds = 20.0;
    let mut input = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().unwrap_or_default().parse()?,
            "--input" => input = args.next(),
            other if !other.starts_with('-') => target = Some(other.to_string()),
            // `cargo test --all-targets` runs benches too, with the harness's own flags.
            other => eprintln!("ignoring {other}"),
        }
    }
    let Some(target) = target else {
        println!(
            "usage: cargo bench --bench serve -- RUN_OR_MODEL_DIR [--seconds S] [--input TEXT]"
        );
        println!("(no model given: nothing measured)");
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let threads = tch::get_num_threads();
    let mut rows = Vec::new();
    for (label, max_batch) in
        [("off (max batch 1)", 1usize), ("on (max batch 16, 5 ms window)", 16)]
    {
        let mut config = ServeConfig::new(target.clone().into());
        config.port = 0;
        config.batch.max_batch = max_batch;
        config.batch.queue_capacity = 256;
        config.request_timeout = Duration::from_secs(600);
        let state = serve::load(config)?;
        let text = input.clone().unwrap_or_else(|| {
            state.manifest.demonstrations.first().map(|d| d.input.clone()).unwrap_or("hello".into())
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(serve::serve(
            state,
            async {
                let _ = stop_rx.await;
            },
            move |addr| {
                let _ = addr_tx.send(addr);
            },
        ));
        let addr = addr_rx.recv()?;
        let url = format!("http://{addr}/v1/predict");
        // Warm-up: one request.
        rt.block_on(run_load(
            &url,
            serde_json::json!({ "input": text }),
            1,
            Duration::from_millis(1),
            None,
        ));
        for clients in [1usize, 8, 32] {
            let r = rt.block_on(run_load(
                &url,
                serde_json::json!({ "input": text }),
                clients,
                Duration::from_secs_f64(seconds),
                None,
            ));
            eprintln!("batching {label}: {r}");
            rows.push((label, clients, r));
        }
        let _ = stop_tx.send(());
        rt.block_on(server)??;
    }
    println!("\n| batching | clients | ok/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, clients, r) in &rows {
        println!(
            "| {label} | {clients} | {:.2} | {:.0} | {:.0} | {} |",
            r.throughput_rps,
            r.p50_ms,
            r.p99_ms,
            r.client_errors + r.busy + r.server_errors + r.transport_errors
        );
    }
    println!("\n| clients | throughput ratio (on ÷ off) | p99 ratio (off ÷ on) |");
    println!("|---:|---:|---:|");
    for clients in [1usize, 8, 32] {
        let find = |max: &str| {
            rows.iter().find(|(l, c, _)| l.starts_with(max) && *c == clients).map(|r| &r.2)
        };
        if let (Some(off), Some(on)) = (find("off"), find("on")) {
            println!(
                "| {clients} | {:.2}× | {:.2}× |",
                on.throughput_rps / off.throughput_rps,
                off.p99_ms / on.p99_ms
            );
        }
    }
    println!(
        "\n{threads} libtorch threads, {seconds} s per cell, input {:?}, target {target}",
        input.as_deref().unwrap_or("(the model's first demonstration)")
    );
    Ok(())
}
