//! Image loading and preprocessing, bit-exact with transformers' PIL path
//! (`SiglipImageProcessor` backed by Pillow).
//!
//! The pipeline is: decode by content → `convert_to_rgb` → Pillow bicubic
//! resize to `S×S` (aspect ratio ignored) → `x * (1/255)` in float64, cast to
//! float32 → `(x − 0.5) / 0.5` in float32 → CHW.
//!
//! JPEG goes through libjpeg-turbo's decoder (via `mozjpeg`, same IDCT and
//! fancy upsampling as the libjpeg-turbo inside Pillow), because the `image`
//! crate's zune-jpeg differs by up to 3 levels in ~30% of the bytes — enough
//! to move a tiny model's loss by 2e-3. CMYK/YCCK JPEGs, which libjpeg cannot
//! convert to RGB, fall back to the `image` crate (not compared with Pillow).
//! PNG/WebP/BMP/GIF decode to the same bytes as Pillow.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader, Limits, Rgb, RgbImage};

use super::jpeg::{self, JpegError};

/// The most pixels an image may have: Pillow's `Image.open` raises
/// `DecompressionBombError` above `2 * MAX_IMAGE_PIXELS`, with
/// `MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)` (`Image.py`,
/// `_decompression_bomb_check`,
/// <https://github.com/python-pillow/Pillow/blob/13.0.0/src/PIL/Image.py>).
/// transformers opens images with Pillow, so it never sees a larger one.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Bytes per pixel of the widest layout the `image` crate decodes to here
/// (16-bit RGBA), for its allocation limit: every image Pillow opens fits.
const WIDEST_PIXEL_BYTES: u64 = 8;

/// An image file that could not be turned into an RGB image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read (missing, permissions, ...).
    #[error("cannot read image file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The bytes are not an image in a supported format (PNG, JPEG, WebP, BMP,
    /// GIF), are corrupt or truncated, or declare too many pixels.
    #[error("cannot decode image file {}: {source}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: DecodeError,
    },
}

/// Why image bytes are not an image this crate (or Pillow) would use.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The header declares more pixels than Pillow opens: refused before
    /// anything the size of the image is allocated.
    #[error(
        "its header declares {width} × {height} pixels, more than the {MAX_PIXELS} Pillow opens \
         (a decompression bomb, or a corrupt header); resize it below that, or drop it"
    )]
    TooLarge { width: u32, height: u32 },
    /// A JPEG whose data ends early, or whose markers are broken.
    #[error(transparent)]
    Jpeg(#[from] JpegError),
    #[error(transparent)]
    Format(#[from] image::ImageError),
}

/// Reads and decodes an image file and converts it to 8-bit RGB exactly as
/// transformers' `convert_to_rgb` does on a Pillow image.
///
/// The format is detected from the file's content, never from its
/// extension. Like transformers 5.24, any image with an alpha band or a
/// transparency entry (RGBA, LA, palette/greyscale/truecolour PNG with
/// tRNS, GIF transparency) is composited onto opaque white with Pillow's
/// `alpha_composite` integer arithmetic; greyscale is replicated to three
/// channels; 16-bit samples keep their high byte (16-bit greyscale is
/// clamped to 255, as Pillow's `I;16` → `L` does). EXIF orientation is not
/// applied (Pillow's `Image.open` does not either).
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes).map_err(|source| ImageError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Decodes image bytes (format detected from content) and converts them to
/// RGB like [`load_image`]. Images Pillow would refuse are refused: more
/// than [`MAX_PIXELS`] (checked on the header, before decoding), and
/// truncated JPEGs.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    if jpeg::is_jpeg(bytes) {
        if let Some((width, height)) = jpeg::scan(bytes)?.frame {
            check_pixels(width, height)?;
        }
        if let Some(rgb) = decode_jpeg_like_pillow(bytes)? {
            return Ok(rgb);
        }
    }
    let (width, height) = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(image::ImageError::IoError)?
        .into_dimensions()?;
    check_pixels(width, height)?;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(image::ImageError::IoError)?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * WIDEST_PIXEL_BYTES);
    reader.limits(limits);
    Ok(to_rgb(reader.decode()?))
}

