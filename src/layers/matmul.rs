//! The one call of the `gemm` crate: a safe matrix product on slices, its bounds checked.
//!
//! `gemm::gemm` takes raw pointers and strides and trusts them. Every kernel here goes through
//! [`matmul`], which checks that each entry the product reads or writes lies inside its slice
//! before handing the pointers on, so the SAFETY argument is made once, below.

/// An `f32` matrix read from a slice: entry `(r, c)` is `data[r·row_stride + c·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Strided<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Strided<'a> {
    /// A `rows × cols` matrix with the given strides (in floats) over `data`.
    pub(super) fn new(
        data: &'a [f32],
        (rows, cols): (usize, usize),
        (row_stride, col_stride): (usize, usize),
    ) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// A row-major `rows × cols` matrix at the start of `data`.
    pub(super) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, (rows, cols), (cols, 1))
    }

    /// The `rows × cols` transpose of the row-major `cols × rows` matrix at the start of `data`.
    pub(super) fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, (rows, cols), (1, rows))
    }

    /// Whether every entry lies inside `data` (an empty matrix reads nothing).
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| r.checked_add(c));
        last.is_some_and(|last| last < self.data.len())
    }
}

/// A stride in the signed type gemm takes.
fn stride(s: usize) -> isize {
    isize::try_from(s).expect("matmul: stride past isize::MAX")
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` with `accumulate`, where `dst` is the row-major
/// `m × n` matrix in the first `m·n` floats of its slice, `lhs` is `m × k` and `rhs` is `k × n`.
/// `par` splits the output among threads, never the sum over `k`, so the bits do not depend on
/// it.
///
/// # Panics
/// When the shapes do not chain or a matrix does not fit in its slice.
pub(super) fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    lhs: Strided<'_>,
    rhs: Strided<'_>,
    par: gemm::Parallelism,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "matmul: inner dimensions differ");
    let dst_len = m.checked_mul(n).expect("matmul: output size overflows");
    assert!(
        dst.len() >= dst_len && lhs.in_bounds() && rhs.in_bounds(),
        "matmul: a matrix does not fit in its slice"
    );
    // SAFETY: gemm writes entries `i·n + j` (i < m, j < n) of `dst`, all below `m·n ≤ dst.len()`,
    // and reads `lhs` and `rhs` at `r·row_stride + c·col_stride` for their `r < rows`,
    // `c < cols`, whose largest index `in_bounds` checked to lie inside each slice (with no
    // overflow); the strides fit `isize` (checked by `stride`). `dst` is borrowed mutably and
    // `lhs`, `rhs` shared, so the output aliases no input, and its entries are distinct (row
    // stride `n`, column stride 1), so gemm's threads write disjoint floats. With `accumulate`
    // false gemm ignores alpha and reads nothing of `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            stride(n),
            accumulate,
            lhs.data.as_ptr(),
            stride(lhs.col_stride),
            stride(lhs.row_stride),
            rhs.data.as_ptr(),
            stride(rhs.col_stride),
            stride(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product written out, for a strided `lhs` (every other column of a wider matrix) and
    /// a transposed `rhs`, both with and without accumulation.
    #[test]
    fn matches_the_naive_product() {
        let (m, k, n) = (5, 7, 6);
        let a: Vec<f32> = (0..m * 2 * k).map(|i| (i % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
        let lhs = Strided::new(&a, (m, k), (2 * k, 2));
        let rhs = Strided::transposed(&b, k, n);
        let want: Vec<f32> = (0..m * n)
            .map(|at| {
                let (i, j) = (at / n, at % n);
                (0..k).map(|p| a[i * 2 * k + 2 * p] * b[j * k + p]).sum()
            })
            .collect();
        let mut dst = vec![f32::NAN; m * n];
        matmul(&mut dst, false, lhs, rhs, gemm::Parallelism::None);
        assert_eq!(dst, want);
        matmul(&mut dst, true, lhs, rhs, gemm::Parallelism::None);
        let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
        assert_eq!(dst, twice);
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn refuses_a_matrix_past_its_slice() {
        let a = [1f32; 11];
        let b = [1f32; 12];
        let mut dst = [0f32; 4];
        // 2 × 6 at row stride 6 needs 12 floats
        let lhs = Strided::row_major(&a, 2, 6);
        let rhs = Strided::row_major(&b, 6, 2);
        matmul(&mut dst, false, lhs, rhs, gemm::Parallelism::None);
    }
}
