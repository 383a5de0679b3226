//! Data loading: the vendored MNIST is intact and official, and malformed IDX files give typed
//! errors instead of panics.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use candle_core::Device;
use flate2::write::GzEncoder;
use flate2::Compression;
use perturb::data::{read_idx, Mnist, MNIST_FILES};
use perturb::Error;
use sha2::{Digest, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).expect("write to a Vec");
    enc.finish().expect("finish a Vec")
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("perturb-data-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, bytes).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An IDX file of unsigned bytes with the given dimensions and payload.
fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// The vendored copy: counts, classes, pixel range, checksums.
mod vendored {
    use super::*;

    #[test]
    fn loads_with_official_counts_and_range() -> TestResult {
        let mnist = Mnist::load_default(&Device::Cpu)?;
        assert_eq!(mnist.train_images.dims(), [60_000, 1, 28, 28]);
        assert_eq!(mnist.train_labels.dims(), [60_000]);
        assert_eq!(mnist.test_images.dims(), [10_000, 1, 28, 28]);
        assert_eq!(mnist.test_labels.dims(), [10_000]);
        assert_eq!((mnist.len_train(), mnist.len_test()), (60_000, 10_000));

        let mut counts = [0usize; 10];
        for y in mnist.test_labels.to_vec1::<u32>()? {
            counts[y as usize] += 1;
        }
        assert_eq!(
            counts,
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        );
        let train = mnist.train_labels.to_vec1::<u32>()?;
        assert_eq!(train[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);

        for x in [&mnist.train_images, &mnist.test_images] {
            let flat = x.flatten_all()?;
            assert_eq!(flat.min(0)?.to_scalar::<f32>()?, 0.0);
            assert_eq!(flat.max(0)?.to_scalar::<f32>()?, 1.0);
        }
        Ok(())
    }

    #[test]
    fn files_match_sha256sums() -> TestResult {
        let sums = fs::read_to_string(Mnist::default_dir().join("SHA256SUMS"))?;
        let mut listed = Vec::new();
        for line in sums.lines().filter(|l| !l.trim().is_empty()) {
            let (digest, name) = line.split_once("  ").expect("sha256sum format");
            let bytes = fs::read(Mnist::default_dir().join(name))?;
            assert_eq!(sha256_hex(&bytes), digest, "{name}");
            listed.push(name.to_string());
        }
        listed.sort();
        // the four data files, and the README that says where they come from
        let mut expected: Vec<String> = MNIST_FILES.iter().map(|n| format!("{n}.gz")).collect();
        expected.push("README.md".into());
        expected.sort();
        assert_eq!(listed, expected);
        Ok(())
    }

    /// Decompressed, the files are byte-for-byte the official MNIST IDX files.
    #[test]
    fn decompressed_bytes_are_official() -> TestResult {
        let official = [
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ];
        for (name, digest) in MNIST_FILES.iter().zip(official) {
            let mut raw = Vec::new();
            let file = fs::File::open(Mnist::default_dir().join(format!("{name}.gz")))?;
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut raw)?;
            assert_eq!(sha256_hex(&raw), digest, "{name}");
        }
        Ok(())
    }

    #[test]
    fn read_idx_reads_plain_and_gzip_alike() -> TestResult {
        let tmp = TempDir::new("plain");
        let gz = Mnist::default_dir().join("t10k-labels-idx1-ubyte.gz");
        let from_gz = read_idx(&gz)?;
        let mut raw = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(fs::File::open(&gz)?),
            &mut raw,
        )?;
        let from_plain = read_idx(tmp.write("labels", &raw))?;
        assert_eq!(from_gz, from_plain);
        assert_eq!(from_gz.dims, [10_000]);
        Ok(())
    }
}

/// Malformed files: each gives its typed error.
mod malformed {
    use super::*;

    fn read(tmp: &TempDir, name: &str, bytes: &[u8]) -> Result<perturb::data::IdxArray, Error> {
        read_idx(tmp.write(name, bytes))
    }

