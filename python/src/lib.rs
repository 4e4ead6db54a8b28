//! `graft._graft`: the Python face of graft's library. The pure-Python `graft` package wraps
//! it (progress bars, documentation); every computation runs here with the GIL released.
//!
//! Images are given as paths (str or os.PathLike) or as uint8 numpy arrays (HxWx3, or
//! NxHxWx3 for several), alone or in a list. A file that cannot be decoded raises
//! `graft.ImageError` naming it; the error's `results` holds what the other images gave.

use std::path::PathBuf;

use image::RgbImage;
use numpy::{PyArray2, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyException, PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use graft::data::dataset::{self, SplitOptions};
use graft::data::preprocess::{crop_and_resize, normalize};
use graft::data::{Chw, DecodeError, DecodeLimits, load_images, preprocess, to_batch};
use graft::progress::Progress;
use graft::recipe::bottleneck::{self, BottleneckOptions};
use graft::recipe::finetune::{self, FinetuneRecipe};
use graft::recipe::{BackboneChoice, RecipeError};
use graft::train::Recipe;
use graft::train::finetune::FinetuneOptions;

pyo3::create_exception!(
    _graft,
    GraftError,
    PyException,
    "An error of graft: the message names the file or value at fault."
);
pyo3::create_exception!(
    _graft,
    ImageError,
    GraftError,
    "Images that could not be read or decoded; `results` holds the others' results (None for the failed ones)."
);

/// Images per forward pass.
const BATCH: usize = 32;

/// One input image: a file to decode, or pixels already in memory.
enum Input {
    File(PathBuf),
    Pixels(RgbImage),
}

impl Input {
    fn name(&self, index: usize) -> String {
        match self {
            Input::File(path) => path.display().to_string(),
            Input::Pixels(_) => format!("<array {index}>"),
        }
    }
}

/// A uint8 array HxWx3 as one image, NxHxWx3 as N.
fn pixels(array: PyReadonlyArrayDyn<'_, u8>) -> PyResult<Vec<Input>> {
    let shape = array.shape().to_vec();
    let bad = || {
        PyValueError::new_err(format!(
            "an image array must be HxWx3 or NxHxWx3 uint8, got shape {shape:?}"
        ))
    };
    let (n, h, w) = match shape.as_slice() {
        [h, w, 3] => (1, *h, *w),
        [n, h, w, 3] => (*n, *h, *w),
        _ => return Err(bad()),
    };
    let values: Vec<u8> = array.as_array().iter().copied().collect();
    values
        .chunks_exact((h * w * 3).max(1))
        .take(n)
        .map(|chunk| {
            RgbImage::from_raw(w as u32, h as u32, chunk.to_vec())
                .map(Input::Pixels)
                .ok_or_else(bad)
        })
        .collect()
}

/// The images of a Python argument: a path, an array, or a list of them.
fn inputs(images: &Bound<'_, PyAny>) -> PyResult<Vec<Input>> {
    if let Ok(array) = images.extract::<PyReadonlyArrayDyn<'_, u8>>() {
        return pixels(array);
    }
    if let Ok(path) = images.extract::<PathBuf>() {
        return Ok(vec![Input::File(path)]);
    }
    let mut out = Vec::new();
    for item in images.try_iter()? {
        let item = item?;
        if let Ok(array) = item.extract::<PyReadonlyArrayDyn<'_, u8>>() {
            out.extend(pixels(array)?);
        } else {
            out.push(Input::File(item.extract::<PathBuf>().map_err(|_| {
                PyValueError::new_err(
                    "images must be paths (str or os.PathLike) or uint8 numpy arrays",
                )
            })?));
        }
    }
    Ok(out)
}

