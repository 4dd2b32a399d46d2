//! Image loading and CLIP preprocessing, bit-exact with Pillow.
//!
//! Mirrors OpenAI CLIP's `_transform` (clip/clip.py) and Hugging Face's PIL-backed
//! `CLIPImageProcessorPil` (transformers 5.x; `CLIPImageProcessor` in 4.x): convert to RGB,
//! resize the shortest side with Pillow's BICUBIC, center crop, scale by 1/255, normalize.
//!
//! The resize follows the algorithm of Pillow's `libImaging/Resample.c` (written anew here):
//! a separable convolution with the a = -0.5 cubic kernel whose support is widened by the
//! shrink factor, weights normalised to sum 1 and converted to 22-bit fixed point, one
//! horizontal pass then one vertical pass, each rounded and clipped to 8 bits. An axis whose
//! size does not change is not resampled at all.
//!
//! Decoding converts every pixel format the way Pillow's `Image.open(..).convert("RGB")`
//! does (see [`load_rgb_from_bytes`]). JPEGs go through a decoder of their own (module
//! `jpeg` below) that reproduces libjpeg-turbo's default output, which Pillow uses: the
//! `image` crate's zune-jpeg rounds chroma upsampling and colour conversion differently and
//! lands up to 7/255 away. PNG, GIF, BMP, TIFF and WebP use the `image` crate's decoders,
//! whose samples equal Pillow's.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageError, ImageFormat, Rgb, RgbImage};
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// OpenAI CLIP's per-channel mean (RGB), as float32 the way numpy rounds the Python floats.
pub const CLIP_MEAN: [f32; 3] = [
    0.48145466_f64 as f32,
    0.4578275_f64 as f32,
    0.40821073_f64 as f32,
];
/// OpenAI CLIP's per-channel standard deviation (RGB).
pub const CLIP_STD: [f32; 3] = [
    0.26862954_f64 as f32,
    0.26130258_f64 as f32,
    0.27577711_f64 as f32,
];

/// Where a center crop starts when the margin `image - crop` is odd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CropRounding {
    /// Hugging Face `center_crop`: `top = (h - crop) // 2`; an image smaller than the crop
    /// is zero-padded with the larger half of the padding before it.
    #[default]
    Floor,
    /// torchvision `CenterCrop` (OpenAI CLIP, open_clip): `top = int(round((h - crop) / 2))`
    /// with Python's round-half-to-even; padding puts the smaller half before.
    RoundHalfEven,
}

/// Preprocessing settings; `Default` is OpenAI CLIP at 224 pixels.
#[derive(Clone, Debug)]
pub struct PreprocessConfig {
    /// Target length of the shorter image side after resizing.
    pub resize_shortest: u32,
    /// Side of the square center crop.
    pub crop: u32,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Offset rounding of the center crop.
    pub crop_rounding: CropRounding,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self::with_size(224)
    }
}

impl PreprocessConfig {
    /// CLIP preprocessing that resizes the shortest side to `size` and crops `size`×`size`.
    pub fn with_size(size: u32) -> Self {
        PreprocessConfig {
            resize_shortest: size,
            crop: size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            crop_rounding: CropRounding::Floor,
        }
    }
}

/// Why an image could not be loaded. `origin` is the file path, or `<memory>` for bytes.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("image {}: no such file", path.display())]
    Missing { path: PathBuf },
    #[error("image {}: cannot read the file: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {origin}: not an image (no known image format signature)")]
    NotAnImage { origin: String },
    #[error("image {origin}: truncated {format} data (the file is incomplete)")]
    Truncated { origin: String, format: String },
    #[error("image {origin}: unsupported image: {reason}")]
    Unsupported { origin: String, reason: String },
    #[error("image {origin}: corrupt {format} data: {reason}")]
    Corrupt {
        origin: String,
        format: String,
        reason: String,
    },
}

/// A decoding failure before it is attached to a file name.
enum Fault {
    NotAnImage,
    Truncated(String),
    Unsupported(String),
    Corrupt(String, String),
}

impl Fault {
    fn at(self, origin: String) -> PreprocessError {
        match self {
            Fault::NotAnImage => PreprocessError::NotAnImage { origin },
            Fault::Truncated(format) => PreprocessError::Truncated { origin, format },
            Fault::Unsupported(reason) => PreprocessError::Unsupported { origin, reason },
            Fault::Corrupt(format, reason) => PreprocessError::Corrupt {
                origin,
                format,
                reason,
            },
        }
    }
}

