//! A minimal reader of MATLAB level-5 MAT-files (the format of MATLAB 5 to 7.x, and of
//! `scipy.io.savemat`): enough to read the ImageNet devkit's `meta.mat` (a struct array of
//! synsets with numeric and character fields).
//!
//! Format: MathWorks, "MAT-File Format" (matfile_format.pdf), chapter 1. A 128-byte header
//! (text, subsystem offset, version, the endian indicator `IM`/`MI`), then data elements:
//! an 8-byte tag (type, byte count) and the data padded to 8 bytes, or a "small" element
//! whose count and type share the first 4 bytes and whose data sits in the next 4. A
//! `miCOMPRESSED` element holds one zlib-compressed element. A `miMATRIX` element holds the
//! array flags (class), the dimensions, the name, then by class: the real part (numeric and
//! character arrays), the cells, or the field-name length, the field names and one
//! `miMATRIX` per element and field (structs). Sparse and object arrays and complex parts
//! are read as [`Value::Unsupported`]; HDF5-based v7.3 files are refused.

use std::io::Read;

use anyhow::{bail, ensure, Context, Result};

// Data types (table 1-1 of the format document).
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;
const MI_UTF32: u32 = 18;

// Array classes (table 1-3).
const MX_CELL: u8 = 1;
const MX_STRUCT: u8 = 2;
const MX_CHAR: u8 = 4;
const MX_DOUBLE: u8 = 6;
const MX_UINT64: u8 = 15;

/// The complex flag of the array flags.
const COMPLEX: u32 = 0x0800;
/// Arrays nested deeper than this are refused (a guard against crafted files).
const MAX_DEPTH: usize = 16;
/// Largest decompressed element accepted.
const MAX_INFLATED: u64 = 1 << 30;

/// One MATLAB array.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A numeric or logical array, converted to f64, column-major.
    Numeric { dims: Vec<usize>, data: Vec<f64> },
    /// A character array, its characters in stored (column-major) order.
    Char { dims: Vec<usize>, text: String },
    /// A struct array: `values[e * fields.len() + f]` is field `f` of element `e`
    /// (elements column-major).
    Struct {
        dims: Vec<usize>,
        fields: Vec<String>,
        values: Vec<Value>,
    },
    /// A cell array, cells column-major.
    Cell {
        dims: Vec<usize>,
        values: Vec<Value>,
    },
    /// An empty element (no data at all).
    Empty,
    /// An array of a class this reader does not decode (sparse, object, complex).
    Unsupported { class: u8 },
}

impl Value {
    /// The single number of a 1-element numeric array.
    pub fn scalar(&self) -> Option<f64> {
        match self {
            Value::Numeric { data, .. } if data.len() == 1 => Some(data[0]),
            _ => None,
        }
    }

    /// The text of a character array (a row vector in practice).
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Char { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Field `name` of every element of a struct array, in element order.
    pub fn field(&self, name: &str) -> Option<Vec<&Value>> {
        let Value::Struct { fields, values, .. } = self else {
            return None;
        };
        let f = fields.iter().position(|n| n == name)?;
        Some(values.iter().skip(f).step_by(fields.len()).collect())
    }
}

/// Byte order of the file.
#[derive(Clone, Copy)]
struct Order {
    little: bool,
}

impl Order {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.little {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }
    fn u64(self, b: &[u8]) -> u64 {
        let a: [u8; 8] = b[..8].try_into().expect("8 bytes");
        if self.little {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        }
    }
}

/// One data element: its type, its data, and where the next one starts.
struct Element<'a> {
    kind: u32,
    data: &'a [u8],
    next: usize,
}

