//! A reader for GGUF files (llama.cpp's single-file checkpoint format, versions 2 and 3) and the
//! dequantisation of its tensors to f32.
//!
//! Layout of a file (all little-endian):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × (key: string, value_type: u32, value)
//! tensor_count × (name: string, n_dims: u32, dims: n_dims × u64, ggml_type: u32, offset: u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor starts at data_offset + its `offset` (itself aligned)
//! ```
//!
//! A string is a u64 byte length followed by UTF-8 bytes; an array is an element type (u32), a u64
//! count and the elements. Dimensions are in ggml order: `dims[0]` is the innermost (fastest
//! varying) one, so a torch shape is the reverse.
//!
//! The file is memory-mapped; metadata is parsed eagerly (the tokenizer needs almost all of it) and
//! tensors are dequantised on request. Every parse error names the file and the byte offset at
//! which it happened, so a truncated download is told apart from a format we do not handle.
//!
//! The block layouts below follow ggml's `ggml-common.h` (`block_q4_0`, `block_q4_K`, ...) and its
//! reference `dequantize_row_*` functions; the arithmetic is written in the same order as the
//! `gguf` Python package's `gguf.quants` (e.g. `d * q + m` for Q4_1, `(d * sc) * q - dmin * m` for
//! Q4_K), which is what transformers uses to load a GGUF, so that our f32 weights are
//! bit-identical to the ones a PyTorch reference sees.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

