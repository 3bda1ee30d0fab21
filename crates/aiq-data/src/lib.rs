//! Data sets for the aiq pipeline: an IDX reader (raw or gzip) and loaders for MNIST,
//! Fashion-MNIST and EMNIST digits, with the paper's label randomization (§3.3).
//!
//! Everything a loader returns has been validated: the magic number, the 28×28 image size,
//! image and label counts that agree, labels below 10. Pixels are `f32` in `[0, 1]`, one image
//! per row, so a split is ready to feed a network.
//!
//! ```no_run
//! use aiq_data::{load, randomize_labels, DatasetKind};
//! let mut data = load("data/mnist".as_ref(), DatasetKind::Mnist)?;
//! let changed = randomize_labels(&mut data.train.labels, 0.25, 7)?;
//! assert_eq!(changed, 15_000);
//! # Ok::<(), aiq_data::DataError>(())
//! ```

mod idx;
mod randomize;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

pub use idx::{read_idx, Idx};
pub use randomize::randomize_labels;

/// The side of every supported image, in pixels.
pub const SIDE: usize = 28;
/// The number of classes of every supported data set.
pub const CLASSES: usize = 10;

/// Errors of reading a data set. Each names the file and what was expected versus found.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: no {what} file (looked for {tried})")]
    NotFound {
        dir: PathBuf,
        what: String,
        tried: String,
    },
    #[error("{path}: not an IDX file of unsigned bytes: magic {found:#010x}, expected 0x00000801 (labels) or 0x00000803 (images)")]
    BadMagic { path: PathBuf, found: u32 },
    #[error("{path}: expected {expected}, found {found}")]
    Shape {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error(
        "{path}: truncated: the header promises {expected} bytes of data, the file holds {found}"
    )]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: {found} bytes of data after the {expected} the header promises")]
    TrailingData {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{images}: {n_images} images, but {labels} holds {n_labels} labels")]
    CountMismatch {
        images: PathBuf,
        n_images: usize,
        labels: PathBuf,
        n_labels: usize,
    },
    #[error("{path}: label {label} at index {index}, expected a class below {CLASSES}")]
    BadLabel {
        path: PathBuf,
        index: usize,
        label: u8,
    },
    #[error("label randomization fraction {0} is not in [0, 1]")]
    Fraction(f64),
    #[error("unknown data set {0:?} (expected mnist, fashion or emnist-digits)")]
    UnknownDataset(String),
}

/// The data sets the paper uses, all ten classes of 28×28 grey images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST digits, 60k/10k.
    Mnist,
    /// Fashion-MNIST, 60k/10k, same layout as MNIST.
    Fashion,
    /// EMNIST digits, 240k/40k, images stored transposed (the loader turns them back).
    EmnistDigits,
}

impl DatasetKind {
    /// File name stem of a split, before `-images`/`-labels`.
    fn stem(self, split: SplitName) -> &'static str {
        match (self, split) {
            (DatasetKind::Mnist | DatasetKind::Fashion, SplitName::Train) => "train",
            (DatasetKind::Mnist | DatasetKind::Fashion, SplitName::Test) => "t10k",
            (DatasetKind::EmnistDigits, SplitName::Train) => "emnist-digits-train",
            (DatasetKind::EmnistDigits, SplitName::Test) => "emnist-digits-test",
        }
    }

    /// EMNIST stores every image transposed relative to MNIST.
    fn transposed(self) -> bool {
        self == DatasetKind::EmnistDigits
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::Fashion => "fashion",
            DatasetKind::EmnistDigits => "emnist-digits",
        })
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion" | "fashion-mnist" => Ok(DatasetKind::Fashion),
            "emnist-digits" | "emnist" => Ok(DatasetKind::EmnistDigits),
            other => Err(DataError::UnknownDataset(other.to_string())),
        }
    }
}

/// Which half of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitName {
    Train,
    Test,
}

impl fmt::Display for SplitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SplitName::Train => "train",
            SplitName::Test => "test",
        })
    }
}

