//! The IDX format of MNIST and its relatives (Fashion-MNIST, KMNIST, EMNIST).
//!
//! An IDX file is a 4-byte magic number `0x00 0x00 TT RR` (type code `TT`, rank `RR`), `RR`
//! big-endian `u32` dimensions, then the elements in row-major order. Only the unsigned-byte type
//! code `0x08` is read here, at any rank: `0x00000803` for images `[N, rows, cols]`,
//! `0x00000801` for labels `[N]`. Files may be gzip'd; gzip is detected by its magic bytes
//! `1f 8b`, not by the file name.
//!
//! ```
//! let dir = perturb::data::Mnist::default_dir();
//! let labels = perturb::data::read_idx(dir.join("t10k-labels-idx1-ubyte.gz"))?;
//! assert_eq!(labels.dims, [10_000]);
//! assert_eq!(&labels.data[..5], &[7, 2, 1, 0, 4]);
//! # Ok::<(), perturb::Error>(())
//! ```

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

/// The gzip magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The IDX type code for unsigned bytes.
const TYPE_U8: u8 = 0x08;
/// Payload bytes reserved up front at most, so a lying header cannot force a huge allocation.
const MAX_RESERVE: usize = 64 << 20;
/// Largest payload an IDX file may declare (1 GiB; MNIST's largest is 47 MB): a header that
/// declares more is refused before anything is read, and a gzip stream cannot inflate past it.
pub const MAX_IDX_BYTES: u64 = 1 << 30;
/// Trailing bytes read past the payload before the file is refused: enough to tell, without
/// inflating a gzip bomb to its end.
const TRAILING_PROBE: u64 = 1 << 20;

/// An IDX array of unsigned bytes: its dimensions and its elements in row-major order.
///
/// `data.len()` equals the product of `dims` for every array [`read_idx`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first (`[N, rows, cols]` for MNIST images).
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Read an IDX file of unsigned bytes (type code `0x08`, any rank), plain or gzip'd.
///
/// An IDX file is a magic number `0x00 0x00 0x08 RR` (rank `RR >= 1`), `RR` big-endian `u32`
/// dimensions, then the bytes in row-major order: `0x00000803` for images `[N, rows, cols]`,
/// `0x00000801` for labels `[N]`. Gzip is told by the magic bytes `1f 8b`, not by the name.
///
/// The whole file is checked: the header, the payload length the dimensions imply, no trailing
/// bytes, and for gzip the stream's checksum.
///
/// ```
/// let path = perturb::data::Mnist::default_dir().join("t10k-images-idx3-ubyte.gz");
/// let images = perturb::data::read_idx(path)?;
/// assert_eq!(images.dims, [10_000, 28, 28]);
/// assert_eq!(images.data.len(), 10_000 * 28 * 28);
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// - [`Error::Io`] when the file cannot be opened or read;
/// - [`Error::Truncated`] when it ends inside the header or the payload (empty files included);
/// - [`Error::BadMagic`] when it is not an IDX file of unsigned bytes with rank >= 1;
/// - [`Error::Data`] for a broken gzip stream, dimensions whose product overflows, or bytes
///   after the payload.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let io_err = |source| Error::Io {
        file: path.to_path_buf(),
        source,
    };
    let mut file = BufReader::new(File::open(path).map_err(io_err)?);
    let mut prefix = [0u8; 2];
    let n = read_up_to(&mut file, &mut prefix).map_err(io_err)?;
    let stream = Cursor::new(prefix[..n].to_vec()).chain(file);
    if prefix[..n] == GZIP_MAGIC {
        parse(MultiGzDecoder::new(stream), path, None)
    } else {
        let size = std::fs::metadata(path).map_err(io_err)?.len();
        parse(stream, path, Some(size))
    }
}

