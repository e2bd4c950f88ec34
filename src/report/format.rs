//! How the report writes numbers, sizes and durations (shared by the
//! Markdown and HTML renderings and the plots' axes).

use crate::devices::grammar::format_bytes;

/// A metric value: 4 significant digits, scientific when tiny or huge.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".into();
    }
    if (1e-3..1e6).contains(&v.abs()) {
        let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    } else {
        format!("{v:.3e}")
    }
}

/// A hyperparameter value such as a learning rate: `1e-4`, `0.1`, `0`.
pub fn hyper(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-2 {
        let s = format!("{v:e}");
        s.replace("e-0", "e-")
    } else {
        number(v)
    }
}

/// `mean ± std` (with the std when there is one).
pub fn mean_std(mean: f64, std: Option<f64>) -> String {
    match std {
        Some(std) => format!("{} ± {}", number(mean), number(std)),
        None => number(mean),
    }
}

pub fn bytes(n: u64) -> String {
    format_bytes(n)
}

pub(crate) use crate::track::store::views::duration;

/// Device-hours, with enough digits for short runs.
pub fn hours(h: f64) -> String {
    if h >= 10.0 {
        format!("{h:.1}")
    } else if h >= 0.01 {
        format!("{h:.3}")
    } else {
        format!("{h:.2e}")
    }
}

/// A ratio as `0.42×`.
pub fn ratio(r: f64) -> String {
    format!("{r:.2}×")
}

/// A signed difference: `+0.012`, `-0.3`.
pub fn signed(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", number(v))
    } else {
        number(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(0.123_456), "0.1235");
        assert_eq!(number(12.5), "12.5");
        assert_eq!(number(1e-5), "1.000e-5");
        assert_eq!(number(0.0), "0");
        assert_eq!(hyper(1e-4), "1e-4");
        assert_eq!(hyper(3e-4), "3e-4");
        assert_eq!(hyper(0.1), "0.1");
        assert_eq!(hyper(0.0), "0");
        assert_eq!(mean_std(0.5, Some(0.01)), "0.5 ± 0.01");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(signed(0.5), "+0.5");
        assert_eq!(signed(-0.5), "-0.5");
        assert_eq!(ratio(0.4), "0.40×");
    }
}
