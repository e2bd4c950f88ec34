//! The one device grammar shared by the spec key `resources.devices` and the
//! `--devices` flag.
//!
//! ```text
//! auto                 CUDA if any GPU is visible, else the host with one slot
//! cpu | cpu:N          the host, split into N trial slots (default 1, at most 1024)
//! cuda                 every visible GPU
//! cuda:0,2             GPUs 0 and 2 among the visible ones
//! cuda:80GiB,80GiB     a hypothetical inventory (planning, synthetic tests)
//! cuda:4x24GiB         the same, written as count x size
//! fake-cuda:2x24GiB    the same (the spelling the scheduler's tests use)
//! ```
//!
//! Counts are bounded ([`MAX_CPU_SLOTS`], [`MAX_HYPOTHETICAL_DEVICES`]) so that
//! a typo is an error before anything is allocated per slot or device.
//!
//! Sizes take `GiB`/`MiB`/`KiB`/`TiB` (binary) or `GB`/`MB`/`KB`/`TB`
//! (decimal) or `B`, case-insensitive, with decimals such as `40.5GiB`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Every accepted form, quoted in each parse error so the fix is one read away.
pub const VALID_FORMS: &str =
    "auto | cpu | cpu:N | cuda | cuda:0,2 | cuda:80GiB,80GiB | cuda:4x24GiB";

/// Upper bound on the devices of a hypothetical inventory, so that a typo such
/// as `cuda:4000000x24GiB` is an error rather than a huge allocation.
pub const MAX_HYPOTHETICAL_DEVICES: usize = 4096;

/// Upper bound on `cpu:N`: every slot is a device the planner and the
/// scheduler track, and a slot gets at least one thread, so more slots than
/// any host has cores only queue trials behind each other.
pub const MAX_CPU_SLOTS: u32 = 1024;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// What the user asked for, before anything is detected.
///
/// `Display` writes the canonical form, which parses back to an equal value.
/// The variants can be built directly; values the grammar cannot produce
/// (`cpu:0`, an empty index or size list) display as text that does not parse,
/// and [`crate::devices::detect::resolve`] rejects them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceRequest {
    /// CUDA when any GPU is visible, otherwise the host with one slot.
    #[default]
    Auto,
    /// The host; `slots` trial slots share its memory and split its threads.
    Cpu {
        /// `None` for plain `cpu` (one slot).
        slots: Option<u32>,
    },
    /// Real GPUs.
    Cuda {
        /// Indices into the visible GPUs; `None` for all of them.
        indices: Option<Vec<u32>>,
    },
    /// A made-up inventory: one GPU per entry, with that many bytes of memory.
    Hypothetical(Vec<u64>),
}

/// Why a device request did not parse; `Display` names the input, the problem
/// and the valid forms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{input}`: {kind}; valid: {VALID_FORMS}")]
pub struct ParseDeviceError {
    /// The text as given.
    pub input: String,
    /// What was wrong with it.
    pub kind: ParseDeviceErrorKind,
}

/// The specific problem inside a [`ParseDeviceError`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseDeviceErrorKind {
    /// Nothing but whitespace.
    #[error("empty device request")]
    Empty,
    /// A kind other than `auto`, `cpu` or `cuda`.
    #[error("unknown device kind `{0}`")]
    UnknownKind(String),
    /// `auto:…`.
    #[error("`auto` takes no argument")]
    AutoWithArgument,
    /// `cpu:` followed by something other than a positive integer.
    #[error("expected a slot count like `cpu:4`, got `{0}`")]
    BadSlotCount(String),
    /// `cpu:0`.
    #[error("the slot count must be at least 1")]
    ZeroSlots,
    /// More than [`MAX_CPU_SLOTS`] slots.
    #[error("{0} CPU slots is more than the limit of {MAX_CPU_SLOTS}")]
    TooManySlots(String),
    /// `cuda:` or `cuda:0,,2`.
    #[error("empty entry in the list after `cuda:`")]
    EmptyEntry,
    /// An index that does not fit in 32 bits.
    #[error("GPU index `{0}` is too large")]
    IndexTooLarge(String),
    /// `cuda:0,0`.
    #[error("GPU index {0} is listed twice")]
    DuplicateIndex(u32),
    /// `cuda:4x`, `cuda:x24GiB`.
    #[error("`{0}`: expected a count and a size like `4x24GiB`")]
    BadCountAndSize(String),
    /// `cuda:0x24GiB`.
    #[error("`{0}`: the count must be at least 1")]
    ZeroCount(String),
    /// A size that [`parse_bytes`] rejected.
    #[error("size {0}")]
    BadSize(ParseBytesError),
    /// `cuda:0GiB`.
    #[error("`{0}`: a device size must be greater than zero")]
    ZeroSize(String),
    /// `cuda:0,80GiB`.
    #[error(
        "mixes GPU indices and memory sizes; write either indices (`cuda:0,2`) or sizes (`cuda:80GiB,80GiB`)"
    )]
    MixedIndicesAndSizes,
    /// More than [`MAX_HYPOTHETICAL_DEVICES`] sizes.
    #[error("{0} hypothetical devices is more than the limit of {MAX_HYPOTHETICAL_DEVICES}")]
    TooManyDevices(u64),
    /// `fake-cuda:0`: made-up GPUs are given by size.
    #[error("`fake-cuda` takes memory sizes (`fake-cuda:2x24GiB`), not GPU indices")]
    FakeWithIndices,
}