/// Parse an IDX stream (already decompressed); `path` names it in errors. `size` is the file's
/// length for a raw file (the declared payload is checked against it before anything is
/// allocated) and `None` for a gzip stream, whose read errors then mean a corrupt file.
fn parse(mut r: impl Read, path: &Path, size: Option<u64>) -> Result<IdxArray> {
    let gzip = size.is_none();
    let read_err = |source: io::Error| {
        if gzip {
            data_err(path, format!("bad gzip stream: {source}"))
        } else {
            Error::Io {
                file: path.to_path_buf(),
                source,
            }
        }
    };
    let truncated = |expected_bytes: u64, got_bytes: u64| Error::Truncated {
        file: path.to_path_buf(),
        expected_bytes,
        got_bytes,
    };

    let mut magic = [0u8; 4];
    let n = read_up_to(&mut r, &mut magic).map_err(read_err)?;
    if n < magic.len() {
        return Err(truncated(4, n as u64));
    }
    let [z0, z1, type_code, rank] = magic;
    if z0 != 0 || z1 != 0 || type_code != TYPE_U8 || rank == 0 {
        return Err(Error::BadMagic {
            file: path.to_path_buf(),
            got: u32::from_be_bytes(magic),
        });
    }

    let mut raw_dims = vec![0u8; 4 * usize::from(rank)];
    let n = read_up_to(&mut r, &mut raw_dims).map_err(read_err)?;
    let header = 4 + raw_dims.len() as u64;
    if n < raw_dims.len() {
        return Err(truncated(header, 4 + n as u64));
    }
    let dims = raw_dims
        .chunks_exact(4)
        .map(|c| usize::try_from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| data_err(path, "a dimension does not fit in usize".into()))?;
    let overflow = || data_err(path, format!("dimensions {dims:?} overflow"));
    let len = element_count(&dims).ok_or_else(overflow)?;
    let expected = u64::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(header))
        .ok_or_else(overflow)?;

    if expected - header > MAX_IDX_BYTES {
        return Err(data_err(
            path,
            format!(
                "dimensions {dims:?} declare {} bytes, more than the {MAX_IDX_BYTES}-byte limit",
                expected - header
            ),
        ));
    }
    if let Some(size) = size {
        if size < expected {
            return Err(truncated(expected, size));
        }
    }
    let mut data = Vec::with_capacity(len.min(MAX_RESERVE));
    (&mut r)
        .take(expected - header)
        .read_to_end(&mut data)
        .map_err(read_err)?;
    if data.len() < len {
        return Err(truncated(expected, header + data.len() as u64));
    }
    // Read to the end: this finds trailing bytes and makes gzip verify its checksum; a stream
    // that goes on past the probe is refused without inflating it further.
    let extra = io::copy(&mut (&mut r).take(TRAILING_PROBE), &mut io::sink()).map_err(read_err)?;
    if extra > 0 {
        let count = if extra == TRAILING_PROBE {
            format!("more than {}", TRAILING_PROBE - 1)
        } else {
            extra.to_string()
        };
        return Err(data_err(
            path,
            format!(
                "{count} trailing bytes after the {len}-byte payload of dimensions {dims:?} \
                 ({} bytes of header and payload)",
                expected
            ),
        ));
    }
    Ok(IdxArray { dims, data })
}

/// Product of `dims`, `None` on overflow.
fn element_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Fill as much of `buf` as the stream allows; the count read (short only at end of stream).
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn data_err(path: &Path, reason: String) -> Error {
    Error::Data {
        file: path.to_path_buf(),
        reason,
    }
}

/// Check that `arr` has the given rank and that its data length matches its dimensions.
fn check_array(what: &'static str, arr: &IdxArray, rank: usize, expected: &str) -> Result<()> {
    if arr.dims.len() != rank {
        return Err(Error::ShapeMismatch {
            what,
            expected: expected.into(),
            got: arr.dims.clone(),
        });
    }
    if element_count(&arr.dims) != Some(arr.data.len()) {
        return Err(Error::ShapeMismatch {
            what,
            expected: format!("{expected} holding {} bytes", arr.data.len()),
            got: arr.dims.clone(),
        });
    }
    Ok(())
}

