//! PaliGemma detection strings and COCO-style box mAP over them.
//!
//! A detection string is objects joined by `;` (normally `" ; "`), each
//! `<locY1><locX1><locY2><locX2> label`: four loc tokens `y_min, x_min,
//! y_max, x_max` as bins 0…1023 of the normalised coordinate, then the label.
//! A segmentation object has 16 `<segNNN>` codes (0…127) between the locs and
//! the label; they are parsed and kept but play no part in box mAP. Spaces
//! between tokens and around `;` are tolerated; empty pieces (an empty string,
//! a trailing `;`) are skipped. Labels are compared with runs of whitespace
//! collapsed to one space, case-sensitively.
//!
//! # mAP conventions
//!
//! pycocotools' `COCOeval` (bbox, area range `all`, `maxDets` 100), given
//! scores that reproduce the ranking below; see [`super::average_precision`]
//! for the pinned source.
//!
//! * **Ranking.** Generated boxes carry no scores, so an object's confidence
//!   is its position in its own output: every example's first object ranks
//!   above every second object, and so on; ties between examples go to the
//!   earlier example.
//! * **Matching.** Per class and `IoU` threshold, in that ranking, each
//!   predicted box takes the unmatched reference box of the same class and
//!   image with the highest `IoU`, if that `IoU` is ≥ the threshold (true
//!   positive); otherwise it is a false positive. A duplicate of a matched
//!   box is therefore a false positive. Equal `IoU`s go to the later
//!   reference, as in `COCOeval.evaluateImg`.
//! * **Detections per image.** Only the first 100 predicted objects of each
//!   class in an example count (COCO's `maxDets`); later ones are dropped,
//!   neither true nor false positives.
//! * **AP.** COCO's 101-point interpolation: the monotone precision envelope
//!   sampled at recalls 0, 0.01, …, 1 and averaged
//!   ([`coco_average_precision`]), not the all-point area under it.
//! * **Averaging.** Over the classes that occur in the references; a
//!   reference class never predicted scores AP 0. Predicted labels that occur
//!   in no reference are ignored, as COCO ignores categories outside its
//!   list. `map` is the mean over the ten `IoU` thresholds 0.50:0.05:0.95
//!   (numpy's `linspace` values, [`IOU_THRESHOLDS`]), `map50` the value at
//!   0.50. A split with no reference objects scores 1
//!   if nothing was predicted either, else 0.
//! * `IoU` is computed on bins, which equals pixel `IoU` since it does not change
//!   under per-axis scaling. Boxes with `max < min` have zero area.
//!
//! Malformed predicted objects are skipped and counted
//! ([`DetectionScores::parse_errors`]). Malformed reference objects are
//! skipped here too, but the dataset checks (`data::check`) refuse them
//! before training or evaluation starts.

use std::collections::BTreeMap;
use std::fmt;

pub use super::average_precision::IOU_THRESHOLDS;
use super::average_precision::{MAX_DETECTIONS, coco_average_precision};

/// Number of `<locNNNN>` bins per axis.
pub const LOC_BINS: u16 = 1024;
/// Number of `<segNNN>` codes (the VQ-VAE codebook size).
pub const SEG_CODES: u16 = 128;
/// `<segNNN>` tokens per segmentation object.
pub const SEG_TOKENS: usize = 16;

/// A box as four loc bins (0…1023 each), in PaliGemma's token order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocBox {
    pub y_min: u16,
    pub x_min: u16,
    pub y_max: u16,
    pub x_max: u16,
}

impl LocBox {
    /// Area in bin units; zero for an inverted box.
    pub fn area(&self) -> f64 {
        let h = f64::from(self.y_max) - f64::from(self.y_min);
        let w = f64::from(self.x_max) - f64::from(self.x_min);
        h.max(0.0) * w.max(0.0)
    }

    /// Intersection over union; 0 when the union is empty.
    pub fn iou(&self, other: &LocBox) -> f64 {
        let h = f64::from(self.y_max.min(other.y_max)) - f64::from(self.y_min.max(other.y_min));
        let w = f64::from(self.x_max.min(other.x_max)) - f64::from(self.x_min.max(other.x_min));
        let intersection = h.max(0.0) * w.max(0.0);
        let union = self.area() + other.area() - intersection;
        if union > 0.0 {
            intersection / union
        } else {
            0.0
        }
    }
}