/// What can go wrong reading a GGUF file. Every variant that comes from the file's bytes carries
/// the path and, where it applies, the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read GGUF file {path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a GGUF file (magic {found:?} at byte 0, expected \"GGUF\")", path = .path.display())]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error("{path}: GGUF version {version} is not supported (versions 2 and 3 are){hint}", path = .path.display())]
    UnsupportedVersion { path: PathBuf, version: u32, hint: &'static str },
    #[error("{path}: truncated or corrupt GGUF: needed {needed} bytes at byte offset {offset} while reading {what}, but the file has {len} bytes", path = .path.display())]
    Truncated { path: PathBuf, offset: u64, needed: u64, len: u64, what: String },
    #[error("{path}: corrupt GGUF at byte offset {offset}: {msg}", path = .path.display())]
    Corrupt { path: PathBuf, offset: u64, msg: String },
    #[error("{path}: tensor `{tensor}` has ggml type id {type_id} ({type_name}), which this reader cannot dequantise (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)", path = .path.display())]
    UnsupportedType { path: PathBuf, tensor: String, type_id: u32, type_name: &'static str },
    #[error("{path}: no tensor named `{tensor}` in the file", path = .path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: metadata key `{key}` is missing", path = .path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key `{key}` holds {found}, expected {expected}", path = .path.display())]
    WrongType { path: PathBuf, key: String, expected: &'static str, found: String },
}

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// One metadata value. Arrays keep their element type so an empty array still says what it holds.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufValueType, Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// The value type ids of the GGUF spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    fn from_id(id: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
}

impl GgufValue {
    /// Any integer (or bool) value widened to i64; `None` for floats, strings and arrays.
    pub fn as_i64(&self) -> Option<i64> {
        use GgufValue::*;
        Some(match *self {
            U8(v) => v as i64,
            I8(v) => v as i64,
            U16(v) => v as i64,
            I16(v) => v as i64,
            U32(v) => v as i64,
            I32(v) => v as i64,
            U64(v) => i64::try_from(v).ok()?,
            I64(v) => v,
            Bool(v) => v as i64,
            _ => return None,
        })
    }

    /// Any numeric value as f64 (integers too: some converters write `rope.freq_base` as an int).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// The spec's type id of this value (what a writer puts before it).
    pub fn value_type(&self) -> GgufValueType {
        use GgufValue::*;
        match self {
            U8(_) => GgufValueType::U8,
            I8(_) => GgufValueType::I8,
            U16(_) => GgufValueType::U16,
            I16(_) => GgufValueType::I16,
            U32(_) => GgufValueType::U32,
            I32(_) => GgufValueType::I32,
            F32(_) => GgufValueType::F32,
            Bool(_) => GgufValueType::Bool,
            String(_) => GgufValueType::String,
            Array(..) => GgufValueType::Array,
            U64(_) => GgufValueType::U64,
            I64(_) => GgufValueType::I64,
            F64(_) => GgufValueType::F64,
        }
    }

    /// An array of strings (`tokenizer.ggml.tokens`, `merges`, ...).
    pub fn strings<S: Into<std::string::String>>(items: impl IntoIterator<Item = S>) -> Self {
        GgufValue::Array(
            GgufValueType::String,
            items.into_iter().map(|s| GgufValue::String(s.into())).collect(),
        )
    }

    /// A short description for error messages ("u32 3", "array of 49152 string", ...).
    pub fn describe(&self) -> String {
        match self {
            GgufValue::Array(t, v) => format!("array of {} {:?}", v.len(), t),
            GgufValue::String(s) if s.len() > 40 => {
                format!("string {:?}...", &s[..s.char_indices().nth(40).map_or(s.len(), |c| c.0)])
            }
            other => format!("{other:?}"),
        }
    }
}

/// A ggml tensor type id. Kept as the raw id so that files with types we do not know still open:
/// only dequantising such a tensor is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q8_1: GgmlType = GgmlType(9);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const Q8_K: GgmlType = GgmlType(15);
    pub const BF16: GgmlType = GgmlType(30);

    /// ggml's name for the type (`ggml_type_name`), "unknown" for ids it does not have.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            _ => "unknown",
        }
    }

    /// `(elements per block, bytes per block)` for the types this reader can size, i.e. every type
    /// it can dequantise plus a few plain ones; `None` otherwise.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        Some(match self.0 {
            0 => (1, 4),
            1 => (1, 2),
            30 => (1, 2),
            2 => (32, 2 + 16),                  // block_q4_0: d f16, qs[16]
            3 => (32, 2 + 2 + 16),              // block_q4_1: d, m f16, qs[16]
            6 => (32, 2 + 4 + 16),              // block_q5_0: d f16, qh[4], qs[16]
            7 => (32, 2 + 2 + 4 + 16),          // block_q5_1: d, m f16, qh[4], qs[16]
            8 => (32, 2 + 32),                  // block_q8_0: d f16, qs[32] i8
            9 => (32, 2 + 2 + 32),              // block_q8_1: d, s f16, qs[32] i8
            10 => (256, 16 + 64 + 2 + 2),       // block_q2_K: scales[16], qs[64], d, dmin
            11 => (256, 32 + 64 + 12 + 2),      // block_q3_K: hmask[32], qs[64], scales[12], d
            12 => (256, 2 + 2 + 12 + 128),      // block_q4_K: d, dmin, scales[12], qs[128]
            13 => (256, 2 + 2 + 12 + 32 + 128), // block_q5_K: d, dmin, scales[12], qh[32], qs[128]
            14 => (256, 128 + 64 + 16 + 2),     // block_q6_K: ql[128], qh[64], scales[16] i8, d
            15 => (256, 4 + 256 + 32),          // block_q8_K: d f32, qs[256] i8, bsums[16] i16
            24 => (1, 1),
            25 => (1, 2),
            26 => (1, 4),
            27 => (1, 8),
            28 => (1, 8),
            _ => return None,
        })
    }

    fn can_dequantize(self) -> bool {
        matches!(self.0, 0 | 1 | 2 | 3 | 6 | 7 | 8 | 10 | 11 | 12 | 13 | 14 | 30)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (id {})", self.name(), self.0)
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost dimension (a row of a matrix).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The PyTorch shape (outermost first): the reverse of the ggml dims.
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    /// Size of the data in bytes, `None` if the type's block size is unknown or the row length is
    /// not a multiple of the block size.
    pub fn n_bytes(&self) -> Option<u64> {
        let (block, bytes) = self.ggml_type.block_layout()?;
        let row = *self.dims.first().unwrap_or(&1);
        if !row.is_multiple_of(block) {
            return None;
        }
        Some(self.n_elements() / block * bytes)
    }
}

