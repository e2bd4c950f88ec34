//! A detection example as the gallery draws it: the image, downscaled and
//! embedded as a JPEG data URI, under an SVG overlay of the reference and
//! predicted boxes.
//!
//! The overlay's coordinates are the pixels of the image as the model saw
//! it (`load_image`: no EXIF rotation), so a `<loc>` box lands where
//! `loc_to_pixels` puts it for that size; the embedded thumbnail is only
//! stretched over them.

use std::fmt::Write as _;
use std::io::Cursor;
use std::path::Path;

use base64::Engine as _;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;

use super::html::escape;
use crate::metrics::detection::{loc_to_pixels, parse_detections};
use crate::model::preprocess::image::{ImageError, load_image};

/// The thumbnail's longest side, in pixels.
pub const THUMBNAIL: u32 = 320;
const JPEG_QUALITY: u8 = 80;
/// Reference boxes: blue, dashed; predictions: orange, solid (told apart
/// without colour too).
pub const REFERENCE_COLOUR: &str = "#1f77b4";
pub const PREDICTION_COLOUR: &str = "#ff7f0e";

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot encode the thumbnail of {}: {source}", path.display())]
    Encode {
        path: std::path::PathBuf,
        source: image::ImageError,
    },
}

/// An image ready to embed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thumbnail {
    /// The image's own size, which the boxes are relative to.
    pub width: u32,
    pub height: u32,
    /// `data:image/jpeg;base64,…`, at most [`THUMBNAIL`] px on its long side.
    pub data_uri: String,
}

/// Reads `path` and makes its thumbnail.
pub fn thumbnail(path: &Path) -> Result<Thumbnail, OverlayError> {
    let image = load_image(path)?;
    let (width, height) = image.dimensions();
    let long = width.max(height).max(1);
    let small = if long > THUMBNAIL {
        let scale =
            |side: u32| ((u64::from(side) * u64::from(THUMBNAIL)) / u64::from(long)).max(1) as u32;
        image::imageops::resize(&image, scale(width), scale(height), FilterType::Triangle)
    } else {
        image
    };
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut Cursor::new(&mut jpeg), JPEG_QUALITY)
        .encode_image(&small)
        .map_err(|source| OverlayError::Encode {
            path: path.to_owned(),
            source,
        })?;
    Ok(Thumbnail {
        width,
        height,
        data_uri: format!(
            "data:image/jpeg;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&jpeg)
        ),
    })
}

/// How a panel shows its image: embedded (with an id to reuse), or a
/// reuse of the one embedded under `id` by an earlier panel of the page.
#[derive(Clone, Copy, Debug)]
pub enum Backdrop<'a> {
    Embed { id: &'a str, image: &'a Thumbnail },
    Reuse { id: &'a str },
}

fn coord(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_owned)
}

