//! Image loading and preprocessing, bit-exact with Pillow.
//!
//! Mirrors OpenAI CLIP's `_transform` (clip/clip.py) and Hugging Face's PIL-backed image
//! processors (transformers 5.x `CLIPImageProcessorPil`, `BitImageProcessorPil`,
//! `SiglipImageProcessorPil`): convert to RGB, resize (shortest side or fixed size) with one
//! of Pillow's filters, center crop, rescale, normalize. The settings come from a model's
//! `preprocessor_config.json` (src/clip/processor.rs).
//!
//! The resize follows the algorithm of Pillow's `libImaging/Resample.c` (written anew here):
//! a separable convolution with the filter's kernel (BICUBIC: the a = -0.5 cubic) whose
//! support is widened by the shrink factor, weights normalised to sum 1 and converted to 22-bit fixed point, one
//! horizontal pass then one vertical pass, each rounded and clipped to 8 bits. An axis whose
//! size does not change is not resampled at all.
//!
//! Decoding converts every pixel format the way Pillow's `Image.open(..).convert("RGB")`
//! does (see [`load_rgb_from_bytes`]). JPEGs go through a decoder of their own (module
//! `jpeg`, src/clip/preprocess/jpeg.rs) that reproduces libjpeg-turbo's default output,
//! which Pillow uses: the `image` crate's zune-jpeg rounds chroma upsampling and colour
//! conversion differently and lands up to 7/255 away. PNG, GIF, BMP, TIFF and WebP use the `image` crate's decoders,
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

/// How an image is resized before the crop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// The shorter side to this length, the longer scaled and truncated (transformers'
    /// `size: {"shortest_edge": N}`).
    ShortestEdge(u32),
    /// To exactly `width`×`height` (`size: {"height": H, "width": W}`).
    Exact { width: u32, height: u32 },
    /// Not resized (`do_resize: false`).
    Keep,
}

/// Pillow's resampling filters, numbered as `PIL.Image.Resampling` (and the `resample`
/// field of a `preprocessor_config.json`). NEAREST (0) is not offered: Pillow computes it
/// with an affine transform, not the convolution below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
    Box = 4,
    Hamming = 5,
}

impl Resample {
    /// The filter of a `PIL.Image.Resampling` number.
    pub fn from_pil(code: i64) -> Option<Resample> {
        match code {
            1 => Some(Resample::Lanczos),
            2 => Some(Resample::Bilinear),
            3 => Some(Resample::Bicubic),
            4 => Some(Resample::Box),
            5 => Some(Resample::Hamming),
            _ => None,
        }
    }

    /// Half-width of the kernel at scale 1 (Pillow's `filter->support`).
    fn support(self) -> f64 {
        match self {
            Resample::Box => 0.5,
            Resample::Bilinear | Resample::Hamming => 1.0,
            Resample::Bicubic => 2.0,
            Resample::Lanczos => 3.0,
        }
    }

    /// The kernel, in Pillow's operation order (libImaging/Resample.c).
    fn kernel(self, x: f64) -> f64 {
        match self {
            Resample::Bicubic => bicubic_kernel(x),
            Resample::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Resample::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resample::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Preprocessing settings (the fields of a transformers `preprocessor_config.json`);
/// `Default` is OpenAI CLIP at 224 pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    pub resize: Resize,
    pub resample: Resample,
    /// Center crop to (width, height); `None` when `do_center_crop` is false.
    pub crop: Option<(u32, u32)>,
    /// Multiplier of the 8-bit samples (`rescale_factor`), `None` when `do_rescale` is false.
    pub rescale_factor: Option<f64>,
    /// Per-channel mean subtracted after rescaling.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
    /// `do_normalize`: whether `mean` and `std` are applied.
    pub normalize: bool,
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
            resize: Resize::ShortestEdge(size),
            resample: Resample::Bicubic,
            crop: Some((size, size)),
            rescale_factor: Some(1.0 / 255.0),
            mean: CLIP_MEAN,
            std: CLIP_STD,
            normalize: true,
            crop_rounding: CropRounding::Floor,
        }
    }

