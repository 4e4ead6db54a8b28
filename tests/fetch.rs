//! Weights downloads against a loopback HTTP server started by each test: torchvision's URLs
//! checked by the sha256 prefix in their name, the Hub's timm models, resuming a cut download
//! with a `Range` request, and one-line errors. No network beyond 127.0.0.1.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graft::progress::{Progress, Silent};
use graft::weights::download::{self, Checksum};
use graft::weights::hub;
use graft::weights::{Checkpoint, WeightsError};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server: one request per connection, `Range: bytes=N-`, 404 for unknown paths.

enum Route {
    File {
        body: Vec<u8>,
        headers: Vec<(String, String)>,
        /// Cut the connection halfway through the body the first time the file is asked for.
        cut_first: bool,
        /// Answer every request with the whole file (200), as a server without range support.
        ignore_range: bool,
        /// Send the body in pieces of this many bytes, this long apart (a slow mirror).
        pace: Option<(usize, Duration)>,
        served: AtomicBool,
    },
    Redirect {
        location: String,
        headers: Vec<(String, String)>,
    },
}

fn file(body: &[u8]) -> Route {
    Route::File {
        body: body.to_vec(),
        headers: Vec::new(),
        cut_first: false,
        ignore_range: false,
        pace: None,
        served: AtomicBool::new(false),
    }
}

/// A file served slowly: `piece` bytes every `every`.
fn paced_file(body: &[u8], piece: usize, every: Duration) -> Route {
    Route::File {
        body: body.to_vec(),
        headers: Vec::new(),
        cut_first: false,
        ignore_range: false,
        pace: Some((piece, every)),
        served: AtomicBool::new(false),
    }
}

fn cut_file(body: &[u8], ignore_range: bool) -> Route {
    Route::File {
        body: body.to_vec(),
        headers: Vec::new(),
        cut_first: true,
        ignore_range,
        pace: None,
        served: AtomicBool::new(false),
    }
}

/// A request as the server saw it: its path and its `Range` header.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    path: String,
    range: Option<String>,
}

struct Server {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(routes: Vec<(&str, Route)>) -> Self {
        let routes: Arc<HashMap<String, Route>> = Arc::new(
            routes
                .into_iter()
                .map(|(path, route)| (path.to_string(), route))
                .collect(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let routes = Arc::clone(&routes);
                let log = Arc::clone(&log);
                std::thread::spawn(move || serve(stream, &routes, &log));
            }
        });
        Self { base, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(mut stream: TcpStream, routes: &HashMap<String, Route>, log: &Mutex<Vec<Seen>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.lines();
    let target = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("range"))
        .map(|(_, value)| value.trim().to_string());
    let path = target.split('?').next().unwrap_or("").to_string();
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });

    let respond =
        |stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]| {
            let mut out = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            out.push_str("\r\n");
            let _ = stream.write_all(out.as_bytes());
            let _ = stream.write_all(body);
        };

    match routes.get(&path) {
        None => respond(&mut stream, "404 Not Found", &[], b"not found"),
        Some(Route::Redirect { location, headers }) => {
            let mut headers = headers.clone();
            headers.push(("Location".into(), location.clone()));
            respond(&mut stream, "302 Found", &headers, b"");
        }
        Some(Route::File {
            body,
            headers,
            cut_first,
            ignore_range,
            pace,
            served,
        }) => {
            let from = range
                .as_deref()
                .filter(|_| !ignore_range)
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .map(|n| n.parse::<usize>().unwrap());
            let first = !served.swap(true, Ordering::SeqCst);
            let mut headers = headers.clone();
            let (status, slice) = match from {
                Some(from) if from >= body.len() => {
                    headers.push(("Content-Range".into(), format!("bytes */{}", body.len())));
                    respond(&mut stream, "416 Range Not Satisfiable", &headers, b"");
                    return;
                }
                Some(from) => {
                    headers.push((
                        "Content-Range".into(),
                        format!("bytes {from}-{}/{}", body.len() - 1, body.len()),
                    ));
                    ("206 Partial Content", &body[from..])
                }
                None => ("200 OK", &body[..]),
            };
            if *cut_first && first {
                // Announce the whole body, send half of it, and hang up.
                let mut out = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    slice.len()
                )
                .into_bytes();
                out.extend_from_slice(&slice[..slice.len() / 2]);
                let _ = stream.write_all(&out);
                let _ = stream.flush();
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            let Some((piece, every)) = pace else {
                respond(&mut stream, status, &headers, slice);
                return;
            };
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                slice.len()
            );
            for (name, value) in &headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            for chunk in slice.chunks(*piece) {
                std::thread::sleep(*every);
                if stream.write_all(chunk).is_err() {
                    return; // the client went away (killed)
                }
            }
        }
    }
    let _ = stream.flush();
}