/// An open GGUF file: parsed header, metadata and tensor table over a memory map of the data.
pub struct GgufFile {
    path: PathBuf,
    pub version: u32,
    /// Metadata in key order (the file's order is not meaningful; `BTreeMap` makes dumps stable).
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<TensorInfo>,
    index: std::collections::HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
    map: Mmap,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// A bounds-checked little-endian cursor over the mapped bytes; errors carry file and offset.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                offset: self.pos as u64,
                needed: n,
                len: self.buf.len() as u64,
                what: what.to_string(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn corrupt(&self, offset: usize, msg: String) -> GgufError {
        GgufError::Corrupt { path: self.path.to_path_buf(), offset: offset as u64, msg }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.corrupt(at, format!("{what} is not valid UTF-8: {e}")))
    }

    fn value(&mut self, ty: GgufValueType, what: &str, depth: usize) -> Result<GgufValue> {
        use GgufValueType as T;
        Ok(match ty {
            T::U8 => GgufValue::U8(self.u8(what)?),
            T::I8 => GgufValue::I8(self.u8(what)? as i8),
            T::U16 => GgufValue::U16(self.u16(what)?),
            T::I16 => GgufValue::I16(self.u16(what)? as i16),
            T::U32 => GgufValue::U32(self.u32(what)?),
            T::I32 => GgufValue::I32(self.u32(what)? as i32),
            T::F32 => GgufValue::F32(f32::from_bits(self.u32(what)?)),
            T::U64 => GgufValue::U64(self.u64(what)?),
            T::I64 => GgufValue::I64(self.u64(what)? as i64),
            T::F64 => GgufValue::F64(f64::from_bits(self.u64(what)?)),
            T::Bool => {
                let at = self.pos;
                match self.u8(what)? {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => {
                        return Err(
                            self.corrupt(at, format!("{what}: bool byte {b} is neither 0 nor 1"))
                        )
                    }
                }
            }
            T::String => GgufValue::String(self.string(what)?),
            T::Array => {
                let at = self.pos;
                if depth > 8 {
                    return Err(self.corrupt(at, format!("{what}: arrays nested more than 8 deep")));
                }
                let elem_id = self.u32(what)?;
                let elem = GgufValueType::from_id(elem_id).ok_or_else(|| {
                    self.corrupt(at, format!("{what}: unknown array element type {elem_id}"))
                })?;
                let count = self.u64(what)?;
                // Every element takes at least one byte: a count larger than the rest of the file
                // is corruption, and checking it first avoids a huge allocation.
                if count > (self.buf.len() - self.pos) as u64 {
                    return Err(GgufError::Truncated {
                        path: self.path.to_path_buf(),
                        offset: self.pos as u64,
                        needed: count,
                        len: self.buf.len() as u64,
                        what: format!("{what} ({count} array elements)"),
                    });
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                GgufValue::Array(elem, items)
            }
        })
    }
}

const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

impl GgufFile {
    /// Open and parse a GGUF file; the tensor data stays memory-mapped.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; like every mmap reader we assume the file is not
        // truncated underneath us while open (a cache file that is only ever replaced atomically).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, map)
    }

