//! Reading PyTorch checkpoints written by `torch.save` (`pytorch_model.bin`), so that hub models
//! that ship no `model.safetensors` can be converted once and the rest of the stack stays
//! safetensors-only.
//!
//! The file is a zip: `<archive>/data.pkl` is a pickle of the state dict in which every tensor is
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, and each storage is a
//! *persistent id* `('storage', torch.FloatStorage, key, location, numel)` whose bytes are the
//! zip member `<archive>/data/<key>` (little-endian). Only the pickle opcodes and globals that
//! state dicts use are implemented; anything else is an error naming the opcode or the global, so
//! an unusual checkpoint fails loudly instead of loading wrong weights. Nothing in the pickle is
//! executed: globals are recognised by name only.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::{Kind, Tensor};

/// A storage reference: its zip key and element type.
#[derive(Debug, Clone)]
pub struct StorageRef {
    pub key: String,
    pub kind: Kind,
}

/// A tensor as the pickle describes it (a strided view of a storage).
#[derive(Debug, Clone)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

// Some payloads are only read through `Debug` (in error messages).
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// The result of a call we do not model (kept so the pickle can go on; an error if it ends
    /// up where a tensor is expected).
    Opaque(String),
}

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

fn elem_size(kind: Kind) -> usize {
    match kind {
        Kind::Double | Kind::Int64 => 8,
        Kind::Float | Kind::Int => 4,
        Kind::Half | Kind::BFloat16 | Kind::Int16 => 2,
        _ => 1,
    }
}

fn ints(v: &V, what: &str) -> Result<Vec<i64>> {
    match v {
        V::Tuple(items) | V::List(items) => items
            .iter()
            .map(|x| {
                if let V::Int(i) = x {
                    Ok(*i)
                } else {
                    bail!("{what}: expected integers, got {x:?}")
                }
            })
            .collect(),
        other => bail!("{what}: expected a tuple of integers, got {other:?}"),
    }
}

