//! A JPEG decoder whose output equals libjpeg-turbo's defaults as Pillow uses them (accurate
//! integer IDCT, "fancy" triangle-filter chroma upsampling with libjpeg's rounding, table-based
//! YCbCr→RGB), so that decoding JPEGs matches Pillow sample for sample. It covers 8-bit
//! Huffman-coded baseline, extended and progressive JPEGs; anything else is reported as
//! unsupported and the caller falls back to zune-jpeg.
//!
//! Follows the JPEG specification (ITU T.81) and the behaviour of libjpeg-turbo's jdhuff.c,
//! jdphuff.c, jidctint.c, jdsample.c and jdcolor.c.

pub(super) enum Error {
    /// A coding process this decoder does not implement (another decoder may).
    Unsupported(String),
    Corrupt(String),
    TooLarge(String),
}

fn corrupt<T>(what: &str) -> Result<T, Error> {
    Err(Error::Corrupt(what.to_string()))
}

/// Decoded samples in libjpeg's output colour space.
pub(super) enum Pixels {
    Gray(Vec<u8>),
    Rgb(Vec<u8>),
    /// As stored (Adobe-inverted in practice), interleaved C, M, Y, K.
    Cmyk(Vec<u8>),
}

pub(super) struct Decoded {
    pub width: usize,
    pub height: usize,
    pub pixels: Pixels,
}

/// Pillow refuses images above twice `Image.MAX_IMAGE_PIXELS` (a decompression bomb).
const MAX_PIXELS: usize = 2 * 89_478_485;

/// Natural (row-major) position of the k-th coefficient in zigzag order.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Canonical Huffman table with a 9-bit lookup for short codes.
#[derive(Clone)]
struct Huffman {
    /// `(length << 8) | symbol` for every 9-bit prefix that starts a code of ≤ 9 bits.
    fast: Vec<u16>,
    /// Largest code of each length (index 1..=16), -1 if there is none.
    max_code: [i32; 17],
    /// `symbols[code + offset[len]]` is the symbol of `code`.
    offset: [i32; 17],
    symbols: Vec<u8>,
}

const FAST_BITS: u32 = 9;

impl Huffman {
    fn new(counts: &[u8; 16], symbols: &[u8]) -> Result<Huffman, Error> {
        let mut fast = vec![0u16; 1 << FAST_BITS];
        let mut max_code = [-1i32; 17];
        let mut offset = [0i32; 17];
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16u32 {
            let n = i32::from(counts[len as usize - 1]);
            if code + n > 1 << len {
                return corrupt("bad Huffman table");
            }
            offset[len as usize] = k as i32 - code;
            for _ in 0..n {
                if len <= FAST_BITS {
                    let shift = FAST_BITS - len;
                    let first = (code as usize) << shift;
                    let entry = ((len as u16) << 8) | u16::from(symbols[k]);
                    fast[first..first + (1 << shift)].fill(entry);
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                max_code[len as usize] = code - 1;
            }
            code <<= 1;
        }
        Ok(Huffman {
            fast,
            max_code,
            offset,
            symbols: symbols.to_vec(),
        })
    }
}

/// Entropy-coded data reader: removes `FF 00` stuffing and stops at markers, after which
/// it supplies zero bits (as libjpeg does).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    count: u32,
    at_marker: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Bits {
            data,
            pos,
            acc: 0,
            count: 0,
            at_marker: false,
        }
    }

    fn refill(&mut self) {
        while self.count <= 56 {
            let mut byte = 0;
            if !self.at_marker && self.pos < self.data.len() {
                byte = self.data[self.pos];
                if byte == 0xFF {
                    match self.data.get(self.pos + 1) {
                        Some(0x00) => self.pos += 2,
                        _ => {
                            self.at_marker = true;
                            byte = 0;
                        }
                    }
                } else {
                    self.pos += 1;
                }
            }
            self.acc |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
    }

    #[inline]
    fn peek(&mut self, n: u32) -> u32 {
        if self.count < n {
            self.refill();
        }
        (self.acc >> (64 - n)) as u32
    }

    #[inline]
    fn consume(&mut self, n: u32) {
        self.acc <<= n;
        self.count -= n;
    }

    #[inline]
    fn bits(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek(n);
        self.consume(n);
        v as i32
    }

    #[inline]
    fn bit(&mut self) -> bool {
        self.bits(1) == 1
    }

    /// Receive `s` bits and sign-extend them (T.81 F.2.2.1 EXTEND).
    #[inline]
    fn extended(&mut self, s: u32) -> i32 {
        if s == 0 {
            return 0;
        }
        let v = self.bits(s);
        if v < 1 << (s - 1) {
            v - (1 << s) + 1
        } else {
            v
        }
    }

    fn decode(&mut self, table: &Huffman) -> Result<u8, Error> {
        let entry = table.fast[self.peek(FAST_BITS) as usize];
        if entry != 0 {
            self.consume(u32::from(entry >> 8));
            return Ok(entry as u8);
        }
        for len in FAST_BITS + 1..=16 {
            let code = self.peek(len) as i32;
            if code <= table.max_code[len as usize] {
                self.consume(len);
                let i = (code + table.offset[len as usize]) as usize;
                return table
                    .symbols
                    .get(i)
                    .copied()
                    .ok_or(Error::Corrupt("bad Huffman code".into()));
            }
        }
        corrupt("bad Huffman code")
    }

    /// At a restart interval: drop the remaining bits and step over the RSTn marker.
    fn restart(&mut self) -> Result<(), Error> {
        self.acc = 0;
        self.count = 0;
        self.at_marker = false;
        while self.pos + 1 < self.data.len() {
            if self.data[self.pos] == 0xFF && (0xD0..=0xD7).contains(&self.data[self.pos + 1]) {
                self.pos += 2;
                return Ok(());
            }
            if self.data[self.pos] == 0xFF
                && self.data[self.pos + 1] != 0x00
                && self.data[self.pos + 1] != 0xFF
            {
                return corrupt("missing restart marker");
            }
            self.pos += 1;
        }
        corrupt("missing restart marker")
    }

    /// Position of the marker that ended the entropy-coded segment.
    fn marker_position(&self) -> usize {
        let mut pos = self.pos;
        while pos + 1 < self.data.len() && !(self.data[pos] == 0xFF && self.data[pos + 1] != 0x00) {
            pos += 1;
        }
        pos
    }
}

struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant_index: usize,
    /// Quantisation table latched when the component's first scan starts (natural order).
    quant: Option<[u16; 64]>,
    /// Blocks allocated (whole MCUs) and blocks that hold image data.
    blocks_w: usize,
    blocks_h: usize,
    data_blocks_w: usize,
    data_blocks_h: usize,
    /// Samples of this component inside the image: ceil(image size * factor / max factor).
    width: usize,
    height: usize,
    /// Coefficients of all blocks (progressive only), natural order.
    coefs: Vec<i16>,
    /// Decoded samples, `blocks_w * 8` per row.
    plane: Vec<u8>,
    dc_pred: i32,
    dc_table: usize,
    ac_table: usize,
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    max_h: usize,
    max_v: usize,
    mcus_x: usize,
    mcus_y: usize,
    components: Vec<Component>,
}

fn be16(data: &[u8], pos: usize) -> Result<usize, Error> {
    match data.get(pos..pos + 2) {
        Some(b) => Ok(usize::from(u16::from_be_bytes([b[0], b[1]]))),
        None => corrupt("unexpected end of data"),
    }
}

pub(super) fn decode(data: &[u8]) -> Result<Decoded, Error> {
    if data.get(0..2) != Some(&[0xFF, 0xD8]) {
        return corrupt("missing SOI marker");
    }
    let mut quant = [[0u16; 64]; 4];
    let mut dc_tables: [Option<Huffman>; 4] = Default::default();
    let mut ac_tables: [Option<Huffman>; 4] = Default::default();
    let mut restart_interval = 0usize;
    let mut jfif = false;
    let mut adobe_transform: Option<u8> = None;
    let mut frame: Option<Frame> = None;
    let mut pos = 2;
    loop {
        // Next marker, skipping fill bytes and stray data.
        while pos < data.len() && data[pos] != 0xFF {
            pos += 1;
        }
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            return corrupt("no EOI marker");
        };
        pos += 1;
        match marker {
            0xD9 => break,
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let len = be16(data, pos)?;
        if len < 2 || pos + len > data.len() {
            return corrupt("segment runs past the end of the data");
        }
        let seg = &data[pos + 2..pos + len];
        pos += len;
        match marker {
            0xC0..=0xC2 => {
                if frame.is_some() {
                    return corrupt("more than one frame");
                }
                frame = Some(parse_frame(seg, marker == 0xC2)?);
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(Error::Unsupported(format!(
                    "JPEG process SOF{}",
                    marker - 0xC0
                )));
            }
            0xC4 => parse_huffman(seg, &mut dc_tables, &mut ac_tables)?,
            0xDB => parse_quant(seg, &mut quant)?,
            0xDD => restart_interval = be16(seg, 0)?,
            0xE0 => jfif |= seg.len() >= 14 && seg.starts_with(b"JFIF\0"),
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => adobe_transform = Some(seg[11]),
            0xDA => {
                let Some(frame) = frame.as_mut() else {
                    return corrupt("scan before frame header");
                };
                pos = decode_scan(
                    data,
                    pos,
                    seg,
                    frame,
                    &quant,
                    &dc_tables,
                    &ac_tables,
                    restart_interval,
                )?;
            }
            0xDC => return Err(Error::Unsupported("DNL marker".into())),
            _ => {} // APPn, COM, and others without effect on pixels
        }
    }
    let Some(mut frame) = frame else {
        return corrupt("no frame header");
    };
    if let Some(c) = frame.components.iter().find(|c| c.plane.is_empty()) {
        return Err(Error::Corrupt(format!("component {} has no scan", c.id)));
    }
    if frame.progressive {
        for c in &mut frame.components {
            let q = c.quant.unwrap_or(quant[c.quant_index]);
            let stride = c.blocks_w * 8;
            for by in 0..c.blocks_h {
                for bx in 0..c.blocks_w {
                    let i = (by * c.blocks_w + bx) * 64;
                    let block: &[i16; 64] = c.coefs[i..i + 64].try_into().unwrap();
                    idct_islow(block, &q, &mut c.plane[by * 8 * stride + bx * 8..], stride);
                }
            }
        }
    }
    output(&frame, jfif, adobe_transform)
}

