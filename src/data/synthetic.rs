//! The built-in synthetic dataset (`palisweep init-data`, `data.path =
//! "generated:json" | "generated:detect"`): images of coloured shapes in
//! Roboflow's PaliGemma JSONL layout, with JSON suffixes describing the
//! shape or `<locNNNN>` boxes. Deterministic in the seed, so the demo and
//! the tests see the same pixels on every machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use crate::rng::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyntheticTask {
    /// One shape; suffix `{"shape": "circle", "color": "red"}`.
    Json,
    /// One or two shapes; suffix `<locY1><locX1><locY2><locX2> circle ; …`.
    Detect,
}

impl SyntheticTask {
    pub fn as_str(self) -> &'static str {
        match self {
            SyntheticTask::Json => "json",
            SyntheticTask::Detect => "detect",
        }
    }
}

impl std::str::FromStr for SyntheticTask {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(SyntheticTask::Json),
            "detect" => Ok(SyntheticTask::Detect),
            other => Err(format!(
                "unknown generated task `{other}`: use json or detect"
            )),
        }
    }
}

/// How much to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntheticOptions {
    pub task: SyntheticTask,
    pub seed: u64,
    pub train: usize,
    pub valid: usize,
    pub test: usize,
    /// Image side in pixels.
    pub image_size: u32,
}

impl SyntheticOptions {
    /// What `generated:<task>` in a spec means.
    pub fn standard(task: SyntheticTask) -> Self {
        SyntheticOptions {
            task,
            seed: 0,
            train: 48,
            valid: 12,
            test: 12,
            image_size: 64,
        }
    }
}

const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
const COLORS: [(&str, [u8; 3]); 5] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 200, 30]),
    ("purple", [140, 50, 170]),
];
const DETECT_PREFIX: &str = "detect circle ; square ; triangle";
const JSON_PREFIX: &str = "extract JSON";

/// One drawn shape and its box in pixels (`x0, y0, x1, y1`, exclusive end).
struct Shape {
    kind: usize,
    color: usize,
    bbox: [u32; 4],
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the synthetic dataset to {}: {source}", path.display())]
pub struct SyntheticError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The cache folder of a standard generated dataset.
pub fn cache_path(cache: &Path, task: SyntheticTask) -> PathBuf {
    cache
        .join("data")
        .join(format!("generated-{}-seed0", task.as_str()))
}

/// The standard generated dataset under `cache`, written on first use
/// (through a temporary folder and a rename, so readers never see half).
pub fn ensure(cache: &Path, task: SyntheticTask) -> Result<PathBuf, SyntheticError> {
    let dir = cache_path(cache, task);
    if dir.join("train").join("annotations.jsonl").is_file() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(cache).to_owned();
    let staging = parent.join(format!(".staging-{}-{}", task.as_str(), std::process::id()));
    write(&staging, &SyntheticOptions::standard(task))?;
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        Err(_) if dir.join("train").join("annotations.jsonl").is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(source) => Err(SyntheticError { path: dir, source }),
    }
}

/// Writes `train/`, `valid/` and `test/` with images and `annotations.jsonl`.
pub fn write(out: &Path, options: &SyntheticOptions) -> Result<(), SyntheticError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SyntheticError { path, source }
    };
    // One stream per split, so changing one split's size keeps the others.
    for (index, (split, count)) in [
        ("train", options.train),
        ("valid", options.valid),
        ("test", options.test),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = out.join(split);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut rng = SplitMix64::new(
            options.seed ^ (0xD1B5_4A32_D192_ED03_u64.wrapping_mul(index as u64 + 1)),
        );
        let mut lines = String::new();
        for i in 0..count {
            let (image, shapes) = draw(&mut rng, options);
            let name = format!("{split}_{i:04}.png");
            let path = dir.join(&name);
            image
                .save(&path)
                .map_err(|e| io(&path)(std::io::Error::other(e)))?;
            let (prefix, suffix) = describe(options.task, &shapes, options.image_size);
            let line = serde_json::json!({ "image": name, "prefix": prefix, "suffix": suffix });
            let _ = writeln!(lines, "{line}");
        }
        let file = dir.join("annotations.jsonl");
        std::fs::write(&file, lines).map_err(io(&file))?;
    }
    Ok(())
}

fn draw(rng: &mut SplitMix64, options: &SyntheticOptions) -> (RgbImage, Vec<Shape>) {
    let side = options.image_size;
    // A light background that differs per image but never hides a shape.
    let background = Rgb([
        225 + rng.below(31) as u8,
        225 + rng.below(31) as u8,
        225 + rng.below(31) as u8,
    ]);
    let mut image = RgbImage::from_pixel(side, side, background);
    let count = match options.task {
        SyntheticTask::Json => 1,
        SyntheticTask::Detect => 1 + rng.below(2),
    };
    let mut shapes: Vec<Shape> = Vec::new();
    for slot in 0..count {
        // Detection images put their shapes in separate halves so boxes never overlap.
        let (x_lo, x_hi) = match (count, slot) {
            (1, _) => (0, side),
            (_, 0) => (0, side / 2),
            _ => (side / 2, side),
        };
        let room = x_hi - x_lo;
        let extent = ((room * 3 / 8).max(6) + rng.below((room / 4).max(1) as usize) as u32)
            .min(room - 2)
            .min(side - 2);
        let x0 = x_lo + 1 + rng.below((room - extent - 1).max(1) as usize) as u32;
        let y0 = 1 + rng.below((side - extent - 1).max(1) as usize) as u32;
        let shape = Shape {
            kind: rng.below(SHAPES.len()),
            color: rng.below(COLORS.len()),
            bbox: [x0, y0, x0 + extent, y0 + extent],
        };
        paint(&mut image, &shape);
        shapes.push(shape);
    }
    (image, shapes)
}

