//! Write a state dict (named f32 tensors) as `torch.save` does: a zip archive (stored, not
//! compressed) with `archive/data.pkl` (a protocol-2 pickle of an `OrderedDict` whose values
//! are `torch._utils._rebuild_tensor_v2` calls on persistent storages), one
//! `archive/data/<n>` record per storage (little-endian values), `archive/byteorder` and
//! `archive/version`. Only the globals `torch.load(weights_only=True)` accepts are used, and
//! [`super::torch_pickle`] reads the result back.

use std::io::Write;

use anyhow::{ensure, Context, Result};
use tch::{Device, Kind, Tensor};

const ARCHIVE: &str = "archive";

/// Pickle opcodes (protocol 2).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const REDUCE: u8 = b'R';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const SETITEMS: u8 = b'u';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINPERSID: u8 = b'Q';
    pub const NEWFALSE: u8 = 0x89;
    pub const STOP: u8 = b'.';
}

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, op: u8) {
        self.0.push(op);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.0.push(op::GLOBAL);
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn str(&mut self, s: &str) {
        self.0.push(op::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if let Ok(small) = i32::try_from(v) {
            self.0.push(op::BININT);
            self.0.extend_from_slice(&small.to_le_bytes());
        } else {
            self.0.push(op::LONG1);
            self.0.push(8);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn ints(&mut self, values: &[i64]) {
        self.op(op::MARK);
        for &v in values {
            self.int(v);
        }
        self.op(op::TUPLE);
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(op::EMPTY_TUPLE);
        self.op(op::REDUCE);
    }
}

/// The bytes of `torch.save(OrderedDict(tensors))`, every tensor stored as f32.
pub fn state_dict_bytes(tensors: &[(&str, &Tensor)]) -> Result<Vec<u8>> {
    let mut p = Pickle(vec![op::PROTO, 2]);
    p.empty_ordered_dict();
    p.op(op::MARK);
    let mut records = Vec::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let t = t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
        let size = t.size();
        let mut stride = vec![1i64; size.len()];
        for d in (0..size.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * size[d + 1];
        }
        let numel = t.numel() as i64;
        p.str(name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(op::MARK);
        // The storage: a persistent id ("storage", type, key, location, numel).
        p.op(op::MARK);
        p.str("storage");
        p.global("torch", "FloatStorage");
        p.str(&i.to_string());
        p.str("cpu");
        p.int(numel);
        p.op(op::TUPLE);
        p.op(op::BINPERSID);
        p.int(0);
        p.ints(&size);
        p.ints(&stride);
        p.op(op::NEWFALSE);
        p.empty_ordered_dict();
        p.op(op::TUPLE);
        p.op(op::REDUCE);
        let values = Vec::<f32>::try_from(t.reshape([-1]))
            .with_context(|| format!("tensor {name}: cannot read its values"))?;
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        records.push(bytes);
    }
    p.op(op::SETITEMS);
    p.op(op::STOP);

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::FileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(records.iter().map(Vec::len).sum::<usize>() > u32::MAX as usize / 2);
    let mut put = |name: String, bytes: &[u8]| -> Result<()> {
        zip.start_file(name.clone(), stored)
            .with_context(|| format!("cannot add {name} to the archive"))?;
        zip.write_all(bytes)
            .with_context(|| format!("cannot write {name}"))
    };
    put(format!("{ARCHIVE}/data.pkl"), &p.0)?;
    put(format!("{ARCHIVE}/byteorder"), b"little")?;
    for (i, bytes) in records.iter().enumerate() {
        put(format!("{ARCHIVE}/data/{i}"), bytes)?;
    }
    put(format!("{ARCHIVE}/version"), b"3\n")?;
    let cursor = zip.finish().context("cannot finish the archive")?;
    let bytes = cursor.into_inner();
    ensure!(!bytes.is_empty(), "the archive is empty");
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_gets_the_tensors_back() {
        let a = Tensor::from_slice(&[1.0f32, -2.0, 3.5, 0.25, 7.0, -0.5]).reshape([2, 3]);
        let b = Tensor::from_slice(&[9.0f64, 8.0]);
        let bytes = state_dict_bytes(&[("W", &a), ("b", &b)]).unwrap();
        let value =
            super::super::torch_pickle::load_bytes(&bytes, std::path::Path::new("x.pt")).unwrap();
        let tensors = super::super::torch_pickle::tensors(&value).unwrap();
        assert_eq!(tensors.len(), 2);
        assert_eq!(tensors[0].0, "W");
        assert!(tensors[0].1.equal(&a));
        assert_eq!(tensors[1].0, "b");
        assert!(tensors[1].1.equal(&b.to_kind(Kind::Float)));
    }
}