fn parse_frame(seg: &[u8], progressive: bool) -> Result<Frame, Error> {
    if seg.len() < 6 {
        return corrupt("short frame header");
    }
    if seg[0] != 8 {
        return Err(Error::Unsupported(format!("{}-bit samples", seg[0])));
    }
    let height = be16(seg, 1)?;
    let width = be16(seg, 3)?;
    let n = usize::from(seg[5]);
    if height == 0 || width == 0 {
        return Err(Error::Unsupported("zero height (DNL) or width".into()));
    }
    if width * height > MAX_PIXELS {
        return Err(Error::TooLarge(format!(
            "{width}x{height} pixels, above Pillow's decompression-bomb limit"
        )));
    }
    if !matches!(n, 1 | 3 | 4) || seg.len() < 6 + 3 * n {
        return Err(Error::Unsupported(format!("{n} components")));
    }
    let mut components = Vec::with_capacity(n);
    for i in 0..n {
        let c = &seg[6 + 3 * i..9 + 3 * i];
        let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
            return corrupt("bad component sampling factors or table");
        }
        components.push((c[0], h, v, usize::from(c[2])));
    }
    let max_h = components.iter().map(|c| c.1).max().unwrap();
    let max_v = components.iter().map(|c| c.2).max().unwrap();
    let mcus_x = width.div_ceil(8 * max_h);
    let mcus_y = height.div_ceil(8 * max_v);
    let components = components
        .into_iter()
        .map(|(id, h, v, quant_index)| {
            if max_h % h != 0 || max_v % v != 0 {
                return Err(Error::Unsupported("fractional sampling factors".into()));
            }
            let (cw, ch) = ((width * h).div_ceil(max_h), (height * v).div_ceil(max_v));
            let (blocks_w, blocks_h) = (mcus_x * h, mcus_y * v);
            Ok(Component {
                id,
                h,
                v,
                quant_index,
                quant: None,
                blocks_w,
                blocks_h,
                data_blocks_w: cw.div_ceil(8),
                data_blocks_h: ch.div_ceil(8),
                width: cw,
                height: ch,
                // Allocated by the component's first scan, once the data is known to be
                // long enough for the declared size (see `allocate_planes`).
                coefs: Vec::new(),
                plane: Vec::new(),
                dc_pred: 0,
                dc_table: 0,
                ac_table: 0,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Frame {
        width,
        height,
        progressive,
        max_h,
        max_v,
        mcus_x,
        mcus_y,
        components,
    })
}

fn parse_huffman(
    mut seg: &[u8],
    dc: &mut [Option<Huffman>; 4],
    ac: &mut [Option<Huffman>; 4],
) -> Result<(), Error> {
    while !seg.is_empty() {
        if seg.len() < 17 {
            return corrupt("short Huffman table");
        }
        let (class, index) = (seg[0] >> 4, usize::from(seg[0] & 15));
        let counts: [u8; 16] = seg[1..17].try_into().unwrap();
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if class > 1 || index > 3 || total > 256 || seg.len() < 17 + total {
            return corrupt("bad Huffman table");
        }
        let symbols = &seg[17..17 + total];
        // DC symbols are bit counts of differences (libjpeg rejects more than 15).
        if class == 0 && symbols.iter().any(|&s| s > 15) {
            return corrupt("bad DC Huffman table");
        }
        let table = Huffman::new(&counts, symbols)?;
        if class == 0 {
            &mut dc[index]
        } else {
            &mut ac[index]
        }
        .replace(table);
        seg = &seg[17 + total..];
    }
    Ok(())
}

fn parse_quant(mut seg: &[u8], quant: &mut [[u16; 64]; 4]) -> Result<(), Error> {
    while !seg.is_empty() {
        let (precision, index) = (seg[0] >> 4, usize::from(seg[0] & 15));
        let size = if precision == 0 { 64 } else { 128 };
        if index > 3 || precision > 1 || seg.len() < 1 + size {
            return corrupt("bad quantisation table");
        }
        for k in 0..64 {
            quant[index][ZIGZAG[k]] = if precision == 0 {
                u16::from(seg[1 + k])
            } else {
                u16::from_be_bytes([seg[1 + 2 * k], seg[2 + 2 * k]])
            };
        }
        seg = &seg[1 + size..];
    }
    Ok(())
}

/// Decode one scan starting at `pos` (after its header); returns the position of the
/// marker that follows the entropy-coded data.
#[allow(clippy::too_many_arguments)]
/// Allocate the planes (and progressive coefficients) of the scan's components that no earlier
/// scan touched, after checking that the bytes left in the file can hold the scan at all: a
/// Huffman code is at least one bit, so a sequential block needs at least two (DC code and EOB)
/// and a progressive DC-first block at least one. A corrupt header that declares tens of
/// millions of pixels over a few kilobytes of data is refused here, before anything of that
/// size is allocated; what a component allocates is thus at most 3 bytes × 64 samples per
/// block × 8 blocks per byte of the file, and never beyond the decompression-bomb limit that
/// `parse_frame` checks.
fn allocate_planes(
    frame: &mut Frame,
    members: &[usize],
    kind: ScanKind,
    bytes_left: usize,
) -> Result<(), Error> {
    let fresh: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&ci| frame.components[ci].plane.is_empty())
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let bits_per_block = match kind {
        ScanKind::Sequential => 2,
        ScanKind::DcFirst => 1,
        // T.81 G.1.1.1.1: a component's DC-first scan comes before its other scans.
        _ => return corrupt("progressive refinement or AC scan before the component's DC scan"),
    };
    let blocks: usize = fresh
        .iter()
        .map(|&ci| frame.components[ci].data_blocks_w * frame.components[ci].data_blocks_h)
        .sum();
    if blocks.saturating_mul(bits_per_block) > bytes_left.saturating_mul(8) {
        return Err(Error::Corrupt(format!(
            "frame declares {}x{} pixels ({blocks} blocks in this scan) but only {bytes_left} bytes of data follow",
            frame.width, frame.height
        )));
    }
    for ci in fresh {
        let c = &mut frame.components[ci];
        let len = c.blocks_w * c.blocks_h * 64;
        c.plane = vec![0; len];
        if frame.progressive {
            c.coefs = vec![0; len];
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one scan's state: the file, position, header, frame, tables, restarts
fn decode_scan(
    data: &[u8],
    pos: usize,
    header: &[u8],
    frame: &mut Frame,
    quant: &[[u16; 64]; 4],
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
) -> Result<usize, Error> {
    let n = usize::from(*header.first().unwrap_or(&0));
    if n == 0 || n > 4 || header.len() < 1 + 2 * n + 3 {
        return corrupt("bad scan header");
    }
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        let (id, tables) = (header[1 + 2 * i], header[2 + 2 * i]);
        let Some(ci) = frame.components.iter().position(|c| c.id == id) else {
            return corrupt("scan names an unknown component");
        };
        let c = &mut frame.components[ci];
        c.dc_table = usize::from(tables >> 4) & 3;
        c.ac_table = usize::from(tables & 15) & 3;
        c.dc_pred = 0;
        c.quant.get_or_insert(quant[c.quant_index]);
        members.push(ci);
    }
    let tail = &header[1 + 2 * n..];
    let (ss, se, ah, al) = (
        usize::from(tail[0]),
        usize::from(tail[1]),
        u32::from(tail[2] >> 4),
        u32::from(tail[2] & 15),
    );
    let kind = if !frame.progressive {
        ScanKind::Sequential
    } else if ss == 0 {
        if se != 0 {
            return corrupt("progressive DC scan with AC coefficients");
        }
        if ah == 0 {
            ScanKind::DcFirst
        } else {
            ScanKind::DcRefine
        }
    } else {
        if n != 1 || se < ss || se > 63 {
            return corrupt("bad progressive AC scan");
        }
        if ah == 0 {
            ScanKind::AcFirst
        } else {
            ScanKind::AcRefine
        }
    };
    allocate_planes(frame, &members, kind, data.len().saturating_sub(pos))?;
    let table = |tables: &[Option<Huffman>; 4], i: usize| {
        tables[i]
            .clone()
            .ok_or_else(|| Error::Corrupt("scan uses an undefined Huffman table".into()))
    };
    // Tables needed by this scan, per member.
    let mut dcs = Vec::new();
    let mut acs = Vec::new();
    for &ci in &members {
        let c = &frame.components[ci];
        let needs_dc = matches!(kind, ScanKind::Sequential | ScanKind::DcFirst);
        let needs_ac = matches!(
            kind,
            ScanKind::Sequential | ScanKind::AcFirst | ScanKind::AcRefine
        );
        dcs.push(if needs_dc {
            Some(table(dc_tables, c.dc_table)?)
        } else {
            None
        });
        acs.push(if needs_ac {
            Some(table(ac_tables, c.ac_table)?)
        } else {
            None
        });
    }

    let mut bits = Bits::new(data, pos);
    let mut eobrun = 0u32;
    // Block list of one MCU: (member index, block x, block y).
    let mut mcu_blocks = Vec::with_capacity(10);
    let (mcus_x, mcus_y) = if n == 1 {
        let c = &frame.components[members[0]];
        (c.data_blocks_w, c.data_blocks_h)
    } else {
        (frame.mcus_x, frame.mcus_y)
    };
    let mut block = [0i16; 64];
    for mcu in 0..mcus_x * mcus_y {
        if restart_interval > 0 && mcu > 0 && mcu % restart_interval == 0 {
            bits.restart()?;
            eobrun = 0;
            for &ci in &members {
                frame.components[ci].dc_pred = 0;
            }
        }
        let (mx, my) = (mcu % mcus_x, mcu / mcus_x);
        mcu_blocks.clear();
        if n == 1 {
            mcu_blocks.push((0, mx, my));
        } else {
            for (m, &ci) in members.iter().enumerate() {
                let c = &frame.components[ci];
                for v in 0..c.v {
                    for h in 0..c.h {
                        mcu_blocks.push((m, mx * c.h + h, my * c.v + v));
                    }
                }
            }
        }
        for &(m, bx, by) in &mcu_blocks {
            let c = &mut frame.components[members[m]];
            let index = by * c.blocks_w + bx;
            match kind {
                ScanKind::Sequential => {
                    block.fill(0);
                    let dc = dcs[m].as_ref().unwrap();
                    let ac = acs[m].as_ref().unwrap();
                    let s = u32::from(bits.decode(dc)?);
                    c.dc_pred = c.dc_pred.wrapping_add(bits.extended(s));
                    block[0] = c.dc_pred as i16;
                    let mut k = 1;
                    while k < 64 {
                        let rs = bits.decode(ac)?;
                        let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
                        if s == 0 {
                            if r != 15 {
                                break;
                            }
                            k += 16;
                            continue;
                        }
                        k += r;
                        if k > 63 {
                            return corrupt("AC coefficient index out of range");
                        }
                        block[ZIGZAG[k]] = bits.extended(s) as i16;
                        k += 1;
                    }
                    let stride = c.blocks_w * 8;
                    let q = c.quant.as_ref().unwrap();
                    idct_islow(&block, q, &mut c.plane[by * 8 * stride + bx * 8..], stride);
                }
                ScanKind::DcFirst => {
                    let s = u32::from(bits.decode(dcs[m].as_ref().unwrap())?);
                    c.dc_pred = c.dc_pred.wrapping_add(bits.extended(s));
                    c.coefs[index * 64] = (c.dc_pred << al) as i16;
                }
                ScanKind::DcRefine => {
                    if bits.bit() {
                        c.coefs[index * 64] |= (1 << al) as i16;
                    }
                }
                ScanKind::AcFirst | ScanKind::AcRefine => {
                    let decode = if kind == ScanKind::AcFirst {
                        ac_first
                    } else {
                        ac_refine
                    };
                    let coefs = &mut c.coefs[index * 64..index * 64 + 64];
                    decode(
                        &mut bits,
                        acs[m].as_ref().unwrap(),
                        coefs,
                        ss,
                        se,
                        al,
                        &mut eobrun,
                    )?;
                }
            }
        }
    }
    Ok(bits.marker_position())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

fn ac_first(
    bits: &mut Bits,
    table: &Huffman,
    coefs: &mut [i16],
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) -> Result<(), Error> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = ss;
    while k <= se {
        let rs = bits.decode(table)?;
        let (r, s) = (u32::from(rs >> 4), u32::from(rs & 15));
        if s == 0 {
            if r < 15 {
                *eobrun = (1 << r) - 1 + bits.bits(r) as u32;
                break;
            }
            k += 16;
            continue;
        }
        k += r as usize;
        if k > 63 {
            return corrupt("AC coefficient index out of range");
        }
        coefs[ZIGZAG[k]] = (bits.extended(s) * (1 << al)) as i16;
        k += 1;
    }
    Ok(())
}

fn ac_refine(
    bits: &mut Bits,
    table: &Huffman,
    coefs: &mut [i16],
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) -> Result<(), Error> {
    let plus = 1i16 << al;
    let minus = -1i16 << al;
    // Correction bit for a coefficient that is already nonzero.
    let refine = |bits: &mut Bits, c: &mut i16| {
        if bits.bit() && (*c & plus) == 0 {
            *c = c.wrapping_add(if *c >= 0 { plus } else { minus });
        }
    };
    let mut k = ss;
    if *eobrun == 0 {
        while k <= se {
            let rs = bits.decode(table)?;
            let (mut r, s) = (i32::from(rs >> 4), rs & 15);
            let mut value = 0i16;
            if s != 0 {
                if s != 1 {
                    return corrupt("bad refinement coefficient size");
                }
                value = if bits.bit() { plus } else { minus };
            } else if r != 15 {
                *eobrun = (1 << r) + bits.bits(r as u32) as u32;
                break;
            }
            // Skip r zero coefficients (refining the nonzero ones passed on the way).
            while k <= se {
                let c = &mut coefs[ZIGZAG[k]];
                if *c != 0 {
                    refine(bits, c);
                } else {
                    if r == 0 {
                        break;
                    }
                    r -= 1;
                }
                k += 1;
            }
            if value != 0 && k <= 63 {
                coefs[ZIGZAG[k]] = value;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            let c = &mut coefs[ZIGZAG[k]];
            if *c != 0 {
                refine(bits, c);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}

// Accurate integer IDCT (Loeffler–Ligtenberg–Moschytz, 13-bit constants, 2 extra bits
// between the passes), the algorithm of libjpeg's jidctint.c.
const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const F_0_298: i64 = 2446;
const F_0_390: i64 = 3196;
const F_0_541: i64 = 4433;
const F_0_765: i64 = 6270;
const F_0_899: i64 = 7373;
const F_1_175: i64 = 9633;
const F_1_501: i64 = 12299;
const F_1_847: i64 = 15137;
const F_1_961: i64 = 16069;
const F_2_053: i64 = 16819;
const F_2_562: i64 = 20995;
const F_3_072: i64 = 25172;

/// One 8-point IDCT, outputs still scaled by 2^CONST_BITS.
#[inline(always)]
fn idct_1d(s: [i64; 8]) -> [i64; 8] {
    let z1 = (s[2] + s[6]) * F_0_541;
    let even2 = z1 - s[6] * F_1_847;
    let even3 = z1 + s[2] * F_0_765;
    let even0 = (s[0] + s[4]) << CONST_BITS;
    let even1 = (s[0] - s[4]) << CONST_BITS;
    let (t10, t13, t11, t12) = (even0 + even3, even0 - even3, even1 + even2, even1 - even2);

    let (o0, o1, o2, o3) = (s[7], s[5], s[3], s[1]);
    let z5 = (o0 + o2 + o1 + o3) * F_1_175;
    let z1 = (o0 + o3) * -F_0_899;
    let z2 = (o1 + o2) * -F_2_562;
    let z3 = (o0 + o2) * -F_1_961 + z5;
    let z4 = (o1 + o3) * -F_0_390 + z5;
    let p0 = o0 * F_0_298 + z1 + z3;
    let p1 = o1 * F_2_053 + z2 + z4;
    let p2 = o2 * F_3_072 + z2 + z3;
    let p3 = o3 * F_1_501 + z1 + z4;
    [
        t10 + p3,
        t11 + p2,
        t12 + p1,
        t13 + p0,
        t13 - p0,
        t12 - p1,
        t11 - p2,
        t10 - p3,
    ]
}

#[inline(always)]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// libjpeg's post-IDCT range limit: `value + 128` clamped to 0..=255, wrapping outside
/// ±512 the way its 1024-entry table does.
#[inline(always)]
fn range_limit(v: i64) -> u8 {
    let i = (v & 1023) as i32;
    match i {
        0..=127 => (i + 128) as u8,
        128..=511 => 255,
        512..=895 => 0,
        _ => (i - 896) as u8,
    }
}

/// Dequantize and inverse-transform one block into `out` (row stride `stride`).
fn idct_islow(coefs: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i64; 64];
    for col in 0..8 {
        let s: [i64; 8] =
            std::array::from_fn(|r| i64::from(coefs[r * 8 + col]) * i64::from(quant[r * 8 + col]));
        if s[1..].iter().all(|&v| v == 0) {
            for r in 0..8 {
                ws[r * 8 + col] = s[0] << PASS1_BITS;
            }
            continue;
        }
        let t = idct_1d(s);
        for r in 0..8 {
            ws[r * 8 + col] = descale(t[r], CONST_BITS - PASS1_BITS);
        }
    }
    for row in 0..8 {
        let s: [i64; 8] = ws[row * 8..row * 8 + 8].try_into().unwrap();
        let dst = &mut out[row * stride..row * stride + 8];
        if s[1..].iter().all(|&v| v == 0) {
            dst.fill(range_limit(descale(s[0], PASS1_BITS + 3)));
            continue;
        }
        let t = idct_1d(s);
        for (d, v) in dst.iter_mut().zip(t) {
            *d = range_limit(descale(v, CONST_BITS + PASS1_BITS + 3));
        }
    }
}

/// Upsample one component to the full image size the way libjpeg-turbo's jdsample.c does
/// with fancy upsampling on: triangle filters for 2:1 horizontal (images wider than two
/// chroma samples), 1:2 vertical and 2:2, replication otherwise; rows above the image
/// repeat the first row, rows below it the last.
fn upsample(c: &Component, max_h: usize, max_v: usize, width: usize, height: usize) -> Vec<u8> {
    let stride = c.blocks_w * 8;
    let (fx, fy) = (max_h / c.h, max_v / c.v);
    let row = |y: usize| &c.plane[y * stride..y * stride + stride];
    let mut out = vec![0u8; width * height];
    let mut wide = vec![0u8; 2 * c.width + 2];
    let fancy_h = c.width > 2;
    for (y, dst) in out.chunks_exact_mut(width).enumerate() {
        match (fx, fy) {
            (1, 1) => dst.copy_from_slice(&row(y)[..width]),
            (2, 1) if fancy_h => {
                h2v1_fancy(&row(y)[..c.width], &mut wide);
                dst.copy_from_slice(&wide[..width]);
            }
            (1, 2) => {
                let (near, far, bias) = vertical_pair(y, c.height);
                for ((d, &a), &b) in dst.iter_mut().zip(row(near)).zip(row(far)) {
                    *d = ((3 * u16::from(a) + u16::from(b) + bias) >> 2) as u8;
                }
            }
            (2, 2) if fancy_h => {
                let (near, far, _) = vertical_pair(y, c.height);
                h2v2_fancy(&row(near)[..c.width], &row(far)[..c.width], &mut wide);
                dst.copy_from_slice(&wide[..width]);
            }
            _ => {
                let src = row(y / fy);
                for (x, d) in dst.iter_mut().enumerate() {
                    *d = src[x / fx];
                }
            }
        }
    }
    out
}

/// For output row `y` of a 2:1 vertically subsampled component: the nearest input row,
/// the next nearest (above for even rows, below for odd ones, clamped to the component)
/// and the rounding bias libjpeg uses for that row.
fn vertical_pair(y: usize, rows: usize) -> (usize, usize, u16) {
    let near = y / 2;
    if y.is_multiple_of(2) {
        (near, near.saturating_sub(1), 1)
    } else {
        (near, (near + 1).min(rows - 1), 2)
    }
}

/// 2:1 horizontal triangle filter (3/4 nearer + 1/4 further, alternating rounding).
fn h2v1_fancy(src: &[u8], out: &mut [u8]) {
    let n = src.len();
    let s = |i: usize| u16::from(src[i]);
    out[0] = src[0];
    out[1] = ((3 * s(0) + s(1) + 2) >> 2) as u8;
    for i in 1..n - 1 {
        out[2 * i] = ((3 * s(i) + s(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((3 * s(i) + s(i + 1) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((3 * s(n - 1) + s(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = src[n - 1];
}

/// 2:2 triangle filter: vertical 3:1 column sums, then horizontal 3:1 with one rounding.
fn h2v2_fancy(near: &[u8], far: &[u8], out: &mut [u8]) {
    let n = near.len();
    let col = |i: usize| 3 * u16::from(near[i]) + u16::from(far[i]);
    out[0] = ((4 * col(0) + 8) >> 4) as u8;
    out[1] = ((3 * col(0) + col(1) + 7) >> 4) as u8;
    for i in 1..n - 1 {
        let this = 3 * col(i);
        out[2 * i] = ((this + col(i - 1) + 8) >> 4) as u8;
        out[2 * i + 1] = ((this + col(i + 1) + 7) >> 4) as u8;
    }
    out[2 * n - 2] = ((3 * col(n - 1) + col(n - 2) + 8) >> 4) as u8;
    out[2 * n - 1] = ((4 * col(n - 1) + 7) >> 4) as u8;
}

/// libjpeg's YCbCr→RGB lookup tables (16-bit fixed point): R, B offsets and the two
/// scaled G terms (the Cb one including the rounding half).
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl YccTables {
    fn new() -> Self {
        const SCALE: i32 = 16;
        let fix = |x: f64| (x * f64::from(1 << SCALE) + 0.5) as i32;
        let half = 1 << (SCALE - 1);
        let x = |i: usize| i as i32 - 128;
        YccTables {
            cr_r: std::array::from_fn(|i| (fix(1.40200) * x(i) + half) >> SCALE),
            cb_b: std::array::from_fn(|i| (fix(1.77200) * x(i) + half) >> SCALE),
            cr_g: std::array::from_fn(|i| -fix(0.71414) * x(i)),
            cb_g: std::array::from_fn(|i| -fix(0.34414) * x(i) + half),
        }
    }

    #[inline]
    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let (y, cb, cr) = (i32::from(y), usize::from(cb), usize::from(cr));
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        [
            clamp(y + self.cr_r[cr]),
            clamp(y + ((self.cb_g[cb] + self.cr_g[cr]) >> 16)),
            clamp(y + self.cb_b[cb]),
        ]
    }
}

fn output(frame: &Frame, jfif: bool, adobe_transform: Option<u8>) -> Result<Decoded, Error> {
    let (w, h) = (frame.width, frame.height);
    let planes: Vec<Vec<u8>> = frame
        .components
        .iter()
        .map(|c| upsample(c, frame.max_h, frame.max_v, w, h))
        .collect();
    let pixels = match planes.len() {
        1 => Pixels::Gray(planes.into_iter().next().unwrap()),
        3 => {
            let ids: Vec<u8> = frame.components.iter().map(|c| c.id).collect();
            // libjpeg's colour-space guess (jdapimin.c default_decompress_parms).
            let is_rgb = if jfif {
                false
            } else if let Some(t) = adobe_transform {
                t == 0
            } else {
                ids == [b'R', b'G', b'B']
            };
            if is_rgb {
                Pixels::Rgb(interleave(&planes, |p: [u8; 3]| p))
            } else {
                let t = YccTables::new();
                Pixels::Rgb(interleave(&planes, |[y, cb, cr]| t.rgb(y, cb, cr)))
            }
        }
        4 => Pixels::Cmyk(if adobe_transform.is_some_and(|t| t != 0) {
            // YCCK: YCbCr→RGB inverted to CMY; K unchanged.
            let t = YccTables::new();
            interleave(&planes, |[y, cb, cr, k]| {
                let [r, g, b] = t.rgb(y, cb, cr);
                [255 - r, 255 - g, 255 - b, k]
            })
        } else {
            interleave(&planes, |p: [u8; 4]| p)
        }),
        n => return Err(Error::Unsupported(format!("{n} components"))),
    };
    Ok(Decoded {
        width: w,
        height: h,
        pixels,
    })
}

/// Interleave equally long planes sample by sample through `f`.
fn interleave<const N: usize, const M: usize>(
    planes: &[Vec<u8>],
    f: impl Fn([u8; N]) -> [u8; M],
) -> Vec<u8> {
    let planes: [&[u8]; N] = std::array::from_fn(|c| planes[c].as_slice());
    let len = planes[0].len();
    assert!(planes.iter().all(|p| p.len() == len));
    let mut out = vec![0u8; len * M];
    for (i, px) in out.chunks_exact_mut(M).enumerate() {
        px.copy_from_slice(&f(planes.map(|p| p[i])));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_limit_clamps_and_wraps_like_libjpeg() {
        assert_eq!(range_limit(-128), 0);
        assert_eq!(range_limit(0), 128);
        assert_eq!(range_limit(127), 255);
        assert_eq!(range_limit(300), 255);
        assert_eq!(range_limit(-129), 0);
        assert_eq!(range_limit(-400), 0);
        // Far outside the valid range the 1024-entry table wraps around.
        assert_eq!(range_limit(1024), 128);
    }

    #[test]
    fn idct_matches_the_float_transform() {
        let quant = [1u16; 64];
        let mut out = [0u8; 64];
        let mut coefs = [0i16; 64];
        coefs[0] = 8; // DC only: 128 + 8/8
        idct_islow(&coefs, &quant, &mut out, 8);
        assert!(out.iter().all(|&v| v == 129));
        coefs[1] = -40;
        coefs[8] = 25;
        coefs[9] = 10;
        idct_islow(&coefs, &quant, &mut out, 8);
        let c = |u: usize| if u == 0 { (0.5f64).sqrt() } else { 1.0 };
        for y in 0..8 {
            for x in 0..8 {
                let mut v = 0.0;
                for (i, &k) in coefs.iter().enumerate() {
                    let (vv, u) = (i / 8, i % 8);
                    let cx = ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos();
                    let cy = ((2 * y + 1) as f64 * vv as f64 * std::f64::consts::PI / 16.0).cos();
                    v += c(u) * c(vv) * f64::from(k) * cx * cy / 4.0;
                }
                let want = (v + 128.0).round().clamp(0.0, 255.0);
                assert!((f64::from(out[y * 8 + x]) - want).abs() <= 1.0, "({x},{y})");
            }
        }
    }

    #[test]
    fn fancy_upsampling_rounding() {
        let mut out = [0u8; 6];
        h2v1_fancy(&[0, 100, 200], &mut out);
        assert_eq!(out, [0, 25, 75, 125, 175, 200]);
        h2v2_fancy(&[0, 100, 200], &[0, 100, 200], &mut out);
        assert_eq!(out, [0, 25, 75, 125, 175, 200]);
        assert_eq!(vertical_pair(0, 5), (0, 0, 1));
        assert_eq!(vertical_pair(9, 5), (4, 4, 2));
        assert_eq!(vertical_pair(3, 5), (1, 2, 2));
    }

    #[test]
    fn huffman_decoding_and_ycc_tables() {
        // Codes: 'a' = 0, 'b' = 10, 'c' = 110, 'd' = 1110 0000 000 (11 bits).
        let mut counts = [0u8; 16];
        counts[0] = 1;
        counts[1] = 1;
        counts[2] = 1;
        counts[10] = 1;
        let table = Huffman::new(&counts, b"abcd").ok().unwrap();
        // 0 10 110 11100000000 0 → a b c d a, then padding.
        let data = [0b0101_1011, 0b1000_0000, 0b0000_0000];
        let mut bits = Bits::new(&data, 0);
        let decoded: Vec<u8> = (0..5).map(|_| bits.decode(&table).ok().unwrap()).collect();
        assert_eq!(decoded, b"abcda");
        let t = YccTables::new();
        assert_eq!(t.rgb(77, 128, 128), [77, 77, 77]);
        assert_eq!(t.rgb(128, 128, 255), [255, 37, 128]);
        assert_eq!(t.rgb(0, 0, 0), [0, 135, 0]);
    }
}
