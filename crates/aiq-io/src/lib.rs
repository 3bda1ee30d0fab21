//! File and pipe plumbing shared by every stage of the aiq pipeline.
//!
//! Every stage reads a file or standard input and writes a file or standard output, so the
//! rules that keep data safe live here once:
//!
//! - [`Output`]: a file output is written to a temporary file in the same directory and
//!   renamed into place by [`Output::commit`], so a killed run never leaves a half file under
//!   the final name; binary data is never written to a terminal.
//! - [`StreamKind`]: every binary stream starts with an 8-byte magic and a `u32` format
//!   version, so a reader can tell a model from a states dump from a counts file, and say so.
//! - [`decode_bounded`]: every bincode decode is limited by what the input can really hold.
//! - [`Provenance`]: every output records the tool, its version and its arguments.
//!
//! ```
//! use aiq_io::StreamKind;
//! let mut header = Vec::new();
//! StreamKind::Counts.write_header(&mut header, 1).unwrap();
//! let (kind, version) = StreamKind::read_header(&mut header.as_slice(), "<mem>").unwrap();
//! assert_eq!((kind, version), (StreamKind::Counts, 1));
//! ```

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Errors of the shared plumbing. Each names the file (or `<stdin>`/`<stdout>`) it is about.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{name}: {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{name}: refusing to write binary data to a terminal; give -o FILE or pipe the output"
    )]
    Terminal { name: String },
    #[error("{name}: not an aiq stream (expected one of the magics {expected}, found {found:?})")]
    BadMagic {
        name: String,
        expected: String,
        found: String,
    },
    #[error("{name}: stream ends early: {what}")]
    Truncated { name: String, what: String },
    #[error("{name}: expected a {expected} stream, found a {found} stream")]
    WrongKind {
        name: String,
        expected: StreamKind,
        found: StreamKind,
    },
    #[error("{name}: {kind} format version {found} is not supported (this build reads version {supported})")]
    Version {
        name: String,
        kind: StreamKind,
        found: u32,
        supported: u32,
    },
    #[error("{name}: corrupt {what}: {detail}")]
    Corrupt {
        name: String,
        what: String,
        detail: String,
    },
}

impl IoError {
    /// True when the error is a closed pipe (`| head`): stages end quietly on it.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, IoError::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }

    pub fn io(name: impl Into<String>, source: io::Error) -> Self {
        IoError::Io {
            name: name.into(),
            source,
        }
    }
}

