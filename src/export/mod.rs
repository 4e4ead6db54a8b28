//! ONNX export (opset 17): a backbone alone, or a trained model as one graph (the backbone as
//! trained, BatchNorm folded, then the top and softmax), with a dynamic batch dimension.
//!
//! The graph takes the image after the weights' source preprocessing: float32 NCHW already
//! normalised ([`InputKind::Float`]), or uint8 NHWC RGB after the crop and resize, with the
//! cast and normalisation inside the graph ([`InputKind::Uint8`], for mobile and web
//! runtimes). `preprocessing.json` and `labels.txt` are written beside the model so that a
//! user can reproduce the crop / resize / normalisation.
//!
//! TF "SAME" padding, asymmetric where a stride-2 conv meets an even side, becomes an explicit
//! `Pad` node before the conv (some runtimes mishandle asymmetric conv pads); symmetric
//! padding stays the conv's `pads`. A kNN top is not a fixed graph: its export is the feature
//! model, and [`OnnxModel::note`] says so.

pub mod graph;
pub mod proto;

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::backbone::mbconv::MbNet;
use crate::backbone::mbconv::blocks::{ConvBnAct, axis_padding};
use crate::backbone::{Backbone, CropRule, SourceConfig};
use crate::head::Head;
use crate::run::TrainedModel;
use graph::{Dim, GraphBuilder, int, ints};
use proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto, data_type};

/// The ONNX operator set the graphs use.
pub const OPSET: i64 = 17;
/// The IR version that goes with [`OPSET`] (ONNX 1.12+).
pub const IR_VERSION: i64 = 8;

/// What the exported graph takes as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// `input`: float32 `[batch, 3, R, R]`, cropped, resized and normalised as the source
    /// config says.
    #[default]
    Float,
    /// `image`: uint8 `[batch, R, R, 3]` RGB, cropped and resized; the graph normalises.
    Uint8,
}

/// An exported model: the ONNX message, the names of its outputs, and what a user should know.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    pub proto: ModelProto,
    pub outputs: Vec<String>,
    /// Set when the export is not the whole model (a kNN top).
    pub note: Option<String>,
}

impl OnnxModel {
    /// The serialized model (what a `.onnx` file holds).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Unsupported(#[from] crate::backbone::Unsupported),
}

const EXPORT: &str = "ONNX export";

/// The backbone alone: outputs `features` (pooled, `[batch, feature_dim]`) and, when it was
/// loaded with its ImageNet classifier, `logits` (`[batch, 1000]`).
pub fn backbone(backbone: &Backbone, input: InputKind) -> Result<OnnxModel, ExportError> {
    let net = backbone.mbconv(EXPORT)?;
    let config = &backbone.config;
    let mut emitter = Emitter::new(config);
    let x = emitter.input(input);
    let features = emitter.features(net, x);
    let mut outputs = vec![("features", features, config.feature_dim)];
    if let Some(classifier) = &net.classifier {
        let [dim, classes] = classifier.weight.dims();
        let w = emitter.weight(
            "classifier_weight",
            &[dim, classes],
            classifier.weight.val(),
        );
        let b = match &classifier.bias {
            Some(bias) => emitter.weight("classifier_bias", &[classes], bias.val()),
            None => emitter
                .g
                .weight("classifier_bias", &[classes], &vec![0.0; classes]),
        };
        let f = outputs[0].1.clone();
        let logits = emitter.g.node("Gemm", &[&f, &w, &b], vec![]);
        outputs.push(("logits", logits, classes));
    }
    let doc = format!(
        "{} backbone exported by graft {}: pooled features{}.",
        config.name,
        env!("CARGO_PKG_VERSION"),
        if outputs.len() > 1 {
            " and ImageNet logits"
        } else {
            ""
        }
    );
    Ok(emitter.finish(outputs, &doc, metadata(config, &backbone.weights_id, None)))
}