/// Read and decode an image file into 8-bit RGB exactly as Pillow's
/// `Image.open(path).convert("RGB")` does (see [`load_rgb_from_bytes`]).
pub fn load_rgb(path: &Path) -> Result<RgbImage, PreprocessError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => PreprocessError::Missing {
            path: path.to_path_buf(),
        },
        _ => PreprocessError::Unreadable {
            path: path.to_path_buf(),
            source,
        },
    })?;
    decode_rgb(&bytes).map_err(|fault| fault.at(path.display().to_string()))
}

/// Decode an encoded image into 8-bit RGB exactly as Pillow's `convert("RGB")` does:
///
/// - alpha (RGBA, LA, palette or colour-key transparency) is dropped, not composited;
/// - grayscale is replicated; palettes are looked up;
/// - 16-bit colour (RGB, RGBA, LA) keeps the high byte; 16-bit grayscale (Pillow's `I;16`)
///   is clipped to 255, as Pillow does;
/// - CMYK JPEGs are read with Adobe's inverted polarity (as Pillow always assumes) and
///   converted with Pillow's `cmyk2rgb` integer formula;
/// - EXIF orientation is ignored, like Pillow and Hugging Face.
pub fn load_rgb_from_bytes(bytes: &[u8]) -> Result<RgbImage, PreprocessError> {
    decode_rgb(bytes).map_err(|fault| fault.at("<memory>".to_string()))
}

fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, Fault> {
    let format = image::guess_format(bytes).map_err(|_| Fault::NotAnImage)?;
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes);
    }
    let name = format!("{format:?}").to_uppercase();
    let mut decoded = image::load_from_memory_with_format(bytes, format)
        .map_err(|e| classify_image_error(e, &name))?;
    // A 16-bit grayscale PNG with a tRNS colour key decodes to gray+alpha here, but Pillow
    // opens it as `I;16` (clipped, not shifted): drop the alpha before converting.
    if format == ImageFormat::Png && is_png_gray16(bytes) {
        if let DynamicImage::ImageLumaA16(p) = &decoded {
            let luma: Vec<u16> = p.as_raw().chunks_exact(2).map(|la| la[0]).collect();
            let gray = ImageBuffer::from_raw(p.width(), p.height(), luma).expect("same size");
            decoded = DynamicImage::ImageLuma16(gray);
        }
    }
    Ok(pil_rgb(decoded))
}

/// Whether a PNG's IHDR declares 16-bit grayscale without alpha (colour type 0).
fn is_png_gray16(bytes: &[u8]) -> bool {
    // Signature (8) + chunk length (4) + "IHDR" (4) + width, height (8) → depth, colour type.
    bytes.len() > 25 && &bytes[12..16] == b"IHDR" && bytes[24] == 16 && bytes[25] == 0
}

fn classify_image_error(e: ImageError, format: &str) -> Fault {
    match e {
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Fault::Truncated(format.to_string())
        }
        ImageError::Unsupported(u) => Fault::Unsupported(u.to_string()),
        ImageError::Limits(l) => Fault::Unsupported(l.to_string()),
        other => {
            let reason = other.to_string();
            if reason.to_lowercase().contains("end of") || reason.contains("EOF") {
                Fault::Truncated(format.to_string())
            } else {
                Fault::Corrupt(format.to_string(), reason)
            }
        }
    }
}