fn paint(image: &mut RgbImage, shape: &Shape) {
    let [x0, y0, x1, y1] = shape.bbox;
    let color = Rgb(COLORS[shape.color].1);
    let (w, h) = (f64::from(x1 - x0), f64::from(y1 - y0));
    for y in y0..y1 {
        for x in x0..x1 {
            // Pixel centre in the unit square of the box.
            let u = (f64::from(x - x0) + 0.5) / w;
            let v = (f64::from(y - y0) + 0.5) / h;
            let inside = match SHAPES[shape.kind] {
                "circle" => (u - 0.5).powi(2) + (v - 0.5).powi(2) <= 0.25,
                "square" => true,
                // Apex at the top centre, base along the bottom.
                _ => v >= 2.0 * (u - 0.5).abs(),
            };
            if inside {
                image.put_pixel(x, y, color);
            }
        }
    }
}

/// A coordinate as a `<locNNNN>` bin (`floor(c / size × 1024)`, at most 1023),
/// the inverse of the `bin / 1024 × size` decoding `predict` uses.
fn loc(coordinate: u32, size: u32) -> String {
    let bin = (u64::from(coordinate) * 1024 / u64::from(size)).min(1023);
    format!("<loc{bin:04}>")
}

fn describe(task: SyntheticTask, shapes: &[Shape], size: u32) -> (String, String) {
    match task {
        SyntheticTask::Json => {
            let s = &shapes[0];
            let suffix = serde_json::json!({ "shape": SHAPES[s.kind], "color": COLORS[s.color].0 });
            (JSON_PREFIX.to_owned(), suffix.to_string())
        }
        SyntheticTask::Detect => {
            let objects: Vec<String> = shapes
                .iter()
                .map(|s| {
                    let [x0, y0, x1, y1] = s.bbox;
                    format!(
                        "{}{}{}{} {}",
                        loc(y0, size),
                        loc(x0, size),
                        loc(y1, size),
                        loc(x1, size),
                        SHAPES[s.kind]
                    )
                })
                .collect();
            (DETECT_PREFIX.to_owned(), objects.join(" ; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::annotations::{Split, read_split};
    use crate::metrics::detection::parse_detections;

    fn small(task: SyntheticTask) -> SyntheticOptions {
        SyntheticOptions {
            task,
            seed: 3,
            train: 6,
            valid: 2,
            test: 2,
            image_size: 48,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write(a.path(), &small(SyntheticTask::Json)).unwrap();
        write(b.path(), &small(SyntheticTask::Json)).unwrap();
        for file in [
            "train/annotations.jsonl",
            "train/train_0003.png",
            "test/test_0001.png",
        ] {
            assert_eq!(
                std::fs::read(a.path().join(file)).unwrap(),
                std::fs::read(b.path().join(file)).unwrap(),
                "{file}"
            );
        }
    }

    #[test]
    fn json_suffixes_describe_the_drawn_shape() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &small(SyntheticTask::Json)).unwrap();
        let records = read_split(dir.path(), Split::Train).unwrap();
        assert_eq!(records.len(), 6);
        for r in &records {
            let json: serde_json::Value = serde_json::from_str(&r.suffix).unwrap();
            let color = COLORS.iter().find(|(n, _)| *n == json["color"]).unwrap().1;
            let image = image::open(&r.image).unwrap().to_rgb8();
            assert!(
                image.pixels().any(|p| p.0 == color),
                "{}: no {} pixel",
                r.image.display(),
                json["color"]
            );
        }
    }

    #[test]
    fn detection_boxes_parse_and_cover_the_painted_pixels() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &small(SyntheticTask::Detect)).unwrap();
        for r in read_split(dir.path(), Split::Train).unwrap() {
            assert_eq!(r.prefix, DETECT_PREFIX);
            let parsed = parse_detections(&r.suffix);
            assert!(parsed.errors.is_empty(), "{}", r.suffix);
            assert!(!parsed.objects.is_empty());
            let image = image::open(&r.image).unwrap().to_rgb8();
            let background = *image.get_pixel(0, 0);
            // Every non-background pixel lies inside some decoded box.
            for (x, y, p) in image.enumerate_pixels() {
                if *p == background {
                    continue;
                }
                let inside = parsed.objects.iter().any(|o| {
                    let b = crate::metrics::detection::loc_to_pixels(o.bbox, 48, 48);
                    f64::from(x) + 1.0 >= b.x_min
                        && f64::from(x) <= b.x_max + 1.0
                        && f64::from(y) + 1.0 >= b.y_min
                        && f64::from(y) <= b.y_max + 1.0
                });
                assert!(inside, "pixel ({x},{y}) outside every box of {}", r.suffix);
            }
        }
    }
}