/// A trained model: outputs `probabilities` (`[batch, classes]`, softmax of the top) for a
/// linear top (dense head, logistic regression, linear SVM); for a kNN top only `features`,
/// with a [`OnnxModel::note`] saying why.
pub fn trained(model: &TrainedModel, input: InputKind) -> Result<OnnxModel, ExportError> {
    let net = model.backbone.mbconv(EXPORT)?;
    let config = &model.backbone.config;
    let mut emitter = Emitter::new(config);
    let x = emitter.input(input);
    let features = emitter.features(net, x);
    let meta = metadata(config, &model.card.weights_id, Some(&model.card.classes));
    let recipe = model.card.recipe.name();
    match &model.head {
        Head::Linear { weight, bias } => {
            let classes = bias.len();
            let dim = weight.len() / classes.max(1);
            let w = emitter.g.weight("head_weight", &[classes, dim], weight);
            let b = emitter.g.weight("head_bias", &[classes], bias);
            let scores = emitter
                .g
                .node("Gemm", &[&features, &w, &b], vec![int("transB", 1)]);
            let probabilities = emitter.g.node("Softmax", &[&scores], vec![int("axis", 1)]);
            let doc = format!(
                "graft {recipe} model on {}: class probabilities of {} classes (labels.txt).",
                config.name, classes
            );
            Ok(emitter.finish(vec![("probabilities", probabilities, classes)], &doc, meta))
        }
        Head::Knn { k, .. } => {
            let doc = format!(
                "graft knn model on {}: the feature model only (the k-nearest-neighbour top is not an ONNX graph).",
                config.name
            );
            let mut out =
                emitter.finish(vec![("features", features, config.feature_dim)], &doc, meta);
            out.note = Some(format!(
                "a kNN top (k = {k}) cannot be one ONNX graph: exported the feature model; \
                 classify its `features` output against the run's head.safetensors bank \
                 (cosine similarity, majority of the {k} nearest)"
            ));
            Ok(out)
        }
    }
}

/// Write `model` to `path`, and `preprocessing.json` and `labels.txt` beside it. Returns the
/// files written.
pub fn write(
    model: &OnnxModel,
    path: &Path,
    config: &SourceConfig,
    labels: &[String],
) -> Result<Vec<PathBuf>, ExportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io { path, source }
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let file = dir.join(path.file_name().unwrap_or(path.as_os_str()));
    crate::util::write_atomic(&file, &model.to_bytes()).map_err(io(path))?;
    let preprocessing = dir.join("preprocessing.json");
    let text = serde_json::to_string_pretty(&Preprocessing::of(config))
        // cannot fail: plain data with string keys
        .expect("serializable");
    crate::util::write_atomic(&preprocessing, text.as_bytes()).map_err(io(&preprocessing))?;
    let labels_path = dir.join("labels.txt");
    let mut text = labels.join("\n");
    text.push('\n');
    crate::util::write_atomic(&labels_path, text.as_bytes()).map_err(io(&labels_path))?;
    Ok(vec![path.to_path_buf(), preprocessing, labels_path])
}

/// `preprocessing.json`: what to do to an image before the graph, in words and as data.
#[derive(Debug, Serialize)]
struct Preprocessing {
    /// Steps for the float32 input, in order.
    float_input: Vec<String>,
    /// Steps for the uint8 input (models exported with `uint8` input).
    uint8_input: Vec<String>,
    /// The source config graft applies (the same numbers).
    source: SourceConfig,
}