/// True for an `io::Error` (anywhere in an error chain) that is a closed pipe.
pub fn is_broken_pipe(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::BrokenPipe {
                return true;
            }
        }
        if let Some(io) = e.downcast_ref::<IoError>() {
            if io.is_broken_pipe() {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// The kinds of binary stream the pipeline exchanges, told apart by their first 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// A trained model (`train` output), defined in `aiq-train`.
    Model,
    /// Packed per-layer states of a data set (`dump-states` output), defined in `aiq-states`.
    States,
    /// Distinct states and their counts (`count-states` output), defined in `aiq-count`.
    Counts,
}

impl StreamKind {
    pub const ALL: [StreamKind; 3] = [StreamKind::Model, StreamKind::States, StreamKind::Counts];

    pub const fn magic(self) -> &'static [u8; 8] {
        match self {
            StreamKind::Model => b"AIQMODEL",
            StreamKind::States => b"AIQSTATE",
            StreamKind::Counts => b"AIQCOUNT",
        }
    }

    /// Writes the magic and the format version.
    pub fn write_header(self, w: &mut impl Write, version: u32) -> io::Result<()> {
        w.write_all(self.magic())?;
        w.write_all(&version.to_le_bytes())
    }

    /// Reads a magic and a version; `name` is the file name used in errors.
    pub fn read_header(r: &mut impl Read, name: &str) -> Result<(StreamKind, u32), IoError> {
        let mut buf = [0u8; 12];
        read_exact_or_truncated(r, &mut buf, name, "the 12-byte stream header")?;
        let kind = StreamKind::ALL
            .into_iter()
            .find(|k| k.magic() == &buf[..8])
            .ok_or_else(|| IoError::BadMagic {
                name: name.to_string(),
                expected: StreamKind::ALL
                    .iter()
                    .map(|k| String::from_utf8_lossy(k.magic()).into_owned())
                    .collect::<Vec<_>>()
                    .join(", "),
                found: String::from_utf8_lossy(&buf[..8]).into_owned(),
            })?;
        let version = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
        Ok((kind, version))
    }

    /// Reads a header and checks it is `self` at exactly `version`.
    pub fn expect_header(self, r: &mut impl Read, name: &str, version: u32) -> Result<(), IoError> {
        let (kind, found) = StreamKind::read_header(r, name)?;
        self.check(kind, found, name, version)
    }

    /// Checks an already-read header against the expected kind and version.
    pub fn check(
        self,
        kind: StreamKind,
        found: u32,
        name: &str,
        version: u32,
    ) -> Result<(), IoError> {
        if kind != self {
            return Err(IoError::WrongKind {
                name: name.to_string(),
                expected: self,
                found: kind,
            });
        }
        if found != version {
            return Err(IoError::Version {
                name: name.to_string(),
                kind,
                found,
                supported: version,
            });
        }
        Ok(())
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamKind::Model => "model",
            StreamKind::States => "states",
            StreamKind::Counts => "counts",
        })
    }
}

/// Reads until `buf` is full or the input ends; the bytes read (fewer than `buf.len()` only
/// at the end of the input).
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `read_exact` that reports a short read as [`IoError::Truncated`] naming `what`.
pub fn read_exact_or_truncated(
    r: &mut impl Read,
    buf: &mut [u8],
    name: &str,
    what: &str,
) -> Result<(), IoError> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(IoError::Truncated {
            name: name.to_string(),
            what: format!("missing {what}"),
        }),
        Err(e) => Err(IoError::io(name, e)),
    }
}

/// The bincode configuration of every aiq stream: fixed-width little-endian integers.
/// Fixed widths keep the layout documentable in ARCHITECTURE.md.
fn bincode_options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
}

/// Encodes `value` with the project's bincode options.
pub fn encode(w: &mut impl Write, value: &impl Serialize, name: &str) -> Result<(), IoError> {
    use bincode::Options;
    bincode_options()
        .serialize_into(w, value)
        .map_err(|e| bincode_error(name, "record", *e))
}

/// Serialized size of `value` with the project's options.
pub fn encoded_len(value: &impl Serialize) -> u64 {
    use bincode::Options;
    bincode_options().serialized_size(value).unwrap_or(u64::MAX)
}

/// Decodes one value, allocating at most `limit` bytes for it (bincode counts every
/// length prefix against the limit before allocating), so a header claiming absurd sizes
/// fails cleanly instead of exhausting memory.
pub fn decode_bounded<T: DeserializeOwned>(
    r: &mut impl Read,
    limit: u64,
    name: &str,
    what: &str,
) -> Result<T, IoError> {
    use bincode::Options;
    bincode_options()
        .with_limit(limit)
        .deserialize_from(r)
        .map_err(|e| bincode_error(name, what, *e))
}

fn bincode_error(name: &str, what: &str, e: bincode::ErrorKind) -> IoError {
    match e {
        bincode::ErrorKind::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            IoError::Truncated {
                name: name.to_string(),
                what: format!("inside the {what}"),
            }
        }
        bincode::ErrorKind::Io(io) => IoError::io(name, io),
        bincode::ErrorKind::SizeLimit => IoError::Corrupt {
            name: name.to_string(),
            what: what.to_string(),
            detail: "claims more data than the format allows".to_string(),
        },
        other => IoError::Corrupt {
            name: name.to_string(),
            what: what.to_string(),
            detail: other.to_string(),
        },
    }
}