    fn parse(path: &Path, map: Mmap) -> Result<Self> {
        let mut c = Cursor { buf: &map, pos: 0, path };
        let magic: [u8; 4] = c.take(4, "the magic number")?.try_into().unwrap();
        if &magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { path: path.to_path_buf(), found: magic });
        }
        let version = c.u32("the version")?;
        match version {
            2 | 3 => {}
            // A big-endian file (allowed since v3) reads as a byte-swapped version here.
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(GgufError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    version: v.swap_bytes(),
                    hint: "; this file is big-endian, only little-endian files are read",
                })
            }
            1 => {
                return Err(GgufError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    version,
                    hint: " (v1 used 32-bit counts; re-convert the model with a current llama.cpp)",
                })
            }
            v => {
                return Err(GgufError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    version: v,
                    hint: "",
                })
            }
        }
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.u64("the metadata count")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let at = c.pos;
            let ty_id = c.u32(&format!("the value type of `{key}`"))?;
            let ty = GgufValueType::from_id(ty_id).ok_or_else(|| {
                c.corrupt(at, format!("metadata `{key}` has unknown value type {ty_id}"))
            })?;
            let value = c.value(ty, &format!("the value of `{key}`"), 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.corrupt(at, format!("metadata key `{key}` appears twice")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i64() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
                _ => {
                    return Err(GgufError::WrongType {
                        path: path.to_path_buf(),
                        key: "general.alignment".into(),
                        expected: "a positive power-of-two integer",
                        found: v.describe(),
                    })
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 20) as usize);
        let mut index = std::collections::HashMap::new();
        for i in 0..n_tensors {
            let at = c.pos;
            let name = c.string(&format!("the name of tensor #{i}"))?;
            let n_dims = c.u32(&format!("the rank of `{name}`"))?;
            if n_dims > 8 {
                return Err(c.corrupt(
                    at,
                    format!("tensor `{name}` claims {n_dims} dimensions (ggml has at most 4)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&format!("the dims of `{name}`"))?);
            }
            let ggml_type = GgmlType(c.u32(&format!("the type of `{name}`"))?);
            let offset = c.u64(&format!("the data offset of `{name}`"))?;
            if offset % alignment != 0 {
                return Err(c.corrupt(at, format!("tensor `{name}` data offset {offset} is not a multiple of the alignment {alignment}")));
            }
            if index.insert(name.clone(), tensors.len()).is_some() {
                return Err(c.corrupt(at, format!("tensor `{name}` appears twice")));
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset });
        }

        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        // Check every tensor's extent now, so a truncated download fails at open with the offset
        // of the first tensor it cuts, not later inside a matmul.
        for t in &tensors {
            if let Some(n) = t.n_bytes() {
                let start = data_offset + t.offset;
                if start.checked_add(n).is_none_or(|end| end > file_len) {
                    return Err(GgufError::Truncated {
                        path: path.to_path_buf(),
                        offset: start,
                        needed: n,
                        len: file_len,
                        what: format!(
                            "the data of tensor `{}` ({} {:?})",
                            t.name,
                            t.ggml_type.name(),
                            t.dims
                        ),
                    });
                }
            }
        }

        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            index,
            alignment,
            data_offset,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.metadata
            .get(key)
            .ok_or_else(|| GgufError::MissingKey { path: self.path.clone(), key: key.into() })
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &GgufValue) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.into(),
            expected,
            found: v.describe(),
        }
    }

    /// A required integer value (any integer width).
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        let v = self.require(key)?;
        v.as_i64().ok_or_else(|| self.wrong(key, "an integer", v))
    }

    /// An optional integer value: `Ok(None)` when absent, an error when present with another type.
    pub fn get_i64_opt(&self, key: &str) -> Result<Option<i64>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.wrong(key, "an integer", v)),
        }
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }

    pub fn get_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong(key, "a bool", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "a string", v))
    }

    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong(key, "a string", v)),
        }
    }

    /// A required array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.require(key)?;
        let arr = v.as_array().ok_or_else(|| self.wrong(key, "an array of strings", v))?;
        arr.iter()
            .map(|x| x.as_str().ok_or_else(|| self.wrong(key, "an array of strings", v)))
            .collect()
    }

    /// An optional array of integers (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i64_array_opt(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.metadata.get(key) else { return Ok(None) };
        let arr = v.as_array().ok_or_else(|| self.wrong(key, "an array of integers", v))?;
        arr.iter()
            .map(|x| x.as_i64().ok_or_else(|| self.wrong(key, "an array of integers", v)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The raw bytes of a tensor (checked against the file length at open).
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.tensor_info(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            tensor: name.into(),
        })?;
        let n = info.n_bytes().ok_or_else(|| self.unsupported(info))?;
        let start = (self.data_offset + info.offset) as usize;
        Ok((info, &self.map[start..start + n as usize]))
    }

    fn unsupported(&self, info: &TensorInfo) -> GgufError {
        GgufError::UnsupportedType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            type_id: info.ggml_type.0,
            type_name: info.ggml_type.name(),
        }
    }

    /// Dequantise a tensor to f32; returns the data (row-major) and the torch shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<i64>)> {
        let info = self.tensor_info(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            tensor: name.into(),
        })?;
        if !info.ggml_type.can_dequantize() {
            return Err(self.unsupported(info));
        }
        let row = *info.dims.first().unwrap_or(&1);
        let (block, _) = info.ggml_type.block_layout().expect("dequantisable types have a layout");
        if row % block != 0 {
            let at = self.data_offset + info.offset;
            return Err(GgufError::Corrupt {
                path: self.path.clone(),
                offset: at,
                msg: format!("tensor `{}` rows have {row} elements, not a multiple of the {} block size {block}", info.name, info.ggml_type.name()),
            });
        }
        let (_, bytes) = self.tensor_bytes(name)?;
        let data = dequantize(info.ggml_type, bytes, info.n_elements() as usize)
            .map_err(|_| self.unsupported(info))?;
        Ok((data, info.shape()))
    }
}

