//! A real browser for page tests: headless Chromium (Debian's `chromium`,
//! which `scripts/browser/install.sh` installs; `scripts/test.sh` runs it
//! as root and then sets `PALISWEEP_REQUIRE_CHROMIUM=1`). Without it, and
//! without that variable, a page test says on stderr that it did not run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The width the report must fit without horizontal scrolling.
pub const PAGE_WIDTH: u32 = 900;
/// Chromium's limit on a screenshot's side.
const MAX_HEIGHT: u32 = 16_384;

pub struct Browser {
    program: PathBuf,
    /// A throwaway profile, so that runs never share state.
    profile: tempfile::TempDir,
}

/// What the page measured in the browser at a given window width.
#[derive(Debug)]
pub struct Layout {
    /// `scrollWidth - clientWidth` of the document: > 0 means a horizontal
    /// scroll bar.
    pub overflow_px: i64,
    pub height_px: u32,
    /// The widest element (tag and width) when the page overflows.
    pub widest: String,
}

impl Browser {
    pub fn find() -> Option<Browser> {
        let program = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|name| which(name));
        if let Some(program) = program {
            return Some(Browser {
                program,
                profile: tempfile::tempdir().expect("profile dir"),
            });
        }
        assert!(
            std::env::var_os("PALISWEEP_REQUIRE_CHROMIUM").is_none(),
            "PALISWEEP_REQUIRE_CHROMIUM is set but no chromium is on PATH: run \
             scripts/browser/install.sh as root"
        );
        eprintln!(
            "page test not run: no chromium on PATH (scripts/browser/install.sh installs \
             it as root; scripts/test.sh does that when run as root and then requires it)"
        );
        None
    }

    fn command(&self, width: u32, height: u32) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg("--headless")
            // Root (CI, containers) has no usable sandbox.
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--hide-scrollbars")
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            // Its process-singleton socket goes under TMPDIR: one of its own,
            // so that parallel tests never meet there.
            .env("TMPDIR", self.profile.path());
        command
    }

    /// Lays the page out at `width` and measures it, through a copy of the
    /// page with a measuring script appended (the page itself has none).
    pub fn layout(&self, page: &Path, width: u32) -> Layout {
        let html = std::fs::read_to_string(page).expect("read page");
        let probe = page.with_extension("probe.html");
        let script = "<script>(() => { const d = document.documentElement; let w = ''; let max = 0; \
             for (const e of document.body.querySelectorAll('*')) { const r = e.getBoundingClientRect(); \
             if (r.right > max) { max = r.right; w = e.tagName + ' ' + Math.round(r.right); } } \
             document.body.setAttribute('data-measure', (d.scrollWidth - d.clientWidth) + '|' + \
             d.scrollHeight + '|' + w); })();</script>";
        let probed = match html.rfind("</body>") {
            Some(at) => format!("{}{script}{}", &html[..at], &html[at..]),
            None => panic!("{} has no </body>", page.display()),
        };
        std::fs::write(&probe, probed).expect("write probe");
        let output = self
            .command(width, 1000)
            .arg("--dump-dom")
            .arg(file_url(&probe))
            .output()
            .expect("run chromium");
        let _ = std::fs::remove_file(&probe);
        let dom = String::from_utf8_lossy(&output.stdout);
        let measure = dom
            .split("data-measure=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| {
                panic!(
                    "chromium did not run the measuring script: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        let parts: Vec<&str> = measure.split('|').collect();
        Layout {
            overflow_px: parts[0].parse().expect("overflow"),
            height_px: parts[1].parse().expect("height"),
            widest: parts[2].to_owned(),
        }
    }

    /// A PNG of the page at `width`, `height` pixels from the top.
    pub fn screenshot(&self, page: &Path, width: u32, height: u32, png: &Path) {
        let output = self
            .command(width, height.min(MAX_HEIGHT))
            .arg(format!("--screenshot={}", png.display()))
            .arg(file_url(page))
            .output()
            .expect("run chromium");
        assert!(
            png.is_file(),
            "chromium wrote no screenshot: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The share of pixels that are not (near) white, and the number of
/// distinct colours: a blank or failed render has almost none of either.
pub fn ink(png: &Path) -> (f64, usize) {
    let image = image::open(png).expect("decode screenshot").to_rgb8();
    let mut colours = std::collections::HashSet::new();
    let mut inked = 0_usize;
    for pixel in image.pixels() {
        let [r, g, b] = pixel.0;
        if r.min(g).min(b) < 235 {
            inked += 1;
        }
        if colours.len() < 10_000 {
            colours.insert(pixel.0);
        }
    }
    let total = (image.width() * image.height()) as usize;
    (inked as f64 / total as f64, colours.len())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

fn file_url(path: &Path) -> String {
    format!(
        "file://{}",
        path.canonicalize().expect("absolute page path").display()
    )
}
