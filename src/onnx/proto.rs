//! The part of ONNX's protobuf schema (`onnx.proto`, IR version 3 and later) that an image
//! classifier's graph uses, decoded by hand from the wire format: no generated code and no
//! `protoc`, so a fresh machine builds it. Unknown fields are skipped, as protobuf requires;
//! every length is checked against the bytes left, so a truncated or corrupted file is an
//! error, never a panic or an allocation of its claimed size.

use std::fmt;

/// Why a file is not a readable ONNX model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

fn err<T>(what: impl Into<String>) -> Result<T> {
    Err(DecodeError(what.into()))
}

/// A protobuf field's payload.
enum Value<'a> {
    Varint(u64),
    /// A 64-bit fixed field (`double`, `fixed64`): no field read here has one.
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// Reads `(field number, payload)` pairs from one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    /// The message being read, for errors.
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some((&b, rest)) = self.buf.split_first() else {
                return err(format!("{}: truncated varint", self.what));
            };
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        err(format!("{}: varint longer than 10 bytes", self.what))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return err(format!(
                "{}: a field claims {n} bytes, {} are left (truncated file?)",
                self.what,
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| self.short())?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed32(self.take(4)?.try_into().map_err(|_| self.short())?),
            w => return err(format!("{}: unknown wire type {w}", self.what)),
        };
        Ok(Some((field, value)))
    }

    fn short(&self) -> DecodeError {
        DecodeError(format!("{}: truncated field", self.what))
    }
}

fn bytes<'a>(v: Value<'a>, what: &str) -> Result<&'a [u8]> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => err(format!("{what}: expected a length-delimited field")),
    }
}

fn string(v: Value<'_>, what: &str) -> Result<String> {
    String::from_utf8(bytes(v, what)?.to_vec())
        .map_err(|_| DecodeError(format!("{what}: not UTF-8")))
}

fn varint(v: Value<'_>, what: &str) -> Result<u64> {
    match v {
        Value::Varint(x) => Ok(x),
        _ => err(format!("{what}: expected a varint")),
    }
}

/// A repeated `int64`, packed or not, appended to `out`.
fn int64s(v: Value<'_>, out: &mut Vec<i64>, what: &'static str) -> Result<()> {
    match v {
        Value::Varint(x) => out.push(x as i64),
        Value::Bytes(b) => {
            let mut r = Reader::new(b, what);
            while !r.buf.is_empty() {
                out.push(r.varint()? as i64);
            }
        }
        _ => return err(format!("{what}: expected int64 values")),
    }
    Ok(())
}

/// A repeated `float`, packed or not, appended to `out`.
fn floats(v: Value<'_>, out: &mut Vec<f32>, what: &str) -> Result<()> {
    match v {
        Value::Fixed32(b) => out.push(f32::from_le_bytes(b)),
        Value::Bytes(b) if b.len() % 4 == 0 => out.extend(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        _ => return err(format!("{what}: expected float values")),
    }
    Ok(())
}

/// `ModelProto`.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub ir_version: i64,
    pub producer_name: String,
    pub producer_version: String,
    /// `(domain, version)` of each operator set the graph imports.
    pub opset_import: Vec<(String, i64)>,
    pub graph: Graph,
}

/// `GraphProto`.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub node: Vec<Node>,
    pub initializer: Vec<TensorData>,
    pub input: Vec<ValueInfo>,
    pub output: Vec<ValueInfo>,
}

/// `NodeProto`.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub input: Vec<String>,
    pub output: Vec<String>,
    pub attribute: Vec<Attribute>,
}

/// `AttributeProto` (the kinds a classifier's operators use).
#[derive(Debug, Clone, Default)]
pub struct Attribute {
    pub name: String,
    pub f: Option<f32>,
    pub i: Option<i64>,
    pub s: Option<Vec<u8>>,
    pub t: Option<TensorData>,
    pub floats: Vec<f32>,
    pub ints: Vec<i64>,
}

/// `TensorProto`, its data still in the file's encoding.
#[derive(Debug, Clone, Default)]
pub struct TensorData {
    pub name: String,
    pub dims: Vec<i64>,
    /// `TensorProto.DataType`: 1 float, 6 int32, 7 int64, …
    pub data_type: i32,
    pub raw_data: Vec<u8>,
    pub float_data: Vec<f32>,
    pub int32_data: Vec<i64>,
    pub int64_data: Vec<i64>,
    /// Whether the data lies in an external file (`data_location = EXTERNAL`).
    pub external: bool,
}

