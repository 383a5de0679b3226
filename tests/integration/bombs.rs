//! Files built to exhaust memory get a typed error in bounded memory: an image declaring
//! 100,000 × 100,000 pixels in a few bytes of PNG, an IDX file declaring a terabyte, a raw IDX
//! file declaring more than it holds, a gzip'd IDX file that inflates to 512 MiB past its payload,
//! a safetensors file declaring a terabyte of header, and a batch of ten million digits. Each loads in a fresh child process
//! (this test binary, re-run on the ignored helper), which reports its error and its peak
//! resident set size; the bound is 1 GiB.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::peak_rss_kib;

use candle_core::Device;

#[test]
#[ignore = "helper run in a child process by every_bomb_is_a_typed_error_in_bounded_memory"]
fn child_loads_a_bomb() {
    let (Ok(kind), Ok(path)) = (
        std::env::var("PERTURB_BOMB"),
        std::env::var("PERTURB_BOMB_FILE"),
    ) else {
        return;
    };
    let err = match kind.as_str() {
        "image" => perturb::data::load_image(&path, 1, 28, 28, &Device::Cpu).map(|_| ()),
        "photo" => {
            perturb::data::load_photo(&path, 224, perturb::data::Fit::ResizeCrop, &Device::Cpu)
                .map(|_| ())
        }
        "idx" => perturb::data::read_idx(&path).map(|_| ()),
        "weights" => perturb::zoo::load_file(
            perturb::zoo::Arch::SmallCnn,
            Path::new(&path),
            None,
            &Device::Cpu,
        )
        .map(|_| ()),
        // a batch no machine holds: 10 million MNIST digits at once through the shipped CNN,
        // refused from the plan before a byte of it is allocated
        "batch" => perturb::zoo::load(&path, &Device::Cpu).and_then(|m| {
            m.arch()
                .memory_plan(10_000_000, 10_000_000)
                .check_available()
        }),
        other => panic!("unknown bomb {other}"),
    }
    .expect_err("the bomb must be refused");
    println!("ERROR {err}");
    println!("VARIANT {err:?}");
    println!("PEAK_RSS_KIB {}", peak_rss_kib().unwrap());
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("perturb-bombs-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A PNG chunk: length, type, data, CRC of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

fn png_bomb(path: &Path) {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey
    chunk(&mut png, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 1 << 20]).unwrap();
    chunk(&mut png, b"IDAT", &z.finish().unwrap());
    chunk(&mut png, b"IEND", &[]);
    std::fs::write(path, png).unwrap();
}

fn idx_header(dims: &[u32]) -> Vec<u8> {
    let mut h = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        h.extend_from_slice(&d.to_be_bytes());
    }
    h
}

fn gz(path: &Path, parts: &[&[u8]], zeros: usize) {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for p in parts {
        e.write_all(p).unwrap();
    }
    let block = vec![0u8; 1 << 20];
    for _ in 0..zeros / block.len() {
        e.write_all(&block).unwrap();
    }
    std::fs::write(path, e.finish().unwrap()).unwrap();
}

#[test]
fn every_bomb_is_a_typed_error_in_bounded_memory() {
    let d = dir();
    let png = d.join("bomb.png");
    png_bomb(&png);
    let tera = d.join("tera-idx3-ubyte.gz");
    gz(&tera, &[&idx_header(&[1 << 20, 1 << 10, 1 << 10])], 0);
    let liar = d.join("liar-idx3-ubyte");
    let mut raw = idx_header(&[900, 1000, 1000]);
    raw.extend_from_slice(&[7u8; 100]);
    std::fs::write(&liar, raw).unwrap();
    let inflating = d.join("inflating-idx1-ubyte.gz");
    gz(&inflating, &[&idx_header(&[10]), &[1u8; 10]], 512 << 20);
    let weights = d.join("header.safetensors");
    let mut st = (1u64 << 40).to_le_bytes().to_vec();
    st.extend_from_slice(b"{}");
    std::fs::write(&weights, st).unwrap();
    let shipped = Path::new("mnist-cnn");
    let cases: [(&str, &Path, &str); 7] = [
        ("image", &png, "Data"),
        ("photo", &png, "Data"),
        ("idx", &tera, "more than the 1073741824-byte limit"),
        ("idx", &liar, "Truncated"),
        ("idx", &inflating, "trailing bytes"),
        ("weights", &weights, "header"),
        ("batch", shipped, "InsufficientMemory"),
    ];
    for (kind, path, needle) in cases {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "bombs::child_loads_a_bomb",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("PERTURB_BOMB", kind)
            .env("PERTURB_BOMB_FILE", path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{kind} {}: {stdout}", path.display());
        let line = |tag: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(tag))
                .unwrap_or_else(|| panic!("{kind}: no {tag} in {stdout}"))
                .to_string()
        };
        let error = format!("{} {}", line("ERROR "), line("VARIANT "));
        assert!(error.contains(needle), "{kind} {}: {error}", path.display());
        let peak: u64 = line("PEAK_RSS_KIB ").trim().parse().unwrap();
        assert!(
            peak < 1 << 20,
            "{kind} {}: peak RSS {peak} KiB",
            path.display()
        );
        eprintln!(
            "{kind} {}: {error} — peak {} MiB",
            path.display(),
            peak / 1024
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}