/// Run the pickle program and return the object it builds.
fn unpickle(data: &[u8]) -> Result<V> {
    let mut pos = 0usize;
    let mut stack: Vec<V> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, V> = HashMap::new();
    macro_rules! take {
        ($n:expr) => {{
            let n = $n;
            let end = pos
                .checked_add(n)
                .filter(|&e| e <= data.len())
                .ok_or_else(|| anyhow!("the pickle ends inside an opcode at byte {pos}"))?;
            let s = &data[pos..end];
            pos = end;
            s
        }};
    }
    macro_rules! pop {
        () => {
            stack.pop().ok_or_else(|| anyhow!("pickle stack underflow at byte {pos}"))?
        };
    }
    fn uint(b: &[u8]) -> u64 {
        b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64)
    }
    loop {
        let at = pos;
        let op = *take!(1).first().expect("one byte");
        match op {
            0x80 => {
                take!(1); // PROTO
            }
            0x95 => {
                take!(8); // FRAME: a length hint only
            }
            b'c' => {
                // GLOBAL: "module\nname\n"
                let rest = &data[pos..];
                let nl1 = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("GLOBAL without newline at byte {at}"))?;
                let nl2 = rest[nl1 + 1..].iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("GLOBAL without newline at byte {at}"))?;
                let module = String::from_utf8_lossy(&rest[..nl1]).to_string();
                let name = String::from_utf8_lossy(&rest[nl1 + 1..nl1 + 1 + nl2]).to_string();
                pos += nl1 + nl2 + 2;
                stack.push(V::Global(module, name));
            }
            0x93 => {
                // STACK_GLOBAL
                let (name, module) = (pop!(), pop!());
                match (module, name) {
                    (V::Str(m), V::Str(n)) => stack.push(V::Global(m, n)),
                    _ => bail!("STACK_GLOBAL with non-string operands at byte {at}"),
                }
            }
            b'q' => {
                let i = take!(1)[0] as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| anyhow!("BINPUT on an empty stack"))?);
            }
            b'r' => {
                let i = uint(take!(4)) as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| anyhow!("LONG_BINPUT on an empty stack"))?);
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(i, stack.last().cloned().ok_or_else(|| anyhow!("MEMOIZE on an empty stack"))?);
            }
            b'h' => {
                let i = take!(1)[0] as u32;
                stack.push(memo.get(&i).cloned().ok_or_else(|| anyhow!("BINGET of unknown memo {i} at byte {at}"))?);
            }
            b'j' => {
                let i = uint(take!(4)) as u32;
                stack.push(memo.get(&i).cloned().ok_or_else(|| anyhow!("LONG_BINGET of unknown memo {i} at byte {at}"))?);
            }
            b'(' => marks.push(stack.len()),
            b')' => stack.push(V::Tuple(vec![])),
            b']' => stack.push(V::List(vec![])),
            b'}' => stack.push(V::Dict(vec![])),
            b't' | b'l' | b'd' => {
                let m = marks.pop().ok_or_else(|| anyhow!("opcode {:?} without MARK at byte {at}", op as char))?;
                let items = stack.split_off(m);
                stack.push(match op {
                    b't' => V::Tuple(items),
                    b'l' => V::List(items),
                    _ => {
                        let mut pairs = Vec::new();
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            pairs.push((k, v));
                        }
                        V::Dict(pairs)
                    }
                });
            }
            0x85 => {
                let a = pop!();
                stack.push(V::Tuple(vec![a]));
            }
            0x86 => {
                let (b, a) = (pop!(), pop!());
                stack.push(V::Tuple(vec![a, b]));
            }
            0x87 => {
                let (c, b, a) = (pop!(), pop!(), pop!());
                stack.push(V::Tuple(vec![a, b, c]));
            }
            b'a' => {
                let x = pop!();
                match stack.last_mut() {
                    Some(V::List(l)) => l.push(x),
                    _ => bail!("APPEND to a non-list at byte {at}"),
                }
            }
            b'e' => {
                let m = marks.pop().ok_or_else(|| anyhow!("APPENDS without MARK at byte {at}"))?;
                let items = stack.split_off(m);
                match stack.last_mut() {
                    Some(V::List(l)) => l.extend(items),
                    _ => bail!("APPENDS to a non-list at byte {at}"),
                }
            }
            b's' => {
                let (v, k) = (pop!(), pop!());
                match stack.last_mut() {
                    Some(V::Dict(d)) => d.push((k, v)),
                    _ => bail!("SETITEM on a non-dict at byte {at}"),
                }
            }
            b'u' => {
                let m = marks.pop().ok_or_else(|| anyhow!("SETITEMS without MARK at byte {at}"))?;
                let items = stack.split_off(m);
                let Some(V::Dict(d)) = stack.last_mut() else { bail!("SETITEMS on a non-dict at byte {at}") };
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            b'N' => stack.push(V::None),
            0x88 => stack.push(V::Bool(true)),
            0x89 => stack.push(V::Bool(false)),
            b'J' => stack.push(V::Int(i32::from_le_bytes(take!(4).try_into().expect("4 bytes")) as i64)),
            b'K' => stack.push(V::Int(take!(1)[0] as i64)),
            b'M' => stack.push(V::Int(uint(take!(2)) as i64)),
            0x8a => {
                // LONG1: n little-endian two's-complement bytes
                let n = take!(1)[0] as usize;
                let b = take!(n);
                if n > 8 {
                    bail!("LONG1 of {n} bytes at byte {at} (larger than 64 bits)");
                }
                let mut v = uint(b) as i64;
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(V::Int(v));
            }
            b'G' => stack.push(V::Float(f64::from_be_bytes(take!(8).try_into().expect("8 bytes")))),
            b'X' => {
                let n = uint(take!(4)) as usize;
                stack.push(V::Str(String::from_utf8(take!(n).to_vec()).context("BINUNICODE is not UTF-8")?));
            }
            0x8c => {
                let n = take!(1)[0] as usize;
                stack.push(V::Str(String::from_utf8(take!(n).to_vec()).context("SHORT_BINUNICODE is not UTF-8")?));
            }
            0x8d => {
                let n = uint(take!(8)) as usize;
                stack.push(V::Str(String::from_utf8(take!(n).to_vec()).context("BINUNICODE8 is not UTF-8")?));
            }
            b'T' | b'B' => {
                let n = uint(take!(4)) as usize;
                let b = take!(n).to_vec();
                stack.push(if op == b'T' { V::Str(String::from_utf8_lossy(&b).to_string()) } else { V::Bytes(b) });
            }
            b'U' | b'C' => {
                let n = take!(1)[0] as usize;
                let b = take!(n).to_vec();
                stack.push(if op == b'U' { V::Str(String::from_utf8_lossy(&b).to_string()) } else { V::Bytes(b) });
            }
            b'Q' => {
                // BINPERSID: torch's storages
                let pid = pop!();
                stack.push(persistent(pid).with_context(|| format!("persistent id at byte {at}"))?);
            }
            b'R' => {
                let (args, callable) = (pop!(), pop!());
                stack.push(reduce(callable, args).with_context(|| format!("REDUCE at byte {at}"))?);
            }
            0x81 => {
                // NEWOBJ: cls.__new__(cls, *args); no state dict tensor is built this way.
                let (_args, cls) = (pop!(), pop!());
                stack.push(V::Opaque(format!("{cls:?}")));
            }
            b'b' => {
                // BUILD: the state of the object below (OrderedDict's `_metadata`); not needed.
                pop!();
            }
            b'.' => return stack.pop().ok_or_else(|| anyhow!("STOP with an empty stack")),
            other => bail!("unsupported pickle opcode 0x{other:02x} at byte {at} (not one torch.save uses for state dicts)"),
        }
    }
}