/// Why a size such as `24GiB` did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{input}`: {kind}")]
pub struct ParseBytesError {
    /// The text as given.
    pub input: String,
    /// What was wrong with it.
    pub kind: ParseBytesErrorKind,
}

/// The specific problem inside a [`ParseBytesError`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseBytesErrorKind {
    /// Nothing but whitespace.
    #[error("empty size; expected something like `24GiB`")]
    Empty,
    /// Not `digits` or `digits.digits` before the unit.
    #[error("expected a number like `24` or `40.5` before the unit")]
    BadNumber,
    /// A bare number: bytes, MB and MiB are all plausible, so none is guessed.
    #[error("missing unit; write e.g. `24GiB` (units: GiB, GB, MiB, MB)")]
    MissingUnit,
    /// A unit outside the accepted list.
    #[error("unknown unit `{0}` (units: GiB, GB, MiB, MB, TiB, TB, KiB, KB, B)")]
    UnknownUnit(String),
    /// More than `u64::MAX` bytes, or more decimals than can matter.
    #[error("too large or too precise to represent in bytes")]
    OutOfRange,
}

impl ParseDeviceError {
    fn new(input: &str, kind: ParseDeviceErrorKind) -> Self {
        Self {
            input: input.to_owned(),
            kind,
        }
    }
}

impl FromStr for DeviceRequest {
    type Err = ParseDeviceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |kind| ParseDeviceError::new(input, kind);
        let text = input.trim();
        if text.is_empty() {
            return Err(err(ParseDeviceErrorKind::Empty));
        }
        let (head, tail) = match text.split_once(':') {
            Some((head, tail)) => (head.trim(), Some(tail.trim())),
            None => (text, None),
        };
        match (head.to_ascii_lowercase().as_str(), tail) {
            ("auto", None) => Ok(Self::Auto),
            ("auto", Some(_)) => Err(err(ParseDeviceErrorKind::AutoWithArgument)),
            ("cpu", None) => Ok(Self::Cpu { slots: None }),
            ("cpu", Some(count)) => parse_slots(count).map_err(err),
            ("cuda", None) => Ok(Self::Cuda { indices: None }),
            ("cuda", Some(list)) => parse_cuda_list(list).map_err(err),
            // An explicit spelling of the made-up inventory (synthetic tests).
            ("fake-cuda", Some(list)) => match parse_cuda_list(list).map_err(err)? {
                fake @ Self::Hypothetical(_) => Ok(fake),
                _ => Err(err(ParseDeviceErrorKind::FakeWithIndices)),
            },
            _ => Err(err(ParseDeviceErrorKind::UnknownKind(head.to_owned()))),
        }
    }
}

fn parse_slots(count: &str) -> Result<DeviceRequest, ParseDeviceErrorKind> {
    if !is_digits(count) {
        return Err(ParseDeviceErrorKind::BadSlotCount(count.to_owned()));
    }
    // All digits: a parse failure can only be an overflow, too many too.
    match count.parse::<u32>() {
        Ok(0) => Err(ParseDeviceErrorKind::ZeroSlots),
        Ok(slots) if slots <= MAX_CPU_SLOTS => Ok(DeviceRequest::Cpu { slots: Some(slots) }),
        _ => Err(ParseDeviceErrorKind::TooManySlots(count.to_owned())),
    }
}

