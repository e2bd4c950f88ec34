//! The marker structure of a JPEG stream, read without decoding it: the
//! size its frame header declares, and whether the data reaches the
//! end-of-image marker.
//!
//! libjpeg only warns when the data ends early ("Premature end of JPEG
//! file") and pads the rest of the image with grey, and mozjpeg's error
//! manager drops warnings. Pillow refuses such a file unless
//! `ImageFile.LOAD_TRUNCATED_IMAGES` is set, and it is not by default
//! (<https://github.com/python-pillow/Pillow/blob/13.0.0/src/PIL/ImageFile.py>),
//! so transformers never trains on one: neither may we.
//!
//! The walk follows ITU T.81 §B.1: after SOI, each marker segment is skipped
//! by its length (so a JPEG thumbnail inside an EXIF APP1 segment, with its
//! own EOI, is skipped whole); after SOS, the entropy-coded data runs to the
//! next marker (0xFF followed by a byte that is neither 0x00, a stuffed
//! zero, nor RST0–7). The stream is complete when EOI is reached.

/// Start of image.
const SOI: u8 = 0xD8;
/// End of image.
const EOI: u8 = 0xD9;
/// Start of scan.
const SOS: u8 = 0xDA;
/// The standalone temporary marker (no length).
const TEM: u8 = 0x01;

/// Why a JPEG's structure is not a whole image.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    #[error(
        "the JPEG data ends after {len} bytes, before its end-of-image marker: the file is \
         truncated (Pillow, and so transformers, refuses it); export or download it again"
    )]
    Truncated { len: usize },
    #[error("the JPEG marker segment at byte {at} has the impossible length {length}")]
    BadSegment { at: usize, length: u16 },
}

/// What the walk found in a complete JPEG stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JpegLayout {
    /// `(width, height)` of the first frame header (`SOFn`), if any.
    pub frame: Option<(u32, u32)>,
}

/// Whether `bytes` starts like a JPEG (SOI, then a marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, SOI, 0xFF])
}

/// Walks the marker segments of a JPEG stream (which must start with SOI)
/// up to EOI.
pub fn scan(bytes: &[u8]) -> Result<JpegLayout, JpegError> {
    let truncated = || JpegError::Truncated { len: bytes.len() };
    let mut frame = None;
    let mut i = 2;
    loop {
        // libjpeg skips (with a warning) stray bytes before a marker, and
        // any number of 0xFF fill bytes may precede one.
        i += bytes
            .get(i..)
            .ok_or_else(truncated)?
            .iter()
            .position(|&b| b == 0xFF)
            .ok_or_else(truncated)?;
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let marker = *bytes.get(i).ok_or_else(truncated)?;
        i += 1;
        match marker {
            EOI => return Ok(JpegLayout { frame }),
            SOI | TEM | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let at = i - 2;
        let length = bytes
            .get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(truncated)?;
        if length < 2 {
            return Err(JpegError::BadSegment { at, length });
        }
        let end = i + usize::from(length);
        let segment = bytes.get(i + 2..end).ok_or_else(truncated)?;
        if is_frame_header(marker) && frame.is_none() {
            frame = frame_size(segment);
        }
        i = end;
        if marker == SOS {
            i = entropy_coded_end(bytes, i).ok_or_else(truncated)?;
        }
    }
}

/// SOF0–SOF15, except DHT (C4), JPG (C8) and DAC (CC).
fn is_frame_header(marker: u8) -> bool {
    (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// `(width, height)` from a frame header's payload: precision (1 byte),
/// lines (2), samples per line (2), ...
fn frame_size(segment: &[u8]) -> Option<(u32, u32)> {
    let height = u16::from_be_bytes([*segment.get(1)?, *segment.get(2)?]);
    let width = u16::from_be_bytes([*segment.get(3)?, *segment.get(4)?]);
    Some((u32::from(width), u32::from(height)))
}

/// The index of the marker that ends the entropy-coded data starting at
/// `start`; `None` when the data ends first.
fn entropy_coded_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut j = start;
    loop {
        j += bytes.get(j..)?.iter().position(|&b| b == 0xFF)?;
        match *bytes.get(j + 1)? {
            // A stuffed zero or a restart marker: still in the scan.
            0x00 | 0xD0..=0xD7 => j += 2,
            // A fill byte: the marker follows.
            0xFF => j += 1,
            _ => return Some(j),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden_jpeg() -> Vec<u8> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/resize/photo.jpg");
        std::fs::read(path).expect("golden JPEG")
    }

    /// A progressive JPEG (mozjpeg's default) of `w × h`.
    fn progressive(w: usize, h: usize) -> Vec<u8> {
        let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        compress.set_size(w, h);
        compress.set_progressive_mode();
        let mut started = compress.start_compress(Vec::new()).expect("start");
        let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        started.write_scanlines(&pixels).expect("write");
        started.finish().expect("finish")
    }

    #[test]
    fn whole_files_reach_eoi_and_cut_ones_do_not() {
        for bytes in [golden_jpeg(), progressive(40, 24)] {
            assert!(is_jpeg(&bytes));
            let layout = scan(&bytes).expect("whole");
            assert!(layout.frame.is_some());
            for cut in [3, 20, bytes.len() / 2, bytes.len() - 2, bytes.len() - 1] {
                assert_eq!(
                    scan(&bytes[..cut]),
                    Err(JpegError::Truncated { len: cut }),
                    "cut at {cut} of {}",
                    bytes.len()
                );
            }
            // Bytes after EOI do not matter.
            let mut trailing = bytes.clone();
            trailing.extend_from_slice(b"trailing");
            assert_eq!(scan(&trailing), Ok(layout));
        }
        assert_eq!(scan(&progressive(40, 24)).unwrap().frame, Some((40, 24)));
    }

    #[test]
    fn a_thumbnail_in_app1_does_not_end_the_image() {
        let photo = golden_jpeg();
        // APP1 "Exif" holding a whole JPEG (its own SOI … EOI) as a thumbnail.
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(&photo);
        let length = u16::try_from(payload.len() + 2).unwrap();
        let mut bytes = vec![0xFF, SOI, 0xFF, 0xE1];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&photo[2..]);
        let whole = scan(&bytes).expect("whole");
        assert_eq!(whole, scan(&photo).unwrap());
        // Cut inside the main image, after the thumbnail's EOI.
        let cut = bytes.len() - 100;
        assert_eq!(scan(&bytes[..cut]), Err(JpegError::Truncated { len: cut }));
    }

    #[test]
    fn the_declared_size_is_read_from_the_frame_header() {
        let mut bytes = golden_jpeg();
        let sof = bytes
            .windows(2)
            .position(|w| w[0] == 0xFF && is_frame_header(w[1]))
            .expect("SOF");
        // Lines then samples per line, after the length and the precision.
        bytes[sof + 5..sof + 7].copy_from_slice(&65_500_u16.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&65_000_u16.to_be_bytes());
        assert_eq!(scan(&bytes).unwrap().frame, Some((65_000, 65_500)));
    }

    #[test]
    fn an_impossible_segment_length_is_an_error() {
        let bytes = [0xFF, SOI, 0xFF, 0xE0, 0x00, 0x01, 0xFF, EOI];
        assert_eq!(
            scan(&bytes),
            Err(JpegError::BadSegment { at: 2, length: 1 })
        );
    }
}