impl FromStr for SplitName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(SplitName::Train),
            "test" => Ok(SplitName::Test),
            other => Err(format!("unknown split {other:?} (expected train or test)")),
        }
    }
}

/// A pixel byte as the loaders give it: `b / 255` in `[0, 1]`. The one definition, so that
/// code keeping pixels as bytes (the training batches do) gets the same floats back.
#[inline(always)]
pub fn pixel(b: u8) -> f32 {
    f32::from(b) / 255.0
}

/// One split: images as rows of `rows·cols` pixels in `[0, 1]`, and their labels.
#[derive(Debug, Clone)]
pub struct Split {
    /// `(n, rows·cols)`, row-major, pixel `(r, c)` of image `i` at `[i, r·cols + c]`.
    pub images: Array2<f32>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A data set's training and test splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub train: Split,
    pub test: Split,
}

/// Loads both splits of `kind` from `dir`.
pub fn load(dir: &Path, kind: DatasetKind) -> Result<Dataset, DataError> {
    Ok(Dataset {
        kind,
        train: load_split(dir, kind, SplitName::Train)?,
        test: load_split(dir, kind, SplitName::Test)?,
    })
}

/// Loads one split of `kind` from `dir`, accepting `NAME-images-idx3-ubyte` and
/// `NAME-images.idx3-ubyte`, raw or with `.gz`.
pub fn load_split(dir: &Path, kind: DatasetKind, split: SplitName) -> Result<Split, DataError> {
    let bytes = load_split_bytes(dir, kind, split)?;
    let pixels = bytes.rows * bytes.cols;
    let images = bytes.pixels.iter().map(|&b| pixel(b)).collect();
    Ok(Split {
        images: Array2::from_shape_vec((bytes.labels.len(), pixels), images)
            .expect("one row per label"),
        labels: bytes.labels,
        rows: bytes.rows,
        cols: bytes.cols,
    })
}

