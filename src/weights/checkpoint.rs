//! Reading a checkpoint file into named float tensors, whatever its container:
//! PyTorch legacy (pre-1.6 pickle stream, strided storages included), PyTorch zip, safetensors.
//! The format is told from the file's first bytes, not from its extension.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn_store::pytorch_reader::{DType, PytorchReader};

use super::WeightsError;

/// A tensor as stored: its shape and, for floating-point tensors, its values in row-major order.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    /// `None` for integer tensors (e.g. `num_batches_tracked`), which no model here reads.
    pub values: Option<Vec<f32>>,
}

/// Container format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    PytorchLegacy,
    PytorchZip,
    Safetensors,
}

impl fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PytorchLegacy => "PyTorch legacy .pth",
            Self::PytorchZip => "PyTorch zip .pth",
            Self::Safetensors => "safetensors",
        })
    }
}

/// All tensors of one checkpoint file, by name.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: CheckpointFormat,
    pub tensors: BTreeMap<String, StoredTensor>,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let format = sniff_format(path)?;
        let tensors = match format {
            CheckpointFormat::Safetensors => read_safetensors(path)?,
            CheckpointFormat::PytorchLegacy | CheckpointFormat::PytorchZip => read_pytorch(path)?,
        };
        Ok(Self {
            path: path.to_path_buf(),
            format,
            tensors,
        })
    }
}

fn invalid(path: &Path, problem: impl Into<String>) -> WeightsError {
    WeightsError::Invalid {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn sniff_format(path: &Path) -> Result<CheckpointFormat, WeightsError> {
    let mut file = std::fs::File::open(path).map_err(|e| WeightsError::io(path, e))?;
    let mut head = [0u8; 9];
    let n = read_up_to(&mut file, &mut head).map_err(|e| WeightsError::io(path, e))?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") {
        Ok(CheckpointFormat::PytorchZip)
    } else if n == 9 && head[8] == b'{' {
        // safetensors: u64 little-endian header length, then a JSON object. Checked before
        // pickle, since the length's first byte may well be 0x80.
        Ok(CheckpointFormat::Safetensors)
    } else if head.starts_with(&[0x80]) {
        // A pickle stream: the legacy torch.save format starts with the pickled magic number.
        Ok(CheckpointFormat::PytorchLegacy)
    } else if n == 0 {
        Err(invalid(path, "the file is empty"))
    } else {
        Err(invalid(
            path,
            "not a checkpoint graft can read (expected a PyTorch .pth, legacy or zip, or a .safetensors file)",
        ))
    }
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn read_pytorch(path: &Path) -> Result<BTreeMap<String, StoredTensor>, WeightsError> {
    let reader = PytorchReader::new(path).map_err(|e| invalid(path, e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, tensor) in reader.into_tensors() {
        let shape = tensor.shape().to_vec();
        let values = match tensor.dtype() {
            DType::F32 | DType::F64 => {
                let bytes = tensor.read().map_err(|e| invalid(path, e.to_string()))?;
                Some(floats_from_bytes(&bytes, tensor.dtype() == DType::F64))
            }
            _ => None,
        };
        tensors.insert(name, StoredTensor { shape, values });
    }
    Ok(tensors)
}

fn read_safetensors(path: &Path) -> Result<BTreeMap<String, StoredTensor>, WeightsError> {
    use safetensors::{Dtype, SafeTensors};
    let bytes = std::fs::read(path).map_err(|e| WeightsError::io(path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| invalid(path, e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let values = match view.dtype() {
            // safetensors stores little-endian; so does every platform graft builds for.
            Dtype::F32 => Some(floats_from_bytes(view.data(), false)),
            Dtype::F64 => Some(floats_from_bytes(view.data(), true)),
            // Half-precision weights (common on the Hub) widen exactly to f32.
            Dtype::F16 => Some(halves_from_bytes(view.data(), |b| {
                half::f16::from_bits(b).to_f32()
            })),
            Dtype::BF16 => Some(halves_from_bytes(view.data(), |b| {
                half::bf16::from_bits(b).to_f32()
            })),
            _ => None,
        };
        tensors.insert(
            name,
            StoredTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(tensors)
}

/// 16-bit floats, little-endian, each widened by `widen` from its bits.
fn halves_from_bytes(bytes: &[u8], widen: fn(u16) -> f32) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        // cannot fail: chunks_exact(2) yields 2-byte slices
        .map(|c| widen(u16::from_le_bytes(c.try_into().expect("chunks_exact(2)"))))
        .collect()
}

fn floats_from_bytes(bytes: &[u8], f64_source: bool) -> Vec<f32> {
    if f64_source {
        bytes
            .chunks_exact(8)
            // cannot fail: chunks_exact(8) yields 8-byte slices
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks_exact(8)")) as f32)
            .collect()
    } else {
        bytes
            .chunks_exact(4)
            // cannot fail: chunks_exact(4) yields 4-byte slices
            .map(|c| f32::from_le_bytes(c.try_into().expect("chunks_exact(4)")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write one tensor of `dtype` (its values given as their 16-bit patterns) and read it back.
    fn read_back(dtype: safetensors::Dtype, bits: &[u16]) -> StoredTensor {
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(dtype, vec![2, 2], &bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("half.safetensors");
        safetensors::serialize_to_file([("w", view)], None, &path).unwrap();
        let checkpoint = Checkpoint::open(&path).unwrap();
        assert_eq!(checkpoint.format, CheckpointFormat::Safetensors);
        checkpoint.tensors["w"].clone()
    }

    #[test]
    fn f16_and_bf16_safetensors_load_as_f32() {
        let values = [1.0f32, -2.5, 0.099975586, 65504.0];
        let f16: Vec<u16> = values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        let tensor = read_back(safetensors::Dtype::F16, &f16);
        assert_eq!(tensor.shape, [2, 2]);
        assert_eq!(tensor.values.as_deref(), Some(&values[..]));

        let values = [1.0f32, -2.5, 0.09765625, 3.3895314e38];
        let bf16: Vec<u16> = values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        let tensor = read_back(safetensors::Dtype::BF16, &bf16);
        assert_eq!(tensor.shape, [2, 2]);
        assert_eq!(tensor.values.as_deref(), Some(&values[..]));
    }
}
