//! `graft serve`: an HTTP prediction server. Handlers decode and preprocess images on a few
//! blocking threads; one model thread runs batches gathered from concurrent requests on the
//! same fused kernels as `predict` ([`batcher`]); a small tokio runtime does the I/O.
//!
//! Routes ([`routes`]): `POST /v1/predict` (one image as the body, or several as multipart
//! parts), `GET /healthz`, `GET /readyz`, `GET /metrics` ([`metrics`]). SIGTERM or SIGINT
//! stops accepting connections, answers what is in flight and returns.

pub mod batcher;
pub mod budget;
pub mod metrics;
pub mod routes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::backbone::{Backbone, SourceConfig};
use crate::data::{Chw, DecodeLimits, to_batch};
use crate::infer::Top;
use crate::run::TrainedModel;

/// How the server runs; [`ServeConfig::default`] has the command line's defaults.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen (loopback unless told otherwise; port 0 picks a free one).
    pub addr: SocketAddr,
    /// Most images in one forward pass.
    pub max_batch: usize,
    /// How long the first image of a batch waits at most for images on their way (requests
    /// being decoded); with none on their way it does not wait.
    pub max_wait: Duration,
    /// Images queued for the model at most; beyond, requests get 503.
    pub queue: usize,
    /// Largest request body, bytes; beyond, 413.
    pub max_body: usize,
    /// Bytes of request bodies held in memory at once, all requests together; a request that
    /// does not fit gets 503 with `Retry-After` ([`budget::BodyBudget`]).
    pub body_budget: usize,
    /// Connections open at once; more wait to be accepted ([`budget::BoundedListener`]).
    pub max_connections: usize,
    /// Classes returned per image unless the request asks (`?top=K`).
    pub top: usize,
    /// Required on every route but `/healthz` when set (`Authorization: Bearer KEY` or
    /// `X-API-Key: KEY`).
    pub api_key: Option<String>,
    /// Limits for decoding request images (decompression bombs).
    pub limits: DecodeLimits,
    /// After SIGTERM, how long to wait for requests in flight before giving up on them.
    pub grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_batch: 32,
            max_wait: Duration::from_millis(50),
            queue: 256,
            max_body: 20 * 1024 * 1024,
            body_budget: 256 * 1024 * 1024,
            max_connections: 512,
            top: 5,
            api_key: None,
            limits: DecodeLimits::default(),
            grace: Duration::from_secs(30),
        }
    }
}

/// The model the server answers with.
#[derive(Debug)]
pub enum ServedModel {
    /// A run directory's head on its backbone.
    Trained(Box<TrainedModel>),
    /// A backbone loaded with its ImageNet top.
    ImageNet(Box<Backbone>),
}

impl ServedModel {
    fn backbone(&self) -> &Backbone {
        match self {
            ServedModel::Trained(m) => &m.backbone,
            ServedModel::ImageNet(b) => b,
        }
    }

    fn top(&self) -> Top<'_> {
        match self {
            ServedModel::Trained(m) => Top::Trained {
                head: &m.head,
                classes: &m.card.classes,
            },
            ServedModel::ImageNet(_) => Top::ImageNet,
        }
    }

    /// As `predict --json` names it: the run directory, or the backbone.
    fn name(&self) -> String {
        match self {
            ServedModel::Trained(m) => m.dir.display().to_string(),
            ServedModel::ImageNet(b) => b.config.name.clone(),
        }
    }
}

/// What the handlers need to know about the model once it is loaded.
#[derive(Debug)]
pub struct ModelInfo {
    pub name: String,
    pub config: SourceConfig,
    pub classes: Vec<String>,
}

/// One image's class probabilities, or why the model could not run.
pub type Scores = Result<Vec<f32>, String>;

