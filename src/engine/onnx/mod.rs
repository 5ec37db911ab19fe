//! Reading an ONNX model's graph without ONNX Runtime: the nodes (name, operator, inputs, outputs) and the
//! initializers (name, shape, element type, where the values lie), enough to find the weight a LoRA layer changes,
//! read it, and — when one initializer feeds several layers — give one of them a copy of its own.

mod proto;

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

pub use proto::ProtoError;
use proto::{Field, fields, put_bytes};

/// Why a model file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file (or its external data) could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The bytes are not a well-formed ONNX model.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Element types huabi reads and writes weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// 32-bit float (ONNX 1).
    F32,
    /// 16-bit float (ONNX 10).
    F16,
    /// bfloat16 (ONNX 16).
    Bf16,
    /// Any other ONNX element type, by its number.
    Other(i32),
}

impl DataType {
    fn from_onnx(code: i32) -> Self {
        match code {
            1 => DataType::F32,
            10 => DataType::F16,
            16 => DataType::Bf16,
            other => DataType::Other(other),
        }
    }

    /// Bytes per element, for the float types.
    pub fn width(self) -> Option<usize> {
        match self {
            DataType::F32 => Some(4),
            DataType::F16 | DataType::Bf16 => Some(2),
            DataType::Other(_) => None,
        }
    }
}

/// Where an initializer's values are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorData {
    /// `raw_data` inside the model file (a byte range of it).
    Raw(Range<usize>),
    /// Packed `float_data` inside the model file.
    Floats(Range<usize>),
    /// `int32_data` (how float16 values are stored without `raw_data`), as a byte range of packed varints.
    Int32(Range<usize>),
    /// A file beside the model.
    External {
        /// The file, relative to the model's folder.
        location: String,
        /// Where the values start in it.
        offset: u64,
        /// How many bytes (the tensor's size when absent).
        length: Option<u64>,
    },
    /// No values (or a kind huabi does not read).
    None,
}

/// One initializer: a named constant tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initializer {
    /// Its name in the graph.
    pub name: String,
    /// Its shape.
    pub dims: Vec<i64>,
    /// Its element type.
    pub dtype: DataType,
    /// Where its values are.
    pub data: TensorData,
    /// The whole `initializer` field in the file.
    span: Range<usize>,
}

impl Initializer {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dims.iter().map(|&d| d.max(0) as usize).product()
    }

    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its name (exporters write the module path into it: `/down_blocks.0/…/to_q/MatMul`).
    pub name: String,
    /// The operator (`MatMul`, `Gemm`, `Conv`, `Identity`, …).
    pub op_type: String,
    /// Input value names.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Integer attributes (`transB`, `group`, …).
    pub int_attributes: HashMap<String, i64>,
    /// The whole `node` field in the file.
    span: Range<usize>,
}

/// An ONNX model file, mapped into memory, with its top-level graph read.
pub struct OnnxModel {
    path: PathBuf,
    bytes: Mmap,
    /// The graph's nodes, in file order.
    pub nodes: Vec<Node>,
    /// The graph's initializers, in file order.
    pub initializers: Vec<Initializer>,
    /// The `graph` field of the model (its payload range).
    graph: Range<usize>,
    graph_field: Range<usize>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("nodes", &self.nodes.len())
            .field("initializers", &self.initializers.len())
            .finish()
    }
}

/// Where an initializer's values are to be read from after an edit: a byte range of an external data file
/// (for merged weights, one ONNX Runtime is handed in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalData {
    /// The file name, relative to the model's folder.
    pub location: String,
    /// Where the values start.
    pub offset: u64,
    /// How many bytes.
    pub length: u64,
}