/// One split with its pixels as the bytes they are stored as (a quarter of the memory of
/// [`Split`]'s floats): for callers that convert a few images at a time with [`pixel`].
#[derive(Debug, Clone)]
pub struct SplitBytes {
    /// `n·rows·cols` bytes, image after image, in [`Split::images`]'s order (EMNIST
    /// already transposed).
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

/// [`load_split`], the pixels left as bytes.
pub fn load_split_bytes(
    dir: &Path,
    kind: DatasetKind,
    split: SplitName,
) -> Result<SplitBytes, DataError> {
    let stem = kind.stem(split);
    let images_path = find(dir, stem, "images", 3)?;
    let labels_path = find(dir, stem, "labels", 1)?;
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    split_from_idx(kind, images, &images_path, labels, &labels_path)
}

/// Validates an image IDX and a label IDX as a split of `kind`.
fn split_from_idx(
    kind: DatasetKind,
    images: Idx,
    images_path: &Path,
    labels: Idx,
    labels_path: &Path,
) -> Result<SplitBytes, DataError> {
    let shape_err = |path: &Path, expected: &str, dims: &[usize]| DataError::Shape {
        path: path.to_path_buf(),
        expected: expected.to_string(),
        found: format!("dimensions {dims:?}"),
    };
    let &[n, rows, cols] = images.dims.as_slice() else {
        return Err(shape_err(
            images_path,
            "3 dimensions (n, 28, 28)",
            &images.dims,
        ));
    };
    if (rows, cols) != (SIDE, SIDE) {
        return Err(shape_err(images_path, "28×28 images", &images.dims));
    }
    let &[n_labels] = labels.dims.as_slice() else {
        return Err(shape_err(labels_path, "1 dimension (n)", &labels.dims));
    };
    if n != n_labels {
        return Err(DataError::CountMismatch {
            images: images_path.to_path_buf(),
            n_images: n,
            labels: labels_path.to_path_buf(),
            n_labels,
        });
    }
    if let Some((index, &label)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= CLASSES)
    {
        return Err(DataError::BadLabel {
            path: labels_path.to_path_buf(),
            index,
            label,
        });
    }
    let pixels = if kind.transposed() {
        // EMNIST: out[r][c] = raw[c][r].
        let mut out = vec![0u8; images.data.len()];
        for (dst, src) in out
            .chunks_exact_mut(rows * cols)
            .zip(images.data.chunks_exact(rows * cols))
        {
            for r in 0..rows {
                for c in 0..cols {
                    dst[r * cols + c] = src[c * rows + r];
                }
            }
        }
        out
    } else {
        images.data
    };
    Ok(SplitBytes {
        pixels,
        labels: labels.data,
        rows,
        cols,
    })
}

/// Finds `STEM-WHAT-idxD-ubyte` or `STEM-WHAT.idxD-ubyte`, each raw or `.gz`, in `dir`.
fn find(dir: &Path, stem: &str, what: &str, dims: u8) -> Result<PathBuf, DataError> {
    let names: Vec<String> = ["-", "."]
        .iter()
        .flat_map(|sep| {
            let base = format!("{stem}-{what}{sep}idx{dims}-ubyte");
            [base.clone(), format!("{base}.gz")]
        })
        .collect();
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::NotFound {
            dir: dir.to_path_buf(),
            what: format!("{stem} {what}"),
            tried: names.join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::tests::write_idx;

    fn write_split(dir: &Path, stem: &str, images: &[[u8; 784]], labels: &[u8], gz: bool) {
        let flat: Vec<u8> = images.iter().flatten().copied().collect();
        let ext = if gz { ".gz" } else { "" };
        write_idx(
            &dir.join(format!("{stem}-images-idx3-ubyte{ext}")),
            3,
            &[images.len() as u32, 28, 28],
            &flat,
            gz,
        );
        write_idx(
            &dir.join(format!("{stem}-labels-idx1-ubyte{ext}")),
            1,
            &[labels.len() as u32],
            labels,
            gz,
        );
    }

    fn image(seed: u8) -> [u8; 784] {
        let mut img = [0u8; 784];
        for (i, p) in img.iter_mut().enumerate() {
            *p = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        img
    }

    #[test]
    fn loads_both_splits_with_pixels_in_unit_range() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", &[image(1), image(2)], &[3, 9], false);
        write_split(dir.path(), "t10k", &[image(3)], &[0], true);
        let d = load(dir.path(), DatasetKind::Mnist).unwrap();
        assert_eq!(d.train.labels, vec![3, 9]);
        assert_eq!(d.test.labels, vec![0]);
        assert_eq!(d.train.images.dim(), (2, 784));
        assert_eq!(d.train.images[[1, 5]], f32::from(image(2)[5]) / 255.0);
        assert!(d.train.images.iter().all(|&p| (0.0..=1.0).contains(&p)));
        assert_eq!(d.train.images.iter().cloned().fold(0.0, f32::max), 1.0);
    }

    #[test]
    fn emnist_images_are_transposed_back() {
        let dir = tempfile::tempdir().unwrap();
        let raw = image(0);
        write_split(dir.path(), "emnist-digits-test", &[raw], &[4], true);
        let s = load_split(dir.path(), DatasetKind::EmnistDigits, SplitName::Test).unwrap();
        for r in 0..28 {
            for c in 0..28 {
                assert_eq!(
                    s.images[[0, r * 28 + c]],
                    f32::from(raw[c * 28 + r]) / 255.0
                );
            }
        }
        // The same bytes as MNIST are not transposed.
        write_split(dir.path(), "t10k", &[raw], &[4], false);
        let m = load_split(dir.path(), DatasetKind::Mnist, SplitName::Test).unwrap();
        assert_eq!(m.images[[0, 1]], f32::from(raw[1]) / 255.0);
        assert_ne!(m.images, s.images);
        // The bytes route gives the same pixels, transposed back too.
        for (kind, split) in [(DatasetKind::EmnistDigits, &s), (DatasetKind::Mnist, &m)] {
            let b = load_split_bytes(dir.path(), kind, SplitName::Test).unwrap();
            let floats: Vec<f32> = b.pixels.iter().map(|&p| pixel(p)).collect();
            assert_eq!(floats, split.images.as_slice().unwrap(), "{kind}");
            assert_eq!((b.labels.as_slice(), b.rows, b.cols), (&[4u8][..], 28, 28));
        }
    }

    #[test]
    fn accepts_dotted_names() {
        let dir = tempfile::tempdir().unwrap();
        write_idx(
            &dir.path().join("t10k-images.idx3-ubyte"),
            3,
            &[1, 28, 28],
            &image(5),
            false,
        );
        write_idx(
            &dir.path().join("t10k-labels.idx1-ubyte"),
            1,
            &[1],
            &[7],
            false,
        );
        let s = load_split(dir.path(), DatasetKind::Fashion, SplitName::Test).unwrap();
        assert_eq!(s.labels, vec![7]);
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), DatasetKind::Mnist).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataError::NotFound { .. }));
        assert!(
            msg.contains("train-images-idx3-ubyte") && msg.contains("train-images.idx3-ubyte.gz"),
            "{msg}"
        );
    }

    #[test]
    fn counts_that_disagree_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "t10k", &[image(1), image(2)], &[1, 2], false);
        write_idx(
            &dir.path().join("t10k-labels-idx1-ubyte"),
            1,
            &[3],
            &[1, 2, 3],
            false,
        );
        let err = load_split(dir.path(), DatasetKind::Mnist, SplitName::Test).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::CountMismatch {
                    n_images: 2,
                    n_labels: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn labels_of_ten_or_more_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "t10k", &[image(1), image(2)], &[1, 10], false);
        let err = load_split(dir.path(), DatasetKind::Mnist, SplitName::Test).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::BadLabel {
                    index: 1,
                    label: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn wrong_image_size_and_swapped_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_idx(
            &dir.path().join("t10k-images-idx3-ubyte"),
            3,
            &[1, 32, 32],
            &[0; 1024],
            false,
        );
        write_idx(
            &dir.path().join("t10k-labels-idx1-ubyte"),
            1,
            &[1],
            &[1],
            false,
        );
        let err = load_split(dir.path(), DatasetKind::Mnist, SplitName::Test).unwrap_err();
        assert!(err.to_string().contains("28×28"), "{err}");
        // A label file where the images should be.
        write_idx(
            &dir.path().join("t10k-images-idx3-ubyte"),
            1,
            &[1],
            &[1],
            false,
        );
        let err = load_split(dir.path(), DatasetKind::Mnist, SplitName::Test).unwrap_err();
        assert!(matches!(err, DataError::Shape { .. }), "{err}");
    }

    #[test]
    fn loads_the_real_fixture_subset() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mnist");
        let d = load(&dir, DatasetKind::Mnist).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (600, 200));
        // MNIST's first training digit is a 5 and its first test digit a 7.
        assert_eq!((d.train.labels[0], d.test.labels[0]), (5, 7));
        for split in [&d.train, &d.test] {
            let mut seen = [false; CLASSES];
            split
                .labels
                .iter()
                .for_each(|&l| seen[usize::from(l)] = true);
            assert!(seen.iter().all(|&s| s), "every class occurs");
        }
        // Real digits: mostly black background, some full-intensity strokes.
        let dark = d.test.images.iter().filter(|&&p| p == 0.0).count() as f64;
        assert!(dark / d.test.images.len() as f64 > 0.7);
    }

    #[test]
    fn dataset_names_round_trip() {
        for k in [
            DatasetKind::Mnist,
            DatasetKind::Fashion,
            DatasetKind::EmnistDigits,
        ] {
            assert_eq!(k.to_string().parse::<DatasetKind>().unwrap(), k);
        }
        assert!("cifar".parse::<DatasetKind>().is_err());
    }
}