// ---------------------------------------------------------------------------------------------

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Bytes that differ everywhere (a xorshift stream), so that a misplaced byte changes the hash.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

fn one_line(e: &WeightsError) -> String {
    let message = e.to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    message
}

/// Remembers what a download reported, to check the progress it shows.
#[derive(Default)]
struct Recorder {
    starts: Vec<(String, usize, String)>,
    advanced: usize,
    notes: Vec<String>,
}

impl Progress for Recorder {
    fn start(&mut self, phase: &str, total: usize, unit: &str) {
        self.starts
            .push((phase.to_string(), total, unit.to_string()));
        self.advanced = 0;
    }
    fn advance(&mut self, done: usize) {
        self.advanced += done;
    }
    fn note(&mut self, line: &str) {
        self.notes.push(line.to_string());
    }
}

const TIMM_CONFIG: &str = r#"{"architecture": "resnet18", "num_classes": 3, "num_features": 512,
    "label_names": ["cat", "dog", "fox"],
    "pretrained_cfg": {"tag": "a1_in1k", "custom_load": false, "input_size": [3, 224, 224],
    "test_input_size": [3, 288, 288], "fixed_input_size": false, "interpolation": "bicubic",
    "crop_pct": 0.95, "test_crop_pct": 1.0, "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225], "num_classes": 3, "pool_size": [7, 7], "first_conv": "conv1",
    "classifier": "fc"}}"#;

const SUPPORTED: &[&str] = &["resnet18", "resnet50"];

/// A safetensors file holding `fc.weight` ([rows, 1024], random bits) in F16: `rows` 2 KiB.
fn big_f16_safetensors(rows: usize) -> Vec<u8> {
    let bytes = payload(rows * 1024 * 2, 7);
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![rows, 1024], &bytes)
            .unwrap();
    safetensors::serialize([("fc.weight", view)], None).unwrap()
}

/// A safetensors file holding `fc.weight` ([2, 2]) in F16.
fn f16_safetensors(values: &[f32; 4]) -> Vec<u8> {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2, 2], &bytes).unwrap();
    safetensors::serialize([("fc.weight", view)], None).unwrap()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn torchvision_urls_are_checked_against_the_hash_prefix_in_their_name() {
    let body = payload(300_000, 1);
    let sha = sha256_hex(&body);
    let good = format!("/models/resnet18-{}.pth", &sha[..8]);
    // The same bytes under a name whose prefix is off by its first digit.
    let wrong_prefix = format!(
        "{}{}",
        if sha.starts_with('0') { '1' } else { '0' },
        &sha[1..8]
    );
    let bad = format!("/models/resnet50-{wrong_prefix}.pth");
    let server = Server::start(vec![(&good, file(&body)), (&bad, file(&body))]);
    let dir = tempfile::tempdir().unwrap();

    let path = download::fetch_url(&server.url(&good), dir.path(), &mut Silent).unwrap();
    assert_eq!(path, dir.path().join(good.trim_start_matches("/models/")));
    assert_eq!(std::fs::read(&path).unwrap(), body);

    let err = download::fetch_url(&server.url(&bad), dir.path(), &mut Silent).unwrap_err();
    let message = one_line(&err);
    let target = dir.path().join(bad.trim_start_matches("/models/"));
    assert!(
        message.starts_with(&format!("{}: sha256 {sha} ", target.display())),
        "{message}"
    );
    assert!(message.contains(&wrong_prefix), "{message}");
    assert!(message.contains(&server.url(&bad)), "{message}");
    assert!(matches!(err, WeightsError::Checksum { .. }));
    // Nothing landed: no target, and no partial file to resume from either.
    assert!(!target.exists());
    assert_eq!(
        files_in(dir.path()),
        [path.file_name().unwrap().to_string_lossy()]
    );

    // A file already there that checks out is not downloaded again.
    let before = server.seen().len();
    download::fetch_url(&server.url(&good), dir.path(), &mut Silent).unwrap();
    assert_eq!(server.seen().len(), before);
}