/// Reverse llama.cpp's rotary permutation of `attn_q` / `attn_k` rows.
///
/// llama.cpp's `convert_hf_to_gguf.py` reorders the rows of each head of Q and K from Hugging
/// Face's "rotate half" layout (the first half of a head's dims pairs with the second half) into
/// GPT-J's interleaved layout (dims 2i and 2i+1 pair), because ggml's rope kernel rotates adjacent
/// pairs:
///
/// ```python
/// w.reshape(n_head, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(w.shape)
/// ```
///
/// transformers undoes it when loading a GGUF (`LlamaTensorProcessor._reverse_permute_weights`):
/// `w.reshape(n_head, head_dim // 2, 2, *rest).swapaxes(2, 1).reshape(w.shape)`, with `n_head` the
/// number of KV heads for K. In rows: HF row `h*hd + j*(hd/2) + i` comes from GGUF row
/// `h*hd + 2*i + j` (j ∈ {0, 1}). `data` is `[rows, cols]` row-major.
pub fn reverse_rope_permutation(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    permute_rope_rows(data, rows, cols, n_head, false)
}

/// llama.cpp's rotary permutation of `attn_q` / `attn_k` rows, the inverse of
/// [`reverse_rope_permutation`] (what `convert_hf_to_gguf.py` does when it writes a GGUF): GGUF row
/// `h*hd + 2*i + j` takes HF row `h*hd + j*(hd/2) + i`. `data` is `[rows, cols]` row-major.
pub fn rope_permutation(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    permute_rope_rows(data, rows, cols, n_head, true)
}