/// Pooled features of each input, in order; a file that cannot be decoded gets its error.
fn feature_rows(
    backbone: &graft::backbone::Backbone,
    inputs: &[Input],
) -> Vec<Result<Vec<f32>, DecodeError>> {
    let config = &backbone.config;
    let device = backbone.device();
    let dim = config.feature_dim;
    let mut out = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(BATCH) {
        let files: Vec<PathBuf> = chunk
            .iter()
            .filter_map(|i| match i {
                Input::File(p) => Some(p.clone()),
                Input::Pixels(_) => None,
            })
            .collect();
        let mut decoded = load_images(&files, config, DecodeLimits::default()).into_iter();
        let prepared: Vec<Result<Chw, DecodeError>> = chunk
            .iter()
            .map(|input| match input {
                // cannot fail: one decoded result per file of the chunk, in order
                Input::File(_) => decoded.next().expect("one result per file"),
                Input::Pixels(image) => Ok(preprocess(image, config)),
            })
            .collect();
        let good: Vec<&Chw> = prepared.iter().flatten().collect();
        let mut rows = Vec::new();
        if !good.is_empty() {
            let batch = to_batch(&good, config.resolution, &device);
            rows = backbone
                .features(batch)
                .into_data()
                .try_into_vec::<f32>()
                // cannot fail: graft makes only f32 tensors
                .expect("features are f32");
        }
        let mut next = rows.chunks_exact(dim);
        for result in prepared {
            // cannot fail: one row per decoded image
            out.push(result.map(|_| next.next().expect("one row per image").to_vec()));
        }
    }
    out
}

/// The network inputs of `inputs` as graft prepares them for `backbone` (decode, crop, resize;
/// then normalise unless `uint8`), as an array: float32 `[N, 3, R, R]`, or uint8 `[N, R, R, 3]`
/// for an ONNX model exported with uint8 input. A file that cannot be decoded raises
/// `ImageError` naming it.
fn network_inputs<'py>(
    py: Python<'py>,
    config: &graft::backbone::SourceConfig,
    images: &Bound<'py, PyAny>,
    uint8: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let inputs = inputs(images)?;
    let prepared: Vec<Result<RgbImage, DecodeError>> = py.detach(|| {
        inputs
            .iter()
            .map(|input| match input {
                Input::File(path) => {
                    graft::data::decode::decode_for(path, config, DecodeLimits::default())
                        .map(|rgb| crop_and_resize(&rgb, config))
                }
                Input::Pixels(image) => Ok(crop_and_resize(image, config)),
            })
            .collect()
    });
    let failures: Vec<(usize, String)> = prepared
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e.reason.clone())))
        .collect();
    if !failures.is_empty() {
        let results = PyList::empty(py);
        for _ in &prepared {
            results.append(py.None())?;
        }
        return Err(raise_failures(py, &inputs, &failures, results));
    }
    let r = config.resolution;
    let n = prepared.len();
    let images = prepared.into_iter().flatten();
    if uint8 {
        let flat: Vec<u8> = images.flat_map(RgbImage::into_raw).collect();
        Ok(numpy::PyArray1::from_vec(py, flat)
            .reshape([n, r, r, 3])?
            .into_any())
    } else {
        let flat: Vec<f32> = images
            .flat_map(|image| normalize(&image, &config.normalization))
            .collect();
        Ok(numpy::PyArray1::from_vec(py, flat)
            .reshape([n, 3, r, r])?
            .into_any())
    }
}

/// graft's error as a Python exception.
fn error(e: RecipeError) -> PyErr {
    match e {
        RecipeError::Interrupted(i) => PyKeyboardInterrupt::new_err(i.to_string()),
        other => GraftError::new_err(other.to_string()),
    }
}

/// The library's progress, forwarded to a Python callable `callback(event, *args)`; each
/// report also checks for Ctrl-C, which asks graft to stop at its next safe point.
struct Forward {
    callback: Option<Py<PyAny>>,
    interrupt: Option<PyErr>,
}

impl Forward {
    fn new(callback: Option<Py<PyAny>>) -> Self {
        Self {
            callback,
            interrupt: None,
        }
    }

