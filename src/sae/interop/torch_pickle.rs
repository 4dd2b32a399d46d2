//! A restricted reader of `torch.save` files: the zip archive (`<name>/data.pkl`, the
//! pickle of the saved object, and `<name>/data/<key>`, one raw little-endian storage per
//! key) that PyTorch ≥ 1.6 writes.
//!
//! The pickle is interpreted, never executed: its opcodes build plain values (None, bool,
//! int, float, str, list, tuple, dict) and the only callables it may name are the ones that
//! rebuild tensors (`torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`),
//! an empty `collections.OrderedDict`, and the typed storage classes of its persistent ids
//! (`torch.FloatStorage`, `torch.HalfStorage`, …). Any other global (a class, a function) is
//! refused with one line naming the file and the global, before anything is built from it.
//! `BUILD` on a dict (the `_metadata` attribute of a module's state dict) is ignored.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tch::{Kind, Tensor};

/// A value of an unpickled `torch.save` file.
#[derive(Debug)]
pub enum PickleValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<PickleValue>),
    Tuple(Vec<PickleValue>),
    /// A dict or OrderedDict, in insertion order.
    Dict(Vec<(PickleValue, PickleValue)>),
    Tensor(Tensor),
}

impl PickleValue {
    /// The name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PickleValue::None => "None",
            PickleValue::Bool(_) => "bool",
            PickleValue::Int(_) => "int",
            PickleValue::Float(_) => "float",
            PickleValue::Str(_) => "str",
            PickleValue::List(_) => "list",
            PickleValue::Tuple(_) => "tuple",
            PickleValue::Dict(_) => "dict",
            PickleValue::Tensor(_) => "tensor",
        }
    }

    /// A dict's entry with the string key `key`.
    pub fn get(&self, key: &str) -> Option<&PickleValue> {
        match self {
            PickleValue::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, PickleValue::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn shallow_copy(&self) -> Result<PickleValue> {
        Ok(match self {
            PickleValue::None => PickleValue::None,
            PickleValue::Bool(b) => PickleValue::Bool(*b),
            PickleValue::Int(i) => PickleValue::Int(*i),
            PickleValue::Float(f) => PickleValue::Float(*f),
            PickleValue::Str(s) => PickleValue::Str(s.clone()),
            PickleValue::Tensor(t) => PickleValue::Tensor(t.shallow_clone()),
            PickleValue::List(v) => PickleValue::List(copy_all(v)?),
            PickleValue::Tuple(v) => PickleValue::Tuple(copy_all(v)?),
            PickleValue::Dict(v) => PickleValue::Dict(
                v.iter()
                    .map(|(k, x)| Ok((k.shallow_copy()?, x.shallow_copy()?)))
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

fn copy_all(v: &[PickleValue]) -> Result<Vec<PickleValue>> {
    v.iter().map(PickleValue::shallow_copy).collect()
}

/// The tensors of a state dict (a dict of names to tensors), in file order; entries that
/// are not tensors are skipped. None when `value` is not a dict.
pub fn tensors(value: &PickleValue) -> Option<Vec<(String, Tensor)>> {
    let PickleValue::Dict(items) = value else {
        return None;
    };
    Some(
        items
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (PickleValue::Str(k), PickleValue::Tensor(t)) => {
                    Some((k.clone(), t.shallow_clone()))
                }
                _ => None,
            })
            .collect(),
    )
}

/// Read the `torch.save` file at `path` (the whole file is the archive).
pub fn load(path: &Path) -> Result<PickleValue> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    load_bytes(&bytes, path)
}

/// Read a `torch.save` archive held in `bytes` (`path` names it in errors).
pub fn load_bytes(bytes: &[u8], path: &Path) -> Result<PickleValue> {
    let shown = path.display();
    ensure!(
        bytes.starts_with(b"PK"),
        "{shown} is not a torch.save file (no zip archive; files written by torch < 1.6 or with _use_new_zipfile_serialization=False are not read: load and save them again with a recent torch)"
    );
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| anyhow!("{shown}: not a readable torch.save archive ({e})"))?;
    let names: Vec<String> = archive.file_names().map(String::from).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") || n.as_str() == "data.pkl")
        .ok_or_else(|| anyhow!("{shown}: the archive has no data.pkl: not a torch.save file"))?
        .clone();
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
    if let Some(order) = names.iter().find(|n| **n == format!("{prefix}byteorder")) {
        let mut s = String::new();
        archive
            .by_name(order)
            .map_err(|e| anyhow!("{shown}: {order}: {e}"))?
            .read_to_string(&mut s)
            .with_context(|| format!("{shown}: cannot read {order}"))?;
        ensure!(
            s.trim() == "little",
            "{shown}: storages are {}-endian: only little-endian files are read",
            s.trim()
        );
    }
    let mut data = Vec::new();
    archive
        .by_name(&pkl)
        .map_err(|e| anyhow!("{shown}: {pkl}: {e}"))?
        .read_to_end(&mut data)
        .with_context(|| format!("{shown}: cannot read {pkl}"))?;
    let mut storages = Storages {
        archive,
        prefix,
        path,
        cache: HashMap::new(),
    };
    Unpickler::new(&data, path).run(&mut storages)
}

/// The storages of an archive, read on first use.
struct Storages<'a, 'b> {
    archive: zip::ZipArchive<Cursor<&'b [u8]>>,
    prefix: String,
    path: &'a Path,
    cache: HashMap<String, Tensor>,
}

impl Storages<'_, '_> {
    /// Storage `key` as a flat tensor of `numel` elements of `kind`.
    fn get(&mut self, key: &str, kind: Kind, numel: i64) -> Result<Tensor> {
        if let Some(t) = self.cache.get(key) {
            ensure!(
                t.kind() == kind,
                "{}: storage {key} is read as two dtypes",
                self.path.display()
            );
            return Ok(t.shallow_clone());
        }
        let name = format!("{}data/{key}", self.prefix);
        let shown = self.path.display();
        let mut bytes = Vec::new();
        self.archive
            .by_name(&name)
            .map_err(|e| anyhow!("{shown}: storage {name} is missing ({e})"))?
            .read_to_end(&mut bytes)
            .with_context(|| format!("{shown}: cannot read {name}"))?;
        let size = kind.elt_size_in_bytes() as i64;
        ensure!(
            numel >= 0 && bytes.len() as i64 == numel * size,
            "{shown}: storage {name} holds {} bytes, expected {numel} elements of {size} bytes",
            bytes.len()
        );
        let t = Tensor::f_from_data_size(&bytes, &[numel], kind)
            .with_context(|| format!("{shown}: cannot read storage {name}"))?;
        self.cache.insert(key.to_string(), t.shallow_clone());
        Ok(t)
    }
}

/// The callables a pickle may name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
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

/// A stack item: a value, a mark or an allowed callable.
#[derive(Debug)]
enum Item {
    Value(PickleValue),
    Mark,
    Global(Global),
}

impl Item {
    fn copy(&self) -> Result<Item> {
        Ok(match self {
            Item::Value(v) => Item::Value(v.shallow_copy()?),
            Item::Mark => Item::Mark,
            Item::Global(g) => Item::Global(*g),
        })
    }
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
    stack: Vec<Item>,
    memo: HashMap<u32, Item>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], path: &'a Path) -> Self {
        Unpickler {
            data,
            pos: 0,
            path,
            stack: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn err(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{}: data.pkl at byte {}: {what}",
            self.path.display(),
            self.pos
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.err("the pickle ends early"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("a text argument has no end of line"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.err("text is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<PickleValue> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| self.err("a string is not UTF-8"))?;
        Ok(PickleValue::Str(s.to_string()))
    }

    fn push(&mut self, v: PickleValue) {
        self.stack.push(Item::Value(v));
    }

    fn pop(&mut self) -> Result<Item> {
        self.stack
            .pop()
            .ok_or_else(|| self.err("the stack is empty"))
    }

    fn pop_value(&mut self) -> Result<PickleValue> {
        match self.pop()? {
            Item::Value(v) => Ok(v),
            other => Err(self.err(format!("expected a value, found {other:?}"))),
        }
    }

    /// The items above the topmost mark (the mark removed).
    fn pop_mark(&mut self) -> Result<Vec<Item>> {
        let at = self
            .stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or_else(|| self.err("no mark on the stack"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn values(&self, items: Vec<Item>) -> Result<Vec<PickleValue>> {
        items
            .into_iter()
            .map(|i| match i {
                Item::Value(v) => Ok(v),
                other => Err(self.err(format!("expected a value, found {other:?}"))),
            })
            .collect()
    }

    fn top_mut(&mut self) -> Result<&mut PickleValue> {
        let err = self.err("the stack is empty");
        match self.stack.last_mut() {
            Some(Item::Value(v)) => Ok(v),
            Some(_) => Err(anyhow!("{err}: not a value")),
            None => Err(err),
        }
    }

    fn set_items(&mut self, items: Vec<PickleValue>) -> Result<()> {
        ensure!(
            items.len().is_multiple_of(2),
            self.err("SETITEMS with an odd number of items")
        );
        let err = self.err("SETITEM(S) on something that is not a dict");
        let PickleValue::Dict(d) = self.top_mut()? else {
            return Err(err);
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<PickleValue>) -> Result<()> {
        let err = self.err("APPEND(S) on something that is not a list");
        let PickleValue::List(l) = self.top_mut()? else {
            return Err(err);
        };
        l.extend(items);
        Ok(())
    }

    /// Push the global `module.name`: an allowed callable, or a storage class (as its name,
    /// which only a persistent id reads); anything else is refused.
    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        if module == "torch" && storage_kind(name).is_some() {
            self.push(PickleValue::Str(format!("torch.{name}")));
            return Ok(());
        }
        let g = self.callable(module, name)?;
        self.stack.push(Item::Global(g));
        Ok(())
    }

    fn callable(&self, module: &str, name: &str) -> Result<Global> {
        Ok(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            _ => bail!(
                "{}: refusing to load {module}.{name}: only tensors and plain containers (dict, list, tuple, str, int, float, bool, None) are read from torch.save files, and nothing in them is executed",
                self.path.display()
            ),
        })
    }

    fn reduce(&mut self) -> Result<()> {
        let args = self.pop_value()?;
        let PickleValue::Tuple(args) = args else {
            return Err(self.err("REDUCE arguments are not a tuple"));
        };
        let global = match self.pop()? {
            Item::Global(g) => g,
            other => return Err(self.err(format!("REDUCE on {other:?}, not a callable"))),
        };
        let v = match global {
            Global::OrderedDict => {
                ensure!(
                    args.is_empty(),
                    self.err("OrderedDict called with arguments")
                );
                PickleValue::Dict(Vec::new())
            }
            Global::RebuildParameter => match args.into_iter().next() {
                Some(PickleValue::Tensor(t)) => PickleValue::Tensor(t),
                _ => return Err(self.err("_rebuild_parameter without a tensor")),
            },
            Global::RebuildTensor => PickleValue::Tensor(self.rebuild_tensor(args)?),
        };
        self.push(v);
        Ok(())
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, ...)`.
    fn rebuild_tensor(&mut self, args: Vec<PickleValue>) -> Result<Tensor> {
        let mut it = args.into_iter();
        let storage = match it.next() {
            Some(PickleValue::Tensor(t)) => t,
            _ => return Err(self.err("_rebuild_tensor_v2 without a storage")),
        };
        let ints = |v: Option<PickleValue>, what: &str| -> Result<Vec<i64>> {
            match v {
                Some(PickleValue::Int(i)) => Ok(vec![i]),
                Some(PickleValue::Tuple(t)) => t
                    .into_iter()
                    .map(|x| match x {
                        PickleValue::Int(i) => Ok(i),
                        _ => Err(anyhow!("not an integer")),
                    })
                    .collect::<Result<Vec<i64>>>()
                    .map_err(|_| anyhow!("{what} is not a tuple of integers")),
                _ => bail!("{what} is missing"),
            }
        };
        let wrap = |e: anyhow::Error| self.err(format!("_rebuild_tensor_v2: {e}"));
        let offset = ints(it.next(), "the storage offset").map_err(wrap)?[0];
        let size = ints(it.next(), "the size").map_err(wrap)?;
        let stride = ints(it.next(), "the stride").map_err(wrap)?;
        ensure!(
            size.len() == stride.len() && size.iter().all(|&s| s >= 0) && offset >= 0,
            self.err(format!(
                "a tensor of size {size:?}, stride {stride:?} and offset {offset}"
            ))
        );
        let numel = storage.size()[0];
        let empty = size.contains(&0);
        let last = size
            .iter()
            .zip(&stride)
            .map(|(&n, &s)| if n == 0 { 0 } else { (n - 1) * s })
            .try_fold(offset, |acc, x| acc.checked_add(x));
        ensure!(
            empty || (stride.iter().all(|&s| s >= 0) && last.is_some_and(|l| l < numel)),
            self.err(format!(
                "a tensor of size {size:?}, stride {stride:?} and offset {offset} reaches beyond its storage of {numel} elements"
            ))
        );
        if empty {
            return Ok(Tensor::f_zeros(&size, (storage.kind(), storage.device()))?);
        }
        storage
            .f_as_strided(&size, &stride, offset)
            .and_then(|t| t.f_contiguous())
            .map_err(|e| self.err(format!("cannot rebuild a tensor: {e}")))
    }

    /// `('storage', torch.XStorage, key, location, numel)`.
    fn persistent(&mut self, id: PickleValue, storages: &mut Storages) -> Result<Tensor> {
        let PickleValue::Tuple(parts) = id else {
            return Err(self.err("a persistent id is not a tuple"));
        };
        match parts.as_slice() {
            [PickleValue::Str(tag), PickleValue::Str(class), PickleValue::Str(key), PickleValue::Str(_), PickleValue::Int(numel)]
                if tag == "storage" =>
            {
                let kind = class
                    .strip_prefix("torch.")
                    .and_then(storage_kind)
                    .ok_or_else(|| self.err(format!("{class} is not a storage class")))?;
                storages.get(key, kind, *numel)
            }
            _ => Err(self.err("a persistent id is not ('storage', class, key, location, numel)")),
        }
    }

    fn run(mut self, storages: &mut Storages) -> Result<PickleValue> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    ensure!(proto <= 5, self.err(format!("pickle protocol {proto}")));
                }
                b'.' => {
                    let v = self.pop_value()?;
                    return Ok(v);
                }
                0x95 => {
                    self.take(8)?;
                }
                b'(' => self.stack.push(Item::Mark),
                b'}' => self.push(PickleValue::Dict(Vec::new())),
                b']' => self.push(PickleValue::List(Vec::new())),
                b')' => self.push(PickleValue::Tuple(Vec::new())),
                b'N' => self.push(PickleValue::None),
                0x88 => self.push(PickleValue::Bool(true)),
                0x89 => self.push(PickleValue::Bool(false)),
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(PickleValue::Int(v));
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.push(PickleValue::Int(v));
                }
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.push(PickleValue::Int(v));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    ensure!(n <= 8, self.err("an integer wider than 64 bits"));
                    let mut v: i64 = 0;
                    for (i, b) in bytes.iter().enumerate() {
                        v |= (*b as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(PickleValue::Int(v));
                }
                b'I' => {
                    let s = self.line()?;
                    let v = match s {
                        "00" => PickleValue::Bool(false),
                        "01" => PickleValue::Bool(true),
                        _ => PickleValue::Int(
                            s.parse().map_err(|_| self.err(format!("bad INT {s:?}")))?,
                        ),
                    };
                    self.push(v);
                }
                b'L' => {
                    let s = self.line()?;
                    let v = s
                        .trim_end_matches('L')
                        .parse()
                        .map_err(|_| self.err(format!("bad LONG {s:?}")))?;
                    self.push(PickleValue::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(PickleValue::Float(v));
                }
                b'F' => {
                    let s = self.line()?;
                    let v = s
                        .parse()
                        .map_err(|_| self.err(format!("bad FLOAT {s:?}")))?;
                    self.push(PickleValue::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take(8)?.try_into().unwrap());
                    let v = self.utf8(usize::try_from(n).map_err(|_| self.err("huge string"))?)?;
                    self.push(v);
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memoize(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memoize(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memoize(k)?;
                }
                b'p' => {
                    let s = self.line()?;
                    let k = s.parse().map_err(|_| self.err(format!("bad PUT {s:?}")))?;
                    self.memoize(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.recall(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.recall(k)?;
                }
                b'g' => {
                    let s = self.line()?;
                    let k = s.parse().map_err(|_| self.err(format!("bad GET {s:?}")))?;
                    self.recall(k)?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self
                        .stack
                        .last()
                        .ok_or_else(|| self.err("DUP on an empty stack"))?
                        .copy()?;
                    self.stack.push(top);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.values(items)?;
                    self.push(PickleValue::Tuple(v));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    ensure!(self.stack.len() >= n, self.err("TUPLE on a short stack"));
                    let items = self.stack.split_off(self.stack.len() - n);
                    let v = self.values(items)?;
                    self.push(PickleValue::Tuple(v));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.values(items)?;
                    self.push(PickleValue::List(v));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.values(items)?;
                    self.push(PickleValue::Dict(Vec::new()));
                    self.set_items(v)?;
                }
                b'a' => {
                    let v = self.pop_value()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let v = self.values(items)?;
                    self.append(v)?;
                }
                b's' => {
                    let v = self.pop_value()?;
                    let k = self.pop_value()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let v = self.values(items)?;
                    self.set_items(v)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop_value()?;
                    let module = self.pop_value()?;
                    let (PickleValue::Str(module), PickleValue::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL without two strings"));
                    };
                    self.global(&module, &name)?;
                }
                b'R' => self.reduce()?,
                b'b' => {
                    // Attributes of the object below (a state dict's `_metadata`): dropped.
                    let _state = self.pop_value()?;
                    let err = self.err("BUILD on something that is not a dict");
                    if !matches!(self.top_mut()?, PickleValue::Dict(_)) {
                        return Err(err);
                    }
                }
                b'Q' => {
                    let id = self.pop_value()?;
                    // A storage, as a flat tensor (the first argument of _rebuild_tensor_v2).
                    let t = self.persistent(id, storages)?;
                    self.push(PickleValue::Tensor(t));
                }
                b'P' => return Err(self.err("a text persistent id (not written by torch.save)")),
                0x81 | 0x92 | b'i' | b'o' => {
                    return Err(self.err(
                        "the pickle creates an object of a class: only tensors and plain containers are read",
                    ))
                }
                other => return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}"))),
            }
        }
    }

    fn memoize(&mut self, k: u32) -> Result<()> {
        let top = self
            .stack
            .last()
            .ok_or_else(|| self.err("PUT on an empty stack"))?
            .copy()?;
        self.memo.insert(k, top);
        Ok(())
    }

    fn recall(&mut self, k: u32) -> Result<()> {
        let item = self
            .memo
            .get(&k)
            .ok_or_else(|| self.err(format!("GET of unknown memo {k}")))?
            .copy()?;
        self.stack.push(item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A torch.save-style archive holding `pickle` as data.pkl and `storages` as data/N.
    fn archive(pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::FileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            z.start_file("archive/data.pkl", opts).unwrap();
            z.write_all(pickle).unwrap();
            z.start_file("archive/byteorder", opts).unwrap();
            z.write_all(b"little").unwrap();
            for (key, bytes) in storages {
                z.start_file(format!("archive/data/{key}"), opts).unwrap();
                z.write_all(bytes).unwrap();
            }
            z.finish().unwrap();
        }
        buf.into_inner()
    }

    fn floats(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    /// pickle.dumps({'a': [1, 2.5, None, True], 'b': ('x',), 'c': -300, 'd': 2**40}, protocol=2)
    const PLAIN: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00bq\x03X\x01\x00\x00\x00xq\x04\x85q\x05X\x01\x00\x00\x00cq\x06J\xd4\xfe\xff\xffX\x01\x00\x00\x00dq\x07\x8a\x06\x00\x00\x00\x00\x00\x01u.";
    /// data.pkl of torch.save(torch.arange(6.).reshape(2, 3)).
    const TENSOR: &[u8] = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00((X\x07\x00\x00\x00storageq\x01ctorch\nFloatStorage\nq\x02X\x01\x00\x00\x000q\x03X\x03\x00\x00\x00cpuq\x04K\x06tq\x05QK\x00K\x02K\x03\x86q\x06K\x03K\x01\x86q\x07\x89ccollections\nOrderedDict\nq\x08)Rq\ttq\nRq\x0b.";

    #[test]
    fn plain_values() {
        let v = load_bytes(&archive(PLAIN, &[]), Path::new("p.pt")).unwrap();
        let PickleValue::List(a) = v.get("a").unwrap() else {
            panic!("{v:?}")
        };
        assert!(matches!(
            a.as_slice(),
            [PickleValue::Int(1), PickleValue::Float(f), PickleValue::None, PickleValue::Bool(true)] if *f == 2.5
        ));
        assert!(
            matches!(v.get("b"), Some(PickleValue::Tuple(t)) if matches!(t.as_slice(), [PickleValue::Str(s)] if s == "x"))
        );
        assert!(matches!(v.get("c"), Some(PickleValue::Int(-300))));
        assert!(matches!(v.get("d"), Some(PickleValue::Int(d)) if *d == 1 << 40));
    }

    #[test]
    fn a_tensor_from_its_storage() {
        let v = load_bytes(&archive(TENSOR, &[("0", floats(6))]), Path::new("t.pt")).unwrap();
        let PickleValue::Tensor(t) = v else {
            panic!("{v:?}")
        };
        assert_eq!(t.size(), [2, 3]);
        assert_eq!(
            Vec::<f32>::try_from(t.reshape([-1])).unwrap(),
            [0., 1., 2., 3., 4., 5.]
        );
        // A storage shorter than its persistent id says.
        let err = load_bytes(&archive(TENSOR, &[("0", floats(4))]), Path::new("t.pt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.pt") && err.contains("16 bytes"), "{err}");
        let err = load_bytes(&archive(TENSOR, &[]), Path::new("t.pt"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("archive/data/0") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn other_globals_are_refused_before_anything_runs() {
        // pickle of os.system('echo'): GLOBAL, then REDUCE, which is never reached.
        let evil = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.";
        let err = load_bytes(&archive(evil, &[]), Path::new("evil.pt"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("evil.pt") && err.contains("os.system"),
            "{err}"
        );
        // The protocol-4 form of the same.
        let evil4 = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94.";
        let err = load_bytes(&archive(evil4, &[]), Path::new("e4.pt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("os.system"), "{err}");
        // NEWOBJ builds an instance of a class without naming a function.
        let newobj = b"\x80\x02)\x81.";
        assert!(load_bytes(&archive(newobj, &[]), Path::new("n.pt")).is_err());
    }

    #[test]
    fn broken_input_is_an_error_not_a_panic() {
        for cut in 0..PLAIN.len() - 1 {
            let err = load_bytes(&archive(&PLAIN[..cut], &[]), Path::new("cut.pt"));
            assert!(err.is_err(), "a pickle cut at {cut} was read");
        }
        assert!(load_bytes(b"not a zip", Path::new("x.pt"))
            .unwrap_err()
            .to_string()
            .contains("x.pt"));
        let no_pkl = {
            let mut buf = Cursor::new(Vec::new());
            let mut z = zip::ZipWriter::new(&mut buf);
            z.start_file("a/other", zip::write::FileOptions::default())
                .unwrap();
            z.finish().unwrap();
            drop(z);
            buf.into_inner()
        };
        let err = load_bytes(&no_pkl, Path::new("y.pt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.pkl"), "{err}");
    }
}