impl fmt::Display for LocBox {
    /// The token form, `<loc0100><loc0200><loc0300><loc0400>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<loc{:04}><loc{:04}><loc{:04}><loc{:04}>",
            self.y_min, self.x_min, self.y_max, self.x_max
        )
    }
}

/// A box in pixels of the original image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelBox {
    pub x_min: f64,
    pub y_min: f64,
    pub x_max: f64,
    pub y_max: f64,
}

impl fmt::Display for PixelBox {
    /// Rounded to whole pixels: `(x_min, y_min)-(x_max, y_max)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "({:.0}, {:.0})-({:.0}, {:.0})",
            self.x_min, self.y_min, self.x_max, self.y_max
        )
    }
}

/// Pixel coordinates of `bins` in a `width` × `height` image, as
/// `bin / 1024 × size` (the HF Space parser's convention, docs/model-reference.md §6; y bins
/// scale by the height, x bins by the width). Not rounded.
pub fn loc_to_pixels(bins: LocBox, width: u32, height: u32) -> PixelBox {
    let scale = |bin: u16, size: u32| f64::from(bin) / f64::from(LOC_BINS) * f64::from(size);
    PixelBox {
        x_min: scale(bins.x_min, width),
        y_min: scale(bins.y_min, height),
        x_max: scale(bins.x_max, width),
        y_max: scale(bins.y_max, height),
    }
}

/// One parsed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectedObject {
    pub bbox: LocBox,
    /// The 16 VQ-VAE codes of a segmentation object.
    pub seg: Option<[u8; SEG_TOKENS]>,
    /// With runs of whitespace collapsed to one space.
    pub label: String,
}

/// An object that did not parse, with its text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}`: {kind}")]
pub struct ObjectParseError {
    /// The object as given, trimmed.
    pub text: String,
    pub kind: ObjectParseErrorKind,
}

/// What was wrong with an object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObjectParseErrorKind {
    /// Fewer than four `<locNNNN>` tokens at the start.
    #[error("expected 4 <locNNNN> tokens, found {0}")]
    MissingLocs(usize),
    /// A `<loc…>` or `<seg…>` token that is not `<loc` + 4 digits + `>` or
    /// `<seg` + 3 digits + `>`.
    #[error("malformed token `{0}`: PaliGemma's are <locNNNN> (4 digits) and <segNNN> (3 digits)")]
    BadToken(String),
    /// A loc bin above 1023.
    #[error("loc bin {0} is out of range 0..=1023")]
    LocOutOfRange(u32),
    /// A seg code above 127.
    #[error("seg code {0} is out of range 0..=127")]
    SegOutOfRange(u32),
    /// Seg tokens present but not exactly 16.
    #[error("expected 0 or 16 <segNNN> tokens, found {0}")]
    SegCount(usize),
    /// Nothing after the tokens.
    #[error("missing label")]
    MissingLabel,
    /// A loc or seg token after the box, e.g. two objects without `;`.
    #[error("unexpected token in label `{0}`")]
    StrayToken(String),
}

/// The objects of one detection string and the pieces that did not parse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedDetections {
    /// In order of appearance.
    pub objects: Vec<DetectedObject>,
    pub errors: Vec<ObjectParseError>,
}

impl ParsedDetections {
    /// Whether any object carries seg codes.
    pub fn has_segmentation(&self) -> bool {
        self.objects.iter().any(|o| o.seg.is_some())
    }
}

/// Parses a whole detection or segmentation string (see the module docs).
pub fn parse_detections(text: &str) -> ParsedDetections {
    let mut parsed = ParsedDetections::default();
    for piece in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        match parse_object(piece) {
            Ok(object) => parsed.objects.push(object),
            Err(error) => parsed.errors.push(error),
        }
    }
    parsed
}