    fn send(
        &mut self,
        event: &str,
        args: impl for<'py> FnOnce(Python<'py>) -> Vec<Bound<'py, PyAny>>,
    ) {
        Python::attach(|py| {
            if let Some(callback) = &self.callback {
                let mut all = vec![PyString::new(py, event).into_any()];
                all.extend(args(py));
                let called = PyTuple::new(py, all).and_then(|args| callback.call1(py, args));
                // Ctrl-C while the callback ran surfaces as its KeyboardInterrupt; any other
                // failure of a progress display must not stop the computation.
                if let Err(e) = called
                    && e.is_instance_of::<PyKeyboardInterrupt>(py)
                {
                    self.interrupted(e);
                }
            }
            if let Err(e) = py.check_signals() {
                self.interrupted(e);
            }
        });
    }

    /// Keep the first interruption and ask graft to stop at its next safe point.
    fn interrupted(&mut self, e: PyErr) {
        if self.interrupt.is_none() {
            self.interrupt = Some(e);
            graft::interrupt::request();
        }
    }

    /// The computation's result, or the interruption the user asked for.
    fn finish<T>(self, result: Result<T, RecipeError>) -> PyResult<T> {
        if self.interrupt.is_some() {
            graft::interrupt::clear();
        }
        match (result, self.interrupt) {
            (Err(RecipeError::Interrupted(_)), Some(e)) => Err(e),
            (result, _) => result.map_err(error),
        }
    }
}

impl Progress for Forward {
    fn start(&mut self, phase: &str, total: usize, unit: &str) {
        self.send("start", |py| {
            vec![
                phase.into_pyobject(py).unwrap().into_any(),
                total.into_pyobject(py).unwrap().into_any(),
                unit.into_pyobject(py).unwrap().into_any(),
            ]
        });
    }
    fn advance(&mut self, done: usize) {
        self.send("advance", |py| {
            vec![done.into_pyobject(py).unwrap().into_any()]
        });
    }
    fn status(&mut self, text: &str) {
        self.send("status", |py| {
            vec![text.into_pyobject(py).unwrap().into_any()]
        });
    }
    fn finish(&mut self) {
        self.send("finish", |_| vec![]);
    }
    fn note(&mut self, line: &str) {
        self.send("note", |py| {
            vec![line.into_pyobject(py).unwrap().into_any()]
        });
    }
}

/// Raise `ImageError` for the failed inputs, carrying `results` (None where failed).
fn raise_failures<'py>(
    py: Python<'py>,
    inputs: &[Input],
    failures: &[(usize, String)],
    results: Bound<'py, PyList>,
) -> PyErr {
    let lines: Vec<String> = failures
        .iter()
        .map(|(i, reason)| format!("{}: {reason}", inputs[*i].name(*i)))
        .collect();
    let err = ImageError::new_err(lines.join("; "));
    let value = err.value(py);
    let _ = value.setattr("results", results);
    let paths: Vec<String> = failures.iter().map(|(i, _)| inputs[*i].name(*i)).collect();
    let _ = value.setattr("paths", paths);
    err
}

/// A pretrained backbone without its classifier: pooled features of images.
#[pyclass(module = "graft._graft", name = "Backbone", frozen)]
struct Backbone {
    inner: graft::backbone::Backbone,
}

#[pymethods]
impl Backbone {
    #[new]
    #[pyo3(signature = (name = "efficientnet-lite0", weights = None))]
    fn new(py: Python<'_>, name: &str, weights: Option<PathBuf>) -> PyResult<Self> {
        let choice = BackboneChoice {
            weights,
            ..BackboneChoice::new(name)
        };
        let inner = py.detach(|| choice.load(false)).map_err(error)?;
        Ok(Self { inner })
    }

    /// Registry name of the architecture and weights.
    #[getter]
    fn name(&self) -> String {
        self.inner.config.name.clone()
    }

    /// Length of a feature row.
    #[getter]
    fn feature_dim(&self) -> usize {
        self.inner.config.feature_dim
    }