/// Images `[N, rows, cols]` of bytes to a batch `[N, 1, rows, cols]` of `f32` equal to
/// `pixel / 255`, on `device`.
///
/// ```
/// use candle_core::Device;
/// use perturb::data::{images_to_tensor, IdxArray};
///
/// let arr = IdxArray { dims: vec![2, 1, 2], data: vec![0, 51, 255, 102] };
/// let x = images_to_tensor(&arr, &Device::Cpu)?;
/// assert_eq!(x.dims(), [2, 1, 1, 2]);
/// assert_eq!(x.flatten_all()?.to_vec1::<f32>()?, [0.0, 0.2, 1.0, 0.4]);
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::ShapeMismatch`] when `arr` is not 3-D or its data length disagrees with its
/// dimensions; [`Error::Candle`] when the device fails.
pub fn images_to_tensor(arr: &IdxArray, device: &Device) -> Result<Tensor> {
    check_array("images", arr, 3, "[N, rows, cols]")?;
    let (n, rows, cols) = (arr.dims[0], arr.dims[1], arr.dims[2]);
    let bytes = Tensor::from_slice(&arr.data, (n, 1, rows, cols), device)?;
    // A true division, so that every pixel is the f32 nearest to pixel / 255 and 255 gives 1.
    let scale = Tensor::new(255f32, device)?;
    Ok(bytes.to_dtype(DType::F32)?.broadcast_div(&scale)?)
}

/// Labels `[N]` of bytes to a `u32` tensor `[N]` on `device`.
///
/// ```
/// use candle_core::Device;
/// use perturb::data::{labels_to_tensor, IdxArray};
///
/// let arr = IdxArray { dims: vec![3], data: vec![7, 2, 1] };
/// let y = labels_to_tensor(&arr, &Device::Cpu)?;
/// assert_eq!(y.to_vec1::<u32>()?, [7, 2, 1]);
/// # Ok::<(), perturb::Error>(())
/// ```
///
/// # Errors
/// [`Error::ShapeMismatch`] when `arr` is not 1-D or its data length disagrees with its
/// dimensions; [`Error::Candle`] when the device fails.
pub fn labels_to_tensor(arr: &IdxArray, device: &Device) -> Result<Tensor> {
    check_array("labels", arr, 1, "[N]")?;
    let bytes = Tensor::from_slice(&arr.data, arr.data.len(), device)?;
    Ok(bytes.to_dtype(DType::U32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_bytes(bytes: &[u8]) -> Result<IdxArray> {
        parse(bytes, Path::new("mem"), Some(bytes.len() as u64))
    }

    #[test]
    fn parses_any_rank() -> Result<()> {
        let arr = parse_bytes(&[0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])?;
        assert_eq!(arr.dims, [2, 3]);
        assert_eq!(arr.data, [1, 2, 3, 4, 5, 6]);
        let arr = parse_bytes(&[0, 0, 8, 1, 0, 0, 0, 0])?;
        assert_eq!(arr.dims, [0]);
        assert!(arr.data.is_empty());
        Ok(())
    }

    #[test]
    fn rejects_rank_zero_and_other_types() {
        for magic in [[0, 0, 8, 0], [0, 0, 0x0d, 1], [1, 0, 8, 1]] {
            assert!(matches!(parse_bytes(&magic), Err(Error::BadMagic { .. })));
        }
    }

    #[test]
    fn read_up_to_stops_at_end() -> io::Result<()> {
        let mut buf = [0u8; 4];
        assert_eq!(read_up_to(&mut &[9u8, 8][..], &mut buf)?, 2);
        assert_eq!(buf[..2], [9, 8]);
        Ok(())
    }

    #[test]
    fn element_count_overflows_to_none() {
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[usize::MAX, 2]), None);
        assert_eq!(element_count(&[usize::MAX, 0]), Some(0));
    }

    #[test]
    fn tensor_helpers_reject_inconsistent_arrays() {
        let bad = IdxArray {
            dims: vec![2, 2, 2],
            data: vec![0; 7],
        };
        assert!(matches!(
            images_to_tensor(&bad, &Device::Cpu),
            Err(Error::ShapeMismatch { .. })
        ));
        let flat = IdxArray {
            dims: vec![4],
            data: vec![0; 4],
        };
        assert!(matches!(
            images_to_tensor(&flat, &Device::Cpu),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            labels_to_tensor(&bad, &Device::Cpu),
            Err(Error::ShapeMismatch { .. })
        ));
    }
}
