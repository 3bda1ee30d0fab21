//! The IDX format of MNIST and its relatives: a 4-byte magic (`0, 0, type, ndims`), `ndims`
//! big-endian `u32` dimensions, then the data. Only unsigned bytes (type `0x08`) occur in the
//! supported data sets. Files may be gzip-compressed; that is recognised by content, not name.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::DataError;

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a raw or gzip IDX file of unsigned bytes, checking that it holds exactly the data its
/// header promises. A raw file's size is checked before anything is allocated; a gzip file's
/// data is read only as far as the header promises plus one byte, so a lying header costs no
/// more memory than the file really holds.
pub fn read_idx(path: &Path) -> Result<Idx, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut first = [0u8; 2];
    let gz = read_up_to(&mut reader, &mut first).map_err(io)? == 2 && first == [0x1f, 0x8b];
    let chained = first.as_slice().chain(reader);
    if gz {
        decode(path, GzDecoder::new(chained), None)
    } else {
        decode(path, chained, Some(file_len))
    }
}

fn decode(path: &Path, mut r: impl Read, file_len: Option<u64>) -> Result<Idx, DataError> {
    let p = || path.to_path_buf();
    let io = |source| DataError::Io { path: p(), source };
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut r, &mut magic).map_err(io)?;
    if got < 4 {
        return Err(DataError::Truncated {
            path: p(),
            expected: 4,
            found: got as u64,
        });
    }
    let ndims = usize::from(magic[3]);
    if magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || !(1..=4).contains(&ndims) {
        return Err(DataError::BadMagic {
            path: p(),
            found: u32::from_be_bytes(magic),
        });
    }
    let mut raw_dims = vec![0u8; 4 * ndims];
    let got = read_up_to(&mut r, &mut raw_dims).map_err(io)?;
    if got < raw_dims.len() {
        return Err(DataError::Truncated {
            path: p(),
            expected: raw_dims.len() as u64,
            found: got as u64,
        });
    }
    let dims: Vec<usize> = raw_dims
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| DataError::Shape {
            path: p(),
            expected: "dimensions whose product fits in 64 bits".to_string(),
            found: format!("{dims:?}"),
        })?;
    let header = 4 + raw_dims.len() as u64;
    if let Some(len) = file_len {
        let found = len.saturating_sub(header);
        if found < expected {
            return Err(DataError::Truncated {
                path: p(),
                expected,
                found,
            });
        }
        if found > expected {
            return Err(DataError::TrailingData {
                path: p(),
                expected,
                found: found - expected,
            });
        }
    }
    // Never trust the header for the allocation: grow with the data actually read.
    let mut data = Vec::with_capacity(expected.min(file_len.unwrap_or(1 << 24)) as usize);
    (&mut r)
        .take(expected.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(io)?;
    let found = data.len() as u64;
    if found < expected {
        return Err(DataError::Truncated {
            path: p(),
            expected,
            found,
        });
    }
    if found > expected {
        let mut rest = Vec::new();
        let extra = r.read_to_end(&mut rest).map_err(io)? as u64 + 1;
        return Err(DataError::TrailingData {
            path: p(),
            expected,
            found: extra,
        });
    }
    Ok(Idx { dims, data })
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    /// Writes an IDX file of unsigned bytes, optionally gzip-compressed.
    pub(crate) fn write_idx(path: &Path, ndims: u8, dims: &[u32], data: &[u8], gz: bool) {
        let mut bytes = vec![0, 0, 8, ndims];
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(data);
        if gz {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&bytes).unwrap();
            bytes = enc.finish().unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }

    fn sample(dir: &Path, gz: bool) -> PathBuf {
        let p = dir.join(if gz { "a.gz" } else { "a" });
        write_idx(&p, 3, &[2, 3, 4], &(0..24).collect::<Vec<u8>>(), gz);
        p
    }

    #[test]
    fn raw_and_gzip_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let raw = read_idx(&sample(dir.path(), false)).unwrap();
        let gz = read_idx(&sample(dir.path(), true)).unwrap();
        assert_eq!(raw.dims, vec![2, 3, 4]);
        assert_eq!(raw.data, (0..24).collect::<Vec<u8>>());
        assert_eq!(raw, gz);
    }

    #[test]
    fn truncated_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        for gz in [false, true] {
            write_idx(&p, 1, &[10], &[1; 7], gz);
            let err = read_idx(&p).unwrap_err();
            assert!(
                matches!(
                    err,
                    DataError::Truncated {
                        expected: 10,
                        found: 7,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains(&p.display().to_string()));
        }
        // Cut inside the header.
        std::fs::write(&p, [0, 0, 8, 3, 0, 0]).unwrap();
        assert!(matches!(
            read_idx(&p).unwrap_err(),
            DataError::Truncated { .. }
        ));
        // A gzip stream cut short is an I/O error naming the file, not a panic.
        write_idx(&p, 1, &[1000], &[5; 1000], true);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_idx(&p).unwrap_err();
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
    }

    #[test]
    fn trailing_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        write_idx(&p, 1, &[3], &[1, 2, 3, 4], false);
        assert!(matches!(
            read_idx(&p).unwrap_err(),
            DataError::TrailingData { found: 1, .. }
        ));
        write_idx(&p, 1, &[3], &[1, 2, 3, 4, 5], true);
        assert!(matches!(
            read_idx(&p).unwrap_err(),
            DataError::TrailingData { found: 2, .. }
        ));
    }

    #[test]
    fn non_idx_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        std::fs::write(&p, b"\x89PNG\r\n\x1a\nrest of a picture").unwrap();
        let err = read_idx(&p).unwrap_err();
        assert!(matches!(err, DataError::BadMagic { .. }), "{err}");
        // Floats (type 0x0d) are IDX but not what these data sets hold.
        write_idx(&p, 1, &[1], &[0; 4], false);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[2] = 0x0d;
        std::fs::write(&p, bytes).unwrap();
        assert!(matches!(
            read_idx(&p).unwrap_err(),
            DataError::BadMagic { .. }
        ));
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(
            read_idx(&p).unwrap_err(),
            DataError::Truncated { .. }
        ));
    }

    #[test]
    fn absurd_dimensions_allocate_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge");
        // Claims 4e9 × 4e9 × 4e9 bytes: overflows u64.
        write_idx(&p, 3, &[u32::MAX; 3], &[0; 16], false);
        assert!(matches!(read_idx(&p).unwrap_err(), DataError::Shape { .. }));
        // Claims 4 GB of data, holds 16 bytes: raw and gzip both refuse without allocating it.
        write_idx(&p, 1, &[u32::MAX], &[0; 16], false);
        assert!(matches!(
            read_idx(&p).unwrap_err(),
            DataError::Truncated { .. }
        ));
        write_idx(&p, 1, &[u32::MAX], &[0; 16], true);
        assert!(matches!(
            read_idx(&p).unwrap_err(),
            DataError::Truncated { found: 16, .. }
        ));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_idx(Path::new("/nonexistent/t10k-images-idx3-ubyte")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/t10k-images-idx3-ubyte: "),
            "{err}"
        );
    }
}