/// One panel: the image of `width` × `height` with the boxes of
/// `reference` and `prediction` (detection strings) drawn over it.
pub fn panel(
    backdrop: Backdrop,
    width: u32,
    height: u32,
    reference: &str,
    prediction: &str,
) -> String {
    let (w, h) = (f64::from(width), f64::from(height));
    // About 13 px once the panel is scaled to a 260 px card.
    let font = (w.max(h) / 20.0).max(1.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"reference and predicted boxes\">"
    );
    match backdrop {
        Backdrop::Embed { id, image } => {
            let _ = write!(
                svg,
                "<image id=\"{}\" width=\"{width}\" height=\"{height}\" preserveAspectRatio=\"none\" href=\"{}\"/>",
                escape(id),
                image.data_uri
            );
        }
        Backdrop::Reuse { id } => {
            let _ = write!(svg, "<use href=\"#{}\"/>", escape(id));
        }
    }
    for (text, class, colour, dash, label_at_top) in [
        (
            reference,
            "reference",
            REFERENCE_COLOUR,
            " stroke-dasharray=\"6 3\"",
            true,
        ),
        (prediction, "prediction", PREDICTION_COLOUR, "", false),
    ] {
        let _ = write!(svg, "<g class=\"{class}\">");
        for object in parse_detections(text).objects {
            let b = loc_to_pixels(object.bbox, width, height);
            let _ = write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} vector-effect=\"non-scaling-stroke\"/>",
                coord(b.x_min),
                coord(b.y_min),
                coord((b.x_max - b.x_min).max(0.0)),
                coord((b.y_max - b.y_min).max(0.0)),
            );
            // Reference labels inside the top edge, predicted ones inside
            // the bottom edge: a matched pair stays readable.
            let y = if label_at_top {
                b.y_min + font
            } else {
                b.y_max - font * 0.25
            };
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" font-size=\"{}\" fill=\"{colour}\" stroke=\"#fff\" stroke-width=\"{}\" paint-order=\"stroke\" font-family=\"sans-serif\">{}</text>",
                coord(b.x_min + font * 0.2),
                coord(y.clamp(font, h)),
                coord(font),
                coord(font / 5.0),
                escape(&object.label)
            );
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::detection::LocBox;

    /// The `(x, y, width, height)` of every `<rect>` in `class`'s group.
    fn rects(svg: &str, class: &str) -> Vec<[f64; 4]> {
        let group = svg
            .split(&format!("<g class=\"{class}\">"))
            .nth(1)
            .unwrap()
            .split("</g>")
            .next()
            .unwrap();
        group
            .split("<rect ")
            .skip(1)
            .map(|r| {
                let r = r.split("/>").next().unwrap();
                let attr = |name: &str| -> f64 {
                    r.strip_prefix(&format!("{name}=\""))
                        .or_else(|| r.split(&format!(" {name}=\"")).nth(1))
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                [attr("x"), attr("y"), attr("width"), attr("height")]
            })
            .collect()
    }

    #[test]
    fn boxes_land_on_the_pixels_of_their_loc_tokens() {
        let (w, h) = (640, 480);
        let reference = "<loc0256><loc0128><loc0768><loc0512> pallet ; <loc0000><loc0000><loc1023><loc1023> floor";
        let prediction = "<loc0300><loc0100><loc0700><loc0500> pallet ; <loc12> broken";
        let svg = panel(Backdrop::Reuse { id: "g1" }, w, h, reference, prediction);
        let expect = |y1, x1, y2, x2| {
            let b = loc_to_pixels(
                LocBox {
                    y_min: y1,
                    x_min: x1,
                    y_max: y2,
                    x_max: x2,
                },
                w,
                h,
            );
            [b.x_min, b.y_min, b.x_max - b.x_min, b.y_max - b.y_min]
        };
        let close = |a: &[[f64; 4]], b: &[[f64; 4]]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(a, b)| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 0.05))
        };
        let got = rects(&svg, "reference");
        // Bins 128..512 of 1024 across 640 px: x 80 to 320.
        assert!(close(&got[..1], &[[80.0, 120.0, 240.0, 240.0]]), "{got:?}");
        assert!(
            close(
                &got,
                &[expect(256, 128, 768, 512), expect(0, 0, 1023, 1023)]
            ),
            "{got:?}"
        );
        let got = rects(&svg, "prediction");
        assert!(close(&got, &[expect(300, 100, 700, 500)]), "{got:?}");
        assert!(svg.contains("viewBox=\"0 0 640 480\"") && svg.contains(">pallet</text>"));
        assert!(svg.contains("<use href=\"#g1\"/>"));
    }

    #[test]
    fn thumbnails_keep_the_original_size_and_shrink_the_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.png");
        image::RgbImage::from_fn(800, 200, |x, _| image::Rgb([(x % 256) as u8, 0, 0]))
            .save(&path)
            .unwrap();
        let t = thumbnail(&path).unwrap();
        assert_eq!((t.width, t.height), (800, 200));
        let b64 = t.data_uri.strip_prefix("data:image/jpeg;base64,").unwrap();
        let jpeg = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let small = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((small.width(), small.height()), (THUMBNAIL, 80));
        let missing = thumbnail(&dir.path().join("gone.jpg"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("gone.jpg"), "{missing}");
    }
}