/// Pillow's `convert("RGB")` for the pixel layouts the `image` crate decodes to.
fn pil_rgb(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let map = |raw: &[u8], channels: usize, f: &dyn Fn(&[u8]) -> [u8; 3]| -> RgbImage {
        let data = raw.chunks_exact(channels).flat_map(f).collect();
        RgbImage::from_raw(w, h, data).expect("pixel count matches dimensions")
    };
    let map16 = |raw: &[u16], channels: usize, f: &dyn Fn(&[u16]) -> [u8; 3]| -> RgbImage {
        let data = raw.chunks_exact(channels).flat_map(f).collect();
        RgbImage::from_raw(w, h, data).expect("pixel count matches dimensions")
    };
    let high = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(p) => map(p.as_raw(), 4, &|p| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma8(p) => map(p.as_raw(), 1, &|p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(p) => map(p.as_raw(), 2, &|p| [p[0]; 3]),
        // Pillow opens 16-bit grayscale as `I;16` and clips it to 8 bits on conversion.
        DynamicImage::ImageLuma16(p) => map16(p.as_raw(), 1, &|p| [p[0].min(255) as u8; 3]),
        // 16-bit gray+alpha and colour are unpacked to their most significant byte.
        DynamicImage::ImageLumaA16(p) => map16(p.as_raw(), 2, &|p| [high(p[0]); 3]),
        DynamicImage::ImageRgb16(p) => {
            map16(p.as_raw(), 3, &|p| [high(p[0]), high(p[1]), high(p[2])])
        }
        DynamicImage::ImageRgba16(p) => {
            map16(p.as_raw(), 4, &|p| [high(p[0]), high(p[1]), high(p[2])])
        }
        // Float formats (EXR, HDR) have no Pillow counterpart: clamp to [0, 1] and scale.
        other => other.to_rgb8(),
    }
}

/// Decode a JPEG as Pillow (libjpeg-turbo) does: with the libjpeg-compatible decoder below,
/// falling back to zune-jpeg (the `image` crate's decoder, within a few levels of libjpeg)
/// for coding processes it does not cover (arithmetic coding, 12-bit, lossless).
fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, Fault> {
    // Pillow refuses a stream that stops before EOI; both decoders would pad it silently.
    if !jpeg_reaches_eoi(bytes) {
        return Err(Fault::Truncated("JPEG".into()));
    }
    let decoded = match jpeg::decode(bytes) {
        Ok(decoded) => decoded,
        Err(jpeg::Error::Corrupt(reason)) => return Err(Fault::Corrupt("JPEG".into(), reason)),
        Err(jpeg::Error::TooLarge(reason)) => return Err(Fault::Unsupported(reason)),
        Err(jpeg::Error::Unsupported(ours)) => {
            return decode_jpeg_zune(bytes).map_err(|fault| match fault {
                Fault::Unsupported(theirs) => {
                    Fault::Unsupported(format!("JPEG with {ours} ({theirs})"))
                }
                other => other,
            })
        }
    };
    let rgb = match decoded.pixels {
        jpeg::Pixels::Rgb(rgb) => rgb,
        jpeg::Pixels::Gray(l) => l.iter().flat_map(|&l| [l; 3]).collect(),
        jpeg::Pixels::Cmyk(cmyk) => cmyk
            .chunks_exact(4)
            .flat_map(pil_inverted_cmyk_to_rgb)
            .collect(),
    };
    Ok(
        RgbImage::from_raw(decoded.width as u32, decoded.height as u32, rgb)
            .expect("w*h*3 samples"),
    )
}

/// zune-jpeg decoding, keeping CMYK raw so that it is converted with Pillow's formula.
fn decode_jpeg_zune(bytes: &[u8]) -> Result<RgbImage, Fault> {
    let corrupt = |e: zune_jpeg::errors::DecodeErrors| match e {
        zune_jpeg::errors::DecodeErrors::Unsupported(s) => Fault::Unsupported(format!("{s:?}")),
        zune_jpeg::errors::DecodeErrors::ExhaustedData => Fault::Truncated("JPEG".into()),
        other => Fault::Corrupt("JPEG".into(), other.to_string()),
    };
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(corrupt)?;
    let info = decoder.info().expect("headers decoded");
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let output = match decoder.input_colorspace().expect("headers decoded") {
        ColorSpace::CMYK => ColorSpace::CMYK,
        ColorSpace::Luma => ColorSpace::Luma,
        _ => ColorSpace::RGB,
    };
    decoder.set_options(decoder.options().jpeg_set_out_colorspace(output));
    let pixels = decoder.decode().map_err(corrupt)?;
    let rgb = match output {
        ColorSpace::CMYK => pixels
            .chunks_exact(4)
            .flat_map(pil_inverted_cmyk_to_rgb)
            .collect(),
        ColorSpace::Luma => pixels.iter().flat_map(|&l| [l; 3]).collect(),
        _ => pixels,
    };
    RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| Fault::Corrupt("JPEG".into(), "short pixel buffer".into()))
}

/// Pillow's CMYK→RGB for JPEG samples stored with Adobe's inverted polarity: the samples are
/// inverted back (`CMYK;I`), then each channel is `(255 - K) - (C · (255 - K) / 255)` with
/// Pillow's rounded integer division by 255.
fn pil_inverted_cmyk_to_rgb(stored: &[u8]) -> [u8; 3] {
    let not_k = i32::from(stored[3]); // 255 - K where K = 255 - stored
    let channel = |s: u8| {
        let c = 255 - i32::from(s);
        let t = c * not_k + 128;
        let scaled = ((t >> 8) + t) >> 8;
        (not_k - scaled).clamp(0, 255) as u8
    };
    [channel(stored[0]), channel(stored[1]), channel(stored[2])]
}