    /// Input side in pixels after the source preprocessing.
    #[getter]
    fn resolution(&self) -> usize {
        self.inner.config.resolution
    }

    /// Pooled features `[N, feature_dim]` (float32) of the images, preprocessed as the weights'
    /// source did.
    fn features<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let inputs = inputs(images)?;
        let rows = py.detach(|| feature_rows(&self.inner, &inputs));
        let dim = self.inner.config.feature_dim;
        let failures: Vec<(usize, String)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e.reason.clone())))
            .collect();
        if !failures.is_empty() {
            let results = PyList::empty(py);
            for row in &rows {
                match row {
                    Ok(row) => results.append(numpy::PyArray1::from_slice(py, row))?,
                    Err(_) => results.append(py.None())?,
                }
            }
            return Err(raise_failures(py, &inputs, &failures, results));
        }
        let flat: Vec<f32> = rows.into_iter().flatten().flatten().collect();
        let n = flat.len() / dim.max(1);
        let array = numpy::PyArray1::from_vec(py, flat);
        array.reshape([n, dim])
    }

    /// The network inputs of the images as graft prepares them: float32 `[N, 3, R, R]`
    /// (normalised), or with `uint8=True` the cropped and resized pixels `[N, R, R, 3]`: what
    /// a model from `graft export` takes.
    #[pyo3(signature = (images, uint8 = false))]
    fn preprocess<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        uint8: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        network_inputs(py, &self.inner.config, images, uint8)
    }
}

/// For each row of features, the `top` classes its `scores` rank best: a list (one per input,
/// in order) of lists of `{"label", "index", "probability"}`; inputs that could not be read
/// raise [`ImageError`] naming each.
fn ranked<'py>(
    py: Python<'py>,
    inputs: &[Input],
    rows: &[Result<Vec<f32>, DecodeError>],
    names: &[&str],
    top: usize,
    scores: impl Fn(&[f32]) -> Vec<f32>,
) -> PyResult<Bound<'py, PyList>> {
    let results = PyList::empty(py);
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match row {
            Ok(row) => {
                let ranked = PyList::empty(py);
                for p in graft::infer::top_k(&scores(row), top, names) {
                    let entry = PyDict::new(py);
                    entry.set_item("label", p.label)?;
                    entry.set_item("index", p.index)?;
                    entry.set_item("probability", p.probability)?;
                    ranked.append(entry)?;
                }
                results.append(ranked)?;
            }
            Err(e) => {
                failures.push((i, e.reason.clone()));
                results.append(py.None())?;
            }
        }
    }
    if failures.is_empty() {
        Ok(results)
    } else {
        Err(raise_failures(py, inputs, &failures, results))
    }
}

/// Zero-shot classification with a CLIP or SigLIP model: your labels, no training.
#[pyclass(module = "graft._graft", name = "ZeroShot", frozen)]
struct ZeroShot {
    model: graft::clip::ContrastiveModel,
    classifier: graft::clip::ZeroShotClassifier,
}

#[pymethods]
impl ZeroShot {
    /// `model`: `hf:openai/clip-vit-base-patch32` (fetched once), or a folder holding a
    /// `transformers` or OpenCLIP repository. `prompts`: templates with `{}` for the label,
    /// averaged per label (default: the CLIP paper's 80 ImageNet templates).
    #[new]
    #[pyo3(signature = (model, labels, prompts = None))]
    fn new(
        py: Python<'_>,
        model: String,
        labels: Vec<String>,
        prompts: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let prompts = match prompts {
            Some(templates) => {
                graft::clip::Prompts::templates(templates).map_err(PyValueError::new_err)?
            }
            None => graft::clip::Prompts::ImageNetEnsemble,
        };
        py.detach(|| {
            let model = graft::clip::open(&model, &mut graft::progress::Silent)?;
            let classifier = model.classifier(&labels, &prompts)?;
            Ok::<_, graft::clip::ClipError>(Self { model, classifier })
        })
        .map_err(|e| GraftError::new_err(e.to_string()))
    }