/// What produced an output file: recorded in every header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The tool that wrote the file, e.g. `train`.
    pub tool: String,
    /// The aiq version (`CARGO_PKG_VERSION` of the writing binary).
    pub version: String,
    /// The full command line.
    pub args: Vec<String>,
    /// Seconds since the Unix epoch when the file was written.
    pub created_unix: u64,
}

impl Provenance {
    /// Provenance of the running process.
    pub fn current(tool: &str, version: &str) -> Self {
        Provenance {
            tool: tool.to_string(),
            version: version.to_string(),
            args: std::env::args().collect(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// A stream to read: bytes already in memory (a mapped file, or a test's buffer), which a
/// reader may use where they lie, or any reader.
pub enum Source<'a> {
    Bytes(&'a [u8]),
    Reader(Box<dyn Read + Send + 'a>),
}

impl fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Bytes(b) => write!(f, "Source::Bytes({} bytes)", b.len()),
            Source::Reader(_) => f.write_str("Source::Reader"),
        }
    }
}

impl<'a, R: Read + Send + 'a> From<R> for Source<'a> {
    fn from(r: R) -> Self {
        Source::Reader(Box::new(r))
    }
}

impl<'a> Source<'a> {
    /// Reads the magic and version, as [`StreamKind::read_header`] does.
    pub fn read_header(&mut self, name: &str) -> Result<(StreamKind, u32), IoError> {
        match self {
            Source::Bytes(b) => StreamKind::read_header(b, name),
            Source::Reader(r) => StreamKind::read_header(r, name),
        }
    }

    /// What is left, as a reader.
    pub fn into_reader(self) -> Box<dyn Read + Send + 'a> {
        match self {
            Source::Bytes(b) => Box::new(b),
            Source::Reader(r) => r,
        }
    }
}

/// An input: a file, or standard input for `-` (or no path).
pub struct Input {
    name: String,
    reader: Box<dyn Read + Send>,
    /// The whole file mapped into memory ([`Input::open_mapped`]).
    map: Option<memmap2::Mmap>,
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input")
            .field("name", &self.name)
            .field("mapped", &self.map.is_some())
            .finish()
    }
}

impl Input {
    /// Opens `path`; `None` or `-` is standard input.
    pub fn open(path: Option<&Path>) -> Result<Self, IoError> {
        Self::open_with(path, None)
    }

    /// Opens `path` as [`Input::open`] does, and maps a regular file that holds a `kind`
    /// stream into memory as well, so that a reader can take its bytes from
    /// [`source`](Input::source) without copying them: reading a 22 MB states file was
    /// 6–8 ms of copying on the critical path of `count-states`. Other files (a 4 MB counts
    /// file was read faster than mapped) and standard input are read as usual.
    pub fn open_mapped(path: Option<&Path>, kind: StreamKind) -> Result<Self, IoError> {
        Self::open_with(path, Some(kind))
    }

    fn open_with(path: Option<&Path>, map_kind: Option<StreamKind>) -> Result<Self, IoError> {
        match path {
            None => Ok(Self::stdin()),
            Some(p) if p.as_os_str() == "-" => Ok(Self::stdin()),
            Some(p) => {
                let name = p.display().to_string();
                let file = File::open(p).map_err(|e| IoError::io(&name, e))?;
                let regular = file.metadata().is_ok_and(|m| m.is_file());
                let map = match map_kind {
                    Some(kind) if regular && starts_with(&file, kind.magic()) => {
                        Some(map_file(&file, &name)?)
                    }
                    _ => None,
                };
                Ok(Input {
                    name,
                    reader: Box::new(BufReader::with_capacity(1 << 16, file)),
                    map,
                })
            }
        }
    }

    fn stdin() -> Self {
        widen_pipe(io::stdin().as_fd());
        Input {
            name: "<stdin>".to_string(),
            reader: Box::new(BufReader::with_capacity(1 << 16, io::stdin())),
            map: None,
        }
    }