/// Where the Hub serves the files of `timm/resnet18.a1_in1k`.
const RESNET18_FILES: &str = "/timm/resnet18.a1_in1k/resolve/main";

/// The Hub as it serves `timm/resnet18.a1_in1k`: `config.json`, and `model.safetensors` as a
/// redirect to its CDN that publishes `sha` (of `weights`, or not) in `X-Linked-Etag`.
fn hub_server(weights: &[u8], sha: &str) -> Server {
    let repo = RESNET18_FILES;
    Server::start(vec![
        (&format!("{repo}/config.json"), file(TIMM_CONFIG.as_bytes())),
        (
            &format!("{repo}/model.safetensors"),
            Route::Redirect {
                location: "/cdn/blob?signature=abc".into(),
                headers: vec![("X-Linked-Etag".into(), format!("\"{sha}\""))],
            },
        ),
        ("/cdn/blob", file(weights)),
    ])
}

#[test]
fn hub_models_bring_their_config_and_f16_weights() {
    let weights = f16_safetensors(&[0.5, -1.25, 3.0, 0.099975586]);
    let sha = sha256_hex(&weights);
    let server = hub_server(&weights, &sha);
    let dir = tempfile::tempdir().unwrap();

    let model = hub::fetch(
        "hf:timm/resnet18.a1_in1k",
        &server.base,
        dir.path(),
        SUPPORTED,
        &mut Silent,
    )
    .unwrap();
    assert_eq!(model.repo_id, "timm/resnet18.a1_in1k");
    let folder = dir.path().join("timm").join("resnet18.a1_in1k");
    assert_eq!(model.weights, folder.join("model.safetensors"));
    assert_eq!(model.config_file, folder.join("config.json"));
    assert_eq!(std::fs::read(&model.weights).unwrap(), weights);
    assert_eq!(
        model.config,
        hub::TimmConfig {
            architecture: "resnet18".into(),
            tag: Some("a1_in1k".into()),
            input_size: [3, 224, 224],
            interpolation: "bicubic".into(),
            crop_pct: 0.95,
            crop_mode: "center".into(),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            num_classes: 3,
            label_names: Some(vec!["cat".into(), "dog".into(), "fox".into()]),
        }
    );
    let checkpoint = Checkpoint::open(&model.weights).unwrap();
    let tensor = &checkpoint.tensors["fc.weight"];
    assert_eq!(tensor.shape, [2, 2]);
    assert_eq!(
        tensor.values.as_deref(),
        Some(&[0.5, -1.25, 3.0, 0.099975586][..])
    );
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            format!("{RESNET18_FILES}/config.json"),
            format!("{RESNET18_FILES}/model.safetensors"),
            "/cdn/blob".into()
        ]
    );
    assert_eq!(files_in(&folder), ["config.json", "model.safetensors"]);
}

#[test]
fn hub_weights_that_do_not_match_the_published_sha256_are_refused() {
    let weights = f16_safetensors(&[1.0, 2.0, 3.0, 4.0]);
    let published = sha256_hex(b"some other file");
    let server = hub_server(&weights, &published);
    let dir = tempfile::tempdir().unwrap();
    let err = hub::fetch(
        "hf:timm/resnet18.a1_in1k",
        &server.base,
        dir.path(),
        SUPPORTED,
        &mut Silent,
    )
    .unwrap_err();
    let message = one_line(&err);
    assert!(message.contains(&published), "{message}");
    assert!(message.contains(&sha256_hex(&weights)), "{message}");
    assert!(message.contains("model.safetensors"), "{message}");
    let folder = dir.path().join("timm").join("resnet18.a1_in1k");
    assert_eq!(files_in(&folder), ["config.json"]);
}