/// Parses one object: 4 loc tokens, optionally 16 seg tokens, a label.
pub fn parse_object(text: &str) -> Result<DetectedObject, ObjectParseError> {
    let text = text.trim();
    let error = |kind| ObjectParseError {
        text: text.to_owned(),
        kind,
    };
    let mut rest = text;
    let mut locs = [0u16; 4];
    for (found, slot) in locs.iter_mut().enumerate() {
        let Some((bin, after)) = take_token(rest, "loc", 4).map_err(error)? else {
            return Err(error(ObjectParseErrorKind::MissingLocs(found)));
        };
        *slot = u16::try_from(bin)
            .ok()
            .filter(|b| *b < LOC_BINS)
            .ok_or_else(|| error(ObjectParseErrorKind::LocOutOfRange(bin)))?;
        rest = after;
    }
    let mut seg = Vec::new();
    while let Some((code, after)) = take_token(rest, "seg", 3).map_err(error)? {
        let code = u8::try_from(code)
            .ok()
            .filter(|c| u16::from(*c) < SEG_CODES)
            .ok_or_else(|| error(ObjectParseErrorKind::SegOutOfRange(code)))?;
        seg.push(code);
        rest = after;
    }
    let seg = match seg.len() {
        0 => None,
        _ => Some(
            <[u8; SEG_TOKENS]>::try_from(seg.as_slice())
                .map_err(|_| error(ObjectParseErrorKind::SegCount(seg.len())))?,
        ),
    };
    let label = rest.split_whitespace().collect::<Vec<_>>().join(" ");
    if label.is_empty() {
        return Err(error(ObjectParseErrorKind::MissingLabel));
    }
    if label.contains("<loc") || label.contains("<seg") {
        return Err(error(ObjectParseErrorKind::StrayToken(label)));
    }
    let [y_min, x_min, y_max, x_max] = locs;
    Ok(DetectedObject {
        bbox: LocBox {
            y_min,
            x_min,
            y_max,
            x_max,
        },
        seg,
        label,
    })
}

/// Takes `<{name}DIGITS>` (after optional whitespace) from the start of
/// `text`, with exactly `width` digits: `<loc0012>`, `<seg007>`, the only
/// spellings the tokenizer has (`<loc12>` is plain text to it).
/// `Ok(None)` when `text` does not start with `<{name}`.
fn take_token<'a>(
    text: &'a str,
    name: &str,
    width: usize,
) -> Result<Option<(u32, &'a str)>, ObjectParseErrorKind> {
    let text = text.trim_start();
    let Some(after_name) = text.strip_prefix('<').and_then(|t| t.strip_prefix(name)) else {
        return Ok(None);
    };
    let bad = || {
        let end = text.find('>').map_or(text.len(), |i| i + 1);
        ObjectParseErrorKind::BadToken(text[..end].to_owned())
    };
    let (digits, after) = after_name.split_once('>').ok_or_else(bad)?;
    if digits.len() != width || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let value = digits.parse::<u32>().map_err(|_| bad())?;
    Ok(Some((value, after)))
}

/// Box mAP and parse errors of a finished split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectionScores {
    /// Mean AP over `IoU` 0.50:0.05:0.95; higher is better.
    pub map: f64,
    /// AP at `IoU` 0.50; higher is better.
    pub map50: f64,
    /// AP at `IoU` 0.75; higher is better.
    pub map75: f64,
    /// Predicted objects that did not parse; lower is better.
    pub parse_errors: u64,
}

#[derive(Clone, Debug)]
struct RankedBox {
    /// Position in its example's output.
    rank: usize,
    example: usize,
    bbox: LocBox,
}

#[derive(Clone, Debug, Default)]
struct ClassBoxes {
    /// Reference boxes per example.
    references: BTreeMap<usize, Vec<LocBox>>,
    predictions: Vec<RankedBox>,
}

/// Boxes of every example seen so far, grouped by label.
#[derive(Clone, Debug, Default)]
pub struct DetectionAccumulator {
    examples: usize,
    parse_errors: u64,
    predicted_objects: u64,
    classes: BTreeMap<String, ClassBoxes>,
}