    /// The input as a [`Source`]: its mapped bytes, or its reader.
    pub fn source(&mut self) -> Source<'_> {
        match &self.map {
            Some(m) => Source::Bytes(m),
            None => Source::Reader(Box::new(&mut self.reader)),
        }
    }

    /// The name used in error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Splits into the name and the reader.
    pub fn into_parts(self) -> (String, Box<dyn Read + Send>) {
        (self.name, self.reader)
    }
}

/// True when `file` starts with `magic` (read at offset 0, leaving the file's position).
fn starts_with(file: &File, magic: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 8];
    let head = &mut buf[..magic.len().min(8)];
    file.read_exact_at(head, 0).is_ok() && head == magic
}

/// Maps a regular file read-only.
///
/// One of the workspace's three `unsafe` blocks (with [`advise_huge_pages`] and
/// [`exit_now`]): a mapping is undefined behaviour if another process shrinks or rewrites
/// the file while it is mapped. Every file this workspace writes is written under a
/// temporary name and renamed into place ([`Output`]), which never changes a file someone
/// has open, so only a file truncated or rewritten in place by another program could break
/// this (the process would then most likely die of `SIGBUS`). ripgrep takes the same trade
/// for the same reason.
#[allow(unsafe_code)]
fn map_file(file: &File, name: &str) -> Result<memmap2::Mmap, IoError> {
    // SAFETY: see above; the mapping is read-only and lives inside the `Input` that owns it.
    unsafe { memmap2::Mmap::map(file) }.map_err(|e| IoError::io(name, e))
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

/// An output: a temporary file renamed into place on [`Output::commit`], or standard output.
///
/// Dropping an uncommitted file output deletes the temporary file, so an error or a kill
/// leaves nothing under the final name. A path that names something other than a regular
/// file (`/dev/null`, a FIFO, `/dev/stdout`, a process substitution's `/dev/fd/N`) is
/// written directly: renaming over it would replace a device or a pipe with a file (run as
/// root, `-o /dev/null` did just that). A symbolic link is followed, so the file it points
/// to is replaced and the link kept.
#[derive(Debug)]
pub struct Output {
    name: String,
    inner: OutputInner,
}

#[derive(Debug)]
enum OutputInner {
    File {
        writer: BufWriter<tempfile::NamedTempFile>,
        path: PathBuf,
    },
    /// A device or a FIFO, written where it is.
    Direct(BufWriter<File>),
    Stdout(BufWriter<io::Stdout>),
}

impl Output {
    /// Creates an output: `Some(path)` writes the file, `Some("-")` standard output; `None`
    /// is standard output. With `binary`, standard output must not be a terminal.
    pub fn create(path: Option<&Path>, binary: bool) -> Result<Self, IoError> {
        match path {
            Some(p) if p.as_os_str() != "-" => {
                let name = p.display().to_string();
                // What the path names, through any symbolic links.
                let target = match std::fs::metadata(p) {
                    Ok(m) if m.is_dir() => {
                        return Err(IoError::io(
                            &name,
                            io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
                        ))
                    }
                    Ok(m) if !m.is_file() => {
                        let file = std::fs::OpenOptions::new()
                            .write(true)
                            .open(p)
                            .map_err(|e| IoError::io(&name, e))?;
                        if binary && file.is_terminal() {
                            return Err(IoError::Terminal { name });
                        }
                        widen_pipe(file.as_fd());
                        return Ok(Output {
                            name,
                            inner: OutputInner::Direct(BufWriter::with_capacity(1 << 16, file)),
                        });
                    }
                    Ok(_) if p.is_symlink() => {
                        std::fs::canonicalize(p).map_err(|e| IoError::io(&name, e))?
                    }
                    _ => p.to_path_buf(),
                };
                let p = target.as_path();
                let dir = match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let file_name = p
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "out".to_string());
                let tmp = tempfile::Builder::new()
                    .prefix(&format!(".{file_name}."))
                    .suffix(".part")
                    .tempfile_in(&dir)
                    .map_err(|e| IoError::io(&name, e))?;
                Ok(Output {
                    name,
                    inner: OutputInner::File {
                        writer: BufWriter::with_capacity(1 << 16, tmp),
                        path: p.to_path_buf(),
                    },
                })
            }
            _ => {
                let name = "<stdout>".to_string();
                if binary && io::stdout().is_terminal() {
                    return Err(IoError::Terminal { name });
                }
                widen_pipe(io::stdout().as_fd());
                Ok(Output {
                    name,
                    inner: OutputInner::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
                })
            }
        }
    }

    /// The name used in error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// For a file: the file, with what was written so far flushed to it, and its length, so
    /// that what follows can be written in pieces at their offsets, by several threads
    /// (`FileExt::write_all_at`), before [`seek_to_end`](Self::seek_to_end). `None` for
    /// standard output, a pipe or a device, which take bytes in order only.
    pub fn file_at_end(&mut self) -> io::Result<Option<(&File, u64)>> {
        use std::io::Seek;
        match &mut self.inner {
            OutputInner::File { writer, .. } => {
                writer.flush()?;
                let file = writer.get_mut().as_file_mut();
                let at = file.stream_position()?;
                Ok(Some((file, at)))
            }
            OutputInner::Direct(_) | OutputInner::Stdout(_) => Ok(None),
        }
    }

    /// Moves a file's writing position to its end, after writes at offsets; for other
    /// outputs, nothing.
    pub fn seek_to_end(&mut self) -> io::Result<()> {
        use std::io::Seek;
        if let OutputInner::File { writer, .. } = &mut self.inner {
            writer.seek(io::SeekFrom::End(0))?;
        }
        Ok(())
    }

    /// Flushes and, for a file, syncs and renames the temporary file to its final name.
    pub fn commit(self) -> Result<(), IoError> {
        let name = self.name;
        match self.inner {
            OutputInner::Stdout(mut w) => w.flush().map_err(|e| IoError::io(&name, e)),
            OutputInner::Direct(mut w) => w.flush().map_err(|e| IoError::io(&name, e)),
            OutputInner::File { writer, path } => {
                let tmp = writer
                    .into_inner()
                    .map_err(|e| IoError::io(&name, e.into_error()))?;
                tmp.as_file()
                    .sync_all()
                    .map_err(|e| IoError::io(&name, e))?;
                tmp.persist(&path)
                    .map_err(|e| IoError::io(&name, e.error))?;
                Ok(())
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            OutputInner::File { writer, .. } => writer.write(buf),
            OutputInner::Direct(w) => w.write(buf),
            OutputInner::Stdout(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.inner {
            OutputInner::File { writer, .. } => writer.write_all(buf),
            OutputInner::Direct(w) => w.write_all(buf),
            OutputInner::Stdout(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            OutputInner::File { writer, .. } => writer.flush(),
            OutputInner::Direct(w) => w.flush(),
            OutputInner::Stdout(w) => w.flush(),
        }
    }
}

/// Pipe buffer asked for between stages. Not the 1 MiB an unprivileged process may set: the
/// kernel charges a pipe's whole capacity to its user, and past 64 MiB
/// (`/proc/sys/fs/pipe-user-pages-soft`) every new pipe of that user, ours or not, gets one
/// page. At 256 KiB that takes 256 concurrent pipelines, and the gain is the same within
/// noise (`count-states S | score-aiq` on LeNet-5, medians of 60: 33.9 ms at 64 KiB, 32.0
/// at 256 KiB, 31.1 at 1 MiB).
const PIPE_BYTES: usize = 1 << 18;

/// Widens a pipe between two stages from the kernel's 64 KiB to [`PIPE_BYTES`], so that a
/// stage writes more before the next one must wake up to drain it: fewer context switches,
/// and a reader that keeps up. Never narrows a pipe made wider before. Anything but a pipe,
/// or a refusal (a lower system limit), leaves the descriptor as it was: the pipe still
/// works, at its default size.
fn widen_pipe(fd: BorrowedFd<'_>) {
    #[cfg(target_os = "linux")]
    if rustix::pipe::fcntl_getpipe_size(fd).is_ok_and(|n| n < PIPE_BYTES) {
        let _ = rustix::pipe::fcntl_setpipe_size(fd, PIPE_BYTES);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

/// Asks the kernel for small pages only, for the rest of this process.
///
/// Huge pages save page faults, but each must come from a free 2 MiB block, and a VM whose
/// balloon driver reports free memory to its host (free page reporting, common in cloud VMs)
/// has handed exactly those blocks back: the host must fault each one in again. On such a VM,
/// after a few idle seconds, `dump-states` took 605 ms (184 ms of it in the kernel) with huge
/// pages against 536 ms (58 ms) without; run back to back they tie, and its resident memory
/// falls from 50 to 19 MB. Best effort: a kernel without the switch leaves things as they were.
pub fn prefer_small_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// Asks the kernel to back the 2 MiB-aligned part of `memory` with transparent huge pages,
/// before it is first touched: one page fault per 2 MiB instead of per 4 KiB, for a table
/// that will be touched all over (LeNet-5's conv1 table: 4 MiB). The allocator asks for
/// nothing itself (see the workspace manifest), so small allocations and the ends of this
/// one stay in small pages. Best effort: a kernel without transparent huge pages, or one
/// that declines, leaves the memory as it was.
#[allow(unsafe_code)]
pub fn advise_huge_pages<T>(memory: &[T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let at = memory.as_ptr() as usize;
        let (start, end) = (
            at.next_multiple_of(HUGE),
            (at + std::mem::size_of_val(memory)) & !(HUGE - 1),
        );
        if end > start {
            // SAFETY: [start, end) lies inside `memory`, borrowed for this call. The advice
            // changes how the kernel backs those pages, never what they hold.
            let _ = unsafe {
                rustix::mm::madvise(
                    start as *mut std::ffi::c_void,
                    end - start,
                    rustix::mm::Advice::LinuxHugepage,
                )
            };
        }
    }
}

/// Ends the process with `code` once its work is done: standard output is flushed (its
/// errors are moot by now, a closed pipe among them), and nothing else runs.
///
/// `std::process::exit` also runs the C library's exit handlers, and in a stage built with
/// mimalloc (`dump-states`) its handler hands every freed page back to the kernel, one
/// `madvise` and one TLB flush across the process's live threads per region, just before
/// the kernel reclaims the whole address space anyway: ~2 ms of `count-states`' 30–40 ms on
/// LeNet-5 while it used mimalloc (its wall time -2.3 ms, median of 100 alternating runs).
/// Every output is flushed and committed inside the body, and no exit handler of ours does
/// anything else.
///
/// One of the workspace's three `unsafe` blocks (with [`map_file`] and
/// [`advise_huge_pages`]).
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: `_exit` takes no pointers and never returns; skipping the exit handlers loses
    // nothing (see above).
    unsafe { libc::_exit(code) }
}

/// Runs a binary's body: prints `tool: error` on one line (with its causes) and exits 1, or
/// exits 0 quietly when the error is a closed pipe.
pub fn run_main(tool: &str, body: impl FnOnce() -> Result<(), Box<dyn std::error::Error>>) -> ! {
    match body() {
        Ok(()) => exit_now(0),
        Err(e) if is_broken_pipe(e.as_ref()) => exit_now(0),
        Err(e) => {
            let mut msg = format!("{tool}: {e}");
            let mut src = e.source();
            while let Some(cause) = src {
                let text = cause.to_string();
                if !msg.contains(&text) {
                    msg.push_str(": ");
                    msg.push_str(&text);
                }
                src = cause.source();
            }
            eprintln!("{msg}");
            exit_now(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advice reaches the kernel for the aligned middle of a buffer and leaves what
    /// the buffer holds alone.
    #[cfg(target_os = "linux")]
    #[test]
    fn huge_page_advice_covers_the_aligned_middle() {
        let v: Vec<u32> = (0..(3 << 20)).collect();
        advise_huge_pages(&v);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return; // A kernel without them declines the advice, as documented.
        }
        let huge = (v.as_ptr() as usize).next_multiple_of(2 << 20);
        // The mapping holding that page is marked `hg` (MADV_HUGEPAGE) in its flags.
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut flagged = None;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&huge);
                    continue;
                }
            }
            if inside && line.starts_with("VmFlags:") {
                flagged = Some(line.split_whitespace().any(|f| f == "hg"));
            }
        }
        assert_eq!(flagged, Some(true));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pipes_are_widened_and_other_descriptors_left_alone() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let before = rustix::pipe::fcntl_getpipe_size(&w).unwrap();
        widen_pipe(w.as_fd());
        let after = rustix::pipe::fcntl_getpipe_size(&r).unwrap();
        let limit: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if limit >= PIPE_BYTES && before < PIPE_BYTES {
            assert_eq!(after, PIPE_BYTES);
        } else {
            assert!(after >= before, "{before} -> {after}");
        }
        // Data still flows through the widened pipe.
        let mut w = File::from(w);
        w.write_all(b"states").unwrap();
        drop(w);
        let mut got = String::new();
        File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "states");
        // A pipe made wider before stays as wide.
        let (r, w) = rustix::pipe::pipe().unwrap();
        if let Ok(wide) = rustix::pipe::fcntl_setpipe_size(&w, 4 * PIPE_BYTES) {
            widen_pipe(w.as_fd());
            assert_eq!(rustix::pipe::fcntl_getpipe_size(&r).unwrap(), wide);
        }
        // A regular file is not a pipe: nothing happens, nothing fails.
        let f = tempfile::tempfile().unwrap();
        widen_pipe(f.as_fd());
        assert!(rustix::pipe::fcntl_getpipe_size(&f).is_err());
    }

    #[test]
    fn header_round_trip_and_kind_mismatch() {
        let mut buf = Vec::new();
        StreamKind::Model.write_header(&mut buf, 3).unwrap();
        let err = StreamKind::States
            .expect_header(&mut buf.as_slice(), "m.bin", 1)
            .unwrap_err();
        assert!(matches!(err, IoError::WrongKind { .. }), "{err}");
        assert!(err.to_string().contains("m.bin"));
        let err = StreamKind::Model
            .expect_header(&mut buf.as_slice(), "m.bin", 1)
            .unwrap_err();
        assert!(matches!(err, IoError::Version { found: 3, .. }), "{err}");
    }

    #[test]
    fn short_and_foreign_headers() {
        let err = StreamKind::read_header(&mut &b"AIQ"[..], "x").unwrap_err();
        assert!(matches!(err, IoError::Truncated { .. }), "{err}");
        let err = StreamKind::read_header(&mut &b"PK\x03\x04zzzzzzzzzz"[..], "x").unwrap_err();
        assert!(matches!(err, IoError::BadMagic { .. }), "{err}");
    }

    #[test]
    fn bounded_decode_rejects_absurd_lengths() {
        // A Vec<u64> claiming 2^60 elements with data behind it: the limit stops it.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        bytes.resize(bytes.len() + (2 << 20), 0);
        let err =
            decode_bounded::<Vec<u64>>(&mut bytes.as_slice(), 1 << 20, "x", "states").unwrap_err();
        assert!(matches!(err, IoError::Corrupt { .. }), "{err}");
        // The same claim with nothing behind it is a cut stream, found without allocating it.
        let err = decode_bounded::<Vec<u64>>(&mut &bytes[..8], 1 << 40, "x", "states").unwrap_err();
        assert!(matches!(err, IoError::Truncated { .. }), "{err}");
    }

    #[test]
    fn decode_of_cut_stream_is_truncated() {
        let mut bytes = Vec::new();
        encode(&mut bytes, &vec![1u32, 2, 3], "x").unwrap();
        bytes.truncate(bytes.len() - 2);
        let err =
            decode_bounded::<Vec<u32>>(&mut bytes.as_slice(), 1 << 20, "x", "list").unwrap_err();
        assert!(matches!(err, IoError::Truncated { .. }), "{err}");
    }

    #[test]
    fn only_files_of_the_asked_kind_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, kind: Option<StreamKind>| {
            let path = dir.path().join(name);
            let mut bytes = Vec::new();
            if let Some(k) = kind {
                k.write_header(&mut bytes, 2).unwrap();
            }
            bytes.extend_from_slice(b"payload");
            std::fs::write(&path, &bytes).unwrap();
            (path, bytes)
        };
        let (states, bytes) = file("s.bin", Some(StreamKind::States));
        let mut input = Input::open_mapped(Some(&states), StreamKind::States).unwrap();
        let mut src = input.source();
        assert!(matches!(src, Source::Bytes(b) if b == bytes.as_slice()));
        assert_eq!(src.read_header("s").unwrap(), (StreamKind::States, 2));
        let mut rest = Vec::new();
        src.into_reader().read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"payload");
        // Another kind, a file too short for a magic, a plain open: read, not mapped.
        let (counts, _) = file("c.bin", Some(StreamKind::Counts));
        let (short, _) = file("short.bin", None);
        let empty = dir.path().join("empty.bin");
        std::fs::write(&empty, b"").unwrap();
        for path in [&counts, &short, &empty] {
            let mut input = Input::open_mapped(Some(path), StreamKind::States).unwrap();
            let src = input.source();
            assert!(matches!(src, Source::Reader(_)), "{}", path.display());
        }
        let mut plain = Input::open(Some(&states)).unwrap();
        assert!(matches!(plain.source(), Source::Reader(_)));
        let mut src = Input::open_mapped(Some(&counts), StreamKind::States).unwrap();
        assert_eq!(
            src.source().read_header("c").unwrap(),
            (StreamKind::Counts, 2)
        );
    }

    #[test]
    fn uncommitted_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        {
            let mut out = Output::create(Some(&path), true).unwrap();
            out.write_all(b"half").unwrap();
        }
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut out = Output::create(Some(&path), true).unwrap();
        out.write_all(b"whole").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
    }

    /// Where the kernel lets the switch be read, it is set (a sandbox that refuses `prctl`
    /// altogether leaves nothing to check).
    #[cfg(target_os = "linux")]
    #[test]
    fn small_pages_are_asked_for() {
        prefer_small_pages();
        if let Ok(disabled) = rustix::thread::transparent_huge_pages_are_disabled() {
            assert!(disabled);
        }
    }

    /// A FIFO is written where it is, never replaced by a file; a symbolic link keeps
    /// pointing at the file it names, which gets the output; a directory is refused.
    #[test]
    fn outputs_keep_fifos_links_and_directories() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        let mut out = Output::create(Some(&fifo), true).unwrap();
        out.write_all(b"through the pipe").unwrap();
        out.commit().unwrap();
        // Checked before the join: had the FIFO been replaced, its reader would wait forever.
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo());
        assert_eq!(reader.join().unwrap(), b"through the pipe");

        let target = dir.path().join("target.bin");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut out = Output::create(Some(&link), true).unwrap();
        out.write_all(b"new").unwrap();
        out.commit().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // Nothing else: no temporary file left beside them.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);

        let err = Output::create(Some(dir.path()), true).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
    }
}
