//! `graft serve`: the HTTP prediction server ([`graft::serve`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use graft::data::DecodeLimits;
use graft::run::TrainedModel;
use graft::serve::{Event, ServeConfig, ServedModel};

use super::BackboneArgs;

/// The environment variable read for the API key when `--api-key` is not given.
const API_KEY_VAR: &str = "GRAFT_API_KEY";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve a model trained by `graft train` (its run directory); without it, the
    /// backbone's ImageNet classifier.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "backbone")]
    pub model: Option<PathBuf>,

    #[command(flatten)]
    pub backbone: BackboneArgs,

    /// Address to listen on (port 0: any free port; the address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Most images in one forward pass.
    #[arg(long, default_value_t = ServeConfig::default().max_batch)]
    pub max_batch: usize,

    /// Milliseconds a batch waits at most for the images of requests still being decoded (it
    /// closes at once when none are, and when it has --max-batch images).
    #[arg(long, default_value_t = ServeConfig::default().max_wait.as_millis() as u64)]
    pub max_wait_ms: u64,

    /// Images waiting for the model at most; a request that does not fit gets 503.
    #[arg(long, default_value_t = ServeConfig::default().queue)]
    pub queue: usize,

    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = ServeConfig::default().max_body)]
    pub max_body: usize,

    /// Bytes of request bodies held in memory at once, all requests together. A request that
    /// does not fit gets 503 with `Retry-After: 1`: before its body is read when it states
    /// its Content-Length, as soon as it crosses the budget when chunked. Size it to the memory
    /// the server may spend on requests in flight beyond its RSS at rest: --max-body times the
    /// number of the largest requests to take at once. The default, 256 MiB, takes 12 bodies
    /// of 20 MB or about a thousand photos of 250 KB; a body's bytes are held until it is
    /// decoded (`graft_body_bytes_held` in /metrics).
    #[arg(long, value_name = "BYTES", default_value_t = ServeConfig::default().body_budget)]
    pub body_budget: usize,

    /// Connections open at once; more wait in the kernel's queue until one closes. Each one
    /// holds a few KB and a file descriptor: keep it under the open-file limit (ulimit -n).
    #[arg(long, default_value_t = ServeConfig::default().max_connections)]
    pub max_connections: usize,

    /// Classes per image unless the request asks for another number (`?top=K`).
    #[arg(long, short = 'k', default_value_t = 5)]
    pub top: usize,

    /// Refuse images with more pixels than this (decompression bombs): 400.
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    pub max_pixels: u64,

    /// Require this key on every route but /healthz (`Authorization: Bearer KEY` or
    /// `X-API-Key: KEY`). Default: the GRAFT_API_KEY environment variable, if set.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let defaults = ServeConfig::default();
    let api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var(API_KEY_VAR).ok())
        .filter(|k| !k.is_empty());
    let config = ServeConfig {
        addr: args.addr,
        max_batch: args.max_batch,
        max_wait: Duration::from_millis(args.max_wait_ms),
        queue: args.queue,
        max_body: args.max_body,
        body_budget: args.body_budget,
        max_connections: args.max_connections,
        top: args.top,
        api_key,
        limits: DecodeLimits {
            max_pixels: args.max_pixels,
            // A body larger than this is refused with 413 before decoding.
            max_file_bytes: args.max_body as u64,
            ..DecodeLimits::default()
        },
        ..defaults
    };
    if config.body_budget < config.max_body {
        eprintln!(
            "warning: --body-budget {} is under --max-body {}: larger bodies get 413",
            config.body_budget, config.max_body
        );
    }
    if !config.addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {}, reachable from other machines",
            config.addr
        );
        if config.api_key.is_none() {
            eprintln!(
                "warning: no API key (--api-key or {API_KEY_VAR}): anyone who can reach it can use it"
            );
        }
    }
    let model = args.model.clone();
    let backbone = args.backbone.clone();
    let load = move || -> Result<ServedModel> {
        Ok(match &model {
            Some(dir) => ServedModel::Trained(Box::new(TrainedModel::open(
                dir,
                backbone.weights_file()?.as_deref(),
            )?)),
            None => ServedModel::ImageNet(Box::new(backbone.load(true)?)),
        })
    };
    graft::serve::run(config, load, |event| match event {
        Event::Listening(addr) => eprintln!("listening on {addr}"),
        Event::Ready { model, seconds } => eprintln!("ready: {model} loaded in {seconds:.1} s"),
        Event::Stopping { signal } => {
            eprintln!("{signal}: stopping (no new connections; answering the requests in flight)")
        }
        Event::GaveUp { grace } => eprintln!(
            "gave up waiting for requests in flight after {} s",
            grace.as_secs()
        ),
        Event::Stopped { statuses } => {
            let counts: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
            eprintln!(
                "stopped; /v1/predict responses by status: {}",
                counts.join(", ")
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