impl DetectionAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one (prediction, reference) pair of detection strings.
    pub fn add(&mut self, prediction: &str, reference: &str) {
        let example = self.examples;
        self.examples += 1;
        for object in parse_detections(reference).objects {
            self.classes
                .entry(object.label)
                .or_default()
                .references
                .entry(example)
                .or_default()
                .push(object.bbox);
        }
        let predicted = parse_detections(prediction);
        self.parse_errors += predicted.errors.len() as u64;
        self.predicted_objects += predicted.objects.len() as u64;
        for (rank, object) in predicted.objects.into_iter().enumerate() {
            let predictions = &mut self.classes.entry(object.label).or_default().predictions;
            // This example's boxes of the class are the last ones pushed.
            let kept = predictions
                .iter()
                .rev()
                .take_while(|p| p.example == example)
                .count();
            if kept < MAX_DETECTIONS {
                predictions.push(RankedBox {
                    rank,
                    example,
                    bbox: object.bbox,
                });
            }
        }
    }

    /// How many pairs were added.
    pub fn examples(&self) -> usize {
        self.examples
    }

    /// AP of every reference class at each of [`IOU_THRESHOLDS`].
    pub fn class_ap(&self) -> BTreeMap<&str, [f64; IOU_THRESHOLDS.len()]> {
        self.classes
            .iter()
            .filter(|(_, boxes)| !boxes.references.is_empty())
            .map(|(label, boxes)| (label.as_str(), boxes.average_precisions()))
            .collect()
    }

    /// The scores, or `None` before any pair was added.
    pub fn finish(&self) -> Option<DetectionScores> {
        if self.examples == 0 {
            return None;
        }
        let per_class = self.class_ap();
        let per_threshold: Vec<f64> = if per_class.is_empty() {
            let score = if self.predicted_objects == 0 {
                1.0
            } else {
                0.0
            };
            vec![score; IOU_THRESHOLDS.len()]
        } else {
            (0..IOU_THRESHOLDS.len())
                .map(|t| per_class.values().map(|ap| ap[t]).sum::<f64>() / per_class.len() as f64)
                .collect()
        };
        Some(DetectionScores {
            map: per_threshold.iter().sum::<f64>() / per_threshold.len() as f64,
            map50: per_threshold[0],
            map75: per_threshold[5],
            parse_errors: self.parse_errors,
        })
    }
}