#[test]
fn a_cut_download_resumes_with_a_range_request() {
    let body = payload(1_000_003, 2);
    let server = Server::start(vec![("/weights.bin", cut_file(&body, false))]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("weights.bin");
    let mut progress = Recorder::default();

    download::download(
        &server.url("/weights.bin"),
        &target,
        &Checksum::Sha256(sha256_hex(&body)),
        &mut progress,
    )
    .unwrap();

    assert_eq!(
        sha256_hex(&std::fs::read(&target).unwrap()),
        sha256_hex(&body)
    );
    let half = body.len() / 2;
    assert_eq!(
        server.seen(),
        [
            Seen {
                path: "/weights.bin".into(),
                range: None
            },
            Seen {
                path: "/weights.bin".into(),
                range: Some(format!("bytes={half}-"))
            },
        ]
    );
    // The progress started over at the resumed byte, with the file's whole length.
    assert_eq!(progress.starts.len(), 2);
    assert!(
        progress
            .starts
            .iter()
            .all(|(_, total, unit)| *total == body.len() && unit == "bytes")
    );
    assert_eq!(progress.advanced, body.len());
    assert_eq!(progress.notes.len(), 1, "{:?}", progress.notes);
    assert_eq!(files_in(dir.path()), ["weights.bin"]);
}

#[test]
fn a_server_that_ignores_range_is_read_again_from_the_start() {
    let body = payload(500_000, 3);
    let server = Server::start(vec![("/weights.bin", cut_file(&body, true))]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("weights.bin");
    download::download(
        &server.url("/weights.bin"),
        &target,
        &Checksum::Sha256(sha256_hex(&body)),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), body);
    let ranges: Vec<Option<String>> = server.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [None, Some(format!("bytes={}-", body.len() / 2))]);
}

#[test]
fn a_partial_file_left_by_an_earlier_run_is_resumed() {
    let body = payload(200_000, 4);
    let server = Server::start(vec![("/weights.bin", file(&body))]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("weights.bin");
    std::fs::write(dir.path().join("weights.bin.part"), &body[..123_456]).unwrap();
    download::download(
        &server.url("/weights.bin"),
        &target,
        &Checksum::Sha256(sha256_hex(&body)),
        &mut Silent,
    )
    .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), body);
    assert_eq!(server.seen()[0].range.as_deref(), Some("bytes=123456-"));
    assert_eq!(files_in(dir.path()), ["weights.bin"]);
}