/// `ValueInfoProto` of a tensor: its name, element type and shape (`None`: symbolic).
#[derive(Debug, Clone, Default)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: i32,
    pub shape: Vec<Option<i64>>,
    /// Whether a shape was given at all.
    pub has_shape: bool,
}

/// Decode a whole `.onnx` file.
pub fn decode_model(buf: &[u8]) -> Result<Model> {
    let mut m = Model::default();
    let mut graph = None;
    let mut r = Reader::new(buf, "ModelProto");
    while let Some((field, v)) = r.next()? {
        match field {
            1 => m.ir_version = varint(v, "ir_version")? as i64,
            2 => m.producer_name = string(v, "producer_name")?,
            3 => m.producer_version = string(v, "producer_version")?,
            7 => graph = Some(decode_graph(bytes(v, "graph")?)?),
            8 => m
                .opset_import
                .push(decode_opset(bytes(v, "opset_import")?)?),
            _ => {}
        }
    }
    m.graph =
        graph.ok_or_else(|| DecodeError("ModelProto has no graph (not an ONNX model?)".into()))?;
    Ok(m)
}

fn decode_opset(buf: &[u8]) -> Result<(String, i64)> {
    let (mut domain, mut version) = (String::new(), 0);
    let mut r = Reader::new(buf, "OperatorSetIdProto");
    while let Some((field, v)) = r.next()? {
        match field {
            1 => domain = string(v, "domain")?,
            2 => version = varint(v, "version")? as i64,
            _ => {}
        }
    }
    Ok((domain, version))
}

fn decode_graph(buf: &[u8]) -> Result<Graph> {
    let mut g = Graph::default();
    let mut r = Reader::new(buf, "GraphProto");
    while let Some((field, v)) = r.next()? {
        match field {
            1 => g.node.push(decode_node(bytes(v, "node")?)?),
            2 => g.name = string(v, "graph name")?,
            5 => g.initializer.push(decode_tensor(bytes(v, "initializer")?)?),
            11 => g.input.push(decode_value_info(bytes(v, "input")?)?),
            12 => g.output.push(decode_value_info(bytes(v, "output")?)?),
            _ => {}
        }
    }
    Ok(g)
}

fn decode_node(buf: &[u8]) -> Result<Node> {
    let mut n = Node::default();
    let mut r = Reader::new(buf, "NodeProto");
    while let Some((field, v)) = r.next()? {
        match field {
            1 => n.input.push(string(v, "node input")?),
            2 => n.output.push(string(v, "node output")?),
            3 => n.name = string(v, "node name")?,
            4 => n.op_type = string(v, "op_type")?,
            5 => n.attribute.push(decode_attribute(bytes(v, "attribute")?)?),
            7 => n.domain = string(v, "node domain")?,
            _ => {}
        }
    }
    Ok(n)
}

fn decode_attribute(buf: &[u8]) -> Result<Attribute> {
    let mut a = Attribute::default();
    let mut r = Reader::new(buf, "AttributeProto");
    while let Some((field, v)) = r.next()? {
        match field {
            1 => a.name = string(v, "attribute name")?,
            2 => {
                let mut f = Vec::new();
                floats(v, &mut f, "attribute f")?;
                a.f = f.first().copied();
            }
            3 => a.i = Some(varint(v, "attribute i")? as i64),
            4 => a.s = Some(bytes(v, "attribute s")?.to_vec()),
            5 => a.t = Some(decode_tensor(bytes(v, "attribute t")?)?),
            7 => floats(v, &mut a.floats, "attribute floats")?,
            8 => int64s(v, &mut a.ints, "attribute ints")?,
            _ => {}
        }
    }
    Ok(a)
}

fn decode_tensor(buf: &[u8]) -> Result<TensorData> {
    let mut t = TensorData::default();
    let mut r = Reader::new(buf, "TensorProto");
    while let Some((field, v)) = r.next()? {
        match field {
            1 => int64s(v, &mut t.dims, "dims")?,
            2 => t.data_type = varint(v, "data_type")? as i32,
            4 => floats(v, &mut t.float_data, "float_data")?,
            5 => int64s(v, &mut t.int32_data, "int32_data")?,
            7 => int64s(v, &mut t.int64_data, "int64_data")?,
            8 => t.name = string(v, "tensor name")?,
            9 => t.raw_data = bytes(v, "raw_data")?.to_vec(),
            14 => t.external = varint(v, "data_location")? == 1,
            _ => {}
        }
    }
    Ok(t)
}

