//! A trained top on pooled backbone features: what every recipe produces and what predict and
//! evaluate run. Dense heads, logistic regression and linear SVMs are all a linear map
//! (standardisation folded in); kNN keeps its memory bank.
//!
//! Saved as safetensors: `weight` `[classes, dim]` and `bias` `[classes]` (F32) for a linear
//! top; `bank` `[n, dim]` (F32, L2-normalised rows) and `labels` `[n]` (I64) for kNN, with
//! `kind` (and `k`) in the metadata.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use linfa_nn::distance::L2Dist;
use linfa_nn::{CommonNearestNeighbour, NearestNeighbour};
use ndarray::{ArrayView1, ArrayView2};
use safetensors::{Dtype, SafeTensors};

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
}

/// Name, dtype, shape and little-endian bytes of a tensor to save.
type NamedTensor<'a> = (&'static str, Dtype, Vec<usize>, Cow<'a, [u8]>);

/// A kNN memory bank, `[n, dim]` floats: in memory, or read from a file through the page cache
/// when it is larger than the memory budget (a bank built from a million cached rows, or a
/// saved head loaded by predict), so that its size is bounded by the disk, not the memory.
#[derive(Clone)]
pub enum Bank {
    Owned(Vec<f32>),
    /// `len` little-endian floats at byte `offset` of `map` (4-byte aligned).
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
}

impl Bank {
    /// The floats at byte `offset` of `map`, without copying them when the platform is
    /// little-endian and the offset is aligned (safetensors aligns its data), else copied.
    pub fn mapped(map: Arc<memmap2::Mmap>, offset: usize, len: usize) -> Self {
        let bytes = &map[offset..offset + len * 4];
        if cfg!(target_endian = "little") && bytes.as_ptr().align_offset(4) == 0 {
            Bank::Mapped { map, offset, len }
        } else {
            Bank::Owned(
                bytes
                    .chunks_exact(4)
                    // cannot fail: chunks_exact(4) yields 4-byte slices
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            )
        }
    }

    /// The floats as little-endian bytes, borrowed when mapped.
    fn le_bytes(&self) -> Cow<'_, [u8]> {
        match self {
            Bank::Owned(v) => Cow::Owned(f32_bytes(v)),
            Bank::Mapped { map, offset, len } => Cow::Borrowed(&map[*offset..offset + len * 4]),
        }
    }
}

impl Deref for Bank {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Bank::Owned(v) => v,
            Bank::Mapped { map, offset, len } => {
                let bytes = &map[*offset..offset + len * 4];
                // SAFETY: `Bank::mapped` made this variant only for 4-byte aligned bytes on a
                // little-endian platform, where they are `len` valid f32s (every bit pattern is
                // one); the map lives as long as `self`.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), *len) }
            }
        }
    }
}

impl PartialEq for Bank {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Bank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Bank::Owned(_) => "in memory",
            Bank::Mapped { .. } => "mapped",
        };
        write!(f, "Bank({} floats, {kind})", self.len())
    }
}