#[test]
fn a_404_is_one_line_naming_the_url() {
    let server = Server::start(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/models/missing-0123abcd.pth");
    let target = dir.path().join("missing.pth");
    let err = download::download(&url, &target, &Checksum::Unchecked, &mut Silent).unwrap_err();
    assert_eq!(one_line(&err), format!("{url}: HTTP 404 Not Found"));
    // Not retried: a missing file stays missing.
    assert_eq!(server.seen().len(), 1);
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn a_refused_connection_is_one_line_naming_the_url() {
    // A port that was free a moment ago and has no listener now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/resnet18-0123abcd.pth");
    let dir = tempfile::tempdir().unwrap();
    let err = download::fetch_url(&url, dir.path(), &mut Silent).unwrap_err();
    let message = one_line(&err);
    assert!(
        message.starts_with(&format!("{url}: cannot connect: ")),
        "{message}"
    );
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn an_architecture_graft_lacks_is_refused_by_name_before_the_weights_download() {
    let config = TIMM_CONFIG.replace("\"resnet18\"", "\"foo\"");
    let repo = "/timm/foo.bar/resolve/main";
    let server = Server::start(vec![
        (&format!("{repo}/config.json"), file(config.as_bytes())),
        (
            &format!("{repo}/model.safetensors"),
            file(b"never asked for"),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let err = hub::fetch(
        "hf:timm/foo.bar",
        &server.base,
        dir.path(),
        SUPPORTED,
        &mut Silent,
    )
    .unwrap_err();
    assert_eq!(
        one_line(&err),
        "hf:timm/foo.bar: architecture `foo` is not implemented by graft (it has: resnet18, resnet50)"
    );
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, [format!("{repo}/config.json")]);
    assert!(files_in(&dir.path().join("timm").join("foo.bar")).is_empty());
}

/// `graft weights fetch hf:…` through the command line, the Hub at `HF_ENDPOINT` and the store
/// at `GRAFT_HOME`: registered weights land in the store once their config.json states the
/// registry's preprocessing; unregistered ones are refused in one line, by architecture.
#[test]
fn the_command_line_fetches_registered_hub_weights_and_refuses_the_rest() {
    let graft = |home: &Path, endpoint: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_graft"))
            .env("GRAFT_HOME", home)
            .env("HF_ENDPOINT", endpoint)
            .args(args)
            .output()
            .unwrap()
    };
    // timm's pretrained_cfg of convnext_tiny.fb_in1k, as the Hub serves it.
    let config = TIMM_CONFIG
        .replace("\"resnet18\"", "\"convnext_tiny\"")
        .replace("\"a1_in1k\"", "\"fb_in1k\"")
        .replace("\"crop_pct\": 0.95", "\"crop_pct\": 0.875");
    let weights = f16_safetensors(&[1.0, 2.0, 3.0, 4.0]);
    let sha = sha256_hex(&weights);
    let repo = "/timm/convnext_tiny.fb_in1k/resolve/main";
    let routes = |config: &str| {
        vec![
            (format!("{repo}/config.json"), file(config.as_bytes())),
            (
                format!("{repo}/model.safetensors"),
                Route::Redirect {
                    location: "/cdn/blob".into(),
                    headers: vec![("X-Linked-Etag".into(), format!("\"{sha}\""))],
                },
            ),
            ("/cdn/blob".to_string(), file(&weights)),
            (
                "/timm/resnet50.a1h_in1k/resolve/main/config.json".to_string(),
                file(
                    TIMM_CONFIG
                        .replace("\"resnet18\"", "\"resnet50\"")
                        .as_bytes(),
                ),
            ),
            (
                "/timm/swin_tiny_patch4_window7_224.ms_in1k/resolve/main/config.json".to_string(),
                file(
                    TIMM_CONFIG
                        .replace("\"resnet18\"", "\"swin_tiny_patch4_window7_224\"")
                        .as_bytes(),
                ),
            ),
        ]
    };
    let start = |config: &str| {
        let (paths, handlers): (Vec<String>, Vec<Route>) = routes(config).into_iter().unzip();
        Server::start(paths.iter().map(String::as_str).zip(handlers).collect())
    };

    let server = start(&config);
    let home = tempfile::tempdir().unwrap();
    let out = graft(
        home.path(),
        &server.base,
        &["weights", "fetch", "hf:timm/convnext_tiny.fb_in1k"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = home
        .path()
        .join("weights/convnext_tiny.fb_in1k.safetensors");
    assert_eq!(std::fs::read(&installed).unwrap(), weights);
    let list = graft(home.path(), &server.base, &["weights", "list"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let line = list
        .lines()
        .find(|l| l.contains("convnext_tiny.fb_in1k"))
        .unwrap();
    assert!(
        line.contains("installed (") && !line.contains("not installed"),
        "{list}"
    );

    // A repository whose config.json changed its preprocessing is not installed.
    let changed = config.replace("\"crop_pct\": 0.875", "\"crop_pct\": 0.9");
    let server = start(&changed);
    let home = tempfile::tempdir().unwrap();
    let out = graft(
        home.path(),
        &server.base,
        &["weights", "fetch", "convnext_tiny.fb_in1k"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("convnext_tiny.fb_in1k") && stderr.contains("preprocessing"),
        "{stderr}"
    );
    assert!(
        !home
            .path()
            .join("weights/convnext_tiny.fb_in1k.safetensors")
            .exists()
    );

    // Unregistered weights: an architecture graft builds, or one it lacks, each said by name.
    let out = graft(
        home.path(),
        &server.base,
        &["weights", "fetch", "hf:timm/resnet50.a1h_in1k"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("architecture resnet50 is one graft builds")
            && stderr.contains("hf:timm/convnext_tiny.fb_in1k"),
        "{stderr}"
    );
    let out = graft(
        home.path(),
        &server.base,
        &[
            "weights",
            "fetch",
            "hf:timm/swin_tiny_patch4_window7_224.ms_in1k",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("architecture `swin_tiny_patch4_window7_224` is not implemented by graft"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Many at once: concurrent fetches of one file into one store.

/// Four threads download one file into one folder at once: one download reaches the server,
/// the others wait for it and take its file.
#[test]
fn concurrent_downloads_of_one_file_reach_the_server_once() {
    let body = payload(2_000_000, 5);
    let server = Server::start(vec![(
        "/weights.bin",
        paced_file(&body, 64 * 1024, Duration::from_millis(5)),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("weights.bin");
    let checksum = Checksum::Sha256(sha256_hex(&body));
    let start = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, target, checksum, start) = (
                server.url("/weights.bin"),
                target.clone(),
                checksum.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                download::download(&url, &target, &checksum, &mut Silent)
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().unwrap();
    }
    assert_eq!(
        sha256_hex(&std::fs::read(&target).unwrap()),
        sha256_hex(&body)
    );
    assert_eq!(
        server.seen(),
        [Seen {
            path: "/weights.bin".into(),
            range: None
        }]
    );
    assert_eq!(files_in(dir.path()), ["weights.bin"]);
}

/// The Hub serving `timm/convnext_tiny.fb_in1k` (a registered backbone) with 4 MiB of weights
/// sent slowly (about 1.3 s), for `graft weights fetch` processes to meet in one store.
fn slow_hub_for_convnext(weights: &[u8]) -> Server {
    let config = TIMM_CONFIG
        .replace("\"resnet18\"", "\"convnext_tiny\"")
        .replace("\"a1_in1k\"", "\"fb_in1k\"")
        .replace("\"crop_pct\": 0.95", "\"crop_pct\": 0.875");
    let repo = "/timm/convnext_tiny.fb_in1k/resolve/main";
    Server::start(vec![
        (&format!("{repo}/config.json"), file(config.as_bytes())),
        (
            &format!("{repo}/model.safetensors"),
            Route::Redirect {
                location: "/cdn/blob".into(),
                headers: vec![(
                    "X-Linked-Etag".into(),
                    format!("\"{}\"", sha256_hex(weights)),
                )],
            },
        ),
        (
            "/cdn/blob",
            paced_file(weights, 64 * 1024, Duration::from_millis(20)),
        ),
    ])
}

/// `graft weights fetch hf:timm/convnext_tiny.fb_in1k` into `home`, from `endpoint`, started.
fn spawn_fetch(home: &Path, endpoint: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_graft"))
        .env("GRAFT_HOME", home)
        .env("HF_ENDPOINT", endpoint)
        .args(["weights", "fetch", "hf:timm/convnext_tiny.fb_in1k"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for `child` at most `limit` (killed after that), and its output.
fn finish(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("graft weights fetch still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Every file under `dir`, recursively, as paths relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Four `graft weights fetch` processes of one Hub model into one `GRAFT_HOME` at once: all
/// succeed, the mirror serves the weights once, the installed file is whole, and neither a
/// `.part` nor a lock file is left.
#[test]
fn four_processes_fetching_one_model_download_it_once() {
    let weights = big_f16_safetensors(2048);
    let server = slow_hub_for_convnext(&weights);
    let home = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| spawn_fetch(home.path(), &server.base))
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| finish(c, Duration::from_secs(60)))
        .collect();
    for out in &outputs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("convnext_tiny.fb_in1k: "));
    }
    let waited = outputs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("waiting for process "))
        .count();
    assert!(waited >= 1, "nobody waited for the download");
    let installed = home
        .path()
        .join("weights/convnext_tiny.fb_in1k.safetensors");
    assert_eq!(
        sha256_hex(&std::fs::read(&installed).unwrap()),
        sha256_hex(&weights)
    );
    let blob: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == "/cdn/blob")
        .collect();
    assert_eq!(
        blob,
        [Seen {
            path: "/cdn/blob".into(),
            range: None
        }]
    );
    let left: Vec<String> = tree(home.path())
        .into_iter()
        .filter(|f| f.ends_with(".part") || f.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// As above, with the process that is downloading killed (SIGKILL) halfway: the kernel drops
/// its lock, the next one resumes its `.part`, and the other three succeed.
#[test]
fn a_fetch_killed_mid_download_leaves_the_others_to_finish() {
    let weights = big_f16_safetensors(2048);
    let server = slow_hub_for_convnext(&weights);
    let home = tempfile::tempdir().unwrap();
    let mut children: Vec<_> = (0..4)
        .map(|_| spawn_fetch(home.path(), &server.base))
        .collect();
    // The downloader: the pid in the store's lock file, once its `.part` has bytes.
    let lock = home
        .path()
        .join("weights/convnext_tiny.fb_in1k.safetensors.lock");
    let part = home
        .path()
        .join("weights/hub/timm/convnext_tiny.fb_in1k/model.safetensors.part");
    let t0 = Instant::now();
    let downloader = loop {
        let pid = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        let started = std::fs::metadata(&part).is_ok_and(|m| m.len() > 0);
        if let (Some(pid), true) = (pid, started) {
            break pid;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no download began");
        std::thread::sleep(Duration::from_millis(5));
    };
    let at = children
        .iter()
        .position(|c| c.id() == downloader)
        .expect("the lock holder is one of the four");
    let mut killed = children.remove(at);
    killed.kill().unwrap(); // SIGKILL
    let status = killed.wait().unwrap();
    assert!(!status.success());
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < weights.len() as u64, "{kept}");

    for child in children {
        let out = finish(child, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let installed = home
        .path()
        .join("weights/convnext_tiny.fb_in1k.safetensors");
    assert_eq!(
        sha256_hex(&std::fs::read(&installed).unwrap()),
        sha256_hex(&weights)
    );
    // The killed download, then one resumed from its `.part` (not started over).
    let ranges: Vec<Option<String>> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == "/cdn/blob")
        .map(|s| s.range)
        .collect();
    assert_eq!(ranges, [None, Some(format!("bytes={kept}-"))]);
    let left: Vec<String> = tree(home.path())
        .into_iter()
        .filter(|f| f.ends_with(".part") || f.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The files of the CLIP / OpenCLIP fixture `name` as a Hub repository at `repo` serves them.
fn clip_routes(name: &str, repo: &str, files: &[&str]) -> Vec<(String, Route)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip")
        .join(name);
    files
        .iter()
        .map(|f| {
            let body = std::fs::read(dir.join(f)).unwrap();
            (format!("/{repo}/resolve/main/{f}"), file(&body))
        })
        .collect()
}

/// `graft predict --backbone hf:… --labels …` fetches a `transformers` CLIP repository (its
/// four files, each once) or an OpenCLIP one (no config.json: its own three files) from the
/// Hub at `HF_ENDPOINT`, then classifies; a second run downloads nothing.
#[test]
fn zero_shot_fetches_clip_repositories_of_both_layouts_once() {
    let transformers = [
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "model.safetensors",
    ];
    let open_clip = [
        "open_clip_config.json",
        "tokenizer.json",
        "open_clip_model.safetensors",
    ];
    let mut routes = clip_routes("clip_hf", "openai/clip-test", &transformers);
    routes.extend(clip_routes("openclip", "laion/openclip-test", &open_clip));
    let (served, bodies): (Vec<String>, Vec<Route>) = routes.into_iter().unzip();
    let server = Server::start(served.iter().map(String::as_str).zip(bodies).collect());
    let home = tempfile::tempdir().unwrap();
    let photo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/golden/efficientnet_lite0/bird_224.png");
    let predict = |spec: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_graft"))
            .env("GRAFT_HOME", home.path())
            .env("HF_ENDPOINT", &server.base)
            .args([
                "predict",
                "--backbone",
                spec,
                "--labels",
                "bird,cat",
                "--json",
            ])
            .arg(&photo)
            .output()
            .unwrap()
    };
    for (spec, repo, files) in [
        ("hf:openai/clip-test", "/openai/clip-test/", 4),
        ("hf:laion/openclip-test", "/laion/openclip-test/", 3),
    ] {
        for round in 0..2 {
            let out = predict(spec);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let labels = doc["images"][0]["predictions"].as_array().unwrap().len();
            assert_eq!(labels, 2, "{spec}: {doc}");
            // Each file of the layout once, over both rounds; OpenCLIP's after one 404 for
            // config.json, also once.
            let seen: Vec<String> = server
                .seen()
                .into_iter()
                .map(|s| s.path)
                .filter(|p| p.starts_with(repo))
                .collect();
            let fetched = seen.iter().filter(|p| served.contains(p)).count();
            assert_eq!(fetched, files, "{spec} round {round}: {seen:?}");
            // transformers: its four files; OpenCLIP: config.json's 404, then its three.
            assert_eq!(seen.len(), 4, "{spec}: {seen:?}");
        }
    }
}