impl Preprocessing {
    fn of(config: &SourceConfig) -> Self {
        let r = config.resolution;
        let filter = format!("{:?}", config.resize_filter).to_lowercase();
        let crop = match config.crop {
            CropRule::CenterSquare { fraction } => format!(
                "crop the centre square of side floor({fraction} * short side) (offsets rounded up), resize it to {r}x{r} ({filter}, antialiased)"
            ),
            CropRule::ResizeThenCenterCrop { fraction } => format!(
                "resize the short side to int({r} / {fraction}) ({filter}, antialiased), crop the centre {r}x{r}"
            ),
            CropRule::Squash => {
                format!("resize the whole image to {r}x{r} ({filter}, antialiased), no crop")
            }
        };
        let n = &config.normalization;
        let decode = "decode to RGB (EXIF orientation applied, alpha dropped)".to_string();
        Self {
            float_input: vec![
                decode.clone(),
                crop.clone(),
                format!(
                    "x = (pixel - mean) / std per channel on 0..255 values, mean {:?}, std {:?}",
                    n.mean, n.std
                ),
                format!("float32, layout NCHW [batch, 3, {r}, {r}], RGB; input name `input`"),
            ],
            uint8_input: vec![
                decode,
                crop,
                format!("uint8, layout NHWC [batch, {r}, {r}, 3], RGB; input name `image`"),
            ],
            source: config.clone(),
        }
    }
}

fn metadata(
    config: &SourceConfig,
    weights_id: &str,
    classes: Option<&[String]>,
) -> Vec<StringStringEntryProto> {
    let entry = |key: &str, value: String| StringStringEntryProto {
        key: key.into(),
        value,
    };
    let mut out = vec![
        entry("graft_version", env!("CARGO_PKG_VERSION").into()),
        entry("backbone", config.name.clone()),
        entry("weights_id", weights_id.into()),
        entry(
            "source_config",
            // cannot fail: plain data with string keys
            serde_json::to_string(config).expect("serializable"),
        ),
    ];
    if let Some(classes) = classes {
        out.push(entry(
            "classes",
            serde_json::to_string(classes).expect("serializable"),
        ));
    }
    out
}

fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        // cannot fail: converted to f32 on the line above
        .expect("converted to f32")
}

/// Emits the layers of an MBConv network, tracking the spatial size (TF SAME padding depends
/// on it).
struct Emitter<'a> {
    g: GraphBuilder,
    config: &'a SourceConfig,
    input: Option<(&'static str, i32, Vec<Dim>, String)>,
    /// The `Clip` bounds of ReLU6, made once.
    relu6: Option<(String, String)>,
    size: [usize; 2],
}

impl<'a> Emitter<'a> {
    fn new(config: &'a SourceConfig) -> Self {
        Self {
            g: GraphBuilder::default(),
            config,
            input: None,
            relu6: None,
            size: [config.resolution; 2],
        }
    }

    fn weight<const D: usize>(&mut self, hint: &str, dims: &[usize], t: Tensor<D>) -> String {
        self.g.weight(hint, dims, &values(t))
    }

    /// The graph input; returns the name of the normalised float NCHW value.
    fn input(&mut self, kind: InputKind) -> String {
        let r = self.config.resolution;
        let batch = Dim::Named("batch");
        match kind {
            InputKind::Float => {
                self.input = Some((
                    "input",
                    data_type::FLOAT,
                    vec![batch, Dim::Fixed(3), Dim::Fixed(r), Dim::Fixed(r)],
                    "float32 NCHW RGB image, cropped, resized and normalised as preprocessing.json says".into(),
                ));
                "input".into()
            }
            InputKind::Uint8 => {
                self.input = Some((
                    "image",
                    data_type::UINT8,
                    vec![batch, Dim::Fixed(r), Dim::Fixed(r), Dim::Fixed(3)],
                    "uint8 NHWC RGB image, cropped and resized as preprocessing.json says".into(),
                ));
                let n = self.config.normalization;
                let as_float =
                    self.g
                        .node("Cast", &["image"], vec![int("to", data_type::FLOAT.into())]);
                let nchw =
                    self.g
                        .node("Transpose", &[&as_float], vec![ints("perm", &[0, 3, 1, 2])]);
                let mean = self.g.weight("mean", &[1, 3, 1, 1], &n.mean);
                let std = self.g.weight("std", &[1, 3, 1, 1], &n.std);
                // The same two operations as graft's own normalisation, in the same order, so
                // the results agree to the last bit.
                let centred = self.g.node("Sub", &[&nchw, &mean], vec![]);
                self.g.node("Div", &[&centred, &std], vec![])
            }
        }
    }