/// One comma-separated entry after `cuda:`.
enum Entry {
    Index(u32),
    Sizes { count: u64, bytes: u64 },
}

fn parse_cuda_list(list: &str) -> Result<DeviceRequest, ParseDeviceErrorKind> {
    let entries = list
        .split(',')
        .map(|item| parse_entry(item.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let index_count = entries
        .iter()
        .filter(|e| matches!(e, Entry::Index(_)))
        .count();
    if index_count == entries.len() {
        let mut indices = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Entry::Index(i) = entry {
                if indices.contains(&i) {
                    return Err(ParseDeviceErrorKind::DuplicateIndex(i));
                }
                indices.push(i);
            }
        }
        return Ok(DeviceRequest::Cuda {
            indices: Some(indices),
        });
    }
    if index_count > 0 {
        return Err(ParseDeviceErrorKind::MixedIndicesAndSizes);
    }
    let total: u64 = entries
        .iter()
        .map(|e| match e {
            Entry::Sizes { count, .. } => *count,
            Entry::Index(_) => 0,
        })
        .fold(0, u64::saturating_add);
    if total > MAX_HYPOTHETICAL_DEVICES as u64 {
        return Err(ParseDeviceErrorKind::TooManyDevices(total));
    }
    let mut sizes = Vec::with_capacity(total as usize);
    for entry in entries {
        if let Entry::Sizes { count, bytes } = entry {
            sizes.extend(std::iter::repeat_n(bytes, count as usize));
        }
    }
    Ok(DeviceRequest::Hypothetical(sizes))
}

fn parse_entry(item: &str) -> Result<Entry, ParseDeviceErrorKind> {
    if item.is_empty() {
        return Err(ParseDeviceErrorKind::EmptyEntry);
    }
    if is_digits(item) {
        return item
            .parse::<u32>()
            .map(Entry::Index)
            .map_err(|_| ParseDeviceErrorKind::IndexTooLarge(item.to_owned()));
    }
    // No size unit contains an `x`, so any `x` marks the `count x size` form.
    if let Some((count, size)) = item.split_once(['x', 'X']) {
        let (count, size) = (count.trim(), size.trim());
        if !is_digits(count) || size.is_empty() {
            return Err(ParseDeviceErrorKind::BadCountAndSize(item.to_owned()));
        }
        let count = count
            .parse::<u64>()
            .map_err(|_| ParseDeviceErrorKind::TooManyDevices(u64::MAX))?;
        if count == 0 {
            return Err(ParseDeviceErrorKind::ZeroCount(item.to_owned()));
        }
        let bytes = parse_size_entry(size)?;
        return Ok(Entry::Sizes { count, bytes });
    }
    let bytes = parse_size_entry(item)?;
    Ok(Entry::Sizes { count: 1, bytes })
}

fn parse_size_entry(size: &str) -> Result<u64, ParseDeviceErrorKind> {
    match parse_bytes(size) {
        Ok(0) => Err(ParseDeviceErrorKind::ZeroSize(size.to_owned())),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(ParseDeviceErrorKind::BadSize(e)),
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu { slots: None } => f.write_str("cpu"),
            Self::Cpu { slots: Some(n) } => write!(f, "cpu:{n}"),
            Self::Cuda { indices: None } => f.write_str("cuda"),
            Self::Cuda {
                indices: Some(indices),
            } => {
                f.write_str("cuda:")?;
                write_joined(f, indices.iter().map(ToString::to_string))
            }
            Self::Hypothetical(sizes) => {
                f.write_str("cuda:")?;
                match sizes.as_slice() {
                    [first, rest @ ..] if !rest.is_empty() && rest.iter().all(|s| s == first) => {
                        write!(f, "{}x{}", sizes.len(), exact_size(*first))
                    }
                    _ => write_joined(f, sizes.iter().map(|s| exact_size(*s))),
                }
            }
        }
    }
}

