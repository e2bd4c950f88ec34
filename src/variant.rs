//! The published `PaliGemma` 2 variants: the language-model size and the
//! image resolution that name a checkpoint (`paligemma2-3b-pt-448`). Shared
//! by the spec, the model, the estimator and the benchmarks, so none of them
//! imports another for these names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The language-model size of a `PaliGemma` 2 checkpoint (Gemma 2 2B / 9B / 27B).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    #[serde(rename = "3b")]
    B3,
    #[serde(rename = "10b")]
    B10,
    #[serde(rename = "28b")]
    B28,
}

impl Size {
    pub const ALL: [Size; 3] = [Size::B3, Size::B10, Size::B28];

    pub fn as_str(self) -> &'static str {
        match self {
            Size::B3 => "3b",
            Size::B10 => "10b",
            Size::B28 => "28b",
        }
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Size::ALL
            .into_iter()
            .find(|size| size.as_str() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| format!("unknown size `{s}`: use 3b, 10b or 28b"))
    }
}

impl std::str::FromStr for Resolution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let px: u32 = s
            .trim()
            .parse()
            .map_err(|_| format!("unknown resolution `{s}`: use 224, 448 or 896"))?;
        Resolution::try_from(px)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The input image side in pixels of a published checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub enum Resolution {
    R224,
    R448,
    R896,
}

impl Resolution {
    pub const ALL: [Resolution; 3] = [Resolution::R224, Resolution::R448, Resolution::R896];

    pub fn pixels(self) -> u32 {
        match self {
            Resolution::R224 => 224,
            Resolution::R448 => 448,
            Resolution::R896 => 896,
        }
    }
}

impl TryFrom<u32> for Resolution {
    type Error = String;
    fn try_from(px: u32) -> Result<Self, String> {
        match px {
            224 => Ok(Resolution::R224),
            448 => Ok(Resolution::R448),
            896 => Ok(Resolution::R896),
            other => Err(format!(
                "resolution {other} is not published: use 224, 448 or 896"
            )),
        }
    }
}

impl From<Resolution> for u32 {
    fn from(r: Resolution) -> u32 {
        r.pixels()
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.pixels())
    }
}
