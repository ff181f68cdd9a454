//! A writer of GGUF files (version 3), the mirror of the reader in [`crate::models::gguf`]: the
//! same layout (header, metadata, tensor table, data aligned to `general.alignment`), the same
//! value and tensor type ids, and the block layouts the reader dequantises.
//!
//! Tensors are stored as F32, F16 or Q8_0. Q8_0 is ggml's `quantize_row_q8_0_ref` (and the `gguf`
//! Python package's `quants.quantize_q8_0`): blocks of 32 values, scale `d = max|x| / 127` stored
//! as f16, `q = round(x / d)` rounded half away from zero, so a file written here holds the bytes
//! llama.cpp's own converter writes for the same f32 weights.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use half::f16;

use crate::models::gguf::{GgmlType, GgufValue};

/// `general.alignment`'s default, which the reader assumes when the key is absent.
const ALIGNMENT: u64 = 32;
const VERSION: u32 = 3;

/// One tensor to write: its name, its torch shape (outermost first) and its bytes, already in
/// `ggml_type`'s layout.
pub struct TensorData {
    pub name: String,
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
    pub bytes: Vec<u8>,
}

impl TensorData {
    /// `data` (row-major, `shape`) stored as `ggml_type` (F32, F16 or Q8_0; Q8_0 needs rows that
    /// are a multiple of 32 long).
    pub fn encode(name: &str, shape: &[u64], data: &[f32], ggml_type: GgmlType) -> Result<Self> {
        ensure!(
            shape.iter().product::<u64>() == data.len() as u64,
            "tensor `{name}`: {} values for shape {shape:?}",
            data.len()
        );
        let bytes = match ggml_type {
            GgmlType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            GgmlType::F16 => data.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
            GgmlType::Q8_0 => {
                let row = *shape.last().unwrap_or(&1);
                ensure!(
                    row.is_multiple_of(32),
                    "tensor `{name}`: rows of {row} values cannot be cut into Q8_0 blocks of 32"
                );
                quantize_q8_0(data)
            }
            other => anyhow::bail!("tensor `{name}`: the writer does not encode {other}"),
        };
        Ok(TensorData { name: name.to_string(), shape: shape.to_vec(), ggml_type, bytes })
    }
}

/// Q8_0 blocks of `data` (whose length is a multiple of 32): per block an f16 scale `d` and 32
/// int8 `q`, with `x ≈ q * d`.
pub fn quantize_q8_0(data: &[f32]) -> Vec<u8> {
    assert!(data.len().is_multiple_of(32), "Q8_0 quantises whole blocks of 32");
    let mut out = Vec::with_capacity(data.len() / 32 * 34);
    for block in data.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        // `f32::round` rounds half away from zero, as C's `roundf`.
        out.extend(block.iter().map(|&x| ((x * id).round() as i8) as u8));
    }
    out
}

