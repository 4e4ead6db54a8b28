//! `graft serve` over loopback, driven by `graft-load` (bench/load): a trained flowers head
//! under 16 clients mixing good photos with hostile inputs, the same top-1 as `graft predict`,
//! memory that stays flat, SIGTERM during load; and the ImageNet server's routes, API key,
//! multipart and 503 on a tiny queue.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A `graft serve` process on a free loopback port; killed if the test ends without stopping it.
struct Server {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(model: &[&str], extra: &[&str]) -> Server {
        let mut child = graft()
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(model)
            .args(extra)
            .env_remove("GRAFT_API_KEY")
            // mimalloc hands freed pages back to the OS at once instead of after its delay,
            // so that RSS is the memory in use: with the delay, what a burst had freed but
            // not yet returned made two samples after the same load differ by up to 70 MB
            // (88 vs 160 MB), against 70-78 MB in four runs without it.
            .env("MIMALLOC_PURGE_DELAY", "0")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let pipe = child.stderr.take().unwrap();
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        let _ = tx.send(addr.to_string());
                    }
                    stderr.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no `listening on` line: {}", stderr.lock().unwrap()));
        let server = Server {
            child,
            addr,
            stderr,
        };
        server.wait_ready(&[]);
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn wait_ready(&self, headers: &[(&str, &str)]) {
        let t0 = Instant::now();
        loop {
            let mut request = ureq::get(&self.url("/readyz"));
            for (k, v) in headers {
                request = request.set(k, v);
            }
            match request.call() {
                Ok(_) | Err(ureq::Error::Status(401, _)) => return,
                _ if t0.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => panic!("not ready after 60 s: {}", self.stderr()),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to the child this test started.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Wait (at most `limit`) for the process to exit; its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                t0.elapsed() < limit,
                "still running after {limit:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `graft-load` against `server` (bounded by `--max-seconds`); its summary and per-request log.
fn load(
    server: &Server,
    clients: usize,
    requests: usize,
    files: &[PathBuf],
    dir: &Path,
) -> (Value, Vec<Value>) {
    let list = dir.join("files.txt");
    let text: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    std::fs::write(&list, text.join("\n")).unwrap();
    let log = dir.join("load.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_graft-load"))
        .args(["--url", &server.url("/v1/predict")])
        .args(["--clients", &clients.to_string()])
        .args(["--requests", &requests.to_string()])
        .args(["--max-seconds", "100"])
        .arg("--log")
        .arg(&log)
        .arg(format!("@{}", list.display()))
        .output()
        .unwrap();
    let (stdout, _) = ok(out);
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    let records = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (summary, records)
}

/// A PNG that declares 20000 x 20000 pixels (400 MP, over the 100 MP limit) in about 50 KB.
fn decompression_bomb(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 20_000, 20_000);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder
        .write_header()
        .unwrap()
        .into_stream_writer()
        .unwrap();
    let row = vec![0u8; 20_000 / 8];
    for _ in 0..20_000 {
        writer.write_all(&row).unwrap();
    }
    writer.finish().unwrap();
}

/// Truncated, empty, text, decompression bomb and oversized (over `max_body`) inputs.
fn bad_inputs(dir: &Path, photo: &Path, max_body: usize) -> Vec<PathBuf> {
    let truncated = dir.join("truncated.jpg");
    let bytes = std::fs::read(photo).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let empty = dir.join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.join("notes.txt");
    std::fs::write(&text, "this is not an image\n").unwrap();
    let bomb = dir.join("bomb.png");
    decompression_bomb(&bomb);
    let oversized = dir.join("oversized.jpg");
    let mut big = bytes.clone();
    big.resize(max_body + max_body / 2, 0x5a);
    std::fs::write(&oversized, big).unwrap();
    vec![truncated, empty, text, bomb, oversized]
}

/// Top-1 label of each file by `graft predict --model RUN --json`.
fn predict_top1(run: &Path, files: &[PathBuf]) -> Vec<String> {
    let (stdout, _) = ok(graft()
        .args(["predict", "--json", "--top", "1", "--model"])
        .arg(run)
        .args(files)
        .output()
        .unwrap());
    let json: Value = serde_json::from_str(&stdout).unwrap();
    json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["predictions"][0]["label"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn trained_model_under_load_with_hostile_inputs_then_sigterm() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flowers");
    copy_flowers(&data, &FLOWER_CLASSES, 12);
    let run = dir.path().join("run");
    ok(graft()
        .args(["train", "--recipe", "head", "--epochs", "30", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(&run)
        .arg(&data)
        .output()
        .unwrap());
    // Photos the head did not train on, 4 of each class.
    let good: Vec<PathBuf> = FLOWER_CLASSES
        .iter()
        .flat_map(|c| flower_photos(c).into_iter().skip(12).take(4))
        .collect();
    let expected = predict_top1(&run, &good);
    let max_body = 1 << 20;
    let bad = bad_inputs(dir.path(), &good[0], max_body);
    eprintln!(
        "trained and predicted in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let run_arg = run.to_str().unwrap();
    let max_body_arg = max_body.to_string();
    let server = Server::start(
        &["--model", run_arg],
        &["--max-body", &max_body_arg, "--queue", "64"],
    );
    let mut files = good.clone();
    files.extend(bad.iter().cloned());
    let (warm, _) = load(&server, 16, 200, &files, dir.path());
    assert_eq!(warm["requests"], 200, "{warm}");
    let rss_warm = server.rss_kb();

    let (summary, records) = load(&server, 16, 2000, &files, dir.path());
    let rss_after = server.rss_kb();
    eprintln!("load: {summary}\nRSS after warm-up {rss_warm} kB, after the run {rss_after} kB");
    assert_eq!(records.len(), 2000, "{summary}");
    for record in &records {
        let file = PathBuf::from(record["file"].as_str().unwrap());
        let status = record["status"].as_u64().unwrap();
        match good.iter().position(|g| *g == file) {
            Some(i) => {
                assert_eq!(status, 200, "{record}");
                assert_eq!(record["top1"], expected[i].as_str(), "{record}");
            }
            None => {
                assert!((400..500).contains(&status), "{record}");
                let reason = record["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{record}"));
                let name = file.file_name().unwrap().to_str().unwrap();
                let wanted = match name {
                    "truncated.jpg" => "truncated",
                    "empty.jpg" => "empty",
                    "notes.txt" => "not an image format",
                    "bomb.png" => "decompression bomb",
                    _ => "over the limit",
                };
                assert!(reason.contains(wanted), "{name}: {reason}");
                if name == "oversized.jpg" {
                    assert_eq!(status, 413, "{record}");
                } else {
                    assert_eq!(status, 400, "{record}");
                    assert!(reason.starts_with("request "), "{reason}");
                }
            }
        }
    }
    assert!(
        (rss_after as f64) <= 1.3 * rss_warm as f64,
        "RSS grew from {rss_warm} kB to {rss_after} kB"
    );
    // Still answering, with the counts in /metrics.
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let count = |status: &str| -> u64 {
        let prefix =
            format!("graft_http_requests_total{{route=\"/v1/predict\",status=\"{status}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |n| n.parse().unwrap())
    };
    // Each of the 25 files was sent (200 + 2000) / 25 times.
    let rounds = (200 + 2000) / files.len();
    assert_eq!(count("200") as usize, rounds * good.len(), "{metrics}");
    assert_eq!(count("400") as usize, rounds * 4, "{metrics}");
    assert_eq!(count("413") as usize, rounds, "{metrics}");
    assert!(
        // (/readyz answers 503 while the model loads.)
        !metrics
            .lines()
            .any(|l| l.contains("route=\"/v1/predict\",status=\"5")),
        "{metrics}"
    );
    assert!(metrics.contains("graft_batch_size_count"), "{metrics}");
    drop(server);

    // SIGTERM in the middle of a load: every 200 carries its answer, the server exits 0 and
    // counts as many 200s as the clients received.
    let mut server = Server::start(&["--model", run_arg], &[]);
    let list = dir.path().join("good.txt");
    let text: Vec<String> = good.iter().map(|f| f.display().to_string()).collect();
    std::fs::write(&list, text.join("\n")).unwrap();
    let log = dir.path().join("sigterm.jsonl");
    let loader = Command::new(env!("CARGO_BIN_EXE_graft-load"))
        .args(["--url", &server.url("/v1/predict")])
        .args([
            "--clients",
            "8",
            "--requests",
            "100000",
            "--max-seconds",
            "30",
        ])
        .arg("--log")
        .arg(&log)
        .arg(format!("@{}", list.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    server.signal(libc::SIGTERM);
    let code = server.wait_exit(Duration::from_secs(30));
    let load_out = loader.wait_with_output().unwrap();
    assert!(load_out.status.success());
    let stderr = server.stderr();
    assert_eq!(code, Some(0), "{stderr}");
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let answered: Vec<&Value> = records.iter().filter(|r| r["status"] == 200).collect();
    assert!(!answered.is_empty(), "no request answered before SIGTERM");
    for r in &answered {
        assert!(r["top1"].is_string(), "a 200 without its answer: {r}");
    }
    for r in &records {
        let status = r["status"].as_u64().unwrap();
        // After the signal: refused connections (0) or 503 while stopping; never a 4xx or 500.
        assert!(status == 200 || status == 0 || status == 503, "{r}");
    }
    let served = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stopped; /v1/predict responses by status: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        served
            .split(", ")
            .any(|s| s == format!("200: {}", answered.len())),
        "the server answered `{served}`, the clients got {} x 200\n{stderr}",
        answered.len()
    );
    assert!(stderr.contains("SIGTERM: stopping"), "{stderr}");
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
}

/// A multipart body with one part per `(file name, bytes)`.
fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "graft-test-boundary-7f3a";
    let mut body = Vec::new();
    for (name, bytes) in parts {
        write!(
            body,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .unwrap();
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn json_of(response: ureq::Response) -> Value {
    serde_json::from_str(&response.into_string().unwrap()).unwrap()
}

fn status_of(result: Result<ureq::Response, ureq::Error>) -> (u16, ureq::Response) {
    match result {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn imagenet_routes_api_key_multipart_and_a_full_queue() {
    let server = Server::start(
        &["-b", "efficientnet-lite0"],
        &[
            "--api-key",
            "s3cret",
            "--queue",
            "1",
            "--max-batch",
            "1",
            "--top",
            "3",
        ],
    );
    let key = ("X-API-Key", "s3cret");
    server.wait_ready(&[key]);
    let get = |path: &str, with_key: bool| {
        let mut request = ureq::get(&server.url(path));
        if with_key {
            request = request.set(key.0, key.1);
        }
        status_of(request.call())
    };
    assert_eq!(get("/healthz", false).0, 200, "no key needed");
    let (status, response) = get("/readyz", false);
    assert_eq!(status, 401);
    assert_eq!(response.header("WWW-Authenticate"), Some("Bearer"));
    assert_eq!(get("/readyz", true).0, 200);
    assert_eq!(get("/metrics", false).0, 401);
    let parrot = std::fs::read(golden_source("parrot")).unwrap();
    let bird = std::fs::read(golden_source("bird")).unwrap();
    let predict = ureq::post(&server.url("/v1/predict"));
    assert_eq!(status_of(predict.clone().send_bytes(&parrot)).0, 401);
    let bearer = predict.clone().set("Authorization", "Bearer s3cret");
    let (status, response) = status_of(bearer.send_bytes(&parrot));
    assert_eq!(status, 200);
    let json: Value = json_of(response);
    assert_eq!(json["model"], "efficientnet_lite0.tf_in1k");
    assert_eq!(
        json["images"][0]["predictions"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        json["images"][0]["predictions"][0]["index"], 88,
        "parrot -> macaw"
    );

    // Several images in one request (multipart): one result each, in order, named. With a queue
    // of one image, two images are more than it ever holds: 503.
    let (content_type, body) = multipart(&[("parrot.jpg", &parrot), ("bird.bmp", &bird)]);
    let (status, response) = status_of(
        predict
            .clone()
            .set(key.0, key.1)
            .set("Content-Type", &content_type)
            .send_bytes(&body),
    );
    assert_eq!(status, 503);
    assert_eq!(response.header("Retry-After"), Some("1"));
    let reason: Value = json_of(response);
    assert!(
        reason["error"].as_str().unwrap().contains("queue is full"),
        "{reason}"
    );
    drop(server);

    let server = Server::start(
        &["-b", "efficientnet-lite0"],
        &["--queue", "2", "--max-batch", "1"],
    );
    let predict = ureq::post(&server.url("/v1/predict"));
    let (status, response) = status_of(
        predict
            .clone()
            .query("top", "1")
            .set("Content-Type", &content_type)
            .send_bytes(&body),
    );
    assert_eq!(status, 200);
    let json: Value = json_of(response);
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0]["name"], "parrot.jpg");
    assert_eq!(images[0]["predictions"][0]["index"], 88);
    assert_eq!(images[1]["name"], "bird.bmp");
    assert_eq!(images[1]["predictions"][0]["label"], "chickadee");
    assert_eq!(images[1]["predictions"].as_array().unwrap().len(), 1);
    // A bad part names itself; the request is refused as a whole.
    let (content_type, body) = multipart(&[("parrot.jpg", &parrot), ("notes.txt", b"hello")]);
    let (status, response) = status_of(
        predict
            .clone()
            .set("Content-Type", &content_type)
            .send_bytes(&body),
    );
    assert_eq!(status, 400);
    let json: Value = json_of(response);
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("part 2 (notes.txt)"), "{error}");
    assert!(json["images"][1]["error"].is_string(), "{json}");

    // 16 clients on a queue of 2: some get 503 with Retry-After, the others their answer.
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    (0..4)
                        .map(|_| {
                            let (status, r) = status_of(predict.clone().send_bytes(&parrot));
                            (status, r.header("Retry-After").map(str::to_string))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let busy = statuses.iter().filter(|(s, _)| *s == 503).count();
    assert!(busy > 0, "no 503 from a queue of 2 under 16 clients");
    assert!(statuses.iter().filter(|(s, _)| *s == 200).count() > 0);
    for (status, retry) in &statuses {
        assert!(*status == 200 || *status == 503, "{status}");
        if *status == 503 {
            assert_eq!(retry.as_deref(), Some("1"));
        }
    }
    // Still answering.
    assert_eq!(status_of(predict.clone().send_bytes(&parrot)).0, 200);
    server.signal(libc::SIGINT);
    let mut server = server;
    assert_eq!(
        server.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        server.stderr()
    );
}

/// VmRSS of process `pid`, in kB.
fn rss_kb_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 48 concurrent 19 MB bodies of random bytes against a server with a 128 MiB body budget:
/// every one is answered 400 (not an image) or 503 (no room in the budget), a client sending
/// photos in between gets its answers, peak RSS stays under warm + budget + 100 MB, and RSS
/// goes back to within 1.3x of warm after the burst.
#[test]
fn a_burst_of_large_bodies_is_held_within_the_body_budget() {
    const BUDGET: usize = 128 << 20;
    let server = Server::start(
        &["-b", "efficientnet-lite0"],
        &[
            "--body-budget",
            &BUDGET.to_string(),
            "--max-body",
            "20000000",
        ],
    );
    let predict = ureq::post(&server.url("/v1/predict"));
    let parrot = std::fs::read(golden_source("parrot")).unwrap();
    let parrot_top1 = || {
        let (status, response) = status_of(predict.clone().send_bytes(&parrot));
        assert_eq!(status, 200);
        json_of(response)["images"][0]["predictions"][0]["index"].clone()
    };
    for _ in 0..8 {
        assert_eq!(parrot_top1(), 88, "parrot -> macaw");
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = server.child.id();
    let warm = rss_kb_of(pid);

    // One random body for every client (19 MB: 7 fit the budget at once).
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Arc<Vec<u8>> = Arc::new(
        (0..19_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect(),
    );
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                peak = peak.max(rss_kb_of(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let (statuses, good) = std::thread::scope(|scope| {
        let burst: Vec<_> = (0..48)
            .map(|_| {
                let (predict, noise) = (predict.clone(), noise.clone());
                scope.spawn(move || {
                    let (status, response) = status_of(predict.send_bytes(&noise));
                    (status, response.header("Retry-After").map(str::to_string))
                })
            })
            .collect();
        // A well-behaved client meanwhile: one photo at a time, each answered.
        let mut good = 0;
        while !burst.iter().all(|h| h.is_finished()) {
            assert_eq!(parrot_top1(), 88);
            good += 1;
        }
        let statuses: Vec<_> = burst.into_iter().map(|h| h.join().unwrap()).collect();
        (statuses, good)
    });
    let t_end = Instant::now();
    // Memory goes back: within 1.3x of warm a few seconds after the last answer at most.
    let back = loop {
        let rss = rss_kb_of(pid);
        if rss as f64 <= 1.3 * warm as f64 || t_end.elapsed() > Duration::from_secs(5) {
            break rss;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    eprintln!(
        "warm {warm} kB, peak {peak} kB, after {back} kB ({:.1} s after the burst), {good} photos answered during it, statuses {:?}",
        t_end.elapsed().as_secs_f64(),
        statuses.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    for (status, retry) in &statuses {
        assert!(*status == 400 || *status == 503, "{status}");
        if *status == 503 {
            assert_eq!(retry.as_deref(), Some("1"));
        }
    }
    assert!(
        statuses.iter().any(|s| s.0 == 503),
        "the budget never ran out"
    );
    assert!(statuses.iter().any(|s| s.0 == 400), "no body was ever read");
    assert!(good >= 1);
    let limit = warm + (BUDGET as u64 >> 10) + 100_000;
    assert!(peak < limit, "peak RSS {peak} kB over {limit} kB");
    assert!(
        back as f64 <= 1.3 * warm as f64,
        "RSS {back} kB 5 s after the burst, warm {warm} kB"
    );
    let (_, response) = status_of(ureq::get(&server.url("/metrics")).call());
    let metrics = response.into_string().unwrap();
    assert!(metrics.contains("\ngraft_body_bytes_held 0\n"), "{metrics}");
    assert!(
        metrics.contains(&format!("\ngraft_body_budget_bytes {BUDGET}\n")),
        "{metrics}"
    );
    // Still answering.
    assert_eq!(parrot_top1(), 88);
}

/// `--max-connections 4`: with four idle connections open, another is not served until they
/// close; then it is, and /metrics counts at most four open.
#[test]
fn open_connections_are_bounded() {
    let server = Server::start(&["-b", "efficientnet-lite0"], &["--max-connections", "4"]);
    let open = |agent: &ureq::Agent| -> usize {
        let metrics = agent
            .get(&server.url("/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("graft_connections_open "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{metrics}"))
    };
    // Four more than whatever is open already: every slot is taken.
    let idle: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&server.addr).unwrap())
        .collect();
    // Accepted by the kernel, not by the server: no answer within a second.
    let fresh = |timeout| ureq::AgentBuilder::new().timeout(timeout).build();
    assert!(
        fresh(Duration::from_secs(1))
            .get(&server.url("/healthz"))
            .call()
            .is_err()
    );
    drop(idle);
    let now = open(&fresh(Duration::from_secs(30)));
    assert!((1..=4).contains(&now), "{now}");
}
