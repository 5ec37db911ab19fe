//! The safetensors format (an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
//! and byte range, then the bytes), read from a memory map with every range checked.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

/// Largest JSON header accepted (real files stay far below it).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Why a safetensors file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Not a well-formed safetensors file.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Element types huabi reads from LoRA files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `F32`.
    F32,
    /// `F16`.
    F16,
    /// `BF16`.
    Bf16,
}

impl Dtype {
    fn width(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Bytes within the data section.
    range: Range<usize>,
}

/// A mapped safetensors file and its header.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Mmap,
    data_start: usize,
    /// The tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Maps and checks `path`.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let io = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: LoRA files are not modified while huabi reads them; see `OnnxModel::open`.
        let bytes = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (data_start, tensors, metadata) =
            parse_header(&bytes).map_err(|reason| SafetensorsError::Malformed {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            data_start,
            tensors,
            metadata,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The values of tensor `name` as f32.
    pub fn f32(&self, name: &str) -> Option<Vec<f32>> {
        let info = self.tensors.get(name)?;
        let bytes =
            &self.bytes[self.data_start + info.range.start..self.data_start + info.range.end];
        Some(match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::Bf16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }
}

type Header = (
    usize,
    BTreeMap<String, TensorInfo>,
    BTreeMap<String, String>,
);

/// Reads and checks the header of a safetensors file held in `bytes`.
fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("shorter than its 8-byte header length")?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(format!("header of {header_len} bytes is too large"));
    }
    let data_start = 8 + header_len as usize;
    let header = bytes
        .get(8..data_start)
        .ok_or("the header runs past the end of the file")?;
    let json: Value =
        serde_json::from_slice(header).map_err(|e| format!("header is not JSON: {e}"))?;
    let Value::Object(entries) = json else {
        return Err("header is not a JSON object".into());
    };
    let data_len = bytes.len() - data_start;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            let Value::Object(pairs) = entry else {
                return Err("__metadata__ is not an object".into());
            };
            for (k, v) in pairs {
                let Value::String(v) = v else {
                    return Err(format!("__metadata__ {k:?} is not a string"));
                };
                metadata.insert(k, v);
            }
            continue;
        }
        tensors.insert(name.clone(), tensor_info(&name, &entry, data_len)?);
    }
    Ok((data_start, tensors, metadata))
}

fn tensor_info(name: &str, entry: &Value, data_len: usize) -> Result<TensorInfo, String> {
    let dtype = match entry.get("dtype").and_then(Value::as_str) {
        Some("F32") => Dtype::F32,
        Some("F16") => Dtype::F16,
        Some("BF16") => Dtype::Bf16,
        Some(other) => {
            return Err(format!(
                "tensor {name}: element type {other} (huabi reads F32, F16 and BF16)"
            ));
        }
        None => return Err(format!("tensor {name}: no dtype")),
    };
    let shape = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("tensor {name}: no shape"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| format!("tensor {name}: shape is not a list of sizes"))?;
    let offsets = entry
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|o| o.len() == 2)
        .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
        .ok_or_else(|| format!("tensor {name}: data_offsets is not [begin, end]"))?;
    let (begin, end) = (offsets.0 as usize, offsets.1 as usize);
    let elements = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("tensor {name}: shape {shape:?} overflows"))?;
    let want = elements
        .checked_mul(dtype.width())
        .ok_or_else(|| format!("tensor {name}: too large"))?;
    if begin > end || end > data_len || end - begin != want {
        return Err(format!(
            "tensor {name}: bytes {begin}..{end} do not hold shape {shape:?} within {data_len} data bytes"
        ));
    }
    Ok(TensorInfo {
        dtype,
        shape,
        range: begin..end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file from a header and a data section.
    pub(crate) fn file_bytes(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_tensors_and_metadata() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .chain(half::f16::from_f32(0.25).to_le_bytes())
            .collect();
        let bytes = file_bytes(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[1,1],"data_offsets":[8,10]},"__metadata__":{"format":"pt"}}"#,
            &data,
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, bytes).expect("write");
        let file = SafetensorsFile::open(&path).expect("open");
        assert_eq!(file.f32("a"), Some(vec![1.5, -2.0]));
        assert_eq!(file.f32("b"), Some(vec![0.25]));
        assert_eq!(file.tensors["b"].shape, vec![1, 1]);
        assert_eq!(file.metadata["format"], "pt");
        assert_eq!(file.f32("c"), None);
    }

    #[test]
    fn hostile_headers_are_refused() {
        for (header, data_len, why) in [
            ("", 0, "not JSON"),
            ("[1]", 0, "not an object"),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                4,
                "past the data",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
                "size mismatch",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                8,
                "reversed",
            ),
            (
                r#"{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
                8,
                "dtype",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
                4,
                "negative",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
                4,
                "overflow",
            ),
            (r#"{"a":{"dtype":"F32","shape":[1]}}"#, 4, "no offsets"),
            (r#"{"__metadata__":{"k":1}}"#, 0, "metadata not a string"),
        ] {
            let bytes = file_bytes(header, &vec![0u8; data_len]);
            assert!(parse_header(&bytes).is_err(), "{why}");
        }
        assert!(parse_header(&[1, 2, 3]).is_err(), "too short");
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(parse_header(&huge).is_err(), "huge header length");
        let mut past = 100u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(parse_header(&past).is_err(), "header past the end");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn any_header_is_read_or_refused_never_a_panic(
            entries in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["F32", "F16", "BF16", "I8", ""]),
                    proptest::collection::vec(0u64..1 << 40, 0..4),
                    0u64..1 << 40,
                    0u64..1 << 40,
                ),
                0..6,
            ),
            data_len in 0usize..256,
        ) {
            let header: serde_json::Map<String, serde_json::Value> = entries
                .iter()
                .enumerate()
                .map(|(i, (dtype, shape, begin, end))| {
                    (format!("t{i}"), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}))
                })
                .collect();
            let bytes = file_bytes(&serde_json::Value::Object(header).to_string(), &vec![0u8; data_len]);
            let _ = parse_header(&bytes);
        }

        #[test]
        fn random_files_are_refused_or_read_never_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_header(&bytes);
        }
    }
}