/// A change to a graph: node inputs renamed, initializers given new values (as external data), and copies of
/// initializers under new names (with their own values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphEdit {
    /// (node index, input index, new input name).
    pub rewire: Vec<(usize, usize, String)>,
    /// Initializers (by index) whose values now come from external data.
    pub revalue: Vec<(usize, ExternalData)>,
    /// New initializers: (name, index of the initializer whose shape and type it takes, its values).
    pub copies: Vec<(String, usize, ExternalData)>,
    /// Values of the graph to return as extra outputs (their types are left to ONNX Runtime's inference).
    pub outputs: Vec<String>,
}

impl GraphEdit {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.rewire.is_empty()
            && self.revalue.is_empty()
            && self.copies.is_empty()
            && self.outputs.is_empty()
    }
}

impl OnnxModel {
    /// Maps `path` and reads its graph.
    pub fn open(path: &Path) -> Result<Self, OnnxError> {
        let io = |source| OnnxError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the model files are not modified while huabi reads them (operators replace a model by adding a
        // new folder); a file truncated underneath would fault like any failed read of a mapped file.
        let bytes = unsafe { Mmap::map(&file) }.map_err(io)?;
        let Graph {
            nodes,
            initializers,
            graph,
            graph_field,
        } = read_graph(&bytes).map_err(|reason| OnnxError::Malformed {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            nodes,
            initializers,
            graph,
            graph_field,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every external data file the initializers name, once each.
    pub fn external_locations(&self) -> Vec<String> {
        let mut locations: Vec<String> = self
            .initializers
            .iter()
            .filter_map(|i| match &i.data {
                TensorData::External { location, .. } => Some(location.clone()),
                _ => None,
            })
            .collect();
        locations.sort_unstable();
        locations.dedup();
        locations
    }

    /// The file's size in bytes plus that of every external data file it names.
    pub fn total_bytes(&self) -> u64 {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        self.bytes.len() as u64
            + self
                .external_locations()
                .iter()
                .filter_map(|l| std::fs::metadata(dir.join(l)).ok())
                .map(|m| m.len())
                .sum::<u64>()
    }

    /// The whole of external data file `location` (which must lie in the model's folder), read straight into a
    /// shareable buffer (these files are gigabytes: no second copy).
    pub fn read_external_file(&self, location: &str) -> Result<Arc<[u8]>, OnnxError> {
        use std::io::Read;
        let path = self.external_path(location)?;
        let io = |source| OnnxError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io)?;
        let len = usize::try_from(file.metadata().map_err(io)?.len())
            .map_err(|_| io(std::io::Error::other("larger than memory can address")))?;
        // SAFETY: all-zero bytes are valid `u8` values.
        let mut buffer: Arc<[u8]> = unsafe { Arc::<[u8]>::new_zeroed_slice(len).assume_init() };
        let target = Arc::get_mut(&mut buffer)
            .ok_or_else(|| io(std::io::Error::other("a new buffer is shared")))?;
        file.read_exact(target).map_err(io)?;
        Ok(buffer)
    }

    /// The path of external data file `location`, refused when it would leave the model's folder.
    fn external_path(&self, location: &str) -> Result<PathBuf, OnnxError> {
        let relative = Path::new(location);
        if relative.as_os_str().is_empty()
            || relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(OnnxError::Malformed {
                path: self.path.clone(),
                reason: format!("external data location {location:?} leaves the model's folder"),
            });
        }
        Ok(self.path.parent().unwrap_or(Path::new(".")).join(relative))
    }

    /// The element type most of the weights have (by bytes), for reporting a model's precision.
    pub fn weight_dtype(&self) -> Option<DataType> {
        let mut bytes: HashMap<i32, usize> = HashMap::new();
        for init in &self.initializers {
            let code = match init.dtype {
                DataType::F32 => 1,
                DataType::F16 => 10,
                DataType::Bf16 => 16,
                DataType::Other(c) => c,
            };
            *bytes.entry(code).or_default() += init.len();
        }
        bytes
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .map(|(c, _)| DataType::from_onnx(c))
    }

    /// Whether any initializer keeps its values in another file.
    pub fn has_external_data(&self) -> bool {
        self.initializers
            .iter()
            .any(|i| matches!(i.data, TensorData::External { .. }))
    }

    /// The values of a float initializer as f32.
    pub fn read_f32(&self, init: &Initializer) -> Result<Vec<f32>, OnnxError> {
        let malformed = |reason: String| OnnxError::Malformed {
            path: self.path.clone(),
            reason: format!("initializer {}: {reason}", init.name),
        };
        let width = init
            .dtype
            .width()
            .ok_or_else(|| malformed(format!("element type {:?} is not a float", init.dtype)))?;
        let count = init.len();
        let values = match &init.data {
            TensorData::Raw(range) => decode_floats(&self.bytes[range.clone()], init.dtype),
            TensorData::Floats(range) => decode_floats(&self.bytes[range.clone()], DataType::F32),
            TensorData::Int32(range) => {
                let ints = Field {
                    number: 5,
                    value: proto::Value::Bytes(&self.bytes[range.clone()]),
                    span: range.clone(),
                    payload_start: range.start,
                }
                .ints()
                .map_err(|e| malformed(e.to_string()))?;
                ints.into_iter()
                    .map(|bits| half::f16::from_bits(bits as u16).to_f32())
                    .collect()
            }
            TensorData::External {
                location,
                offset,
                length,
            } => {
                let bytes = self.read_external(
                    location,
                    *offset,
                    length.unwrap_or((count * width) as u64),
                )?;
                decode_floats(&bytes, init.dtype)
            }
            TensorData::None => return Err(malformed("has no values".into())),
        };
        if values.len() != count {
            return Err(malformed(format!(
                "holds {} values for shape {:?}",
                values.len(),
                init.dims
            )));
        }
        Ok(values)
    }

    fn read_external(
        &self,
        location: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, OnnxError> {
        use std::io::{Read, Seek, SeekFrom};
        let relative = Path::new(location);
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(OnnxError::Malformed {
                path: self.path.clone(),
                reason: format!("external data location {location:?} leaves the model's folder"),
            });
        }
        let path = self.path.parent().unwrap_or(Path::new(".")).join(relative);
        let io = |source| OnnxError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(OnnxError::Malformed {
                path: path.clone(),
                reason: format!(
                    "{length} bytes at offset {offset} run past the end ({size} bytes)"
                ),
            });
        }
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut bytes = vec![0u8; length as usize];
        file.read_exact(&mut bytes).map_err(io)?;
        Ok(bytes)
    }

    /// The model's bytes with `edit` applied. Everything not edited is copied byte for byte.
    pub fn edited(&self, edit: &GraphEdit) -> Result<Vec<u8>, OnnxError> {
        let malformed = |reason: String| OnnxError::Malformed {
            path: self.path.clone(),
            reason,
        };
        let proto = |e: ProtoError| malformed(e.to_string());
        // Field start in the file → the replacement message.
        let mut replaced: HashMap<usize, (u32, Vec<u8>)> = HashMap::new();
        let mut by_node: HashMap<usize, Vec<(usize, &str)>> = HashMap::new();
        for (node, input, name) in &edit.rewire {
            by_node.entry(*node).or_default().push((*input, name));
        }
        for (index, changes) in by_node {
            let node = self
                .nodes
                .get(index)
                .ok_or_else(|| malformed(format!("no node {index}")))?;
            let message = self.rewrite_node(node, &changes).map_err(proto)?;
            replaced.insert(node.span.start, (1, message));
        }
        let initializer = |index: usize| {
            self.initializers
                .get(index)
                .ok_or_else(|| malformed(format!("no initializer {index}")))
        };
        for (index, data) in &edit.revalue {
            let init = initializer(*index)?;
            let message = self
                .external_tensor(init, &init.name, data)
                .map_err(proto)?;
            replaced.insert(init.span.start, (5, message));
        }
        let mut graph = Vec::with_capacity(self.graph.len() + 1024);
        for field in fields(&self.bytes[self.graph.clone()], self.graph.start) {
            let field = field.map_err(proto)?;
            match replaced.get(&field.span.start) {
                Some((number, message)) => put_bytes(&mut graph, *number, message),
                None => graph.extend_from_slice(&self.bytes[field.span.clone()]),
            }
        }
        for (name, source, data) in &edit.copies {
            let message = self
                .external_tensor(initializer(*source)?, name, data)
                .map_err(proto)?;
            put_bytes(&mut graph, 5, &message);
        }
        for name in &edit.outputs {
            let mut value_info = Vec::with_capacity(name.len() + 2);
            put_bytes(&mut value_info, 1, name.as_bytes());
            put_bytes(&mut graph, 12, &value_info);
        }
        let mut out = Vec::with_capacity(self.bytes.len() + graph.len() - self.graph.len());
        out.extend_from_slice(&self.bytes[..self.graph_field.start]);
        put_bytes(&mut out, 7, &graph);
        out.extend_from_slice(&self.bytes[self.graph_field.end..]);
        Ok(out)
    }

    /// The node message with some inputs renamed.
    fn rewrite_node(&self, node: &Node, changes: &[(usize, &str)]) -> Result<Vec<u8>, ProtoError> {
        let payload = field_payload(&self.bytes, &node.span)?;
        let mut out = Vec::with_capacity(payload.len() + 64);
        let mut input = 0;
        for field in fields(payload, 0) {
            let field = field?;
            if field.number == 1 {
                match changes.iter().find(|(i, _)| *i == input) {
                    Some((_, name)) => put_bytes(&mut out, 1, name.as_bytes()),
                    None => out.extend_from_slice(&payload[field.span.clone()]),
                }
                input += 1;
            } else {
                out.extend_from_slice(&payload[field.span.clone()]);
            }
        }
        Ok(out)
    }

    /// `init`'s tensor message named `name`, its values in external data `data` (shape and type kept).
    fn external_tensor(
        &self,
        init: &Initializer,
        name: &str,
        data: &ExternalData,
    ) -> Result<Vec<u8>, ProtoError> {
        let payload = field_payload(&self.bytes, &init.span)?;
        let mut out = Vec::with_capacity(128 + name.len());
        for field in fields(payload, 0) {
            let field = field?;
            // Keep the shape, type, segment and doc string; drop the name and every kind of values.
            if matches!(field.number, 1 | 2 | 3 | 12) {
                out.extend_from_slice(&payload[field.span.clone()]);
            }
        }
        put_bytes(&mut out, 8, name.as_bytes());
        for (key, value) in [
            ("location", data.location.clone()),
            ("offset", data.offset.to_string()),
            ("length", data.length.to_string()),
        ] {
            let mut entry = Vec::new();
            put_bytes(&mut entry, 1, key.as_bytes());
            put_bytes(&mut entry, 2, value.as_bytes());
            put_bytes(&mut out, 13, &entry);
        }
        proto::put_varint(&mut out, 14 << 3);
        proto::put_varint(&mut out, 1);
        Ok(out)
    }
}

/// What [`read_graph`] finds in a model's bytes.
struct Graph {
    nodes: Vec<Node>,
    initializers: Vec<Initializer>,
    /// The graph message's payload.
    graph: Range<usize>,
    /// The whole `graph` field of the model.
    graph_field: Range<usize>,
}

/// Reads the top-level graph of a serialized `ModelProto`.
fn read_graph(bytes: &[u8]) -> Result<Graph, String> {
    let proto = |e: ProtoError| e.to_string();
    let mut graph = None;
    for field in fields(bytes, 0) {
        let field = field.map_err(proto)?;
        if field.number == 7 {
            let payload = field.bytes().map_err(proto)?;
            graph = Some((
                field.payload_start..field.payload_start + payload.len(),
                field.span.clone(),
            ));
        }
    }
    let (graph, graph_field) = graph.ok_or("not an ONNX model: it has no graph")?;
    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    for field in fields(&bytes[graph.clone()], graph.start) {
        let field = field.map_err(proto)?;
        match field.number {
            1 => nodes.push(read_node(&field).map_err(proto)?),
            5 => initializers.push(read_initializer(&field).map_err(proto)?),
            _ => {}
        }
    }
    Ok(Graph {
        nodes,
        initializers,
        graph,
        graph_field,
    })
}

/// The payload of the length-delimited field at `span` of `bytes`.
fn field_payload<'a>(bytes: &'a [u8], span: &Range<usize>) -> Result<&'a [u8], ProtoError> {
    let field = fields(&bytes[span.clone()], 0).next().ok_or(ProtoError {
        at: span.start,
        reason: "empty field",
    })??;
    field.bytes()
}