fn write_string(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// A value's bytes without its type id (an array's elements are written this way).
fn write_value(w: &mut impl Write, v: &GgufValue) -> io::Result<()> {
    match v {
        GgufValue::U8(x) => w.write_all(&[*x]),
        GgufValue::I8(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::Bool(x) => w.write_all(&[u8::from(*x)]),
        GgufValue::String(s) => write_string(w, s),
        GgufValue::Array(elem, items) => {
            w.write_all(&(*elem as u32).to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for item in items {
                if item.value_type() != *elem {
                    return Err(io::Error::other(format!(
                        "an array of {elem:?} holds a {:?}",
                        item.value_type()
                    )));
                }
                write_value(w, item)?;
            }
            Ok(())
        }
        GgufValue::U64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

fn pad_to(w: &mut impl Write, written: u64) -> io::Result<u64> {
    let padded = written.div_ceil(ALIGNMENT) * ALIGNMENT;
    w.write_all(&vec![0u8; (padded - written) as usize])?;
    Ok(padded)
}

/// Write a GGUF file atomically (a temporary file beside `path`, renamed into place).
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, GgufValue)],
    tensors: &[TensorData],
) -> Result<()> {
    for (i, (k, _)) in metadata.iter().enumerate() {
        ensure!(
            !metadata[..i].iter().any(|(o, _)| o == k),
            "metadata key `{k}` given twice for {}",
            path.display()
        );
    }
    crate::util::fs::write_atomic_with(path, |file| {
        let mut w = io::BufWriter::with_capacity(1 << 20, file);
        let mut head: Vec<u8> = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            write_string(&mut head, k)?;
            head.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            write_value(&mut head, v)?;
        }
        let mut offset = 0u64;
        for t in tensors {
            write_string(&mut head, &t.name)?;
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            // ggml order: the innermost dimension first.
            for d in t.shape.iter().rev() {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.0.to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.bytes.len() as u64).div_ceil(ALIGNMENT) * ALIGNMENT;
        }
        w.write_all(&head)?;
        pad_to(&mut w, head.len() as u64)?;
        for t in tensors {
            w.write_all(&t.bytes)?;
            pad_to(&mut w, t.bytes.len() as u64)?;
        }
        w.flush()
    })
    .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::gguf::{dequantize, GgufFile, GgufValueType};

    #[test]
    fn q8_0_matches_the_reference_rounding_and_reads_back() {
        // One block: amax 2.54 → d = 0.02; x = 0.03 is q = 1.5 → 2 (half away from zero).
        let mut x = vec![0f32; 32];
        x[0] = 2.54;
        x[1] = -2.54;
        x[2] = 0.03;
        x[3] = -0.03;
        let b = quantize_q8_0(&x);
        assert_eq!(b.len(), 34);
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        assert_eq!(d, f16::from_f32(2.54 / 127.0).to_f32());
        let q: Vec<i8> = b[2..].iter().map(|&v| v as i8).collect();
        assert_eq!(&q[..4], &[127, -127, 2, -2]);
        let back = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
        // Within half a step, plus what storing the scale in f16 moves the codes' values.
        for (a, r) in x.iter().zip(&back) {
            assert!((a - r).abs() <= 0.51 * d, "{a} vs {r}");
        }
        // An all-zero block has scale 0 and zero codes (no division by zero).
        assert!(quantize_q8_0(&[0.0; 32]).iter().all(|&v| v == 0));
    }

    #[test]
    fn a_written_file_reads_back_with_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let data: Vec<f32> = (0..64 * 3).map(|i| (i as f32 - 90.0) / 7.0).collect();
        let meta = vec![
            ("general.architecture".to_string(), GgufValue::String("llama".into())),
            ("a.count".to_string(), GgufValue::U32(7)),
            ("a.eps".to_string(), GgufValue::F32(1e-5)),
            ("a.words".to_string(), GgufValue::strings(["x y", "ü"])),
            (
                "a.types".to_string(),
                GgufValue::Array(GgufValueType::I32, vec![GgufValue::I32(1), GgufValue::I32(3)]),
            ),
            ("a.flag".to_string(), GgufValue::Bool(true)),
        ];
        let tensors = vec![
            TensorData::encode("f32", &[3, 64], &data, GgmlType::F32).unwrap(),
            TensorData::encode("f16", &[3, 64], &data, GgmlType::F16).unwrap(),
            TensorData::encode("q8", &[3, 64], &data, GgmlType::Q8_0).unwrap(),
            TensorData::encode("norm", &[5], &data[..5], GgmlType::F32).unwrap(),
        ];
        write_gguf(&path, &meta, &tensors).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version, 3);
        for (k, v) in &meta {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
        let (f32s, shape) = g.tensor_f32("f32").unwrap();
        assert_eq!((f32s, shape), (data.clone(), vec![3, 64]));
        let (f16s, _) = g.tensor_f32("f16").unwrap();
        let want: Vec<f32> = data.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        assert_eq!(f16s, want);
        let (q8, _) = g.tensor_f32("q8").unwrap();
        assert_eq!(q8, dequantize(GgmlType::Q8_0, &quantize_q8_0(&data), data.len()).unwrap());
        assert_eq!(g.tensor_f32("norm").unwrap().0, data[..5].to_vec());
        assert!(TensorData::encode("bad", &[2, 20], &[0.0; 40], GgmlType::Q8_0).is_err());
        let dup = vec![meta[0].clone(), meta[0].clone()];
        assert!(write_gguf(&path, &dup, &[]).unwrap_err().to_string().contains("twice"));
    }
}