fn write_joined(f: &mut fmt::Formatter<'_>, items: impl Iterator<Item = String>) -> fmt::Result {
    for (i, item) in items.enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        f.write_str(&item)?;
    }
    Ok(())
}

impl TryFrom<String> for DeviceRequest {
    type Error = ParseDeviceError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<DeviceRequest> for String {
    fn from(request: DeviceRequest) -> Self {
        request.to_string()
    }
}

/// Parses a size such as `24GiB`, `40.5 GiB`, `80GB` or `512mib` into bytes.
///
/// Binary units (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal ones
/// (`KB`, `MB`, `GB`, `TB`) powers of 1000; `B` is bytes. Units are
/// case-insensitive; a bare number is rejected because its unit is ambiguous.
/// Fractions are computed exactly and rounded to the nearest byte.
pub fn parse_bytes(input: &str) -> Result<u64, ParseBytesError> {
    let err = |kind| ParseBytesError {
        input: input.to_owned(),
        kind,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(err(ParseBytesErrorKind::Empty));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if !is_digits(whole) || (number.contains('.') && !is_digits(fraction)) {
        return Err(err(ParseBytesErrorKind::BadNumber));
    }
    if unit.is_empty() {
        return Err(err(ParseBytesErrorKind::MissingUnit));
    }
    let scale =
        unit_scale(unit).ok_or_else(|| err(ParseBytesErrorKind::UnknownUnit(unit.to_owned())))?;
    scaled(whole, fraction, scale).ok_or_else(|| err(ParseBytesErrorKind::OutOfRange))
}

fn unit_scale(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        "tib" => TIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    })
}

/// `whole.fraction * scale`, rounded half up, without floating point so that
/// `Display` of a hypothetical inventory round-trips to the byte.
fn scaled(whole: &str, fraction: &str, scale: u64) -> Option<u64> {
    // 20 decimals already resolve far below a byte for every unit, and the
    // bound keeps the u128 arithmetic below from overflowing.
    if whole.len() > 20 || fraction.len() > 20 {
        return None;
    }
    let scale = u128::from(scale);
    let whole: u128 = whole.parse().ok()?;
    let mut total = whole.checked_mul(scale)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().ok()?;
        let denominator = 10u128.pow(u32::try_from(fraction.len()).ok()?);
        total = total.checked_add((digits * scale * 2 + denominator) / (2 * denominator))?;
    }
    u64::try_from(total).ok()
}

/// The shortest text in GiB (from 1 GiB) or MiB (below) that [`parse_bytes`]
/// reads back as exactly `bytes`; used for the canonical request form.
fn exact_size(bytes: u64) -> String {
    let (scale, unit) = if bytes >= GIB {
        (GIB, "GiB")
    } else {
        (MIB, "MiB")
    };
    // Ten decimals of GiB (seven of MiB) are finer than half a byte, so the
    // loop always finds a match before running out.
    for decimals in 0..=12u32 {
        let text = format!("{}{unit}", fixed_point(bytes, scale, decimals));
        if parse_bytes(&text).is_ok_and(|b| b == bytes) {
            return text;
        }
    }
    format!("{bytes}B")
}

/// `bytes / scale` rounded half up to `decimals` places, trailing zeros kept.
fn fixed_point(bytes: u64, scale: u64, decimals: u32) -> String {
    let pow = 10u128.pow(decimals);
    let scale = u128::from(scale);
    let rounded = (u128::from(bytes) * pow * 2 + scale) / (2 * scale);
    if decimals == 0 {
        rounded.to_string()
    } else {
        let width = decimals as usize;
        format!("{}.{:0width$}", rounded / pow, rounded % pow)
    }
}

