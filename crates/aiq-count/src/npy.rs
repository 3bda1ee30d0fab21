//! Import of activations exported from any framework as a NumPy `.npy` array of
//! little-endian float32, so TensorState's (or anyone's) captures can be counted here.
//!
//! The neuron axis is `channel_axis`; every other index (each image, each spatial position)
//! is one observed state, as in TensorState. A C-order array is read one outer block at a
//! time (all axes before the channel axis), so memory stays at one block of floats.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use aiq_io::{read_exact_or_truncated, IoError};
use aiq_states::{pack_planes, MAX_NEURONS};

use crate::{LayerCounter, LayerCounts};

const MAX_HEADER: usize = 1 << 20;
/// Floats read per batch of outer blocks.
const BATCH_FLOATS: usize = 1 << 20;

/// The parsed `.npy` header of an array we can count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub shape: Vec<u64>,
    /// Bytes before the data.
    pub data_offset: u64,
}

fn bad(name: &str, detail: impl Into<String>) -> IoError {
    IoError::Corrupt {
        name: name.to_string(),
        what: ".npy array".to_string(),
        detail: detail.into(),
    }
}

/// Reads and checks the header: version 1 to 3, `descr` `<f4`, C order.
pub fn read_npy_header(r: &mut impl Read, name: &str) -> Result<NpyHeader, IoError> {
    let mut pre = [0u8; 8];
    read_exact_or_truncated(r, &mut pre, name, "the .npy magic")?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad(name, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let (len, offset) = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            read_exact_or_truncated(r, &mut b, name, "the .npy header length")?;
            (u16::from_le_bytes(b) as usize, 10)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            read_exact_or_truncated(r, &mut b, name, "the .npy header length")?;
            (u32::from_le_bytes(b) as usize, 12)
        }
        v => return Err(bad(name, format!("unsupported .npy version {v}"))),
    };
    if len > MAX_HEADER {
        return Err(bad(name, format!("header of {len} bytes")));
    }
    let mut text = vec![0u8; len];
    read_exact_or_truncated(r, &mut text, name, "the .npy header")?;
    let text = String::from_utf8_lossy(&text);
    let value = |key: &str| -> Result<&str, IoError> {
        let at = text
            .find(&format!("'{key}'"))
            .ok_or_else(|| bad(name, format!("header has no '{key}'")))?;
        let rest = &text[at + key.len() + 2..];
        let colon = rest
            .find(':')
            .ok_or_else(|| bad(name, format!("no value for '{key}'")))?;
        Ok(rest[colon + 1..].trim_start())
    };
    let descr = value("descr")?;
    if !(descr.starts_with("'<f4'") || descr.starts_with("\"<f4\"")) {
        let shown: String = descr.chars().take(8).collect();
        return Err(bad(
            name,
            format!("expected little-endian float32 ('<f4'), found {shown}"),
        ));
    }
    if !value("fortran_order")?.starts_with("False") {
        return Err(bad(
            name,
            "Fortran-order arrays are not supported; save with C order",
        ));
    }
    let shape_text = value("shape")?;
    let close = shape_text
        .find(')')
        .filter(|_| shape_text.starts_with('('))
        .ok_or_else(|| bad(name, "malformed shape"))?;
    let shape = shape_text[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| bad(name, format!("malformed shape entry {s:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NpyHeader {
        shape,
        data_offset: offset + len as u64,
    })
}