fn decode_floats(bytes: &[u8], dtype: DataType) -> Vec<f32> {
    match dtype {
        DataType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DataType::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

fn read_node(field: &Field<'_>) -> Result<Node, ProtoError> {
    let mut node = Node {
        name: String::new(),
        op_type: String::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        int_attributes: HashMap::new(),
        span: field.span.clone(),
    };
    for f in fields(field.bytes()?, field.payload_start) {
        let f = f?;
        match f.number {
            1 => node.inputs.push(f.string()?.to_string()),
            2 => node.outputs.push(f.string()?.to_string()),
            3 => node.name = f.string()?.to_string(),
            4 => node.op_type = f.string()?.to_string(),
            5 => {
                let (mut name, mut int) = (None, None);
                for a in fields(f.bytes()?, f.payload_start) {
                    let a = a?;
                    match a.number {
                        1 => name = Some(a.string()?.to_string()),
                        3 => int = Some(a.varint()? as i64),
                        _ => {}
                    }
                }
                if let (Some(name), Some(int)) = (name, int) {
                    node.int_attributes.insert(name, int);
                }
            }
            _ => {}
        }
    }
    Ok(node)
}

fn read_initializer(field: &Field<'_>) -> Result<Initializer, ProtoError> {
    let mut init = Initializer {
        name: String::new(),
        dims: Vec::new(),
        dtype: DataType::Other(0),
        data: TensorData::None,
        span: field.span.clone(),
    };
    let mut external = false;
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for f in fields(field.bytes()?, field.payload_start) {
        let f = f?;
        let payload = |f: &Field<'_>| -> Result<Range<usize>, ProtoError> {
            Ok(f.payload_start..f.payload_start + f.bytes()?.len())
        };
        match f.number {
            1 => init.dims.extend(f.ints()?),
            2 => init.dtype = DataType::from_onnx(f.varint()? as i32),
            4 => init.data = TensorData::Floats(payload(&f)?),
            5 => init.data = TensorData::Int32(payload(&f)?),
            8 => init.name = f.string()?.to_string(),
            9 => init.data = TensorData::Raw(payload(&f)?),
            13 => {
                let (mut key, mut value) = (String::new(), String::new());
                for kv in fields(f.bytes()?, f.payload_start) {
                    let kv = kv?;
                    match kv.number {
                        1 => key = kv.string()?.to_string(),
                        2 => value = kv.string()?.to_string(),
                        _ => {}
                    }
                }
                let number = || {
                    value.parse::<u64>().map_err(|_| ProtoError {
                        at: f.span.start,
                        reason: "external data offset or length is not a number",
                    })
                };
                match key.as_str() {
                    "location" => location = Some(value.clone()),
                    "offset" => offset = number()?,
                    "length" => length = Some(number()?),
                    _ => {}
                }
            }
            14 => external = f.varint()? == 1,
            _ => {}
        }
    }
    if external {
        init.data = TensorData::External {
            location: location.ok_or(ProtoError {
                at: field.span.start,
                reason: "external tensor without a location",
            })?,
            offset,
            length,
        };
    }
    Ok(init)
}

#[cfg(test)]
mod tests;