    /// The labels, in the order of `index` in the predictions.
    #[getter]
    fn labels(&self) -> Vec<String> {
        self.classifier.labels.clone()
    }

    /// The `top` most likely labels of each image (paths or uint8 `[H, W, 3]` arrays), as
    /// `Model.predict` gives them. CLIP: a softmax over the labels; SigLIP: each label's own
    /// sigmoid.
    #[pyo3(signature = (images, top = 5))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        top: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let inputs = inputs(images)?;
        let rows = py.detach(|| feature_rows(&self.model.image, &inputs));
        let names: Vec<&str> = self.classifier.labels.iter().map(String::as_str).collect();
        ranked(py, &inputs, &rows, &names, top, |row| {
            self.classifier.probabilities(row)
        })
    }
}

/// A model trained by graft (a run directory), ready to predict and evaluate.
#[pyclass(module = "graft._graft", name = "Model", frozen)]
struct Model {
    inner: graft::run::TrainedModel,
}

#[pymethods]
impl Model {
    /// The class names, in the order of the model's outputs.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner.card.classes.clone()
    }

    /// The run directory.
    #[getter]
    fn run_dir(&self) -> PathBuf {
        self.inner.dir.clone()
    }

    /// The recipe that trained it.
    #[getter]
    fn recipe(&self) -> &'static str {
        self.inner.card.recipe.name()
    }

    /// The backbone's registry name.
    #[getter]
    fn backbone(&self) -> String {
        self.inner.card.backbone.clone()
    }

    /// The temperature T of its calibrated probabilities, softmax(logits / T), fitted on the
    /// validation split (1 for runs from before calibration); `predict` applies it.
    #[getter]
    fn temperature(&self) -> f64 {
        self.inner.card.temperature
    }

    /// `metrics.json` of the run: validation metrics as recorded when it was trained.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let metrics = graft::run::load_metrics(&self.inner.dir)
            .map_err(|e| GraftError::new_err(e.to_string()))?;
        json(py, &metrics)
    }

    /// The `top` most likely classes of each image: a list (one per image, in order) of lists
    /// of `{"label", "index", "probability"}`, best first.
    #[pyo3(signature = (images, top = 5))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        top: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let inputs = inputs(images)?;
        let model = &self.inner;
        let rows = py.detach(|| feature_rows(&model.backbone, &inputs));
        let names: Vec<&str> = model.card.classes.iter().map(String::as_str).collect();
        ranked(py, &inputs, &rows, &names, top, |row| {
            model.head.scores(row, row.len())
        })
    }

    /// The network inputs of the images as graft prepares them: float32 `[N, 3, R, R]`
    /// (normalised), or with `uint8=True` the cropped and resized pixels `[N, R, R, 3]`: what
    /// a model from `graft export` takes.
    #[pyo3(signature = (images, uint8 = false))]
    fn preprocess<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        uint8: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        network_inputs(py, &self.inner.backbone.config, images, uint8)
    }

    /// Heatmaps of the regions that drove each image's predicted class (CAM / Grad-CAM, see
    /// graft's docs/explain.md): for each image, a PNG of it as the network saw it (the crop
    /// at the model's resolution) with the heatmap overlaid, written into `out_dir` and named
    /// after the photo (arrays as `array-N.png`). Returns the paths written, in input order.
    /// A kNN model has no class weights to explain with: `GraftError`.
    fn explain(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        out_dir: PathBuf,
    ) -> PyResult<Vec<String>> {
        use graft::explain::{LinearTop, explain_crops, overlay, png_name};
        let inputs = inputs(images)?;
        let model = &self.inner;
        let top =
            LinearTop::from_head(&model.head).map_err(|e| GraftError::new_err(e.to_string()))?;
        let config = &model.backbone.config;
        let crops: Vec<Result<RgbImage, DecodeError>> = py.detach(|| {
            inputs
                .iter()
                .map(|input| match input {
                    Input::File(path) => {
                        graft::data::decode::decode_for(path, config, DecodeLimits::default())
                            .map(|rgb| crop_and_resize(&rgb, config))
                    }
                    Input::Pixels(image) => Ok(crop_and_resize(image, config)),
                })
                .collect()
        });
        let failures: Vec<(usize, String)> = crops
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e.reason.clone())))
            .collect();
        if !failures.is_empty() {
            let results = PyList::empty(py);
            for _ in &crops {
                results.append(py.None())?;
            }
            return Err(raise_failures(py, &inputs, &failures, results));
        }
        let crops: Vec<RgbImage> = crops.into_iter().flatten().collect();
        let written = py.detach(|| -> Result<Vec<String>, graft::explain::ExplainError> {
            std::fs::create_dir_all(&out_dir).map_err(|source| {
                graft::explain::ExplainError::Io {
                    path: out_dir.clone(),
                    source,
                }
            })?;
            let mut taken = std::collections::HashSet::new();
            let mut written = Vec::with_capacity(crops.len());
            for (start, chunk) in (0..).step_by(BATCH).zip(crops.chunks(BATCH)) {
                let chunk: Vec<&RgbImage> = chunk.iter().collect();
                for (i, (_, drawn)) in explain_crops(&model.backbone, &top, &chunk)?
                    .into_iter()
                    .enumerate()
                {
                    let name = match &inputs[start + i] {
                        Input::File(path) => path.clone(),
                        Input::Pixels(_) => PathBuf::from(format!("array-{}", start + i)),
                    };
                    let png = out_dir.join(png_name(&name, &mut taken));
                    overlay::write_png(&drawn, &png)?;
                    written.push(png.to_string_lossy().into_owned());
                }
            }
            Ok(written)
        });
        written.map_err(|e| GraftError::new_err(e.to_string()))
    }

    /// Metrics (accuracy, per-class precision / recall / F1, confusion matrix) on every
    /// labelled image under `folder`, whose class folders must be among the model's classes.
    #[pyo3(signature = (folder, progress = None))]
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        folder: PathBuf,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut forward = Forward::new(progress);
        let model = &self.inner;
        let result = py.detach(|| model.evaluate(&folder, &mut forward));
        let metrics = forward.finish(result)?;
        json(py, &metrics)
    }
}