fn persistent(pid: V) -> Result<V> {
    let V::Tuple(items) = pid else { bail!("not a tuple: {pid:?}") };
    match items.as_slice() {
        [V::Str(tag), V::Global(module, name), V::Str(key), _location, ..] if tag == "storage" => {
            let kind = storage_kind(name)
                .ok_or_else(|| anyhow!("unsupported storage type {module}.{name}"))?;
            Ok(V::Storage(StorageRef { key: key.clone(), kind }))
        }
        other => bail!("not a ('storage', type, key, location, numel) tuple: {other:?}"),
    }
}

fn reduce(callable: V, args: V) -> Result<V> {
    let V::Global(module, name) = &callable else { return Ok(V::Opaque(format!("{callable:?}"))) };
    let V::Tuple(args) = args else { bail!("{module}.{name}: arguments are not a tuple") };
    Ok(match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => V::Dict(vec![]),
        ("torch._utils", "_rebuild_tensor_v2") => {
            let [V::Storage(storage), V::Int(offset), size, stride, ..] = args.as_slice() else {
                bail!("_rebuild_tensor_v2: expected (storage, offset, size, stride, ...), got {args:?}")
            };
            let (size, stride) = (ints(size, "tensor size")?, ints(stride, "tensor stride")?);
            if size.len() != stride.len() {
                bail!("_rebuild_tensor_v2: size {size:?} and stride {stride:?} differ in rank");
            }
            V::Tensor(TensorRef { storage: storage.clone(), offset: *offset, size, stride })
        }
        // nn.Parameter(tensor, requires_grad, hooks): the tensor is what matters.
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => match args.into_iter().next() {
            Some(t @ V::Tensor(_)) => t,
            other => bail!("{name}: first argument is not a tensor: {other:?}"),
        },
        _ => V::Opaque(format!("{module}.{name}")),
    })
}