/// Whether a JPEG stream's marker structure runs to an EOI marker, walking segment lengths
/// and entropy-coded data (where `FF` is followed only by `00` stuffing or `RSTn`).
fn jpeg_reaches_eoi(bytes: &[u8]) -> bool {
    let mut pos = 2; // after SOI
    while pos < bytes.len() {
        if bytes[pos] != 0xFF {
            pos += 1; // stray byte between segments: decoders skip it
            continue;
        }
        let Some(&marker) = bytes.get(pos + 1) else {
            return false;
        };
        pos += 2;
        match marker {
            0xD9 => return true,
            0xFF => pos -= 1, // fill byte
            0x01 | 0xD0..=0xD7 => {}
            _ => {
                let Some(len) = bytes.get(pos..pos + 2) else {
                    return false;
                };
                pos += usize::from(u16::from_be_bytes([len[0], len[1]]));
                if pos > bytes.len() {
                    return false;
                }
                if marker == 0xDA {
                    // Entropy-coded data up to the next real marker.
                    loop {
                        match bytes.get(pos..pos + 2) {
                            None => return false,
                            Some([0xFF, next])
                                if *next != 0x00 && !(0xD0..=0xD7).contains(next) =>
                            {
                                break
                            }
                            Some([0xFF, _]) => pos += 2,
                            Some(_) => pos += 1,
                        }
                    }
                }
            }
        }
    }
    false
}

/// Pillow's BICUBIC kernel (Keys' cubic convolution with a = -0.5), evaluated in the same
/// operation order so that the weights round identically.
fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fractional bits of the fixed-point weights: 32 bits less 8 for the sample, 2 for the
/// overshoot of a kernel with negative lobes.
const PRECISION_BITS: u32 = 22;
/// Accumulator start value: one half, so that the final shift rounds to nearest.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Normalised floating-point weights of one output sample: `(first input index, weights)`.
fn float_taps(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    // Shrinking widens the kernel by the shrink factor (antialiasing); enlarging does not.
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    let inv_filter_scale = 1.0 / filter_scale;
    (0..out_size)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // Truncation toward zero, as C's (int) cast, then clamped to the image.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut weights: Vec<f64> = (first..end)
                .map(|i| bicubic_kernel((i as f64 - center + 0.5) * inv_filter_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            (first, weights)
        })
        .collect()
}