/// The element at `pos` of `bytes`.
fn element(bytes: &[u8], pos: usize, order: Order) -> Result<Element<'_>> {
    let tag = bytes
        .get(pos..pos + 8)
        .with_context(|| format!("truncated data element tag at byte {pos}"))?;
    let first = order.u32(tag);
    if first >> 16 != 0 {
        // Small data element: count and type in the first 4 bytes, data in the next 4.
        let (n, kind) = ((first >> 16) as usize, first & 0xffff);
        ensure!(n <= 4, "small data element at byte {pos} claims {n} bytes");
        return Ok(Element {
            kind,
            data: &tag[4..4 + n],
            next: pos + 8,
        });
    }
    let n = order.u32(&tag[4..]) as usize;
    let start = pos + 8;
    let data = bytes.get(start..start + n).with_context(|| {
        format!(
            "data element at byte {pos} claims {n} bytes, {} remain (the file is truncated)",
            bytes.len().saturating_sub(start)
        )
    })?;
    let next = if first == MI_COMPRESSED {
        start + n
    } else {
        start + n.div_ceil(8) * 8
    };
    Ok(Element {
        kind: first,
        data,
        next,
    })
}

/// Every variable of a level-5 MAT-file, in file order, with its name.
pub fn read_variables(bytes: &[u8]) -> Result<Vec<(String, Value)>> {
    ensure!(
        bytes.len() >= 128,
        "{} bytes is shorter than a MAT-file header (128 bytes)",
        bytes.len()
    );
    let text = String::from_utf8_lossy(&bytes[..116]);
    if text.starts_with("MATLAB 7.3") || bytes.starts_with(b"\x89HDF") {
        bail!("a MATLAB v7.3 (HDF5) file; save it as a level-5 MAT-file (`save -v7`)");
    }
    let order = match &bytes[126..128] {
        b"IM" => Order { little: true },
        b"MI" => Order { little: false },
        other => bail!(
            "not a level-5 MAT-file (endian indicator {:?}, expected \"IM\" or \"MI\")",
            String::from_utf8_lossy(other)
        ),
    };
    let mut out = Vec::new();
    let mut pos = 128;
    while pos < bytes.len() {
        let e = element(bytes, pos, order)?;
        match e.kind {
            MI_MATRIX => out.push(matrix(e.data, order, 0)?),
            MI_COMPRESSED => {
                let mut inflated = Vec::new();
                flate2::read::ZlibDecoder::new(e.data)
                    .take(MAX_INFLATED)
                    .read_to_end(&mut inflated)
                    .with_context(|| {
                        format!("cannot inflate the compressed element at byte {pos}")
                    })?;
                let inner = element(&inflated, 0, order)?;
                if inner.kind == MI_MATRIX {
                    out.push(matrix(inner.data, order, 0)?);
                }
            }
            _ => {} // anything else at top level carries no variable
        }
        pos = e.next;
    }
    Ok(out)
}