    /// Stem, blocks, head conv and global average pooling: `[batch, feature_dim]`.
    fn features(&mut self, net: &MbNet, x: String) -> String {
        let mut x = self.conv(&net.stem, x);
        for block in &net.blocks {
            let skip = x.clone();
            let hidden = match &block.expand {
                Some(expand) => self.conv(expand, x),
                None => x,
            };
            let y = self.conv(&block.depthwise, hidden);
            let y = self.conv(&block.project, y);
            x = if block.residual {
                self.g.node("Add", &[&y, &skip], vec![])
            } else {
                y
            };
        }
        let x = self.conv(&net.head, x);
        let pooled = self.g.node("GlobalAveragePool", &[&x], vec![]);
        self.g.node("Flatten", &[&pooled], vec![int("axis", 1)])
    }

    /// One conv with BatchNorm folded in, its padding, and ReLU6 when the layer has one.
    fn conv(&mut self, layer: &ConvBnAct, x: String) -> String {
        let (weight, bias) = layer.folded();
        let dims: [usize; 4] = weight.dims();
        let w = self.weight("conv_weight", &dims, weight);
        let b = self.weight("conv_bias", &[dims[0]], bias);
        let [h, wd] = self.size;
        let (top, bottom) = axis_padding(layer.padding, h, layer.kernel, layer.stride);
        let (left, right) = axis_padding(layer.padding, wd, layer.kernel, layer.stride);
        let (x, pads) = if top == bottom && left == right {
            (x, [top, left, bottom, right])
        } else {
            let pads = self.g.int64s(
                "pads",
                &[
                    0,
                    0,
                    top as i64,
                    left as i64,
                    0,
                    0,
                    bottom as i64,
                    right as i64,
                ],
            );
            (self.g.node("Pad", &[&x, &pads], vec![]), [0; 4])
        };
        let out_h = (h + top + bottom - layer.kernel) / layer.stride + 1;
        let out_w = (wd + left + right - layer.kernel) / layer.stride + 1;
        self.size = [out_h, out_w];
        let k = layer.kernel as i64;
        let s = layer.stride as i64;
        let y = self.g.node(
            "Conv",
            &[&x, &w, &b],
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                ints("pads", &pads.map(|p| p as i64)),
                ints("dilations", &[1, 1]),
                int("group", layer.groups as i64),
            ],
        );
        if !layer.activation {
            return y;
        }
        let (low, high) = match &self.relu6 {
            Some(bounds) => bounds.clone(),
            None => {
                let low = self.g.weight("relu6_min", &[], &[0.0]);
                let high = self.g.weight("relu6_max", &[], &[6.0]);
                self.relu6 = Some((low.clone(), high.clone()));
                (low, high)
            }
        };
        self.g.node("Clip", &[&y, &low, &high], vec![])
    }

    fn finish(
        mut self,
        outputs: Vec<(&'static str, String, usize)>,
        doc: &str,
        metadata_props: Vec<StringStringEntryProto>,
    ) -> OnnxModel {
        // cannot fail: every export starts with `input`
        let (name, elem_type, dims, input_doc) = self.input.take().expect("input declared");
        self.g.input(name, elem_type, &dims, &input_doc);
        let mut names = Vec::new();
        for (name, value, width) in outputs {
            self.g.rename(&value, name);
            self.g
                .output(name, &[Dim::Named("batch"), Dim::Fixed(width)], "");
            names.push(name.to_string());
        }
        let graph = self.g.finish(&self.config.name, doc);
        OnnxModel {
            proto: ModelProto {
                ir_version: IR_VERSION,
                opset_import: vec![OperatorSetIdProto {
                    domain: String::new(),
                    version: OPSET,
                }],
                producer_name: "graft".into(),
                producer_version: env!("CARGO_PKG_VERSION").into(),
                doc_string: doc.into(),
                graph: Some(graph),
                metadata_props,
            },
            outputs: names,
            note: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::backbone::mbconv::MbNet;
    use crate::backbone::{PaddingMode, find};

    fn random_backbone(name: &str, padding: PaddingMode) -> Backbone {
        let info = find(name).unwrap();
        let config = info.source_config(Some(padding));
        let net = MbNet::init(
            &info.mbconv().unwrap().0,
            config.padding,
            config.bn_eps,
            true,
            &mut crate::rng::run_rng(7, 0),
            &crate::backend::device(),
        );
        Backbone::new(config, net, "random".into())
    }

    /// Decode the bytes back: a well-formed protobuf, every node input defined before use.
    fn reread(model: &OnnxModel) -> ModelProto {
        let proto = ModelProto::decode(model.to_bytes().as_slice()).unwrap();
        assert_eq!(proto, model.proto);
        let graph = proto.graph.as_ref().unwrap();
        let mut defined: HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        defined.extend(graph.input.iter().map(|v| v.name.as_str()));
        for node in &graph.node {
            for input in &node.input {
                assert!(
                    defined.contains(input.as_str()),
                    "{} reads {input} before it exists",
                    node.name
                );
            }
            defined.extend(node.output.iter().map(String::as_str));
        }
        for output in &graph.output {
            assert!(defined.contains(output.name.as_str()));
        }
        proto
    }

    fn count(proto: &ModelProto, op: &str) -> usize {
        let graph = proto.graph.as_ref().unwrap();
        graph.node.iter().filter(|n| n.op_type == op).count()
    }

    #[test]
    fn tf_same_padding_becomes_pad_nodes_only_where_it_is_asymmetric() {
        // MobileNetV2 at 224: the stem and four depthwise convs have stride 2 on an even
        // side, which TF SAME pads (0, 1); every other conv pads symmetrically.
        let tf = reread(
            &backbone(
                &random_backbone("mobilenet-v2", PaddingMode::TfSame),
                InputKind::Float,
            )
            .unwrap(),
        );
        assert_eq!(count(&tf, "Pad"), 5);
        let torch = reread(
            &backbone(
                &random_backbone("mobilenet-v2", PaddingMode::Symmetric),
                InputKind::Float,
            )
            .unwrap(),
        );
        assert_eq!(count(&torch, "Pad"), 0);
        // 52 convs (stem, 17 blocks of expand / depthwise / project less the first block's
        // expand, head), 10 residual adds, the classifier.
        assert_eq!(count(&torch, "Conv"), 52);
        assert_eq!(count(&torch, "Add"), 10);
        assert_eq!(count(&torch, "Gemm"), 1);
        assert_eq!(tf.ir_version, IR_VERSION);
        assert_eq!(tf.opset_import[0].version, OPSET);
    }

    #[test]
    fn the_uint8_input_is_nhwc_and_normalised_in_the_graph() {
        let model = backbone(
            &random_backbone("efficientnet-lite0", PaddingMode::TfSame),
            InputKind::Uint8,
        )
        .unwrap();
        let proto = reread(&model);
        let graph = proto.graph.as_ref().unwrap();
        let input = &graph.input[0];
        assert_eq!(input.name, "image");
        let tensor = input.r#type.as_ref().unwrap().tensor_type.as_ref().unwrap();
        assert_eq!(tensor.elem_type, data_type::UINT8);
        let dims: Vec<_> = tensor
            .shape
            .as_ref()
            .unwrap()
            .dim
            .iter()
            .map(|d| d.dim_value)
            .collect();
        assert_eq!(dims, [None, Some(224), Some(224), Some(3)]);
        let first: Vec<&str> = graph.node[..4].iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(first, ["Cast", "Transpose", "Sub", "Div"]);
        assert_eq!(model.outputs, ["features", "logits"]);
    }
}