/// Round a weight to fixed point, halves away from zero.
fn fixed_point(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Fixed-point taps of a resize along one axis, `stride` weights per output sample.
#[derive(Debug)]
struct AxisTaps {
    first: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
    stride: usize,
}

impl AxisTaps {
    fn new(in_size: usize, out_size: usize) -> Self {
        let taps = float_taps(in_size, out_size);
        let stride = taps.iter().map(|(_, w)| w.len()).max().unwrap_or(0);
        let mut weights = vec![0; out_size * stride];
        for (row, (_, w)) in weights.chunks_exact_mut(stride.max(1)).zip(&taps) {
            row.iter_mut()
                .zip(w)
                .for_each(|(q, &w)| *q = fixed_point(w));
        }
        AxisTaps {
            first: taps.iter().map(|(f, _)| *f).collect(),
            len: taps.iter().map(|(_, w)| w.len()).collect(),
            weights,
            stride,
        }
    }

    fn weights(&self, o: usize) -> &[i32] {
        &self.weights[o * self.stride..o * self.stride + self.len[o]]
    }
}

/// Clip a fixed-point accumulator to an 8-bit sample (the shift floors; `HALF` rounds).
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A Pillow-exact BICUBIC resize between two fixed sizes, with its weights computed once;
/// reuse it for many images of the same size.
#[derive(Debug)]
pub struct BicubicResampler {
    in_size: (u32, u32),
    out_size: (u32, u32),
    /// `None` where the axis keeps its size (Pillow skips that pass).
    horizontal: Option<AxisTaps>,
    vertical: Option<AxisTaps>,
}

impl BicubicResampler {
    /// Resampler from `in_width`×`in_height` to `out_width`×`out_height` (all non-zero).
    pub fn new(in_width: u32, in_height: u32, out_width: u32, out_height: u32) -> Self {
        assert!(
            in_width > 0 && in_height > 0 && out_width > 0 && out_height > 0,
            "resize {in_width}x{in_height} -> {out_width}x{out_height}: sizes must be positive"
        );
        let axis = |i: u32, o: u32| (i != o).then(|| AxisTaps::new(i as usize, o as usize));
        BicubicResampler {
            in_size: (in_width, in_height),
            out_size: (out_width, out_height),
            horizontal: axis(in_width, out_width),
            vertical: axis(in_height, out_height),
        }
    }

    /// The whole resized image.
    pub fn resize(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = self.out_size;
        self.resize_window(img, 0, 0, w, h)
    }

    /// The `width`×`height` window at (`x0`, `y0`) of the resized image, computing only the
    /// samples it needs (every output sample depends only on its own taps, so the window
    /// equals the same crop of [`BicubicResampler::resize`]).
    pub fn resize_window(
        &self,
        img: &RgbImage,
        x0: u32,
        y0: u32,
        width: u32,
        height: u32,
    ) -> RgbImage {
        assert_eq!(
            img.dimensions(),
            self.in_size,
            "image size differs from the resampler's input size"
        );
        assert!(
            x0 + width <= self.out_size.0 && y0 + height <= self.out_size.1,
            "window outside the resized image"
        );
        let (x0, y0, w, h) = (x0 as usize, y0 as usize, width as usize, height as usize);
        let in_w = self.in_size.0 as usize;
        if w == 0 || h == 0 {
            return RgbImage::new(width, height);
        }
        // Input rows the vertical pass reads (or the output rows themselves if it is skipped).
        let (row_lo, row_hi) = match &self.vertical {
            Some(v) => (
                v.first[y0],
                (y0..y0 + h).map(|y| v.first[y] + v.len[y]).max().unwrap(),
            ),
            None => (y0, y0 + h),
        };
        let src = img.as_raw();
        let row_bytes = in_w * 3;
        // Horizontal pass: rows row_lo..row_hi, output columns x0..x0+w, rounded to 8 bits.
        let mut mid = vec![0u8; (row_hi - row_lo) * w * 3];
        for (r, out_row) in mid.chunks_exact_mut(w * 3).enumerate() {
            let in_row = &src[(row_lo + r) * row_bytes..(row_lo + r + 1) * row_bytes];
            match &self.horizontal {
                Some(taps) => resample_row(in_row, out_row, taps, x0),
                None => out_row.copy_from_slice(&in_row[x0 * 3..(x0 + w) * 3]),
            }
        }
        // Vertical pass over the intermediate rows.
        let mut out = vec![0u8; w * h * 3];
        match &self.vertical {
            Some(taps) => {
                let mut acc = vec![0i32; w * 3];
                for (oy, out_row) in out.chunks_exact_mut(w * 3).enumerate() {
                    let y = y0 + oy;
                    acc.fill(HALF);
                    for (t, &k) in taps.weights(y).iter().enumerate() {
                        let r = taps.first[y] + t - row_lo;
                        let in_row = &mid[r * w * 3..(r + 1) * w * 3];
                        acc.iter_mut()
                            .zip(in_row)
                            .for_each(|(a, &p)| *a += i32::from(p) * k);
                    }
                    out_row
                        .iter_mut()
                        .zip(&acc)
                        .for_each(|(o, &a)| *o = clip8(a));
                }
            }
            None => out.copy_from_slice(&mid),
        }
        ImageBuffer::<Rgb<u8>, _>::from_raw(width, height, out).expect("buffer sized w*h*3")
    }
}

/// Horizontal convolution of one RGB row into output columns `x0..x0 + out.len() / 3`.
fn resample_row(in_row: &[u8], out: &mut [u8], taps: &AxisTaps, x0: usize) {
    for (i, px) in out.chunks_exact_mut(3).enumerate() {
        let x = x0 + i;
        let first = taps.first[x] * 3;
        let (mut r, mut g, mut b) = (HALF, HALF, HALF);
        for (s, &k) in in_row[first..].chunks_exact(3).zip(taps.weights(x)) {
            r += i32::from(s[0]) * k;
            g += i32::from(s[1]) * k;
            b += i32::from(s[2]) * k;
        }
        px.copy_from_slice(&[clip8(r), clip8(g), clip8(b)]);
    }
}

/// Resize to exactly `width`×`height` the way Pillow's `Image.resize(.., BICUBIC)` does.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    BicubicResampler::new(img.width(), img.height(), width, height).resize(img)
}

/// Size after resizing the shorter side to `shortest`, the longer side scaled and truncated
/// (`int(shortest * long / short)`, as transformers and torchvision compute it).
pub fn resized_dimensions(width: u32, height: u32, shortest: u32) -> (u32, u32) {
    let long_side = |long: u32, short: u32| {
        ((u64::from(shortest) * u64::from(long)) as f64 / f64::from(short)) as u32
    };
    if width <= height {
        (shortest, long_side(height, width))
    } else {
        (long_side(width, height), shortest)
    }
}