fn decode_value_info(buf: &[u8]) -> Result<ValueInfo> {
    let mut info = ValueInfo::default();
    let mut r = Reader::new(buf, "ValueInfoProto");
    while let Some((field, v)) = r.next()? {
        match field {
            1 => info.name = string(v, "value name")?,
            2 => decode_type(bytes(v, "type")?, &mut info)?,
            _ => {}
        }
    }
    Ok(info)
}

/// `TypeProto` → its `tensor_type` (field 1) into `info`; other kinds leave `elem_type` 0.
fn decode_type(buf: &[u8], info: &mut ValueInfo) -> Result<()> {
    let mut r = Reader::new(buf, "TypeProto");
    while let Some((field, v)) = r.next()? {
        if field != 1 {
            continue;
        }
        let mut t = Reader::new(bytes(v, "tensor_type")?, "TypeProto.Tensor");
        while let Some((field, v)) = t.next()? {
            match field {
                1 => info.elem_type = varint(v, "elem_type")? as i32,
                2 => {
                    info.has_shape = true;
                    let mut s = Reader::new(bytes(v, "shape")?, "TensorShapeProto");
                    while let Some((field, v)) = s.next()? {
                        if field == 1 {
                            info.shape.push(decode_dim(bytes(v, "dim")?)?);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn decode_dim(buf: &[u8]) -> Result<Option<i64>> {
    let mut value = None;
    let mut r = Reader::new(buf, "Dimension");
    while let Some((field, v)) = r.next()? {
        if field == 1 {
            value = Some(varint(v, "dim_value")? as i64);
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-encoded model: one Relu node, one initializer with packed dims, a symbolic batch.
    fn tiny() -> Vec<u8> {
        fn field(n: u64, wire: u64, payload: &[u8]) -> Vec<u8> {
            let mut out = vec![((n << 3) | wire) as u8];
            if wire == 2 {
                out.push(payload.len() as u8);
            }
            out.extend_from_slice(payload);
            out
        }
        let node = [field(1, 2, b"x"), field(2, 2, b"y"), field(4, 2, b"Relu")].concat();
        let tensor = [
            field(1, 2, &[2, 3]),
            field(2, 0, &[1]),
            field(8, 2, b"w"),
            field(9, 2, &[0, 0, 128, 63]),
        ]
        .concat();
        let dim_batch = field(1, 2, &field(2, 2, b"N"));
        let dim_3 = field(1, 2, &field(1, 0, &[3]));
        let shape = [dim_batch, dim_3].concat();
        let tensor_type = [field(1, 0, &[1]), field(2, 2, &shape)].concat();
        let value = [field(1, 2, b"x"), field(2, 2, &field(1, 2, &tensor_type))].concat();
        let graph = [
            field(1, 2, &node),
            field(5, 2, &tensor),
            field(11, 2, &value),
        ]
        .concat();
        // the graph last: every proper prefix of the file then cuts a field or lacks the graph
        [
            field(1, 0, &[8]),
            field(8, 2, &field(2, 0, &[17])),
            field(7, 2, &graph),
        ]
        .concat()
    }

    #[test]
    fn decodes_a_hand_encoded_model() {
        let m = decode_model(&tiny()).unwrap();
        assert_eq!(m.ir_version, 8);
        assert_eq!(m.opset_import, [(String::new(), 17)]);
        let g = &m.graph;
        assert_eq!(
            (g.node[0].op_type.as_str(), &g.node[0].input[..]),
            ("Relu", &["x".to_string()][..])
        );
        assert_eq!(g.initializer[0].dims, [2, 3]);
        assert_eq!(g.initializer[0].raw_data, 1f32.to_le_bytes());
        assert_eq!(
            (g.input[0].elem_type, &g.input[0].shape[..]),
            (1, &[None, Some(3)][..])
        );
    }

    /// Every truncation of a valid file is an error (never a panic), and so is garbage.
    #[test]
    fn truncated_files_are_errors() {
        let full = tiny();
        for cut in 0..full.len() {
            let got = decode_model(&full[..cut]);
            assert!(got.is_err(), "cut at {cut} of {}", full.len());
        }
        assert!(decode_model(&[0xff; 16]).is_err());
    }
}