/// Shared by every handler.
pub struct State {
    pub config: ServeConfig,
    pub metrics: metrics::Metrics,
    pub queue: batcher::Submitter<Chw, Scores>,
    /// Set once the model thread has loaded the model.
    pub model: OnceLock<ModelInfo>,
    /// Numbers requests, for naming them in errors.
    pub next_request: AtomicU64,
    /// Images of accepted requests being decoded, not yet queued: a batch waits for them.
    pub decoding: AtomicUsize,
    /// What the request bodies in memory may take, together.
    pub body_budget: budget::BodyBudget,
    pub connections: budget::OpenConnections,
}

/// Counts a request's images as being decoded until it is dropped (after they are queued, or
/// when the request ends another way, the client hanging up included).
pub struct Decoding<'a> {
    state: &'a State,
    images: usize,
}

impl<'a> Decoding<'a> {
    pub fn start(state: &'a State, images: usize) -> Self {
        state.decoding.fetch_add(images, Ordering::SeqCst);
        Self { state, images }
    }
}

impl Drop for Decoding<'_> {
    fn drop(&mut self) {
        self.state.decoding.fetch_sub(self.images, Ordering::SeqCst);
    }
}

impl State {
    pub fn gauges(&self) -> metrics::Gauges {
        metrics::Gauges {
            queue_depth: self.queue.depth(),
            queue_capacity: self.queue.capacity(),
            ready: self.model.get().is_some(),
            body_bytes_held: self.body_budget.held(),
            body_budget: self.config.body_budget,
            connections_open: self.connections.get(),
        }
    }

    fn request_number(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// What happened, for the caller to log.
#[derive(Debug)]
pub enum Event<'a> {
    Listening(SocketAddr),
    Ready {
        model: &'a str,
        seconds: f64,
    },
    Stopping {
        signal: &'a str,
    },
    /// `/v1/predict` responses by status.
    Stopped {
        statuses: Vec<(u16, u64)>,
    },
    GaveUp {
        grace: Duration,
    },
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("loading the model: {0}")]
    Load(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serve until SIGTERM or SIGINT. The port opens first (so `/healthz` answers and `/readyz`
/// says 503 while loading); `load` runs on the model thread, and its error ends the server.
pub fn run<E: std::fmt::Display>(
    config: ServeConfig,
    load: impl FnOnce() -> Result<ServedModel, E> + Send + 'static,
    on_event: impl Fn(Event<'_>) + Send + Sync + 'static,
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The network work is small next to the model's; the cores go to decoding and the model
        // (both on graft's rayon pool).
        .worker_threads(1)
        .max_blocking_threads(2)
        .thread_name("graft-serve-io")
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(config, load, on_event));
    // Blocking decode tasks of connections that were given up on are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve<E: std::fmt::Display>(
    config: ServeConfig,
    load: impl FnOnce() -> Result<ServedModel, E> + Send + 'static,
    on_event: impl Fn(Event<'_>) + Send + Sync + 'static,
) -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before the port opens: a signal from then on stops the server cleanly.
    let term = signal(SignalKind::terminate())?;
    let interrupt = signal(SignalKind::interrupt())?;

    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let listener = budget::BoundedListener::new(listener, config.max_connections);
    let (queue, taker) = batcher::queue::<Chw, Scores>(config.queue);
    let state = Arc::new(State {
        metrics: metrics::Metrics::default(),
        queue,
        model: OnceLock::new(),
        next_request: AtomicU64::new(0),
        decoding: AtomicUsize::new(0),
        body_budget: budget::BodyBudget::new(config.body_budget),
        connections: listener.gauge(),
        config: config.clone(),
    });
    on_event(Event::Listening(axum::serve::Listener::local_addr(
        &listener,
    )?));

    let on_event = Arc::new(on_event);
    // Whatever ends the server reports here: a signal, the model failing to load, or the
    // server itself (after the graceful shutdown, or on an I/O error).
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<Stop>(4);
    for (mut stream, name) in [(term, "SIGTERM"), (interrupt, "SIGINT")] {
        let tx = stop_tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let _ = tx.send(Stop::Signal(name)).await;
            }
        });
    }
    let model_thread = {
        let state = state.clone();
        let on_event = on_event.clone();
        let tx = stop_tx.clone();
        std::thread::Builder::new()
            .name("graft-serve-model".into())
            .spawn(move || {
                let started = Instant::now();
                let model = match load() {
                    Ok(model) => model,
                    Err(e) => {
                        let _ = tx.blocking_send(Stop::LoadFailed(format!("{e:#}")));
                        return;
                    }
                };
                drop(tx);
                let backbone = model.backbone();
                let info = ModelInfo {
                    name: model.name(),
                    config: backbone.config.clone(),
                    classes: model.top().class_names(&backbone.config),
                };
                on_event(Event::Ready {
                    model: &info.name,
                    seconds: started.elapsed().as_secs_f64(),
                });
                let _ = state.model.set(info);
                // The thread holds no handle on the queue's sending side: it ends when the
                // server has dropped every one of them and the queue is empty.
                let weak = Arc::downgrade(&state);
                drop(state);
                let on_their_way = {
                    let weak = weak.clone();
                    move || {
                        weak.upgrade()
                            .is_some_and(|state| state.decoding.load(Ordering::SeqCst) > 0)
                    }
                };
                taker.run(config.max_batch, config.max_wait, on_their_way, |images| {
                    let scores = forward(&model, &images);
                    if let Some(state) = weak.upgrade() {
                        state.metrics.batch_size.observe(images.len() as f64);
                        state
                            .metrics
                            .images
                            .fetch_add(images.len() as u64, Ordering::Relaxed);
                    }
                    scores
                });
            })?
    };