/// Pillow's decompression-bomb check: `max(1, w) · max(1, h)` against the
/// limit.
fn check_pixels(width: u32, height: u32) -> Result<(), DecodeError> {
    let pixels = u64::from(width.max(1)) * u64::from(height.max(1));
    if pixels > MAX_PIXELS {
        return Err(DecodeError::TooLarge { width, height });
    }
    Ok(())
}

/// libjpeg-turbo's default decode (integer slow IDCT, fancy upsampling), as
/// Pillow runs it. `Ok(None)` when libjpeg refuses (corrupt data, CMYK): the
/// caller then lets the `image` crate decode or report the error.
fn decode_jpeg_like_pillow(bytes: &[u8]) -> Result<Option<RgbImage>, DecodeError> {
    // mozjpeg reports libjpeg's fatal errors by unwinding.
    std::panic::catch_unwind(|| {
        let Ok(decompress) = mozjpeg::Decompress::builder().from_mem(bytes) else {
            return Ok(None);
        };
        // libjpeg's own reading of the header, checked before `rgb()`
        // allocates anything the size of the image.
        let (width, height) = (
            u32::try_from(decompress.width()).unwrap_or(u32::MAX),
            u32::try_from(decompress.height()).unwrap_or(u32::MAX),
        );
        check_pixels(width, height)?;
        if matches!(
            decompress.color_space(),
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK
        ) {
            return Ok(None);
        }
        let decoded = (|| {
            let mut started = decompress.rgb().ok()?;
            let flat: Vec<u8> = started.read_scanlines().ok()?;
            started.finish().ok()?;
            RgbImage::from_raw(width, height, flat)
        })();
        Ok(decoded)
    })
    .unwrap_or(Ok(None))
}