impl ClassBoxes {
    fn average_precisions(&self) -> [f64; IOU_THRESHOLDS.len()] {
        let total: usize = self.references.values().map(Vec::len).sum();
        let mut ranked: Vec<&RankedBox> = self.predictions.iter().collect();
        ranked.sort_by_key(|p| (p.rank, p.example));
        // IoU of each ranked prediction with each reference box of its image.
        let ious: Vec<Vec<f64>> = ranked
            .iter()
            .map(|p| {
                self.references
                    .get(&p.example)
                    .map(|refs| refs.iter().map(|r| p.bbox.iou(r)).collect())
                    .unwrap_or_default()
            })
            .collect();
        IOU_THRESHOLDS.map(|threshold| {
            let mut matched: BTreeMap<usize, Vec<bool>> = self
                .references
                .iter()
                .map(|(example, refs)| (*example, vec![false; refs.len()]))
                .collect();
            let hits: Vec<bool> = ranked
                .iter()
                .zip(&ious)
                .map(|(p, ious)| {
                    let Some(taken) = matched.get_mut(&p.example) else {
                        return false;
                    };
                    let best = ious
                        .iter()
                        .enumerate()
                        .filter(|(i, iou)| !taken[*i] && **iou >= threshold)
                        .max_by(|a, b| a.1.total_cmp(b.1));
                    match best {
                        Some((i, _)) => {
                            taken[i] = true;
                            true
                        }
                        None => false,
                    }
                })
                .collect();
            coco_average_precision(&hits, total)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn scores(pairs: &[(&str, &str)]) -> DetectionScores {
        let mut acc = DetectionAccumulator::new();
        for (p, r) in pairs {
            acc.add(p, r);
        }
        acc.finish().expect("pairs were added")
    }

    fn object(y1: u16, x1: u16, y2: u16, x2: u16, label: &str) -> String {
        let bbox = LocBox {
            y_min: y1,
            x_min: x1,
            y_max: y2,
            x_max: x2,
        };
        format!("{bbox} {label}")
    }

    #[test]
    fn parses_boxes_and_segmentation() {
        let seg = (0..16)
            .map(|i| format!("<seg{:03}>", i * 8))
            .collect::<Vec<_>>()
            .concat();
        let text = format!(
            "<loc0100><loc0200><loc0300><loc0400> traffic  light ;  <loc0000> <loc0001><loc1023><loc0010>{seg} cat;"
        );
        let parsed = parse_detections(&text);
        assert_eq!(parsed.errors, []);
        assert_eq!(parsed.objects.len(), 2);
        assert_eq!(
            parsed.objects[0].bbox,
            LocBox {
                y_min: 100,
                x_min: 200,
                y_max: 300,
                x_max: 400
            }
        );
        assert_eq!(parsed.objects[0].label, "traffic light");
        assert_eq!(parsed.objects[0].seg, None);
        assert_eq!(parsed.objects[1].label, "cat");
        assert_eq!(parsed.objects[1].seg.map(|s| s[15]), Some(120));
        assert!(parsed.has_segmentation());
        assert_eq!(parse_detections("   "), ParsedDetections::default());
    }

    #[test]
    fn malformed_objects_are_errors() {
        let kinds = |text: &str| -> Vec<ObjectParseErrorKind> {
            parse_detections(text)
                .errors
                .into_iter()
                .map(|e| e.kind)
                .collect()
        };
        assert_eq!(kinds("a cat"), [ObjectParseErrorKind::MissingLocs(0)]);
        assert_eq!(
            kinds("<loc0001><loc0002><loc0003> cat"),
            [ObjectParseErrorKind::MissingLocs(3)]
        );
        assert_eq!(
            kinds("<loc0001><loc0002><loc0003><loc1024> cat"),
            [ObjectParseErrorKind::LocOutOfRange(1024)]
        );
        assert_eq!(
            kinds("<loc0001><loc0002><loc0003><locxy> cat"),
            [ObjectParseErrorKind::BadToken("<locxy>".into())]
        );
        // The tokenizer has only 4-digit locs and 3-digit segs.
        assert_eq!(
            kinds("<loc0256><loc12><loc0784><loc0736> square"),
            [ObjectParseErrorKind::BadToken("<loc12>".into())]
        );
        assert_eq!(
            kinds("<loc0256><loc00012><loc0784><loc0736> square"),
            [ObjectParseErrorKind::BadToken("<loc00012>".into())]
        );
        assert_eq!(
            kinds("<loc0001><loc0002><loc0003><loc0004><seg1> cat"),
            [ObjectParseErrorKind::BadToken("<seg1>".into())]
        );
        assert_eq!(
            kinds("<loc0001><loc0002><loc0003><loc0004>"),
            [ObjectParseErrorKind::MissingLabel]
        );
        assert_eq!(
            kinds("<loc0001><loc0002><loc0003><loc0004><seg001><seg002> cat"),
            [ObjectParseErrorKind::SegCount(2)]
        );
        assert_eq!(
            kinds("<loc0001><loc0002><loc0003><loc0004><seg128> cat"),
            [ObjectParseErrorKind::SegOutOfRange(128)]
        );
        assert!(matches!(
            kinds(
                "<loc0001><loc0002><loc0003><loc0004> cat <loc0001><loc0002><loc0003><loc0004> dog"
            )[..],
            [ObjectParseErrorKind::StrayToken(_)]
        ));
        let error = parse_object("<loc0001> cat").expect_err("too few locs");
        assert_eq!(
            error.to_string(),
            "`<loc0001> cat`: expected 4 <locNNNN> tokens, found 1"
        );
    }

    #[test]
    fn loc_to_pixels_uses_bin_over_1024() {
        let bins = LocBox {
            y_min: 256,
            x_min: 512,
            y_max: 1023,
            x_max: 0,
        };
        let px = loc_to_pixels(bins, 640, 480);
        assert!(close(px.x_min, 320.0));
        assert!(close(px.y_min, 120.0));
        assert!(close(px.x_max, 0.0));
        assert!(close(px.y_max, 1023.0 / 1024.0 * 480.0));
        assert_eq!(px.to_string(), "(320, 120)-(0, 480)");
    }

    #[test]
    fn iou_of_boxes() {
        let a = LocBox {
            y_min: 0,
            x_min: 0,
            y_max: 100,
            x_max: 100,
        };
        let b = LocBox {
            x_min: 50,
            x_max: 150,
            ..a
        };
        assert!(close(a.iou(&a), 1.0));
        assert!(close(a.iou(&b), 1.0 / 3.0));
        let inverted = LocBox {
            y_min: 10,
            y_max: 5,
            ..a
        };
        assert!(close(inverted.iou(&inverted), 0.0));
    }

    #[test]
    fn perfect_predictions_score_one() {
        let r1 = format!(
            "{} ; {}",
            object(0, 0, 100, 100, "cat"),
            object(200, 200, 400, 500, "dog")
        );
        let r2 = object(10, 20, 30, 40, "cat");
        let s = scores(&[(&r1, &r1), (&r2, &r2)]);
        assert!(close(s.map, 1.0));
        assert!(close(s.map50, 1.0));
        assert!(close(s.map75, 1.0));
        assert_eq!(s.parse_errors, 0);
    }

    #[test]
    fn shifted_box_passes_at_050_fails_at_075() {
        // Shifted by 20 of 100 in x: IoU = 80 / 120 = 0.667.
        let reference = object(0, 0, 100, 100, "cat");
        let prediction = object(0, 20, 100, 120, "cat");
        let s = scores(&[(&prediction, &reference)]);
        assert!(close(s.map50, 1.0));
        assert!(close(s.map75, 0.0));
        // Passes 0.50, 0.55, 0.60, 0.65 of the ten thresholds.
        assert!(close(s.map, 0.4));
    }

    #[test]
    fn extra_false_positive_lowers_precision() {
        let reference = object(0, 0, 100, 100, "cat");
        // A false positive ranked before the hit: precision 1/2 at recall 1.
        let first = format!("{} ; {reference}", object(500, 500, 600, 600, "cat"));
        assert!(close(scores(&[(&first, &reference)]).map, 0.5));
        // Ranked after the hit, it does not lower AP.
        let last = format!("{reference} ; {}", object(500, 500, 600, 600, "cat"));
        assert!(close(scores(&[(&last, &reference)]).map, 1.0));
        // A duplicate of a matched box is a false positive too.
        let twice = format!("{} ; {reference}", object(0, 0, 100, 100, "cat"));
        let two = format!("{reference} ; {}", object(300, 300, 400, 400, "cat"));
        let s = scores(&[(&twice, &two)]);
        // A hit, then the duplicate: recall 1/2 at precision 1, so 51 of the
        // 101 recall points (0.00…0.50) score 1 (all-point AP would say 0.5).
        assert!(close(s.map, 51.0 / 101.0));
    }

    #[test]
    fn ranking_is_position_across_examples() {
        let a = object(0, 0, 100, 100, "cat");
        let miss = object(500, 500, 600, 600, "cat");
        // Example 1: hit at position 0. Example 2: miss at 0, hit at 1.
        // Ranked: hit, miss, hit → precision 1, 1/2, 2/3 → envelope 1, 2/3, 2/3:
        // recalls 0.00…0.50 sample 1, recalls 0.51…1 sample 2/3.
        let s = scores(&[(&a, &a), (&format!("{miss} ; {a}"), &a)]);
        assert!(close(s.map, (51.0 + 50.0 * (2.0 / 3.0)) / 101.0));
        // Swapping the examples' outputs puts the miss (rank 0 of example 0)
        // ahead of both hits.
        let s = scores(&[(&format!("{miss} ; {a}"), &a), (&a, &a)]);
        // Miss, hit, hit: precision 0, 1/2, 2/3 → envelope 2/3 everywhere.
        assert!(close(s.map, 2.0 / 3.0));
    }

    #[test]
    fn only_the_first_100_boxes_per_example_and_class_count() {
        let hit = object(0, 0, 100, 100, "cat");
        let miss = object(500, 500, 600, 600, "cat");
        let other = object(500, 500, 600, 600, "dog");
        // 99 misses, then the hit as the 100th cat box: kept, precision 1/100.
        let mut output = vec![miss.clone(); 99];
        output.push(other);
        output.push(hit.clone());
        assert!(close(scores(&[(&output.join(" ; "), &hit)]).map, 0.01));
        // As the 101st cat box it is dropped: AP 0.
        output.insert(0, miss);
        assert!(close(scores(&[(&output.join(" ; "), &hit)]).map, 0.0));
    }

    #[test]
    fn missing_class_scores_zero_and_unknown_labels_are_ignored() {
        let reference = format!(
            "{} ; {}",
            object(0, 0, 100, 100, "cat"),
            object(200, 200, 300, 300, "dog")
        );
        let prediction = format!(
            "{} ; {}",
            object(0, 0, 100, 100, "cat"),
            object(200, 200, 300, 300, "cow")
        );
        let s = scores(&[(&prediction, &reference)]);
        assert!(close(s.map, 0.5));
        assert!(close(s.map50, 0.5));
    }

    #[test]
    fn unparseable_prediction_counts_errors_and_scores_zero() {
        let reference = object(0, 0, 100, 100, "cat");
        let s = scores(&[("I see a cat ; <loc0001> dog", &reference)]);
        assert!(close(s.map, 0.0));
        assert_eq!(s.parse_errors, 2);
        // Well-formed objects survive beside a broken one.
        let mixed = format!("{reference} ; <loc12345> dog");
        let s = scores(&[(&mixed, &reference)]);
        assert!(close(s.map, 1.0));
        assert_eq!(s.parse_errors, 1);
    }

    #[test]
    fn split_without_reference_objects() {
        assert!(close(scores(&[("", "")]).map, 1.0));
        let extra = object(0, 0, 1, 1, "cat");
        assert!(close(scores(&[(&extra, "")]).map, 0.0));
        assert_eq!(DetectionAccumulator::new().finish(), None);
    }
}