/// Offset of a centered crop of `crop` samples in an axis of `size` samples; negative when
/// the crop is larger than the image (the image then sits at `-offset` in the padded crop).
pub fn crop_offset(size: u32, crop: u32, rounding: CropRounding) -> i64 {
    let margin = i64::from(size) - i64::from(crop);
    match rounding {
        CropRounding::Floor => margin.div_euclid(2),
        CropRounding::RoundHalfEven if margin >= 0 => {
            (margin as f64 / 2.0).round_ties_even() as i64
        }
        // torchvision pads (crop - size) // 2 before the image.
        CropRounding::RoundHalfEven => -((-margin) / 2),
    }
}

/// Resize the shortest side to `cfg.resize_shortest` with Pillow's BICUBIC and center crop to
/// `cfg.crop`×`cfg.crop` (zero padding where the resized image is smaller): the 8-bit image
/// before normalisation. Only the cropped samples are computed.
pub fn resize_and_crop(img: &RgbImage, cfg: &PreprocessConfig) -> RgbImage {
    let (rw, rh) = resized_dimensions(img.width(), img.height(), cfg.resize_shortest);
    let resampler = BicubicResampler::new(img.width(), img.height(), rw, rh);
    let crop = cfg.crop;
    let left = crop_offset(rw, crop, cfg.crop_rounding);
    let top = crop_offset(rh, crop, cfg.crop_rounding);
    // Window of the resized image inside the crop.
    let span = |offset: i64, size: u32| {
        let lo = offset.max(0);
        let hi = (offset + i64::from(crop)).min(i64::from(size));
        (lo as u32, (hi - lo).max(0) as u32)
    };
    let (wx, ww) = span(left, rw);
    let (wy, wh) = span(top, rh);
    let window = resampler.resize_window(img, wx, wy, ww, wh);
    if ww == crop && wh == crop {
        return window;
    }
    let mut out = RgbImage::new(crop, crop);
    image::imageops::replace(&mut out, &window, i64::from(wx) - left, i64::from(wy) - top);
    out
}

/// Scale to [0, 1] and normalize, channel-major (C, H, W). Bit-exact with transformers:
/// `float32(float64(v) * (1/255))`, then `(x - mean) / std` in float32.
pub fn normalize(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let table: Vec<[f32; 256]> = (0..3)
        .map(|c| {
            std::array::from_fn(|v| ((v as f64 * (1.0 / 255.0)) as f32 - cfg.mean[c]) / cfg.std[c])
        })
        .collect();
    let plane = img.width() as usize * img.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = table[0][px[0] as usize];
        g[i] = table[1][px[1] as usize];
        b[i] = table[2][px[2] as usize];
    }
    out
}

/// The model input for one RGB image: [`resize_and_crop`] then [`normalize`], (3, crop, crop).
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    normalize(&resize_and_crop(img, cfg), cfg)
}

/// [`load_rgb`] then [`preprocess`].
pub fn preprocess_file(path: &Path, cfg: &PreprocessConfig) -> Result<Vec<f32>, PreprocessError> {
    Ok(preprocess(&load_rgb(path)?, cfg))
}