/// The one row shuffle behind both directions: within each head, HF row `j*(hd/2) + i` and GGUF
/// row `2*i + j` are the same row; `to_gguf` says which side is written.
fn permute_rope_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    to_gguf: bool,
) -> Vec<f32> {
    assert_eq!(data.len(), rows * cols, "rope permutation: data is not [rows, cols]");
    assert!(
        n_head > 0 && rows.is_multiple_of(2 * n_head),
        "rows {rows} not divisible into {n_head} heads of even size"
    );
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let hf = h * head_dim + j * half + i;
                let gguf = h * head_dim + 2 * i + j;
                let (dst, src) = if to_gguf { (gguf, hf) } else { (hf, gguf) };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// [`dequantize`] was given a type it has no kernel for (see [`GgufFile::tensor_f32`] for the
/// error that names the tensor).
#[derive(Debug)]
pub struct UnsupportedType;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantise `n` elements of type `ty` from `bytes` (whose length must match exactly).
///
/// Each block's arithmetic follows `gguf.quants` (numpy, f32) operation for operation so that the
/// results are bit-identical; Rust never contracts `a * b + c` into an FMA on its own.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, UnsupportedType> {
    let (block, bsize) = ty.block_layout().ok_or(UnsupportedType)?;
    let (block, bsize) = (block as usize, bsize as usize);
    assert_eq!(n % block, 0, "element count not a multiple of the block size");
    assert_eq!(bytes.len(), n / block * bsize, "byte length does not match the element count");
    let mut out = vec![0f32; n];
    let blocks = bytes.chunks_exact(bsize).zip(out.chunks_exact_mut(block));
    match ty.0 {
        0 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes(b.try_into().unwrap());
            }
        }
        1 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        30 => {
            for (b, y) in blocks {
                y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        // Q4_0: x = d * (q - 8); low nibbles are elements 0..16, high nibbles 16..32.
        2 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                for j in 0..16 {
                    y[j] = d * ((qs[j] & 0x0F) as i32 - 8) as f32;
                    y[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
                }
            }
        }
        // Q4_1: x = d * q + m.
        3 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                for j in 0..16 {
                    y[j] = d * (qs[j] & 0x0F) as f32 + m;
                    y[j + 16] = d * (qs[j] >> 4) as f32 + m;
                }
            }
        }
        // Q5_0: the 5th bit of element j is bit j of the little-endian u32 qh; x = d * (q - 16).
        6 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for j in 0..16 {
                    let h0 = ((qh >> j) & 1) << 4;
                    let h1 = ((qh >> (j + 16)) & 1) << 4;
                    y[j] = d * (((qs[j] & 0x0F) as u32 | h0) as i32 - 16) as f32;
                    y[j + 16] = d * (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32;
                }
            }
        }
        // Q5_1: as Q5_0 with x = d * q + m.
        7 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let qs = &b[8..24];
                for j in 0..16 {
                    let h0 = ((qh >> j) & 1) << 4;
                    let h1 = ((qh >> (j + 16)) & 1) << 4;
                    y[j] = d * ((qs[j] & 0x0F) as u32 | h0) as f32 + m;
                    y[j + 16] = d * ((qs[j] >> 4) as u32 | h1) as f32 + m;
                }
            }
        }
        // Q8_0: x = q * d.
        8 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        // Q2_K: 16 groups of 16 with 4-bit scale (low nibble) and 4-bit min (high nibble).
        // Element o = h*128 + s*32 + l takes bits 2s..2s+2 of qs[h*32 + l]; x = (d*sc)*q - dmin*m.
        10 => {
            for (b, y) in blocks {
                let scales = &b[0..16];
                let qs = &b[16..80];
                let d = f16_at(b, 80);
                let dmin = f16_at(b, 82);
                for o in 0..256 {
                    let (h, s, l) = (o / 128, (o / 32) % 4, o % 32);
                    let sc = scales[o / 16];
                    let dl = d * (sc & 0x0F) as f32;
                    let ml = dmin * (sc >> 4) as f32;
                    let q = (qs[h * 32 + l] >> (2 * s)) & 3;
                    y[o] = dl * q as f32 - ml;
                }
            }
        }
        // Q3_K: 16 groups of 16 with signed 6-bit scales (4 low bits in bytes 0..8, nibble-split;
        // 2 high bits in bytes 8..12); 2 low bits of q as in Q2_K and a "high" bit in hmask that,
        // when clear, subtracts 4. x = (d * (scale - 32)) * q.
        11 => {
            for (b, y) in blocks {
                let hmask = &b[0..32];
                let qs = &b[32..96];
                let sc = &b[96..108];
                let d = f16_at(b, 108);
                let mut scales = [0f32; 16];
                for (i, s) in scales.iter_mut().enumerate() {
                    let lo = if i < 8 { sc[i] & 0x0F } else { sc[i - 8] >> 4 };
                    let hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
                    *s = (((lo | (hi << 4)) as i8).wrapping_sub(32)) as f32;
                }
                for o in 0..256 {
                    let (h, s, l) = (o / 128, (o / 32) % 4, o % 32);
                    let ql = ((qs[h * 32 + l] >> (2 * s)) & 3) as i8;
                    let hb = (hmask[l] >> (o / 32)) & 1;
                    let q = ql - if hb == 0 { 4 } else { 0 };
                    y[o] = (d * scales[o / 16]) * q as f32;
                }
            }
        }
        // Q4_K: 8 groups of 32 with 6-bit scale and min packed in 12 bytes (`get_scale_min_k4`);
        // group pairs (2k, 2k+1) share qs[32k..32k+32] as low / high nibbles.
        12 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let (sc, mn) = k_scale_min(&b[4..16]);
                let qs = &b[16..144];
                for g in 0..8 {
                    let dl = d * sc[g] as f32;
                    let ml = dmin * mn[g] as f32;
                    let base = (g / 2) * 32;
                    let shift = 4 * (g % 2);
                    for l in 0..32 {
                        let q = (qs[base + l] >> shift) & 0x0F;
                        y[g * 32 + l] = dl * q as f32 - ml;
                    }
                }
            }
        }
        // Q5_K: Q4_K plus a fifth bit: bit g of qh[l] for element l of group g.
        13 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let (sc, mn) = k_scale_min(&b[4..16]);
                let qh = &b[16..48];
                let qs = &b[48..176];
                for g in 0..8 {
                    let dl = d * sc[g] as f32;
                    let ml = dmin * mn[g] as f32;
                    let base = (g / 2) * 32;
                    let shift = 4 * (g % 2);
                    for l in 0..32 {
                        let q = ((qs[base + l] >> shift) & 0x0F) | (((qh[l] >> g) & 1) << 4);
                        y[g * 32 + l] = dl * q as f32 - ml;
                    }
                }
            }
        }
        // Q6_K: two halves of 128; in half n, element l + 32k (k = 0..4) takes the low / high
        // nibble of ql[64n + l + 32(k%2)] (low for k < 2) and bits 2k..2k+2 of qh[32n + l];
        // 16 int8 scales, one per 16 elements. x = (d * scale) * (q - 32).
        14 => {
            for (b, y) in blocks {
                let ql = &b[0..128];
                let qh = &b[128..192];
                let scales = &b[192..208];
                let d = f16_at(b, 208);
                for n in 0..2 {
                    for k in 0..4 {
                        for l in 0..32 {
                            let lo = ql[64 * n + l + 32 * (k % 2)];
                            let lo = if k < 2 { lo & 0x0F } else { lo >> 4 };
                            let hi = (qh[32 * n + l] >> (2 * k)) & 3;
                            let q = ((lo | (hi << 4)) as i8) - 32;
                            let o = 128 * n + 32 * k + l;
                            y[o] = (d * (scales[o / 16] as i8) as f32) * q as f32;
                        }
                    }
                }
            }
        }
        _ => return Err(UnsupportedType),
    }
    Ok(out)
}

