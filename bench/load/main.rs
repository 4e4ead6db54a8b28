//! `graft-load`: a load generator for `graft serve`. N client threads send M requests in all
//! (each a file's bytes as the body, the files taken in turn), and one JSON object is printed:
//! responses by status, images/s and latency percentiles. `--log FILE` writes one JSON line
//! per request (file, status, top-1 label or error) for the tests to check.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "graft-load", about = "Load generator for `graft serve`")]
struct Args {
    /// The prediction URL, e.g. http://127.0.0.1:8080/v1/predict
    #[arg(long)]
    url: String,
    /// Concurrent clients (threads, one keep-alive connection each).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// Stop starting requests after this many seconds.
    #[arg(long)]
    max_seconds: Option<f64>,
    /// Sent as `X-API-Key`.
    #[arg(long)]
    api_key: Option<String>,
    /// Write one JSON line per request here.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Image files, sent in turn (a file named @LIST holds one path a line).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

struct Record {
    file: usize,
    status: u16,
    seconds: f64,
    body: Option<Value>,
    transport: Option<String>,
}

fn main() {
    let args = Args::parse();
    let mut paths = Vec::new();
    for f in &args.files {
        match f.to_str().and_then(|s| s.strip_prefix('@')) {
            Some(list) => match std::fs::read_to_string(list) {
                Ok(text) => paths.extend(text.lines().filter(|l| !l.is_empty()).map(PathBuf::from)),
                Err(e) => fail(&format!("{list}: {e}")),
            },
            None => paths.push(f.clone()),
        }
    }
    let bodies: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| fail(&format!("{}: {e}", p.display()))))
        .collect();
    if bodies.is_empty() {
        fail("no files to send");
    }
    let next = AtomicUsize::new(0);
    let records = Mutex::new(Vec::with_capacity(args.requests));
    let started = Instant::now();
    let deadline = args
        .max_seconds
        .map(|s| started + Duration::from_secs_f64(s));
    std::thread::scope(|scope| {
        for _ in 0..args.clients.max(1) {
            scope.spawn(|| {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(120))
                    .build();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= args.requests || deadline.is_some_and(|d| Instant::now() > d) {
                        break;
                    }
                    let file = i % bodies.len();
                    let record = send(&agent, &args, file, &bodies[file]);
                    // Nothing listens any more (the server stopped): this client is done.
                    let refused = record
                        .transport
                        .as_deref()
                        .is_some_and(|t| t.contains("Connection refused"));
                    // cannot fail: no thread panics while holding the lock
                    records.lock().expect("records lock").push(record);
                    if refused {
                        break;
                    }
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    // cannot fail: every thread has finished
    let records = records.into_inner().expect("records lock");
    if let Some(log) = &args.log {
        write_log(log, &records, &paths)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", log.display())));
    }
    println!("{}", summary(&args, &records, seconds));
}

fn fail(message: &str) -> ! {
    eprintln!("graft-load: {message}");
    std::process::exit(2);
}

fn send(agent: &ureq::Agent, args: &Args, file: usize, body: &[u8]) -> Record {
    let mut request = agent
        .post(&args.url)
        .set("Content-Type", "application/octet-stream");
    if let Some(key) = &args.api_key {
        request = request.set("X-API-Key", key);
    }
    let t0 = Instant::now();
    let (status, response) = match request.send_bytes(body) {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(ureq::Error::Transport(t)) => {
            return Record {
                file,
                status: 0,
                seconds: t0.elapsed().as_secs_f64(),
                body: None,
                transport: Some(t.to_string()),
            };
        }
    };
    let text = response.into_string();
    let seconds = t0.elapsed().as_secs_f64();
    match text {
        Ok(text) => Record {
            file,
            status,
            seconds,
            body: serde_json::from_str(&text).ok(),
            transport: None,
        },
        Err(e) => Record {
            file,
            status,
            seconds,
            body: None,
            transport: Some(format!("reading the response: {e}")),
        },
    }
}

fn write_log(path: &PathBuf, records: &[Record], paths: &[PathBuf]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in records {
        let top1 = r
            .body
            .as_ref()
            .and_then(|b| b["images"][0]["predictions"][0]["label"].as_str());
        let error = r.body.as_ref().and_then(|b| b["error"].as_str());
        let line = json!({
            "file": paths[r.file],
            "status": r.status,
            "ms": r.seconds * 1e3,
            "top1": top1,
            "error": error,
            "transport": r.transport,
        });
        writeln!(out, "{line}")?;
    }
    out.flush()
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(args: &Args, records: &[Record], seconds: f64) -> Value {
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for r in records {
        *statuses.entry(r.status.to_string()).or_default() += 1;
    }
    let mut ok: Vec<f64> = records
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.seconds * 1e3)
        .collect();
    ok.sort_by(f64::total_cmp);
    let round = |x: f64| (x * 100.0).round() / 100.0;
    json!({
        "clients": args.clients,
        "requests": records.len(),
        "seconds": round(seconds),
        "statuses": statuses,
        "transport_errors": records.iter().filter(|r| r.status == 0).count(),
        "images_per_s": round(ok.len() as f64 / seconds),
        "p50_ms": round(quantile(&ok, 0.5)),
        "p99_ms": round(quantile(&ok, 0.99)),
    })
}