/// Pillow's `alpha_composite(white, src)` for one pixel, then alpha dropped.
///
/// Pillow works with 7 extra bits of precision and rounded divisions by 255
/// (`AlphaComposite.c`); the destination is opaque white, so the general
/// formula is kept only to stay recognisably the same arithmetic.
fn over_white(r: u8, g: u8, b: u8, a: u8) -> Rgb<u8> {
    const PRECISION_BITS: u32 = 7;
    if a == 0 {
        return Rgb([255, 255, 255]);
    }
    let (dst_c, dst_a) = (255_u32, 255_u32);
    let sa = u32::from(a);
    let blend = dst_a * (255 - sa);
    let outa255 = sa * 255 + blend;
    let coef1 = sa * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let shift_div255 = |x: u32| ((x >> 8) + x) >> 8;
    let mix = |c: u8| {
        let tmp = u32::from(c) * coef1 + dst_c * coef2;
        (shift_div255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
    };
    Rgb([mix(r), mix(g), mix(b)])
}

/// Pillow reads 16-bit PNG samples through big-endian raw modes that keep
/// only the most significant byte.
fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

/// Converts a decoded image to RGB the way `convert_to_rgb` sees it.
fn to_rgb(img: DynamicImage) -> RgbImage {
    let (width, height) = (img.width(), img.height());
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => RgbImage::from_fn(width, height, |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            over_white(r, g, b, a)
        }),
        DynamicImage::ImageLuma8(l) => RgbImage::from_fn(width, height, |x, y| {
            let [v] = l.get_pixel(x, y).0;
            Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA8(la) => RgbImage::from_fn(width, height, |x, y| {
            let [v, a] = la.get_pixel(x, y).0;
            over_white(v, v, v, a)
        }),
        // Pillow opens 16-bit greyscale as "I;16"; its conversion to 8 bits
        // clamps (values above 255 become 255) rather than scaling.
        DynamicImage::ImageLuma16(l) => RgbImage::from_fn(width, height, |x, y| {
            let v = l.get_pixel(x, y).0[0].min(255) as u8;
            Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA16(la) => RgbImage::from_fn(width, height, |x, y| {
            let [v, a] = la.get_pixel(x, y).0.map(high_byte);
            over_white(v, v, v, a)
        }),
        DynamicImage::ImageRgb16(rgb) => RgbImage::from_fn(width, height, |x, y| {
            Rgb(rgb.get_pixel(x, y).0.map(high_byte))
        }),
        DynamicImage::ImageRgba16(rgba) => RgbImage::from_fn(width, height, |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0.map(high_byte);
            over_white(r, g, b, a)
        }),
        // Float images come only from formats this crate does not enable.
        other => other.to_rgb8(),
    }
}

/// Pillow's fixed-point precision for 8-bit resampling (`Resample.c`):
/// 32 bits minus 8 for the result and 2 for over/undershoot of the filter.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Keys' cubic convolution kernel with a = −0.5, written in the same
/// operation order as Pillow's `bicubic_filter` so that every double
/// rounds the same way.
fn bicubic_filter(x: f64) -> f64 {
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

/// Resampling weights for one axis, already in Pillow's fixed point.
struct Coefficients {
    /// Row length of `weights` (Pillow's `ksize`).
    ksize: usize,
    /// Per output index: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `out_size × ksize` fixed-point weights.
    weights: Vec<i32>,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full
    /// box (`in0 = 0`, `in1 = in_size`) and the bicubic filter.
    fn bicubic(in_size: u32, out_size: u32) -> Self {
        const SUPPORT: f64 = 2.0;
        // Pillow computes `in1 - in0` in float32; exact for any image size
        // the decoders accept (< 2^24).
        let scale = f64::from(in_size as f32) / f64::from(out_size);
        // Antialiasing: when shrinking, the kernel is stretched by the
        // scale factor so that every input pixel contributes.
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(out_size as usize);
        let mut weights = vec![0_i32; out_size as usize * ksize];
        let mut k = vec![0.0_f64; ksize];
        for xx in 0..out_size {
            let center = (f64::from(xx) + 0.5) * scale;
            // C's `(int)` truncates toward zero; then clamp to the image.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let taps = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0;
            for (x, slot) in k.iter_mut().enumerate().take(taps) {
                let w = bicubic_filter((x as f64 + xmin as f64 - center + 0.5) * inv_filterscale);
                *slot = w;
                ww += w;
            }
            let row = &mut weights[xx as usize * ksize..(xx as usize + 1) * ksize];
            for (dst, &w) in row.iter_mut().zip(&k).take(taps) {
                let w = if ww == 0.0 { w } else { w / ww };
                // Round half away from zero into 22-bit fixed point.
                let scaled = w * f64::from(1_u32 << PRECISION_BITS);
                *dst = if w < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            bounds.push((xmin as usize, taps));
        }
        Self {
            ksize,
            bounds,
            weights,
        }
    }

    /// Taps of output index `i`: first input index and weights.
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (min, n) = self.bounds[i];
        (min, &self.weights[i * self.ksize..i * self.ksize + n])
    }
}

/// Pillow's `clip8`: drop the fixed-point fraction and clamp to a byte.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The accumulator's start value: one half, so that the shift rounds.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass over input rows `rows` (Pillow's
/// `ImagingResampleHorizontal_8bpc`); the result has `rows.len()` rows.
fn resample_horizontal(
    src: &RgbImage,
    rows: std::ops::Range<u32>,
    coeffs: &Coefficients,
    out_w: u32,
) -> RgbImage {
    let in_row = src.width() as usize * 3;
    let raw = src.as_raw();
    let mut out = RgbImage::new(out_w, rows.end - rows.start);
    let out_row = out_w as usize * 3;
    for (oy, y) in rows.enumerate() {
        let line = &raw[y as usize * in_row..(y as usize + 1) * in_row];
        let dst = &mut out.as_mut()[oy * out_row..(oy + 1) * out_row];
        for (xx, px) in dst.chunks_exact_mut(3).enumerate() {
            let (xmin, k) = coeffs.taps(xx);
            let mut acc = [HALF; 3];
            for (x, &w) in k.iter().enumerate() {
                let p = (xmin + x) * 3;
                for c in 0..3 {
                    acc[c] += i32::from(line[p + c]) * w;
                }
            }
            for c in 0..3 {
                px[c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Vertical pass (Pillow's `ImagingResampleVertical_8bpc`); `offset` is the
/// index of `src`'s first row in the coordinates `coeffs` was built for.
fn resample_vertical(src: &RgbImage, coeffs: &Coefficients, offset: usize, out_h: u32) -> RgbImage {
    let row = src.width() as usize * 3;
    let raw = src.as_raw();
    let mut out = RgbImage::new(src.width(), out_h);
    for (yy, dst) in out.as_mut().chunks_exact_mut(row.max(1)).enumerate() {
        let (ymin, k) = coeffs.taps(yy);
        let first = ymin - offset;
        for (i, byte) in dst.iter_mut().enumerate() {
            let mut acc = HALF;
            for (y, &w) in k.iter().enumerate() {
                acc += i32::from(raw[(first + y) * row + i]) * w;
            }
            *byte = clip8(acc);
        }
    }
    out
}

/// Resizes to `size × size` exactly like Pillow 13.0's
/// `Image.resize((size, size), Resampling.BICUBIC)` (no `reducing_gap`).
///
/// Pillow's two-pass separable resampling (`libImaging/Resample.c`):
/// bicubic (a = −0.5) weights with the support widened by the down-scale
/// factor (antialiasing), normalised to sum 1, rounded to 22-bit fixed
/// point; each pass rounds and clamps to 8 bits, so the pass order changes
/// the result. A pass whose dimension is unchanged is skipped.
///
/// Pass order: Pillow 13 runs the vertical pass first when the height
/// shrinks by more than twice as many pixels as the width does
/// (`H − S > 0 && H − S > 2·(W − S)`), which includes every image taller
/// than wide that is shrunk; otherwise the horizontal pass runs first, on
/// only the input rows the vertical pass will read. Older Pillow (and the
/// "classic" scheme) always went horizontal first, which is why it only
/// disagreed on tall images.
pub fn resize_bicubic(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (size, size) {
        return img.clone();
    }
    if w == 0 || h == 0 || size == 0 {
        // Nothing to sample from (or into): Pillow refuses these; a black
        // image keeps this function total.
        return RgbImage::new(size, size);
    }
    let need_h = w != size;
    let need_v = h != size;
    let shrink_h = i64::from(h) - i64::from(size);
    let shrink_w = i64::from(w) - i64::from(size);
    let vertical_first = shrink_h > 0 && shrink_h > shrink_w * 2;
    if vertical_first {
        let vert = Coefficients::bicubic(h, size);
        let mid = resample_vertical(img, &vert, 0, size);
        if !need_h {
            return mid;
        }
        let horiz = Coefficients::bicubic(w, size);
        return resample_horizontal(&mid, 0..size, &horiz, size);
    }
    if !need_v {
        let horiz = Coefficients::bicubic(w, size);
        return resample_horizontal(img, 0..h, &horiz, size);
    }
    let vert = Coefficients::bicubic(h, size);
    if !need_h {
        return resample_vertical(img, &vert, 0, size);
    }
    // Only the input rows the vertical pass reads go through the
    // horizontal pass (Pillow's `ybox_first..ybox_last`).
    let first = vert.bounds.first().map_or(0, |b| b.0);
    let last = vert.bounds.last().map_or(h as usize, |b| b.0 + b.1);
    let horiz = Coefficients::bicubic(w, size);
    let mid = resample_horizontal(img, first as u32..last as u32, &horiz, size);
    resample_vertical(&mid, &vert, first, size)
}

/// `1/255` as Python writes it (and as `preprocessor_config.json` stores
/// `rescale_factor`), a float64.
const RESCALE_FACTOR: f64 = 0.003_921_568_627_450_98;

/// The normalised value of each byte, computed as transformers' PIL backend
/// does: `rescale` multiplies in float64 and casts to float32, `normalize`
/// subtracts and divides in float32 (mean and std cast to the image dtype).
fn normalised_lut() -> [f32; 256] {
    let mean = 0.5_f32;
    let std = 0.5_f32;
    std::array::from_fn(|v| {
        let rescaled = (v as f64 * RESCALE_FACTOR) as f32;
        (rescaled - mean) / std
    })
}

/// Preprocesses a batch for the vision tower: resize each image to
/// `size × size` with [`resize_bicubic`], rescale by 1/255, normalise with
/// mean 0.5 and std 0.5, channels first.
///
/// Returns a `[B, 3, size, size]` float32 CPU tensor equal bit-for-bit to
/// `SiglipImageProcessor`'s `pixel_values` on the PIL path.
pub fn pixel_values(images: &[RgbImage], size: u32) -> tch::Tensor {
    let lut = normalised_lut();
    let plane = size as usize * size as usize;
    let mut data = vec![0.0_f32; images.len() * 3 * plane];
    for (img, out) in images.iter().zip(data.chunks_exact_mut(3 * plane.max(1))) {
        let resized = resize_bicubic(img, size);
        for (i, px) in resized.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = lut[usize::from(px[c])];
            }
        }
    }
    let s = i64::from(size);
    // The element count is B·3·S·S by construction, so the reshape cannot fail.
    let batch = i64::try_from(images.len()).unwrap_or(i64::MAX);
    tch::Tensor::from_slice(&data).reshape([batch, 3, s, s])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random RGB image.
    fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        RgbImage::from_fn(w, h, |_, _| {
            let mut px = [0_u8; 3];
            for v in &mut px {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                *v = (s >> 24) as u8;
            }
            Rgb(px)
        })
    }

    fn golden_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
    }

    fn read_json(path: &Path) -> serde_json::Value {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("valid JSON")
    }

    /// Every source in `resize/cases.json` (plus Pillow's decode of the
    /// JPEG) resized to every size must equal Pillow 13's output byte for
    /// byte.
    #[test]
    fn resize_matches_pillow_on_every_golden_case() {
        let dir = golden_dir().join("resize");
        let cases = read_json(&dir.join("cases.json"));
        let jpeg = &cases["jpeg"];
        let mut all: Vec<(String, &serde_json::Value)> = cases["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| {
                (
                    c["source"].as_str().expect("source").to_owned(),
                    &c["outputs"],
                )
            })
            .collect();
        all.push((
            jpeg["decoded"].as_str().expect("decoded").to_owned(),
            &jpeg["outputs"],
        ));
        let mut checked = 0;
        for (source, outputs) in all {
            let img = load_image(&dir.join(&source)).expect("source");
            for out in outputs.as_array().expect("outputs") {
                let size = out["size"].as_u64().expect("size") as u32;
                let want =
                    load_image(&dir.join(out["file"].as_str().expect("file"))).expect("output");
                let got = resize_bicubic(&img, size);
                assert_eq!(got.dimensions(), want.dimensions(), "{source} -> {size}");
                let diff = got
                    .as_raw()
                    .iter()
                    .zip(want.as_raw())
                    .filter(|(a, b)| a != b)
                    .count();
                assert_eq!(
                    diff,
                    0,
                    "{source} ({}x{}) -> {size}: {diff} bytes differ",
                    img.width(),
                    img.height()
                );
                checked += 1;
            }
        }
        assert!(checked >= 39, "only {checked} resize cases found");
    }

    /// RGB, RGBA, L and P training images: conversion + resize equal the
    /// processor's uint8 pixels (after the resize, before rescale).
    #[test]
    fn conversion_and_resize_match_processor_pixels() {
        let values = read_json(&golden_dir().join("values.json"));
        let want = &values["processor"];
        let size = want["pixels_hw3"]["shape"][0].as_u64().expect("size") as u32;
        let data = want["pixels_hw3"]["data"].as_array().expect("pixels");
        let dir = golden_dir().join("data/train");
        let annotations =
            std::fs::read_to_string(dir.join("annotations.jsonl")).expect("annotations");
        let files: Vec<String> = annotations
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("jsonl")["image"]
                    .as_str()
                    .expect("image")
                    .to_owned()
            })
            .collect();
        assert_eq!(files.len(), data.len());
        for (i, (file, bytes)) in files.iter().zip(data).enumerate() {
            let mode = want["image_modes"][i].as_str().unwrap_or("?");
            let want_bytes: Vec<u8> = bytes
                .as_array()
                .expect("bytes")
                .iter()
                .map(|v| v.as_u64().expect("u8") as u8)
                .collect();
            let img = load_image(&dir.join(file)).expect("image");
            let got = resize_bicubic(&img, size);
            let diff = got
                .as_raw()
                .iter()
                .zip(&want_bytes)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(got.as_raw().len(), want_bytes.len(), "{file}");
            assert_eq!(diff, 0, "{file} (mode {mode}): {diff} bytes differ");
        }
    }

    /// The validation split (two PNGs and the JPEG photo): every image,
    /// JPEG included, must give the processor's pixels exactly.
    #[test]
    fn valid_split_pixels_match_including_jpeg() {
        let values = read_json(&golden_dir().join("values.json"));
        let valid = &values["valid"];
        let size = values["processor"]["pixels_hw3"]["shape"][0]
            .as_u64()
            .expect("size") as u32;
        let dir = golden_dir().join("data/valid");
        for (file, bytes) in valid["images"]
            .as_array()
            .expect("images")
            .iter()
            .zip(valid["pixels_hw3"].as_array().expect("pixels"))
        {
            let file = file.as_str().expect("file");
            let want: Vec<u8> = bytes
                .as_array()
                .expect("bytes")
                .iter()
                .map(|v| v.as_u64().expect("u8") as u8)
                .collect();
            let want = RgbImage::from_raw(size, size, want).expect("S×S×3 bytes");
            let got = resize_bicubic(&load_image(&dir.join(file)).expect("image"), size);
            let (n, max) = byte_diff(&got, &want);
            assert_eq!(n, 0, "{file}: {n} bytes differ (max {max})");
        }
    }

    /// Byte differences between two equally sized images: (count, max).
    fn byte_diff(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .filter(|(x, y)| x != y)
            .fold((0, 0), |(n, m), (x, y)| (n + 1, m.max(x.abs_diff(*y))))
    }

    /// JPEG decodes to Pillow's (libjpeg-turbo's) bytes exactly, and so do
    /// its resized versions.
    #[test]
    fn jpeg_decodes_like_pillow() {
        let dir = golden_dir().join("resize");
        let ours = load_image(&dir.join("photo.jpg")).expect("jpeg");
        let pillow = load_image(&dir.join("photo.decoded.png")).expect("png");
        assert_eq!(ours.dimensions(), pillow.dimensions());
        assert_eq!(
            byte_diff(&ours, &pillow),
            (0, 0),
            "decoded JPEG differs from Pillow"
        );
        for out in read_json(&dir.join("cases.json"))["jpeg"]["outputs"]
            .as_array()
            .expect("outputs")
        {
            let size = out["size"].as_u64().expect("size") as u32;
            let want = load_image(&dir.join(out["file"].as_str().expect("file"))).expect("output");
            assert_eq!(
                byte_diff(&resize_bicubic(&ours, size), &want),
                (0, 0),
                "JPEG resized to {size}"
            );
        }
    }

    #[test]
    fn a_truncated_jpeg_is_an_error_naming_the_file_not_a_panic() {
        let dir = tempfile::tempdir().expect("tmp");
        let bytes = std::fs::read(golden_dir().join("resize/photo.jpg")).expect("jpeg");
        let path = dir.path().join("cut.jpg");
        std::fs::write(&path, &bytes[..40]).expect("write");
        let err = load_image(&path).expect_err("truncated JPEG");
        assert!(err.to_string().contains("cut.jpg"), "{err}");
    }

    /// `bytes` with the first JPEG frame header's size replaced.
    fn with_declared_size(mut bytes: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
        let sof = bytes
            .windows(2)
            .position(|w| w[0] == 0xFF && w[1] == 0xC0)
            .expect("a baseline frame header");
        bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        bytes
    }

    #[test]
    fn a_jpeg_declaring_too_many_pixels_is_refused_before_decoding() {
        let photo = std::fs::read(golden_dir().join("resize/photo.jpg")).expect("jpeg");
        // 1.8 KB claiming 65500 × 65500: decoding it would take 13 GB.
        let bomb = with_declared_size(photo.clone(), 65_500, 65_500);
        let err = decode_image(&bomb).expect_err("bomb");
        assert!(
            matches!(
                err,
                DecodeError::TooLarge {
                    width: 65_500,
                    height: 65_500
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("178956970"), "{err}");
        // Pillow's limit is inclusive: 13377 × 13378 = 178,957,506 > limit;
        // 13377 × 13377 = 178,944,129 passes the check (not decoded here).
        assert!(check_pixels(13_377, 13_378).is_err());
        assert!(check_pixels(13_377, 13_377).is_ok());
        assert!(check_pixels(0, 178_956_970).is_ok());
        assert!(check_pixels(0, 178_956_971).is_err());
    }

    #[test]
    fn other_formats_declaring_too_many_pixels_are_refused_before_decoding() {
        // A BMP whose header claims 20000 × 20000 and whose data is 12 bytes.
        let mut bmp = Vec::new();
        RgbImage::new(2, 2)
            .write_to(&mut Cursor::new(&mut bmp), image::ImageFormat::Bmp)
            .expect("bmp");
        bmp[18..22].copy_from_slice(&20_000_i32.to_le_bytes());
        bmp[22..26].copy_from_slice(&20_000_i32.to_le_bytes());
        let err = decode_image(&bmp).expect_err("bomb");
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_jpeg_cut_short_is_refused_as_truncated() {
        let photo = std::fs::read(golden_dir().join("resize/photo.jpg")).expect("jpeg");
        let cut = &photo[..photo.len() - 200];
        let err = decode_image(cut).expect_err("truncated");
        assert!(
            matches!(err, DecodeError::Jpeg(JpegError::Truncated { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
        // The whole file still decodes.
        assert!(decode_image(&photo).is_ok());
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(40, 224), (160, 64), (100, 33), (7, 7), (3000, 224)] {
            let c = Coefficients::bicubic(i, o);
            for xx in 0..o as usize {
                let (_, k) = c.taps(xx);
                let sum: i64 = k.iter().map(|&w| i64::from(w)).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= i64::try_from(k.len()).unwrap(),
                    "{i}->{o} @{xx}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 91, Rgb([10, 128, 250]));
        for s in [16, 64, 224] {
            let out = resize_bicubic(&img, s);
            assert_eq!(out.dimensions(), (s, s));
            assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
        }
    }

    #[test]
    fn same_size_is_a_copy_and_one_axis_is_skipped() {
        let img = noise(64, 64, 1);
        assert_eq!(resize_bicubic(&img, 64), img);
        // Width already right: only the vertical pass runs, so each column
        // depends only on that column.
        let tall = noise(32, 80, 2);
        let a = resize_bicubic(&tall, 32);
        let mut changed = tall.clone();
        changed.put_pixel(5, 40, Rgb([0, 0, 0]));
        changed.put_pixel(5, 41, Rgb([255, 255, 255]));
        let b = resize_bicubic(&changed, 32);
        for y in 0..32 {
            for x in 0..32 {
                if x != 5 {
                    assert_eq!(a.get_pixel(x, y), b.get_pixel(x, y));
                }
            }
        }
    }

    #[test]
    fn over_white_matches_pillow_endpoints() {
        assert_eq!(over_white(1, 2, 3, 0).0, [255, 255, 255]);
        assert_eq!(over_white(1, 2, 3, 255).0, [1, 2, 3]);
        // Half transparent black on white: 255·(255−128)/255 ≈ 127.
        assert_eq!(over_white(0, 0, 0, 128).0, [127, 127, 127]);
    }

    #[test]
    fn pixel_values_shape_and_range() {
        let imgs = vec![
            noise(20, 30, 3),
            RgbImage::from_pixel(5, 5, Rgb([0, 255, 128])),
        ];
        let t = pixel_values(&imgs, 16);
        assert_eq!(t.size(), vec![2, 3, 16, 16]);
        assert_eq!(t.kind(), tch::Kind::Float);
        let v = |c: i64| t.double_value(&[1, c, 3, 3]);
        assert!((v(0) + 1.0).abs() < 1e-7);
        assert!((v(1) - 1.0).abs() < 1e-7);
        assert!((v(2) - f64::from((128.0_f64 / 255.0) as f32 * 2.0 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn corrupt_and_missing_files_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("broken.png");
        // A PNG signature followed by garbage: detected as PNG, fails to decode.
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        bytes.extend_from_slice(&[7; 64]);
        std::fs::write(&bad, &bytes).expect("write");
        let err = load_image(&bad).expect_err("corrupt");
        assert!(matches!(err, ImageError::Decode { .. }));
        assert!(err.to_string().contains("broken.png"), "{err}");

        let text = dir.path().join("notes.jpg");
        std::fs::write(&text, "not an image").expect("write");
        let err = load_image(&text).expect_err("not an image");
        assert!(err.to_string().contains("notes.jpg"), "{err}");

        let missing = dir.path().join("missing.webp");
        let err = load_image(&missing).expect_err("missing");
        assert!(matches!(err, ImageError::Read { .. }));
        assert!(err.to_string().contains("missing.webp"), "{err}");
    }

    #[test]
    fn decodes_by_content_not_extension() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("really_a_png.jpg");
        let img = noise(9, 4, 4);
        img.save_with_format(&path, image::ImageFormat::Png)
            .expect("save");
        assert_eq!(load_image(&path).expect("load"), img);
    }

    #[test]
    fn alpha_and_grey_conversions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rgba = image::RgbaImage::from_fn(4, 1, |x, _| {
            image::Rgba([200, 100, 0, [0, 64, 128, 255][x as usize]])
        });
        let rgba_path = dir.path().join("a.png");
        rgba.save(&rgba_path).expect("save");
        let got = load_image(&rgba_path).expect("load");
        for x in 0..4 {
            let [r, g, b, a] = rgba.get_pixel(x, 0).0;
            assert_eq!(got.get_pixel(x, 0), &over_white(r, g, b, a));
        }
        let grey = image::GrayImage::from_fn(3, 2, |x, y| image::Luma([(x * 40 + y * 7) as u8]));
        let grey_path = dir.path().join("g.png");
        grey.save(&grey_path).expect("save");
        let got = load_image(&grey_path).expect("load");
        for (x, y, px) in got.enumerate_pixels() {
            let v = grey.get_pixel(x, y).0[0];
            assert_eq!(px.0, [v, v, v]);
        }
    }
}