/// The 6-bit scales and mins of Q4_K / Q5_K (ggml's `get_scale_min_k4`): groups 0..4 keep the low
/// 6 bits of bytes 0..4 (scale) and 4..8 (min); groups 4..8 take a nibble of bytes 8..12 plus the
/// top 2 bits of the first eight bytes.
fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
            mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutation_roundtrip() {
        // llama.cpp's forward permutation, written independently: GGUF row h*hd + 2i + j holds
        // HF row h*hd + j*hd/2 + i.
        let (n_head, hd, cols) = (3, 8, 2);
        let rows = n_head * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..n_head {
            for i in 0..hd / 2 {
                for j in 0..2 {
                    let g = h * hd + 2 * i + j;
                    let f = h * hd + j * hd / 2 + i;
                    gguf[g * cols..(g + 1) * cols].copy_from_slice(&hf[f * cols..(f + 1) * cols]);
                }
            }
        }
        assert_eq!(reverse_rope_permutation(&gguf, rows, cols, n_head), hf);
        assert_eq!(rope_permutation(&hf, rows, cols, n_head), gguf);
    }

    #[test]
    fn q4_1_block() {
        // d = 0.5, m = -1.0, nibbles 0..15 then 15..0.
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-1.0).to_bits().to_le_bytes());
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], 0.5 * j as f32 - 1.0);
            assert_eq!(y[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn k_scales_unpack() {
        let s = [1, 2, 3, 4 | 0xC0, 5, 6, 7, 8 | 0x40, 0x21, 0x43, 0x65, 0x87];
        let (sc, mn) = k_scale_min(&s);
        assert_eq!(&sc[..4], &[1, 2, 3, 4]);
        assert_eq!(&mn[..4], &[5, 6, 7, 8]);
        assert_eq!(sc[7], 0x7 | (3 << 4));
        assert_eq!(mn[7], 0x8 | (1 << 4));
    }
}