/// The name and value of the array in a `miMATRIX` element's data.
fn matrix(data: &[u8], order: Order, depth: usize) -> Result<(String, Value)> {
    ensure!(
        depth <= MAX_DEPTH,
        "arrays nested more than {MAX_DEPTH} deep"
    );
    if data.is_empty() {
        return Ok((String::new(), Value::Empty));
    }
    let flags = element(data, 0, order)?;
    ensure!(
        flags.kind == MI_UINT32 && flags.data.len() == 8,
        "array flags are not two uint32 values"
    );
    let word = order.u32(flags.data);
    let class = (word & 0xff) as u8;
    let dims_el = element(data, flags.next, order)?;
    ensure!(dims_el.kind == MI_INT32, "array dimensions are not int32");
    let dims: Vec<usize> = dims_el
        .data
        .chunks_exact(4)
        .map(|c| order.u32(c) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("array dimensions overflow")?;
    let name_el = element(data, dims_el.next, order)?;
    let name = String::from_utf8_lossy(name_el.data)
        .trim_end_matches('\0')
        .to_string();
    let mut pos = name_el.next;
    let value = match class {
        _ if word & COMPLEX != 0 => Value::Unsupported { class },
        // An empty array may end after its name.
        MX_CHAR | MX_DOUBLE..=MX_UINT64 if count == 0 && pos >= data.len() => Value::Empty,
        MX_CHAR => {
            let real = element(data, pos, order)?;
            Value::Char {
                dims,
                text: decode_text(real.kind, real.data, order)?,
            }
        }
        MX_DOUBLE..=MX_UINT64 => {
            let real = element(data, pos, order)?;
            let values = decode_numbers(real.kind, real.data, order)?;
            ensure!(
                values.len() == count,
                "array `{name}` has {} values for dimensions {dims:?}",
                values.len()
            );
            Value::Numeric { dims, data: values }
        }
        MX_CELL => {
            let mut values = Vec::with_capacity(count.min(1 << 16));
            for _ in 0..count {
                let e = element(data, pos, order)?;
                ensure!(e.kind == MI_MATRIX, "a cell of `{name}` is not an array");
                values.push(matrix(e.data, order, depth + 1)?.1);
                pos = e.next;
            }
            Value::Cell { dims, values }
        }
        MX_STRUCT => {
            let len_el = element(data, pos, order)?;
            ensure!(
                len_el.kind == MI_INT32 && len_el.data.len() == 4,
                "struct `{name}` has no field-name length"
            );
            let len = order.u32(len_el.data) as usize;
            let names_el = element(data, len_el.next, order)?;
            ensure!(
                len > 0 && names_el.data.len().is_multiple_of(len),
                "struct `{name}`: field names of {} bytes do not come in {len}-byte slots",
                names_el.data.len()
            );
            let fields: Vec<String> = names_el
                .data
                .chunks_exact(len)
                .map(|c| {
                    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                    String::from_utf8_lossy(&c[..end]).into_owned()
                })
                .collect();
            pos = names_el.next;
            let total = count
                .checked_mul(fields.len())
                .context("struct dimensions overflow")?;
            let mut values = Vec::with_capacity(total.min(1 << 16));
            for _ in 0..total {
                let e = element(data, pos, order)?;
                ensure!(
                    e.kind == MI_MATRIX,
                    "a field of struct `{name}` is not an array"
                );
                values.push(matrix(e.data, order, depth + 1)?.1);
                pos = e.next;
            }
            Value::Struct {
                dims,
                fields,
                values,
            }
        }
        _ => Value::Unsupported { class },
    };
    Ok((name, value))
}

/// The numbers of a numeric data element, whatever its storage type.
fn decode_numbers(kind: u32, d: &[u8], o: Order) -> Result<Vec<f64>> {
    let v: Vec<f64> = match kind {
        MI_INT8 => d.iter().map(|&b| f64::from(b as i8)).collect(),
        MI_UINT8 => d.iter().map(|&b| f64::from(b)).collect(),
        MI_INT16 => d
            .chunks_exact(2)
            .map(|c| f64::from(o.u16(c) as i16))
            .collect(),
        MI_UINT16 => d.chunks_exact(2).map(|c| f64::from(o.u16(c))).collect(),
        MI_INT32 => d
            .chunks_exact(4)
            .map(|c| f64::from(o.u32(c) as i32))
            .collect(),
        MI_UINT32 => d.chunks_exact(4).map(|c| f64::from(o.u32(c))).collect(),
        MI_SINGLE => d
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_bits(o.u32(c))))
            .collect(),
        MI_DOUBLE => d
            .chunks_exact(8)
            .map(|c| f64::from_bits(o.u64(c)))
            .collect(),
        MI_INT64 => d.chunks_exact(8).map(|c| o.u64(c) as i64 as f64).collect(),
        MI_UINT64 => d.chunks_exact(8).map(|c| o.u64(c) as f64).collect(),
        other => bail!("numeric data of unknown type {other}"),
    };
    Ok(v)
}