/// A short human-readable size: `23.4 GiB`, `512 MiB`, `1.5 KiB`, `12 B`.
///
/// One decimal at most, dropped when it is zero. Not meant to round-trip
/// exactly (use the request's `Display` for that), though [`parse_bytes`]
/// accepts the text.
pub fn format_bytes(bytes: u64) -> String {
    let (scale, unit) = match bytes {
        b if b >= GIB => (GIB, "GiB"),
        b if b >= MIB => (MIB, "MiB"),
        b if b >= KIB => (KIB, "KiB"),
        b => return format!("{b} B"),
    };
    let tenths = fixed_point(bytes, scale, 1);
    let text = tenths.strip_suffix(".0").unwrap_or(&tenths);
    format!("{text} {unit}")
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> DeviceRequest {
        text.parse()
            .unwrap_or_else(|e| panic!("`{text}` should parse: {e}"))
    }

    fn reject(text: &str) -> ParseDeviceError {
        match text.parse::<DeviceRequest>() {
            Ok(r) => panic!("`{text}` should be rejected, got {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_each_form() {
        assert_eq!(parse("auto"), DeviceRequest::Auto);
        assert_eq!(parse("cpu"), DeviceRequest::Cpu { slots: None });
        assert_eq!(parse("cpu:3"), DeviceRequest::Cpu { slots: Some(3) });
        assert_eq!(parse("cuda"), DeviceRequest::Cuda { indices: None });
        assert_eq!(
            parse("cuda:0,2"),
            DeviceRequest::Cuda {
                indices: Some(vec![0, 2])
            }
        );
        assert_eq!(
            parse("cuda:80GiB,40GB"),
            DeviceRequest::Hypothetical(vec![80 * GIB, 40_000_000_000])
        );
        assert_eq!(
            parse("cuda:4x24GiB"),
            DeviceRequest::Hypothetical(vec![24 * GIB; 4])
        );
        assert_eq!(
            parse("fake-cuda:2x24GiB"),
            DeviceRequest::Hypothetical(vec![24 * GIB; 2])
        );
        assert_eq!(
            reject("fake-cuda:0").kind,
            ParseDeviceErrorKind::FakeWithIndices
        );
    }

    #[test]
    fn tolerates_whitespace_and_case() {
        assert_eq!(
            parse("  cuda: 2 , 0 "),
            DeviceRequest::Cuda {
                indices: Some(vec![2, 0])
            }
        );
        assert_eq!(
            parse("CUDA:2 x 24gib, 512 MiB"),
            DeviceRequest::Hypothetical(vec![24 * GIB, 24 * GIB, 512 * MIB])
        );
        assert_eq!(parse(" Cpu : 2 "), DeviceRequest::Cpu { slots: Some(2) });
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "auto",
            "cpu",
            "cpu:1",
            "cpu:16",
            "cuda",
            "cuda:0",
            "cuda:2,0,7",
            "cuda:80GiB",
            "cuda:80GiB,40GiB",
            "cuda:4x24GiB",
            "cuda:40.5GiB,512MiB",
            "cuda:23.4GiB",
            "cuda:3x80GB",
            "cuda:1B",
            "cuda:1.0000000001GiB",
        ] {
            let request = parse(text);
            let shown = request.to_string();
            assert_eq!(parse(&shown), request, "`{text}` displayed as `{shown}`");
        }
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(parse(" CPU:2 ").to_string(), "cpu:2");
        assert_eq!(parse("cuda: 0 , 2").to_string(), "cuda:0,2");
        assert_eq!(parse("cuda:80GiB,80GiB").to_string(), "cuda:2x80GiB");
        assert_eq!(
            parse("cuda:40.5gib,512mib").to_string(),
            "cuda:40.5GiB,512MiB"
        );
        assert_eq!(parse("cuda:23.4GiB").to_string(), "cuda:23.4GiB");
        assert_eq!(parse("cuda:1x24GiB").to_string(), "cuda:24GiB");
    }

    #[test]
    fn rejects_with_the_reason() {
        use ParseDeviceErrorKind as K;
        let cases: [(&str, K); 17] = [
            ("", K::Empty),
            ("gpu", K::UnknownKind("gpu".into())),
            ("tpu:0", K::UnknownKind("tpu".into())),
            ("auto:1", K::AutoWithArgument),
            ("cpu:0", K::ZeroSlots),
            ("cpu:-1", K::BadSlotCount("-1".into())),
            ("cpu:two", K::BadSlotCount("two".into())),
            ("cpu:1025", K::TooManySlots("1025".into())),
            ("cpu:4294967296", K::TooManySlots("4294967296".into())),
            ("cuda:", K::EmptyEntry),
            ("cuda:0,,2", K::EmptyEntry),
            ("cuda:0,2,0", K::DuplicateIndex(0)),
            ("cuda:4x", K::BadCountAndSize("4x".into())),
            ("cuda:x24GiB", K::BadCountAndSize("x24GiB".into())),
            ("cuda:0x24GiB", K::ZeroCount("0x24GiB".into())),
            ("cuda:0GiB", K::ZeroSize("0GiB".into())),
            ("cuda:0,80GiB", K::MixedIndicesAndSizes),
        ];
        for (text, kind) in cases {
            assert_eq!(reject(text).kind, kind, "input `{text}`");
        }
        assert!(matches!(
            reject("cuda:99999999999").kind,
            K::IndexTooLarge(_)
        ));
        assert!(matches!(
            reject("cuda:5000x1GiB").kind,
            K::TooManyDevices(5000)
        ));
        assert!(matches!(
            reject("cuda:80G").kind,
            K::BadSize(ParseBytesError {
                kind: ParseBytesErrorKind::UnknownUnit(_),
                ..
            })
        ));
    }

    #[test]
    fn error_message_names_input_problem_and_forms() {
        let message = reject("cuda:4x").to_string();
        assert_eq!(
            message,
            "`cuda:4x`: `4x`: expected a count and a size like `4x24GiB`; \
             valid: auto | cpu | cpu:N | cuda | cuda:0,2 | cuda:80GiB,80GiB | cuda:4x24GiB"
        );
        let message = reject("cuda:80G").to_string();
        assert!(message.contains("unknown unit `G`"), "{message}");
    }

    #[test]
    fn serde_uses_the_text_form() {
        let request: DeviceRequest = serde_json::from_str("\"cuda:2x80GiB\"").unwrap();
        assert_eq!(request, DeviceRequest::Hypothetical(vec![80 * GIB; 2]));
        assert_eq!(serde_json::to_string(&request).unwrap(), "\"cuda:2x80GiB\"");
        let err = serde_json::from_str::<DeviceRequest>("\"cpu:0\"").unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn parse_bytes_units() {
        assert_eq!(parse_bytes("24GiB"), Ok(24 * GIB));
        assert_eq!(parse_bytes("24gib"), Ok(24 * GIB));
        assert_eq!(parse_bytes("24GB"), Ok(24_000_000_000));
        assert_eq!(parse_bytes("512MiB"), Ok(512 * MIB));
        assert_eq!(parse_bytes("512 mb"), Ok(512_000_000));
        assert_eq!(parse_bytes("40.5GiB"), Ok(40 * GIB + GIB / 2));
        assert_eq!(parse_bytes("0.5MB"), Ok(500_000));
        assert_eq!(parse_bytes("2TiB"), Ok(2 * TIB));
        assert_eq!(parse_bytes("3KiB"), Ok(3 * KIB));
        assert_eq!(parse_bytes("7B"), Ok(7));
        // 23.4 GiB is 25125558681.6 bytes: rounded, not truncated.
        assert_eq!(parse_bytes("23.4GiB"), Ok(25_125_558_682));
    }

    #[test]
    fn parse_bytes_rejections() {
        use ParseBytesErrorKind as K;
        let kind = |t: &str| parse_bytes(t).unwrap_err().kind;
        assert_eq!(kind("  "), K::Empty);
        assert_eq!(kind("80"), K::MissingUnit);
        assert_eq!(kind("80G"), K::UnknownUnit("G".into()));
        assert_eq!(kind("GiB"), K::BadNumber);
        assert_eq!(kind("1.2.3GiB"), K::BadNumber);
        assert_eq!(kind("4.GiB"), K::BadNumber);
        assert_eq!(kind("-4GiB"), K::BadNumber);
        assert_eq!(kind("99999999999TiB"), K::OutOfRange);
    }

    #[test]
    fn format_bytes_is_short() {
        assert_eq!(format_bytes(25_125_558_682), "23.4 GiB");
        assert_eq!(format_bytes(80 * GIB), "80 GiB");
        assert_eq!(format_bytes(512 * MIB), "512 MiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(12), "12 B");
        assert_eq!(format_bytes(0), "0 B");
        let shown = format_bytes(40 * GIB + GIB / 2);
        assert_eq!(shown, "40.5 GiB");
        assert_eq!(parse_bytes(&shown), Ok(40 * GIB + GIB / 2));
    }
}