/// A serde value as Python objects (through JSON).
fn json<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| GraftError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// Open a run directory written by `graft train` or `graft.train`.
#[pyfunction]
#[pyo3(signature = (run_dir, weights = None))]
fn open(py: Python<'_>, run_dir: PathBuf, weights: Option<PathBuf>) -> PyResult<Model> {
    let inner = py
        .detach(|| graft::run::TrainedModel::open(&run_dir, weights.as_deref()))
        .map_err(|e| GraftError::new_err(e.to_string()))?;
    Ok(Model { inner })
}

/// `(features [N, dim] float32, labels, paths)`.
type Extracted<'py> = (Bound<'py, PyArray2<f32>>, Vec<String>, Vec<PathBuf>);

/// Cached features of a labelled folder: `(features [N, dim] float32, labels, paths)`.
#[pyfunction]
#[pyo3(signature = (folder, backbone = "efficientnet-lite0", weights = None, cache_dir = None, split = "all", val_fraction = 0.2, seed = 0, batch_size = 32, progress = None))]
#[allow(clippy::too_many_arguments)]
fn extract<'py>(
    py: Python<'py>,
    folder: PathBuf,
    backbone: &str,
    weights: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    split: &str,
    val_fraction: f64,
    seed: u64,
    batch_size: usize,
    progress: Option<Py<PyAny>>,
) -> PyResult<Extracted<'py>> {
    if !matches!(split, "all" | "train" | "val") {
        return Err(PyValueError::new_err(format!(
            "split must be \"all\", \"train\" or \"val\", got {split:?}"
        )));
    }
    let choice = BackboneChoice {
        weights,
        ..BackboneChoice::new(backbone)
    };
    let mut forward = Forward::new(progress);
    let result = py.detach(|| -> Result<_, RecipeError> {
        let data = dataset::open(&folder, SplitOptions { val_fraction, seed })?;
        let backbone = choice.load(false)?;
        let mut cache = bottleneck::open_cache(&backbone, cache_dir.as_deref(), &mut forward)?;
        let groups: Vec<&[dataset::Sample]> = match split {
            "train" => vec![&data.train],
            "val" => vec![&data.val],
            _ => vec![&data.train, &data.val],
        };
        let (sets, _) =
            bottleneck::features(&backbone, &mut cache, &groups, batch_size, &mut forward)?;
        // A numpy array is in memory: read the cached rows into one.
        let matrices = sets
            .iter()
            .map(|set| set.to_matrix())
            .collect::<Result<Vec<_>, _>>()?;
        Ok((data.classes, matrices))
    });
    let (classes, matrices) = forward.finish(result)?;
    let dim = matrices.first().map_or(0, |m| m.dim);
    let mut rows = Vec::new();
    let (mut labels, mut paths) = (Vec::new(), Vec::new());
    for m in matrices {
        rows.extend(m.rows);
        labels.extend(m.labels.iter().map(|&l| classes[l].clone()));
        paths.extend(m.paths);
    }
    let n = labels.len();
    let array = numpy::PyArray1::from_vec(py, rows).reshape([n, dim])?;
    Ok((array, labels, paths))
}