/// Counts the states of one activation array stored in `path`, neurons along
/// `channel_axis`; `name` labels the layer.
pub fn count_npy(path: &Path, channel_axis: usize, name: &str) -> Result<LayerCounts, IoError> {
    let fname = path.display().to_string();
    let file = File::open(path).map_err(|e| IoError::io(&fname, e))?;
    let file_len = file.metadata().map_err(|e| IoError::io(&fname, e))?.len();
    let mut r = BufReader::with_capacity(1 << 16, file);
    let header = read_npy_header(&mut r, &fname)?;
    let shape = &header.shape;
    if channel_axis >= shape.len() {
        return Err(bad(
            &fname,
            format!(
                "channel axis {channel_axis} but the array has {} axes {shape:?}",
                shape.len()
            ),
        ));
    }
    let neurons = shape[channel_axis];
    if neurons == 0 || neurons > u64::from(MAX_NEURONS) {
        return Err(bad(
            &fname,
            format!("{neurons} neurons on axis {channel_axis} (expected 1 to {MAX_NEURONS})"),
        ));
    }
    let product = |dims: &[u64]| dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let sizes = (|| {
        let outer = product(&shape[..channel_axis])?;
        let inner = product(&shape[channel_axis + 1..])?;
        let data = outer
            .checked_mul(neurons)?
            .checked_mul(inner)?
            .checked_mul(4)?;
        Some((outer, inner, data))
    })();
    let (outer, inner, data) =
        sizes.ok_or_else(|| bad(&fname, format!("shape {shape:?} overflows")))?;
    let expected = header.data_offset.checked_add(data);
    if expected != Some(file_len) {
        return Err(if expected.is_some_and(|e| e > file_len) {
            IoError::Truncated {
                name: fname,
                what: format!(
                    "shape {shape:?} needs {data} bytes of data, the file holds {}",
                    file_len.saturating_sub(header.data_offset)
                ),
            }
        } else {
            bad(
                &fname,
                format!(
                    "{} bytes after the data of shape {shape:?}",
                    file_len - header.data_offset - data
                ),
            )
        });
    }
    // The file really holds `data` bytes, so a block fits in memory as well as the file does.
    let block = (neurons * inner) as usize;
    let per_batch = (BATCH_FLOATS / block.max(1)).max(1) as u64;
    let mut counter = LayerCounter::new(neurons as u32);
    let (mut bytes, mut floats, mut packed) = (Vec::new(), Vec::new(), Vec::new());
    let mut done = 0u64;
    while done < outer {
        let n = per_batch.min(outer - done);
        bytes.clear();
        read_exact_vec(&mut r, &mut bytes, n * block as u64 * 4, &fname)?;
        floats.clear();
        floats.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        packed.clear();
        for img in floats.chunks_exact(block) {
            pack_planes(img, neurons as usize, inner as usize, &mut packed);
        }
        counter.add(&packed);
        done += n;
    }
    Ok(counter.finish(name, u32::try_from(inner).unwrap_or(0)))
}

fn read_exact_vec(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    len: u64,
    name: &str,
) -> Result<(), IoError> {
    r.by_ref()
        .take(len)
        .read_to_end(buf)
        .map_err(|e| IoError::io(name, e))?;
    if (buf.len() as u64) < len {
        return Err(IoError::Truncated {
            name: name.to_string(),
            what: "inside the .npy data".to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_npy(path: &Path, shape: &[u64], data: &[f32]) {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let tuple = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut f = File::create(path).unwrap();
        f.write_all(b"\x93NUMPY\x01\x00").unwrap();
        f.write_all(&(h.len() as u16).to_le_bytes()).unwrap();
        f.write_all(h.as_bytes()).unwrap();
        for x in data {
            f.write_all(&x.to_le_bytes()).unwrap();
        }
    }

    #[test]
    fn nchw_states_are_per_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        // 2 images, 2 channels, 3 positions: channel 0 on at positions 0 and 2 of image 0.
        let data = [
            1.0,
            0.0,
            1.0,
            /* c1 */ 0.0,
            0.0,
            5.0,
            /* img 1 */ 0.0,
            0.0,
            0.0,
            -1.0,
            f32::NAN,
            2.0,
        ];
        write_npy(&p, &[2, 2, 3], &data);
        let c = count_npy(&p, 1, "conv").unwrap();
        assert_eq!((c.observations, c.states_per_input), (6, 3));
        // States: img0 -> 0b01, 0b00, 0b11; img1 -> 0, 0, 0b10.
        assert_eq!(c.states, vec![0, 1, 2, 3]);
        assert_eq!(c.counts, vec![3, 1, 1, 1]);
        // The same array with the channel axis last is a different question.
        let c = count_npy(&p, 2, "x").unwrap();
        assert_eq!((c.neurons, c.observations), (3, 4));
    }

    #[test]
    fn bad_arrays_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        write_npy(&p, &[4, 3], &[1.0; 12]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        let e = count_npy(&p, 1, "x").unwrap_err();
        assert!(matches!(e, IoError::Truncated { .. }), "{e}");
        write_npy(&p, &[4, 3], &[1.0; 12]);
        let e = count_npy(&p, 2, "x").unwrap_err();
        assert!(e.to_string().contains("channel axis 2"), "{e}");
        write_npy(&p, &[1 << 40, 1 << 30], &[]);
        let e = count_npy(&p, 1, "x").unwrap_err();
        assert!(e.to_string().contains("a.npy"), "{e}");
        std::fs::write(&p, b"PK\x03\x04 not npy").unwrap();
        assert!(count_npy(&p, 1, "x").is_err());
        let mut f64_file = bytes.clone();
        let at = f64_file.windows(3).position(|w| w == b"<f4").unwrap();
        f64_file[at + 2] = b'8';
        std::fs::write(&p, &f64_file).unwrap();
        let e = count_npy(&p, 1, "x").unwrap_err();
        assert!(e.to_string().contains("float32"), "{e}");
    }
}