    let app = routes::router(state.clone());
    let (graceful_tx, graceful_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = graceful_rx.await;
        })
        .into_future();
    {
        let tx = stop_tx.clone();
        tokio::spawn(async move {
            let result = server.await.map_err(ServeError::Io);
            let _ = tx.send(Stop::ServerEnded(result)).await;
        });
    }
    drop(stop_tx);

    let outcome = match stop_rx.recv().await {
        Some(Stop::Signal(signal)) => {
            on_event(Event::Stopping { signal });
            Ok(())
        }
        Some(Stop::LoadFailed(reason)) => Err(ServeError::Load(reason)),
        // The server ended by itself: only an I/O error does that.
        Some(Stop::ServerEnded(result)) => return result,
        None => Ok(()),
    };
    let _ = graceful_tx.send(());
    let finished = tokio::time::timeout(config.grace, async {
        loop {
            match stop_rx.recv().await {
                Some(Stop::ServerEnded(_)) | None => break,
                Some(_) => {} // a second signal changes nothing: the server is stopping
            }
        }
    })
    .await
    .is_ok();
    if !finished {
        on_event(Event::GaveUp {
            grace: config.grace,
        });
    }
    on_event(Event::Stopped {
        statuses: state.metrics.statuses(metrics::PREDICT),
    });
    if finished {
        // Every connection is closed, so this is the last handle on the queue: the model
        // thread answers what is left and ends.
        drop(state);
        let join = tokio::task::spawn_blocking(move || model_thread.join());
        let _ = tokio::time::timeout(config.grace, join).await;
    }
    outcome
}

/// What ends [`serve`].
enum Stop {
    Signal(&'static str),
    LoadFailed(String),
    ServerEnded(Result<(), ServeError>),
}

/// One forward pass over `images`: their class probabilities, in order. A panic in the model
/// (a bug, not the input: the images are already decoded and preprocessed) answers this batch
/// with an error instead of taking the server down.
fn forward(model: &ServedModel, images: &[Chw]) -> Vec<Scores> {
    let backbone = model.backbone();
    let run = || {
        let refs: Vec<&Chw> = images.iter().collect();
        let batch = to_batch(&refs, backbone.config.resolution, &backbone.device());
        model.top().probabilities(backbone, batch)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(probabilities) => {
            let classes = probabilities.len() / images.len().max(1);
            probabilities
                .chunks(classes.max(1))
                .map(|row| Ok(row.to_vec()))
                .collect()
        }
        Err(_) => images
            .iter()
            .map(|_| Err("the model failed on this batch".to_string()))
            .collect(),
    }
}