/// One of a fine-tuning enum's names (`"gradual"`, `"cosine"`, ...), as graft writes it.
fn named<T: serde::de::DeserializeOwned>(what: &str, name: &str, known: &str) -> PyResult<T> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| PyValueError::new_err(format!("unknown {what} {name:?}: {known}")))
}

/// Train recipe 2 or 3 on a labelled folder; returns the trained model (its run directory
/// opened).
#[pyfunction]
#[pyo3(signature = (folder, recipe = "head", out = None, backbone = "efficientnet-lite0", weights = None, cache_dir = None, val_fraction = 0.2, seed = 0, lr = 1e-3, epochs = 100, batch_size = 32, dropout = 0.2, weight_decay = 1e-4, label_smoothing = 0.0, patience = 10, balanced_class_weights = false, alpha = 1.0, c = 1.0, k = 5, extract_batch_size = 32, backbone_lr = 1e-4, lr_decay = 0.7, unfreeze = "gradual", stages = 3, epochs_per_stage = 2, schedule = "cosine", finetune_batch_size = 16, bn = "frozen", augment = "light", resume = false, progress = None))]
#[allow(clippy::too_many_arguments)]
fn train(
    py: Python<'_>,
    folder: PathBuf,
    recipe: &str,
    out: Option<PathBuf>,
    backbone: &str,
    weights: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    val_fraction: f64,
    seed: u64,
    lr: f64,
    epochs: usize,
    batch_size: usize,
    dropout: f64,
    weight_decay: f64,
    label_smoothing: f64,
    patience: usize,
    balanced_class_weights: bool,
    alpha: f64,
    c: f64,
    k: usize,
    extract_batch_size: usize,
    backbone_lr: f64,
    lr_decay: f64,
    unfreeze: &str,
    stages: usize,
    epochs_per_stage: usize,
    schedule: &str,
    finetune_batch_size: usize,
    bn: &str,
    augment: &str,
    resume: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Model> {
    let recipe = match recipe {
        "head" => Recipe::Head,
        "logreg" => Recipe::Logreg,
        "svm" => Recipe::Svm,
        "knn" => Recipe::Knn,
        "finetune" => Recipe::Finetune,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown recipe {other:?}: head, logreg, svm, knn or finetune"
            )));
        }
    };
    if !(0.0..1.0).contains(&dropout) || !(0.0..1.0).contains(&val_fraction) {
        return Err(PyValueError::new_err(
            "dropout and val_fraction must be in [0, 1)",
        ));
    }
    let out = out.unwrap_or_else(|| {
        graft::run::fresh_dir(
            std::path::Path::new("runs"),
            &bottleneck::data_name(&folder),
            recipe.name(),
        )
    });
    let backbone = BackboneChoice {
        weights,
        ..BackboneChoice::new(backbone)
    };
    if recipe == Recipe::Finetune {
        let options = FinetuneRecipe {
            backbone,
            split: SplitOptions { val_fraction, seed },
            tuning: FinetuneOptions {
                head_learning_rate: lr,
                backbone_learning_rate: backbone_lr,
                lr_decay,
                unfreeze: named("unfreeze", unfreeze, "gradual or all")?,
                stages,
                epochs_per_stage,
                schedule: named("schedule", schedule, "cosine, one-cycle, step or constant")?,
                batch_size: finetune_batch_size,
                bn_mode: named("bn", bn, "frozen or train")?,
                augment: named("augment", augment, "none, light or strong")?,
                dropout,
                weight_decay,
                label_smoothing,
                seed,
                head_epochs: epochs,
                patience,
            },
            head_batch_size: batch_size,
            balanced_class_weights,
            cache_dir,
            extract_batch_size,
            resume,
            exclude: Vec::new(),
        };
        let mut forward = Forward::new(progress);
        let result = py.detach(|| -> Result<_, RecipeError> {
            finetune::train(&folder, &out, &options, &mut forward)?;
            Ok(graft::run::TrainedModel::open(&out, None)?)
        });
        let inner = forward.finish(result)?;
        return Ok(Model { inner });
    }
    let options = BottleneckOptions {
        recipe,
        backbone,
        split: SplitOptions { val_fraction, seed },
        dense: graft::train::dense::DenseOptions {
            learning_rate: lr,
            epochs,
            batch_size,
            dropout,
            weight_decay,
            label_smoothing,
            balanced_class_weights,
            patience,
            seed,
        },
        classical: graft::train::classical::ClassicalOptions {
            logreg_alpha: alpha,
            svm_c: c,
            balanced_class_weights,
            knn_k: k,
            ..Default::default()
        },
        cache_dir,
        extract_batch_size,
        exclude: Vec::new(),
    };
    let mut forward = Forward::new(progress);
    let result = py.detach(|| -> Result<_, RecipeError> {
        bottleneck::train(&folder, &out, &options, &mut forward)?;
        Ok(graft::run::TrainedModel::open(&out, None)?)
    });
    let inner = forward.finish(result)?;
    Ok(Model { inner })
}

/// The network inputs of `images` for the registry backbone `backbone`, prepared by the
/// preprocessing its weights were trained with (crop, Pillow's resize, normalisation) without
/// loading its weights: float32 `[N, 3, R, R]`, or with `uint8=True` the cropped and resized
/// pixels `[N, R, R, 3]`.
#[pyfunction(name = "preprocess")]
#[pyo3(signature = (images, backbone = "efficientnet-lite0", uint8 = false))]
fn preprocess_for<'py>(
    py: Python<'py>,
    images: &Bound<'py, PyAny>,
    backbone: &str,
    uint8: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let info = graft::backbone::find(backbone).ok_or_else(|| {
        GraftError::new_err(format!(
            "unknown backbone `{backbone}` (`graft weights list` lists the registry's names)"
        ))
    })?;
    network_inputs(py, &info.source_config(None), images, uint8)
}

#[pymodule]
fn _graft(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Backbone>()?;
    m.add_class::<Model>()?;
    m.add_class::<ZeroShot>()?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(extract, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess_for, m)?)?;
    m.add("GraftError", m.py().get_type::<GraftError>())?;
    m.add("ImageError", m.py().get_type::<ImageError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