/// The characters of a character array's data element.
fn decode_text(kind: u32, d: &[u8], o: Order) -> Result<String> {
    Ok(match kind {
        MI_UTF8 => String::from_utf8_lossy(d).into_owned(),
        MI_INT8 | MI_UINT8 => d.iter().map(|&b| char::from(b)).collect(),
        MI_UTF16 | MI_UINT16 | MI_INT16 => {
            let units: Vec<u16> = d.chunks_exact(2).map(|c| o.u16(c)).collect();
            String::from_utf16_lossy(&units)
        }
        MI_UTF32 | MI_UINT32 | MI_INT32 => d
            .chunks_exact(4)
            .map(|c| char::from_u32(o.u32(c)).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
        other => bail!("character data of unknown type {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tag and its data padded to 8 bytes (little-endian).
    fn el(kind: u32, data: &[u8]) -> Vec<u8> {
        let mut v = kind.to_le_bytes().to_vec();
        v.extend((data.len() as u32).to_le_bytes());
        v.extend(data);
        v.resize(8 + data.len().div_ceil(8) * 8, 0);
        v
    }

    fn header() -> Vec<u8> {
        let mut h = b"MATLAB 5.0 MAT-file, hand-made".to_vec();
        h.resize(124, b' ');
        h.extend([0x00, 0x01]);
        h.extend(b"IM");
        h
    }

    fn array(class: u8, dims: &[u32], name: &str, body: &[u8]) -> Vec<u8> {
        let mut m = el(MI_UINT32, &[class, 0, 0, 0, 0, 0, 0, 0]);
        let d: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
        m.extend(el(MI_INT32, &d));
        m.extend(el(MI_INT8, name.as_bytes()));
        m.extend(body);
        el(MI_MATRIX, &m)
    }

    #[test]
    fn reads_a_hand_built_struct() {
        // s(1).id = 3 (stored as uint8), s(1).w = 'ab' (uint16); s(2).id = 2.5, s(2).w = ''.
        let mut body = Vec::new();
        // Field-name length as a small element.
        body.extend(((4u32 << 16) | MI_INT32).to_le_bytes());
        body.extend(8u32.to_le_bytes());
        body.extend(el(MI_INT8, b"id\0\0\0\0\0\0w\0\0\0\0\0\0\0"));
        body.extend(array(MX_DOUBLE, &[1, 1], "", &el(MI_UINT8, &[3])));
        body.extend(array(
            MX_CHAR,
            &[1, 2],
            "",
            &el(MI_UINT16, &[b'a', 0, b'b', 0]),
        ));
        body.extend(array(
            MX_DOUBLE,
            &[1, 1],
            "",
            &el(MI_DOUBLE, &2.5f64.to_le_bytes()),
        ));
        body.extend(el(MI_MATRIX, &[]));
        let mut file = header();
        file.extend(array(MX_STRUCT, &[2, 1], "s", &body));
        let vars = read_variables(&file).unwrap();
        assert_eq!(vars.len(), 1);
        let (name, s) = &vars[0];
        assert_eq!(name, "s");
        let ids: Vec<Option<f64>> = s.field("id").unwrap().iter().map(|v| v.scalar()).collect();
        assert_eq!(ids, [Some(3.0), Some(2.5)]);
        let w = s.field("w").unwrap();
        assert_eq!(w[0].text(), Some("ab"));
        assert_eq!(w[1], &Value::Empty);
        assert!(s.field("nope").is_none());
    }

    #[test]
    fn refuses_broken_files() {
        assert!(read_variables(b"short").is_err());
        let mut file = header();
        file[126..128].copy_from_slice(b"XX");
        assert!(read_variables(&file)
            .unwrap_err()
            .to_string()
            .contains("level-5"));
        let mut file = header();
        file.extend(array(
            MX_DOUBLE,
            &[1, 1],
            "x",
            &el(MI_DOUBLE, &1f64.to_le_bytes()),
        ));
        file.truncate(file.len() - 4);
        let err = read_variables(&file).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let mut v73 = b"MATLAB 7.3 MAT-file".to_vec();
        v73.resize(128, 0);
        assert!(read_variables(&v73)
            .unwrap_err()
            .to_string()
            .contains("7.3"));
    }
}