/// A JPEG decoder whose output equals libjpeg-turbo's defaults as Pillow uses them (accurate
/// integer IDCT, "fancy" triangle-filter chroma upsampling with libjpeg's rounding, table-based
/// YCbCr→RGB), so that decoding JPEGs matches Pillow sample for sample. It covers 8-bit
/// Huffman-coded baseline, extended and progressive JPEGs; anything else is reported as
/// unsupported and the caller falls back to zune-jpeg.
///
/// Follows the JPEG specification (ITU T.81) and the behaviour of libjpeg-turbo's jdhuff.c,
/// jdphuff.c, jidctint.c, jdsample.c and jdcolor.c.
mod jpeg {
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
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
        20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
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
            while pos + 1 < self.data.len()
                && !(self.data[pos] == 0xFF && self.data[pos + 1] != 0x00)
            {
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
                0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => {
                    adobe_transform = Some(seg[11])
                }
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
                    coefs: if progressive {
                        vec![0; blocks_w * blocks_h * 64]
                    } else {
                        Vec::new()
                    },
                    plane: vec![0; blocks_w * blocks_h * 64],
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
                    ScanKind::AcFirst => {
                        let coefs = &mut c.coefs[index * 64..index * 64 + 64];
                        ac_first(
                            &mut bits,
                            acs[m].as_ref().unwrap(),
                            coefs,
                            ss,
                            se,
                            al,
                            &mut eobrun,
                        )?;
                    }
                    ScanKind::AcRefine => {
                        let coefs = &mut c.coefs[index * 64..index * 64 + 64];
                        ac_refine(
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

    #[derive(Clone, Copy)]
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
            let s: [i64; 8] = std::array::from_fn(|r| {
                i64::from(coefs[r * 8 + col]) * i64::from(quant[r * 8 + col])
            });
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
                        let cx =
                            ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos();
                        let cy =
                            ((2 * y + 1) as f64 * vv as f64 * std::f64::consts::PI / 16.0).cos();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_keys_cubic() {
        assert_eq!(bicubic_kernel(0.0), 1.0);
        assert_eq!(bicubic_kernel(1.0), 0.0);
        assert_eq!(bicubic_kernel(2.0), 0.0);
        assert_eq!(bicubic_kernel(-3.0), 0.0);
        // a = -0.5: k(0.5) = 0.5625, k(1.5) = -0.0625, symmetric.
        assert_eq!(bicubic_kernel(0.5), 0.5625);
        assert_eq!(bicubic_kernel(-1.5), -0.0625);
        // Partition of unity at any phase.
        for phase in [0.0, 0.1, 0.25, 0.5, 0.9] {
            let s: f64 = (-2..=2).map(|i| bicubic_kernel(i as f64 + phase)).sum();
            assert!((s - 1.0).abs() < 1e-12, "phase {phase}: {s}");
        }
    }

    #[test]
    fn taps_are_normalised_and_bounded() {
        for (i, o) in [
            (32, 224),
            (512, 224),
            (1, 224),
            (1000, 37),
            (300, 7),
            (7, 300),
            (225, 224),
        ] {
            let taps = float_taps(i, o);
            assert_eq!(taps.len(), o);
            for (first, w) in &taps {
                assert!(first + w.len() <= i && !w.is_empty());
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
            let fixed = AxisTaps::new(i, o);
            for x in 0..o {
                let s: i32 = fixed.weights(x).iter().sum();
                // Each weight rounds by at most half a unit.
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= fixed.len[x] as i32,
                    "{i}->{o} @{x}: {s}"
                );
            }
        }
        // Shrinking by 2 widens the support to 4 input samples each side.
        let taps = float_taps(448, 224);
        assert_eq!(taps[100].1.len(), 8);
        assert_eq!(fixed_point(-0.25), -(1 << 20));
        assert_eq!(fixed_point(0.5), 1 << 21);
    }

    fn pattern(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 7 + y * 3) as u8,
                (x * y) as u8,
                255 - (x * 5 % 256) as u8,
            ])
        })
    }

    #[test]
    fn identity_resize_and_constant_image() {
        let img = pattern(40, 30);
        assert_eq!(resize_bicubic(&img, 40, 30), img);
        let flat = RgbImage::from_pixel(13, 9, Rgb([10, 128, 250]));
        for (w, h) in [(224, 224), (5, 3), (13, 40), (1, 1)] {
            let r = resize_bicubic(&flat, w, h);
            assert_eq!(r.dimensions(), (w, h));
            assert!(r.pixels().all(|p| *p == Rgb([10, 128, 250])), "{w}x{h}");
        }
    }

    #[test]
    fn window_equals_crop_of_full_resize() {
        let img = pattern(97, 61);
        let full = resize_bicubic(&img, 150, 230);
        let r = BicubicResampler::new(97, 61, 150, 230);
        let win = r.resize_window(&img, 11, 40, 100, 77);
        let crop = image::imageops::crop_imm(&full, 11, 40, 100, 77).to_image();
        assert_eq!(win, crop);
    }

    #[test]
    fn output_shapes() {
        assert_eq!(resized_dimensions(512, 384, 224), (298, 224));
        assert_eq!(resized_dimensions(384, 512, 224), (224, 298));
        assert_eq!(resized_dimensions(1000, 37, 224), (6054, 224));
        assert_eq!(resized_dimensions(1, 1, 224), (224, 224));
        let cfg = PreprocessConfig::default();
        for (w, h) in [(1, 1), (32, 32), (7, 300), (512, 384), (1000, 37)] {
            let out = resize_and_crop(&pattern(w, h), &cfg);
            assert_eq!(out.dimensions(), (224, 224));
            assert_eq!(preprocess(&pattern(w, h), &cfg).len(), 3 * 224 * 224);
        }
        let small = PreprocessConfig::with_size(30);
        assert_eq!(preprocess(&pattern(50, 40), &small).len(), 3 * 30 * 30);
    }

    #[test]
    fn crop_rounding_kinds() {
        use CropRounding::*;
        // Odd margins: HF floors, torchvision rounds half to even.
        assert_eq!(crop_offset(225, 224, Floor), 0);
        assert_eq!(crop_offset(225, 224, RoundHalfEven), 0);
        assert_eq!(crop_offset(227, 224, Floor), 1);
        assert_eq!(crop_offset(227, 224, RoundHalfEven), 2);
        assert_eq!(crop_offset(229, 224, Floor), 2);
        assert_eq!(crop_offset(229, 224, RoundHalfEven), 2);
        assert_eq!(crop_offset(298, 224, Floor), 37);
        // Crop larger than the image: HF pads ceil(d/2) before, torchvision floor(d/2).
        assert_eq!(crop_offset(221, 224, Floor), -2);
        assert_eq!(crop_offset(221, 224, RoundHalfEven), -1);
        let cfg = PreprocessConfig {
            resize_shortest: 20,
            crop: 23,
            ..PreprocessConfig::with_size(20)
        };
        let out = resize_and_crop(&RgbImage::from_pixel(20, 20, Rgb([9, 9, 9])), &cfg);
        assert_eq!(*out.get_pixel(1, 1), Rgb([0, 0, 0]));
        assert_eq!(*out.get_pixel(2, 2), Rgb([9, 9, 9]));
        assert_eq!(*out.get_pixel(21, 21), Rgb([9, 9, 9]));
        assert_eq!(*out.get_pixel(22, 22), Rgb([0, 0, 0]));
    }

    #[test]
    fn normalize_values() {
        let cfg = PreprocessConfig::with_size(2);
        let img = RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgb([0, 0, 0])
            } else {
                Rgb([255, 128, 255])
            }
        });
        let v = normalize(&img, &cfg);
        assert_eq!(v.len(), 6);
        let close = |a: f32, b: f64| assert!((f64::from(a) - b).abs() < 1e-6, "{a} vs {b}");
        close(v[0], -0.48145466 / 0.26862954);
        close(v[1], (1.0 - 0.48145466) / 0.26862954);
        close(v[3], (128.0 / 255.0 - 0.4578275) / 0.26130258);
        close(v[5], (1.0 - 0.40821073) / 0.27577711);
    }

    #[test]
    fn cmyk_formula_and_jpeg_structure() {
        // Stored samples are inverted: stored 255 = no ink.
        assert_eq!(
            pil_inverted_cmyk_to_rgb(&[255, 255, 255, 255]),
            [255, 255, 255]
        );
        assert_eq!(pil_inverted_cmyk_to_rgb(&[0, 255, 128, 255]), [0, 255, 128]);
        assert_eq!(pil_inverted_cmyk_to_rgb(&[200, 100, 0, 0]), [0, 0, 0]);
        assert!(!jpeg_reaches_eoi(&[
            0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00
        ]));
        assert!(jpeg_reaches_eoi(&[
            0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0xFF, 0xD0, 0xFF, 0xD9
        ]));
    }

    #[test]
    fn jpeg_decoding_agrees_with_zune_and_detects_truncation() {
        let img = pattern(61, 43);
        let mut jpg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 90)
            .encode_image(&img)
            .unwrap();
        let ours = load_rgb_from_bytes(&jpg).unwrap();
        let zune = decode_jpeg_zune(&jpg).ok().unwrap();
        assert_eq!(ours.dimensions(), (61, 43));
        let max = ours
            .as_raw()
            .iter()
            .zip(zune.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max();
        assert!(
            max.unwrap() <= 12,
            "libjpeg-style and zune decodes differ by {max:?}"
        );
        let cut = load_rgb_from_bytes(&jpg[..jpg.len() - 2]).unwrap_err();
        assert!(matches!(cut, PreprocessError::Truncated { .. }), "{cut}");
        let cut = load_rgb_from_bytes(&jpg[..jpg.len() / 2]).unwrap_err();
        assert!(matches!(cut, PreprocessError::Truncated { .. }), "{cut}");
        let mut garbled = jpg.clone();
        garbled.truncate(20);
        garbled.extend_from_slice(&[0xFF, 0xD9]);
        assert!(load_rgb_from_bytes(&garbled).is_err());
    }

    #[test]
    fn load_errors_name_the_file() {
        let missing = load_rgb(Path::new("/nonexistent/x.png")).unwrap_err();
        assert!(matches!(missing, PreprocessError::Missing { .. }));
        assert!(missing.to_string().contains("/nonexistent/x.png"));
        let not_image = load_rgb_from_bytes(b"hello world, not an image").unwrap_err();
        assert!(
            matches!(not_image, PreprocessError::NotAnImage { .. }),
            "{not_image}"
        );
        let mut png = Vec::new();
        pattern(20, 20)
            .write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        assert!(load_rgb_from_bytes(&png).is_ok());
        let cut = load_rgb_from_bytes(&png[..png.len() / 2]).unwrap_err();
        assert!(matches!(cut, PreprocessError::Truncated { .. }), "{cut}");
    }
}