    /// Size (width, height) of the output for an input of `width`×`height`.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        if let Some(crop) = self.crop {
            return crop;
        }
        match self.resize {
            Resize::ShortestEdge(s) => resized_dimensions(width, height, s),
            Resize::Exact { width, height } => (width, height),
            Resize::Keep => (width, height),
        }
    }

    /// The side of the square every image becomes, when the settings fix one (a square
    /// crop, or an exact square resize without a crop).
    pub fn fixed_side(&self) -> Option<u32> {
        match (self.crop, self.resize) {
            (Some((w, h)), _) if w == h => Some(w),
            (None, Resize::Exact { width, height }) if width == height => Some(width),
            _ => None,
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
    /// The dataset has no label for the image (it is skipped, never relabelled).
    #[error("image {origin}: no label: {reason}")]
    NoLabel { origin: String, reason: String },
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
    // The same checks as our decoder's before anything of the declared size is allocated: the
    // decompression-bomb limit, and at least one bit of data per 8x8 block (512 pixels a byte).
    let pixels = w as usize * h as usize;
    if pixels > 2 * 89_478_485 {
        return Err(Fault::Unsupported(format!(
            "{w}x{h} pixels, above Pillow's decompression-bomb limit"
        )));
    }
    if pixels > 512 * bytes.len() {
        return Err(Fault::Corrupt(
            "JPEG".into(),
            format!(
                "frame declares {w}x{h} pixels but the file holds {} bytes",
                bytes.len()
            ),
        ));
    }
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
fn float_taps(filter: Resample, in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    // Shrinking widens the kernel by the shrink factor (antialiasing); enlarging does not.
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let inv_filter_scale = 1.0 / filter_scale;
    (0..out_size)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // Truncation toward zero, as C's (int) cast, then clamped to the image.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut weights: Vec<f64> = (first..end)
                .map(|i| filter.kernel((i as f64 - center + 0.5) * inv_filter_scale))
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
    fn new(filter: Resample, in_size: usize, out_size: usize) -> Self {
        let taps = float_taps(filter, in_size, out_size);
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

/// A Pillow-exact resize between two fixed sizes, with its weights computed once; reuse it
/// for many images of the same size.
#[derive(Debug)]
pub struct Resampler {
    in_size: (u32, u32),
    out_size: (u32, u32),
    /// `None` where the axis keeps its size (Pillow skips that pass).
    horizontal: Option<AxisTaps>,
    vertical: Option<AxisTaps>,
}

impl Resampler {
    /// Resampler with `filter` from `in_width`×`in_height` to `out_width`×`out_height` (all
    /// non-zero).
    pub fn new(
        filter: Resample,
        in_width: u32,
        in_height: u32,
        out_width: u32,
        out_height: u32,
    ) -> Self {
        assert!(
            in_width > 0 && in_height > 0 && out_width > 0 && out_height > 0,
            "resize {in_width}x{in_height} -> {out_width}x{out_height}: sizes must be positive"
        );
        let axis = |i: u32, o: u32| (i != o).then(|| AxisTaps::new(filter, i as usize, o as usize));
        Resampler {
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
    /// equals the same crop of [`Resampler::resize`]).
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
    Resampler::new(Resample::Bicubic, img.width(), img.height(), width, height).resize(img)
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

/// Resize as `cfg.resize` says with `cfg.resample`, then center crop to `cfg.crop` (zero
/// padding where the resized image is smaller): the 8-bit image before normalisation.
/// Only the cropped samples are computed.
pub fn resize_and_crop(img: &RgbImage, cfg: &PreprocessConfig) -> RgbImage {
    let (rw, rh) = match cfg.resize {
        Resize::ShortestEdge(s) => resized_dimensions(img.width(), img.height(), s),
        Resize::Exact { width, height } => (width, height),
        Resize::Keep => img.dimensions(),
    };
    let resampler = Resampler::new(cfg.resample, img.width(), img.height(), rw, rh);
    let Some((crop_w, crop_h)) = cfg.crop else {
        return resampler.resize(img);
    };
    let left = crop_offset(rw, crop_w, cfg.crop_rounding);
    let top = crop_offset(rh, crop_h, cfg.crop_rounding);
    // Window of the resized image inside the crop.
    let span = |offset: i64, size: u32, crop: u32| {
        let lo = offset.max(0);
        let hi = (offset + i64::from(crop)).min(i64::from(size));
        (lo as u32, (hi - lo).max(0) as u32)
    };
    let (wx, ww) = span(left, rw, crop_w);
    let (wy, wh) = span(top, rh, crop_h);
    let window = resampler.resize_window(img, wx, wy, ww, wh);
    if ww == crop_w && wh == crop_h {
        return window;
    }
    let mut out = RgbImage::new(crop_w, crop_h);
    image::imageops::replace(&mut out, &window, i64::from(wx) - left, i64::from(wy) - top);
    out
}

/// Rescale and normalize, channel-major (C, H, W). Bit-exact with transformers:
/// `float32(float64(v) * rescale_factor)`, then `(x - mean) / std` in float32.
pub fn normalize(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let table: Vec<[f32; 256]> = (0..3)
        .map(|c| {
            std::array::from_fn(|v| {
                let x = match cfg.rescale_factor {
                    Some(r) => (v as f64 * r) as f32,
                    None => v as f32,
                };
                if cfg.normalize {
                    (x - cfg.mean[c]) / cfg.std[c]
                } else {
                    x
                }
            })
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

/// The model input for one RGB image: [`resize_and_crop`] then [`normalize`], (3, H, W).
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    normalize(&resize_and_crop(img, cfg), cfg)
}

/// [`load_rgb`] then [`preprocess`].
pub fn preprocess_file(path: &Path, cfg: &PreprocessConfig) -> Result<Vec<f32>, PreprocessError> {
    Ok(preprocess(&load_rgb(path)?, cfg))
}

/// The libjpeg-turbo-exact JPEG decoder (src/clip/preprocess/jpeg.rs).
mod jpeg;

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
            let taps = float_taps(Resample::Bicubic, i, o);
            assert_eq!(taps.len(), o);
            for (first, w) in &taps {
                assert!(first + w.len() <= i && !w.is_empty());
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
            let fixed = AxisTaps::new(Resample::Bicubic, i, o);
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
        let taps = float_taps(Resample::Bicubic, 448, 224);
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
        let r = Resampler::new(Resample::Bicubic, 97, 61, 150, 230);
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
            crop: Some((23, 23)),
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