    #[test]
    fn missing_file_is_io() {
        let tmp = TempDir::new("missing");
        let err = read_idx(tmp.0.join("nope")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[test]
    fn empty_file_is_truncated() {
        let tmp = TempDir::new("empty");
        for (name, bytes) in [("plain", Vec::new()), ("gz", gzip(&[]))] {
            let err = read(&tmp, name, &bytes).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Truncated {
                        expected_bytes: 4,
                        got_bytes: 0,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn truncated_header() {
        let tmp = TempDir::new("header");
        let full = idx(&[2, 3, 4], &[0; 24]);
        // Inside the magic number, then inside the dimensions (header is 4 + 3 * 4 = 16 bytes).
        for (cut, expected) in [(3, 4), (9, 16)] {
            for bytes in [full[..cut].to_vec(), gzip(&full[..cut])] {
                let err = read(&tmp, "h", &bytes).unwrap_err();
                match err {
                    Error::Truncated {
                        expected_bytes,
                        got_bytes,
                        ..
                    } => assert_eq!((expected_bytes, got_bytes), (expected, cut as u64)),
                    other => panic!("expected Truncated, got {other}"),
                }
            }
        }
    }

    #[test]
    fn truncated_data() {
        let tmp = TempDir::new("data");
        let full = idx(&[2, 3, 4], &[7; 24]);
        for bytes in [full[..30].to_vec(), gzip(&full[..30])] {
            let err = read(&tmp, "d", &bytes).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Truncated {
                        expected_bytes: 40,
                        got_bytes: 30,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_data_error() {
        let tmp = TempDir::new("trailing");
        let mut bytes = idx(&[3], &[1, 2, 3]);
        bytes.push(9);
        let err = read(&tmp, "t", &bytes).unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err}");
    }

    #[test]
    fn wrong_magic() {
        let tmp = TempDir::new("magic");
        let cases: [(&[u8], u32); 4] = [
            (&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0], 0x0000_0d01), // f32 type code
            (&[0, 0, 8, 0], 0x0000_0800),                            // rank 0
            (b"PK\x03\x04rest", 0x504b_0304),                        // a zip file
            (&[1, 0, 8, 1, 0, 0, 0, 0], 0x0100_0801),                // non-zero first byte
        ];
        for (bytes, magic) in cases {
            let err = read(&tmp, "m", bytes).unwrap_err();
            assert!(
                matches!(err, Error::BadMagic { got, .. } if got == magic),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_gzip_is_data_error() {
        let tmp = TempDir::new("gzip");
        let good = gzip(&idx(&[4], &[1, 2, 3, 4]));
        let mut corrupt_crc = good.clone();
        let at = corrupt_crc.len() - 8; // the CRC32 in the gzip trailer
        corrupt_crc[at] ^= 0xff;
        let cases = [
            vec![0x1f, 0x8b, 0xff, 0xff, 0xff], // gzip magic, garbage header
            good[..good.len() - 6].to_vec(),    // stream cut short
            corrupt_crc,                        // checksum mismatch
        ];
        for bytes in cases {
            let err = read(&tmp, "g", &bytes).unwrap_err();
            assert!(matches!(err, Error::Data { .. }), "{err}");
        }
    }

    #[test]
    fn overflowing_dims() {
        let tmp = TempDir::new("overflow");
        let max = u32::MAX;
        // 2^96-ish elements: the product overflows.
        let err = read(&tmp, "o", &idx(&[max, max, max], &[])).unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err}");
        // A product that fits but is above the 1 GiB limit: refused from the header alone.
        let err = read(&tmp, "o", &idx(&[max, max], &[1, 2])).unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err}");
        assert!(err.to_string().contains("limit"), "{err}");
        // Within the limit but more than the file holds: truncated, without allocating it.
        let err = read(&tmp, "o", &idx(&[1000, 1000], &[1, 2])).unwrap_err();
        assert!(
            matches!(err, Error::Truncated { got_bytes: 14, .. }),
            "{err}"
        );
    }

    #[test]
    fn mnist_count_mismatch() {
        let tmp = TempDir::new("count");
        let [train_x, train_y, test_x, test_y] = MNIST_FILES;
        tmp.write(&format!("{train_x}.gz"), &gzip(&idx(&[3, 2, 2], &[0; 12])));
        tmp.write(&format!("{train_y}.gz"), &gzip(&idx(&[2], &[0, 1])));
        // The test split plain and without `.gz`: also accepted.
        tmp.write(test_x, &idx(&[1, 2, 2], &[0, 85, 170, 255]));
        tmp.write(test_y, &idx(&[1], &[9]));
        let err = Mnist::load(&tmp.0, &Device::Cpu).unwrap_err();
        assert!(
            matches!(
                err,
                Error::CountMismatch {
                    images: 3,
                    labels: 2,
                    ..
                }
            ),
            "{err}"
        );

        // Fixed counts: loads; a label that is not a digit is a data error.
        tmp.write(&format!("{train_y}.gz"), &idx(&[3], &[0, 1, 2]));
        let mnist = Mnist::load(&tmp.0, &Device::Cpu).expect("consistent files load");
        assert_eq!(mnist.test_images.dims(), [1, 1, 2, 2]);
        let px = mnist
            .test_images
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>());
        assert_eq!(px.expect("f32 pixels"), [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
        tmp.write(test_y, &idx(&[1], &[10]));
        let err = Mnist::load(&tmp.0, &Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err}");
        // Labels of the wrong rank.
        tmp.write(test_y, &idx(&[1, 1], &[3]));
        let err = Mnist::load(&tmp.0, &Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err}");
    }
}

/// Image files: PNG round trip, resizing, and typed errors for malformed files.
mod image_files {
    use candle_core::{Device, Tensor};
    use perturb::data::{load_image, save_png};
    use perturb::Error;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("perturb-img-{}-{name}", std::process::id()))
    }

    /// A digit saved as PNG (scale 1) loads back to the same pixels (they are multiples of 1/255).
    #[test]
    fn png_round_trip_and_resize() -> perturb::Result<()> {
        let v: Vec<f32> = (0..28 * 28).map(|i| (i % 256) as f32 / 255.0).collect();
        let x = Tensor::from_vec(v.clone(), (1, 28, 28), &Device::Cpu)?;
        let path = temp("digit.png");
        save_png(&x, &path, 1)?;
        let back = load_image(&path, 1, 28, 28, &Device::Cpu)?;
        let got: Vec<f32> = back.flatten_all()?.to_vec1()?;
        assert!(got.iter().zip(&v).all(|(a, b)| (a - b).abs() < 1e-6));
        let rgb = load_image(&path, 3, 14, 14, &Device::Cpu)?;
        assert_eq!(rgb.dims(), [3, 14, 14]);
        save_png(&x, &path, 4)?;
        assert_eq!(
            load_image(&path, 1, 112, 112, &Device::Cpu)?.dims(),
            [1, 112, 112]
        );
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    #[test]
    fn malformed_missing_and_misshapen_images_are_typed_errors() {
        let path = temp("broken.png");
        // A PNG signature followed by garbage, and a truncated real PNG.
        std::fs::write(&path, b"\x89PNG\r\n\x1a\nthis is not a png").expect("write");
        let r = load_image(&path, 1, 28, 28, &Device::Cpu);
        assert!(matches!(r, Err(Error::Data { .. })), "{r:?}");
        let x = Tensor::zeros((1, 8, 8), candle_core::DType::F32, &Device::Cpu).expect("zeros");
        save_png(&x, &path, 1).expect("save");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
        let r = load_image(&path, 1, 8, 8, &Device::Cpu);
        assert!(matches!(r, Err(Error::Data { .. })), "{r:?}");
        let _ = std::fs::remove_file(&path);
        let r = load_image(temp("absent.png"), 1, 28, 28, &Device::Cpu);
        assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
        let r = load_image(temp("absent.png"), 2, 28, 28, &Device::Cpu);
        assert!(matches!(r, Err(Error::InvalidParameter { .. })), "{r:?}");
        let four = Tensor::zeros((1, 1, 8, 8), candle_core::DType::F32, &Device::Cpu).expect("x");
        let r = save_png(&four, temp("x.png"), 1);
        assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
    }
}