/// The tensors of a `torch.save`d state dict, in file order, as contiguous CPU tensors.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let what = path.display().to_string();
    let file = fs::File::open(path).with_context(|| format!("opening {what}"))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        anyhow!("{what}: not a zip archive ({e}); only torch.save's zip format (PyTorch ≥ 1.6) is read; fix: re-save it with a recent PyTorch, or convert it to model.safetensors")
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| {
            anyhow!("{what}: no `<archive>/data.pkl` member; is this a torch.save checkpoint?")
        })?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut read_member = |name: &str| -> Result<Vec<u8>> {
        let mut f = zip.by_name(name).map_err(|e| anyhow!("{what}: member `{name}`: {e}"))?;
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf).with_context(|| format!("{what}: reading `{name}`"))?;
        Ok(buf)
    };
    if let Ok(order) = read_member(&format!("{prefix}byteorder")) {
        if order.trim_ascii() != b"little" {
            bail!(
                "{what}: byteorder `{}` (only little-endian checkpoints are read)",
                String::from_utf8_lossy(&order)
            );
        }
    }
    let pickle = read_member(&pkl_name)?;
    let root = unpickle(&pickle).with_context(|| format!("{what}: `{pkl_name}`"))?;
    let V::Dict(entries) = root else {
        bail!("{what}: the checkpoint is not a dict of tensors (a state dict)")
    };
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let V::Str(name) = k else { bail!("{what}: a state-dict key is not a string: {k:?}") };
        let t = match v {
            V::Tensor(t) => t,
            other => bail!(
                "{what}: `{name}` is not a tensor ({})",
                match other {
                    V::Opaque(s) => format!("built by {s}"),
                    o => format!("{o:?}"),
                }
            ),
        };
        if !storages.contains_key(&t.storage.key) {
            let bytes = read_member(&format!("{prefix}data/{}", t.storage.key))?;
            let es = elem_size(t.storage.kind);
            if bytes.len() % es != 0 {
                bail!(
                    "{what}: storage `{}` has {} bytes, not a multiple of {es}",
                    t.storage.key,
                    bytes.len()
                );
            }
            let flat =
                Tensor::f_from_data_size(&bytes, &[(bytes.len() / es) as i64], t.storage.kind)
                    .with_context(|| format!("{what}: storage `{}`", t.storage.key))?;
            storages.insert(t.storage.key.clone(), flat);
        }
        let storage = &storages[&t.storage.key];
        let numel = storage.size()[0];
        // The view must lie inside its storage (a corrupt file must not read out of bounds).
        let empty = t.size.contains(&0);
        let last = t.offset
            + t.size.iter().zip(&t.stride).map(|(&s, &st)| (s - 1).max(0) * st).sum::<i64>();
        if t.offset < 0 || t.stride.iter().any(|&s| s < 0) || (!empty && last >= numel) {
            bail!("{what}: `{name}` (size {:?}, stride {:?}, offset {}) reaches past its storage of {numel} elements", t.size, t.stride, t.offset);
        }
        let view = storage
            .f_as_strided(t.size.as_slice(), t.stride.as_slice(), Some(t.offset))?
            .contiguous();
        out.push((name, view));
    }
    if out.is_empty() {
        bail!("{what}: the state dict holds no tensors");
    }
    Ok(out)
}

/// Convert a `torch.save` checkpoint to `model.safetensors` (through a temporary file and a
/// rename, so an interrupted conversion leaves no half file).
pub fn convert_to_safetensors(bin: &Path, out: &Path) -> Result<()> {
    let tensors = read_state_dict(bin)?;
    let dir = out.parent().context("the output has a folder")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp =
        tempfile::Builder::new().prefix(".convert-").suffix(".safetensors").tempfile_in(dir)?;
    Tensor::write_safetensors(&tensors, tmp.path())
        .with_context(|| format!("writing {}", out.display()))?;
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pickles_and_refusals() {
        // {"a": 1, "b": [True, None, -2]}, protocol 2, as `pickle.dumps` writes it.
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(\x88NJ\xfe\xff\xff\xffeu.";
        let V::Dict(d) = unpickle(p).unwrap() else { panic!() };
        assert_eq!(d.len(), 2);
        assert!(matches!(&d[1].1, V::List(l) if matches!(l[2], V::Int(-2))));
        // LONG1 with a negative value.
        assert!(matches!(unpickle(b"\x80\x02\x8a\x02\x00\xff.").unwrap(), V::Int(-256)));
        // An opcode outside the subset is refused by name and position.
        let err = unpickle(b"\x80\x02I1\n.").unwrap_err().to_string();
        assert!(err.contains("opcode 0x49 at byte 2"), "{err}");
        assert!(unpickle(b"\x80\x02X\x09\x00\x00\x00ab")
            .unwrap_err()
            .to_string()
            .contains("ends inside"));
    }
}