/// `tensors` in the safetensors format, written as they are (no copy of their bytes), with the
/// header's keys sorted so that the same head gives the same file, byte for byte
/// (`safetensors::serialize` takes the metadata as a `HashMap` and writes it in the map's
/// random order).
fn write_safetensors(
    file: &mut std::fs::File,
    tensors: &[NamedTensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    use std::io::Write;
    // serde_json's map keeps keys sorted: `__metadata__` first, then the tensors by name.
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(metadata));
    let mut offset = 0;
    for (name, dtype, shape, bytes) in tensors {
        let end = offset + bytes.len();
        header.insert(
            (*name).to_string(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    // The data starts 8-byte aligned, as safetensors writes it.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = std::io::BufWriter::new(file);
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(&text)?;
    for (_, _, _, bytes) in tensors {
        out.write_all(bytes)?;
    }
    out.flush()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    /// `scores = softmax(x W^T + b)`.
    Linear {
        /// `[classes, dim]`, row-major.
        weight: Vec<f32>,
        bias: Vec<f32>,
    },
    /// Majority vote of the `k` nearest training rows (cosine distance).
    Knn {
        /// `[n, dim]`, each row L2-normalised.
        bank: Bank,
        labels: Vec<usize>,
        classes: usize,
        k: usize,
    },
}

impl Head {
    pub fn classes(&self) -> usize {
        match self {
            Head::Linear { bias, .. } => bias.len(),
            Head::Knn { classes, .. } => *classes,
        }
    }

    /// The length of the feature rows it takes.
    pub fn dim(&self) -> usize {
        match self {
            Head::Linear { weight, bias } => weight.len() / bias.len().max(1),
            Head::Knn { bank, labels, .. } => bank.len() / labels.len().max(1),
        }
    }

    /// Class scores `[n, classes]` (each row sums to 1) of feature rows `[n, dim]`.
    pub fn scores(&self, features: &[f32], dim: usize) -> Vec<f32> {
        match self {
            Head::Linear { weight, bias } => {
                let mut out = linear(features, dim, weight, bias);
                for row in out.chunks_exact_mut(bias.len()) {
                    softmax_in_place(row);
                }
                out
            }
            Head::Knn {
                bank,
                labels,
                classes,
                k,
            } => knn_scores(features, dim, bank, labels, *classes, *k),
        }
    }

    /// A burn dense layer as a linear head (burn keeps the weight `[dim, classes]`; heads keep
    /// `[classes, dim]`).
    pub fn from_linear(layer: &burn::nn::Linear) -> Self {
        let [dim, classes] = layer.weight.dims();
        let w: Vec<f32> = layer
            .weight
            .val()
            .into_data()
            .try_into_vec()
            // cannot fail: graft makes only f32 tensors (the default float dtype)
            .expect("weights are f32");
        let mut weight = vec![0.0; classes * dim];
        for d in 0..dim {
            for c in 0..classes {
                weight[c * dim + d] = w[d * classes + c];
            }
        }
        let bias = layer
            .bias
            .as_ref()
            // cannot fail: graft makes only f32 tensors
            .map(|b| b.val().into_data().try_into_vec().expect("bias is f32"))
            .unwrap_or_else(|| vec![0.0; classes]);
        Head::Linear { weight, bias }
    }

    pub fn save(&self, path: &Path) -> Result<(), HeadError> {
        let (tensors, metadata): (Vec<NamedTensor>, _) = match self {
            Head::Linear { weight, bias } => (
                vec![
                    (
                        "weight",
                        Dtype::F32,
                        vec![bias.len(), weight.len() / bias.len().max(1)],
                        Cow::Owned(f32_bytes(weight)),
                    ),
                    (
                        "bias",
                        Dtype::F32,
                        vec![bias.len()],
                        Cow::Owned(f32_bytes(bias)),
                    ),
                ],
                BTreeMap::from([("kind".to_string(), "linear".to_string())]),
            ),
            Head::Knn {
                bank,
                labels,
                classes,
                k,
            } => (
                vec![
                    (
                        "bank",
                        Dtype::F32,
                        vec![labels.len(), bank.len() / labels.len().max(1)],
                        bank.le_bytes(),
                    ),
                    (
                        "labels",
                        Dtype::I64,
                        vec![labels.len()],
                        Cow::Owned(
                            labels
                                .iter()
                                .flat_map(|&l| (l as i64).to_le_bytes())
                                .collect(),
                        ),
                    ),
                ],
                BTreeMap::from([
                    ("kind".to_string(), "knn".to_string()),
                    ("k".to_string(), k.to_string()),
                    ("classes".to_string(), classes.to_string()),
                ]),
            ),
        };
        // A head built with inconsistent lengths (weight not `[classes, dim]`) fails here.
        let invalid = |e: safetensors::SafeTensorError| HeadError::Invalid {
            path: path.to_path_buf(),
            problem: format!("cannot save the head: {e}"),
        };
        for (_, dtype, shape, bytes) in &tensors {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map_err(invalid)?;
        }
        // Streamed to the file: a bank can be larger than memory.
        crate::util::write_atomic_with(path, |file| write_safetensors(file, &tensors, &metadata))
            .map_err(|source| HeadError::Io {
                path: path.to_path_buf(),
                source,
            })
    }

    pub fn load(path: &Path) -> Result<Self, HeadError> {
        let invalid = |problem: String| HeadError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        let io = |source| HeadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a head file is written once, atomically (a new file
        // renamed over the old), so the mapped file is never modified while mapped.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?);
        let bytes: &[u8] = &map;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| invalid(e.to_string()))?;
        let file = SafeTensors::deserialize(bytes).map_err(|e| invalid(e.to_string()))?;
        let info = meta.metadata().clone().unwrap_or_default();
        let tensor = |name: &str, dtype: Dtype| {
            let view = file
                .tensor(name)
                .map_err(|e| invalid(format!("tensor `{name}`: {e}")))?;
            if view.dtype() != dtype {
                return Err(invalid(format!(
                    "`{name}` is {:?}, expected {dtype:?}",
                    view.dtype()
                )));
            }
            Ok((view.shape().to_vec(), view.data()))
        };
        let floats = |bytes: &[u8]| -> Vec<f32> {
            bytes
                .chunks_exact(4)
                // cannot fail: chunks_exact(4) yields 4-byte slices
                .map(|c| f32::from_le_bytes(c.try_into().expect("chunks_exact(4)")))
                .collect()
        };
        let number = |key: &str| -> Result<usize, HeadError> {
            info.get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| invalid(format!("metadata `{key}` missing or not a number")))
        };
        match info.get("kind").map(String::as_str) {
            Some("linear") => {
                let (w_shape, weight) = tensor("weight", Dtype::F32)?;
                let (b_shape, bias) = tensor("bias", Dtype::F32)?;
                if w_shape.len() != 2 || b_shape != [w_shape[0]] || w_shape.contains(&0) {
                    return Err(invalid(format!(
                        "weight {w_shape:?} and bias {b_shape:?} do not fit"
                    )));
                }
                Ok(Head::Linear {
                    weight: floats(weight),
                    bias: floats(bias),
                })
            }
            Some("knn") => {
                let (bank_shape, bank) = tensor("bank", Dtype::F32)?;
                let (label_shape, labels) = tensor("labels", Dtype::I64)?;
                let classes = number("classes")?;
                let labels: Vec<usize> = labels
                    .chunks_exact(8)
                    // cannot fail: chunks_exact(8) yields 8-byte slices
                    .map(|c| i64::from_le_bytes(c.try_into().expect("chunks_exact(8)")))
                    .map(|l| usize::try_from(l).ok().filter(|&l| l < classes))
                    .collect::<Option<_>>()
                    .ok_or_else(|| invalid("a label is outside the classes".into()))?;
                if bank_shape.len() != 2
                    || label_shape != [bank_shape[0]]
                    || labels.is_empty()
                    || bank_shape[1] == 0
                {
                    return Err(invalid(format!(
                        "bank {bank_shape:?} and labels {label_shape:?} do not fit"
                    )));
                }
                // The bank stays in the file, read through the page cache.
                let offset = bank.as_ptr() as usize - bytes.as_ptr() as usize;
                Ok(Head::Knn {
                    bank: Bank::mapped(map.clone(), offset, bank.len() / 4),
                    labels,
                    classes,
                    k: number("k")?.max(1),
                })
            }
            other => Err(invalid(format!("unknown head kind {other:?}"))),
        }
    }
}

/// `x W^T + b` for rows `x` `[n, dim]`, `W` `[classes, dim]`.
pub fn linear(features: &[f32], dim: usize, weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(features.len() / dim * bias.len());
    for x in features.chunks_exact(dim) {
        for (w, b) in weight.chunks_exact(dim).zip(bias) {
            out.push(b + w.iter().zip(x).map(|(w, x)| w * x).sum::<f32>());
        }
    }
    out
}

pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Rows scaled to unit L2 norm (cosine distance becomes Euclidean).
pub fn l2_normalized(features: &[f32], dim: usize) -> Vec<f32> {
    let mut out = features.to_vec();
    for row in out.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    out
}

/// Vote shares of the `k` nearest bank rows; a tie goes to the class of the nearer neighbour.
fn knn_scores(
    features: &[f32],
    dim: usize,
    bank: &[f32],
    labels: &[usize],
    classes: usize,
    k: usize,
) -> Vec<f32> {
    // Head::load checked the bank is [labels.len(), d], d > 0; TrainedModel::open that d = dim.
    // cannot fail: the bank is [labels.len(), dim] (checked as above)
    let bank = ArrayView2::from_shape((labels.len(), dim), bank).expect("bank is [n, dim]");
    let index = CommonNearestNeighbour::LinearSearch
        .from_batch(&bank, L2Dist)
        // cannot fail: the only error is rows of length 0, and d > 0 (see above)
        .expect("a non-empty bank builds an index");
    let queries = l2_normalized(features, dim);
    let k = k.min(labels.len());
    let mut out = Vec::with_capacity(features.len() / dim * classes);
    for query in queries.chunks_exact(dim) {
        let mut votes = vec![0.0f32; classes];
        let neighbours = index
            .k_nearest(ArrayView1::from(query), k)
            // cannot fail: queries are `dim` long, the bank's row length (checked above)
            .expect("query has the bank's dimension");
        for (rank, (_, i)) in neighbours.iter().enumerate() {
            // Whole votes, plus a bonus far below one vote that favours nearer neighbours.
            votes[labels[*i]] += 1.0 + 1e-3 / (rank + 1) as f32;
        }
        let total: f32 = votes.iter().sum();
        out.extend(votes.iter().map(|v| v / total));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_knn_heads_round_trip_through_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let linear = Head::Linear {
            weight: vec![1.0, 0.0, 0.0, 1.0, -1.0, -1.0],
            bias: vec![0.0, 0.5, 0.0],
        };
        let knn = Head::Knn {
            bank: Bank::Owned(l2_normalized(&[1.0, 0.0, 0.9, 0.1, 0.0, 1.0], 2)),
            labels: vec![0, 0, 1],
            classes: 2,
            k: 3,
        };
        for head in [linear, knn] {
            let path = dir.path().join("head.safetensors");
            head.save(&path).unwrap();
            assert_eq!(Head::load(&path).unwrap(), head);
        }
    }

    #[test]
    fn knn_votes_and_linear_softmax() {
        let knn = Head::Knn {
            bank: Bank::Owned(l2_normalized(&[1.0, 0.0, 0.9, 0.1, 0.0, 1.0], 2)),
            labels: vec![0, 0, 1],
            classes: 2,
            k: 3,
        };
        let s = knn.scores(&[2.0, 0.1], 2);
        assert!(s[0] > 0.66 && s[0] < 0.67, "{s:?}");
        let linear = Head::Linear {
            weight: vec![1.0, 0.0, 0.0, 1.0],
            bias: vec![0.0, 0.0],
        };
        let s = linear.scores(&[3.0, 1.0], 2);
        let expected = 1.0 / (1.0 + (-2.0f32).exp());
        assert!((s[0] - expected).abs() < 1e-6 && (s[0] + s[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn truncated_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.safetensors");
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let err = Head::load(&path).unwrap_err().to_string();
        assert!(err.contains("head.safetensors"), "{err}");
    }
}
