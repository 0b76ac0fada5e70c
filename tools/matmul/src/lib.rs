//! `matmul`: multiply two matrices on the host's GPU (the tiled `matmul` kernel). Either give
//! the matrices, or ask for seeded pseudo-random ones of a size (for benchmarks and replay
//! tests), optionally repeating the dispatch to measure its overhead, or applying another
//! two-input kernel of the catalogue.

use guild_sdk::gpu::{self, Tensor};
use guild_sdk::prelude::*;

/// Largest side of a generated matrix.
pub const SIDE_MAX: u32 = 4096;
/// Most repetitions of one dispatch.
pub const REPEAT_MAX: u32 = 10_000;

/// Seeded random matrices of a size.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Random {
    /// Rows of a.
    pub m: u32,
    /// Columns of a, rows of b.
    pub k: u32,
    /// Columns of b.
    pub n: u32,
    /// Seed of the values (uniform in [-1, 1)).
    #[serde(default)]
    pub seed: u64,
}

/// Input of `matmul`: `a` and `b`, or `random`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The left matrix, as rows.
    #[serde(default)]
    pub a: Option<Vec<Vec<f32>>>,
    /// The right matrix, as rows.
    #[serde(default)]
    pub b: Option<Vec<Vec<f32>>>,
    /// Generate both instead.
    #[serde(default)]
    pub random: Option<Random>,
    /// Dispatch this many times (the result is the same each time); default 1.
    #[serde(default)]
    pub repeat: Option<u32>,
    /// Another kernel of the catalogue taking two same-shaped matrices (`add`, `mul`) instead of
    /// `matmul`.
    #[serde(default)]
    pub op: Option<String>,
}

/// Output of `matmul`.
#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    /// `[m, n]`.
    pub shape: [u32; 2],
    /// The product, as rows (omitted for generated matrices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub c: Option<Vec<Vec<f32>>>,
    /// The sum of all elements of the product.
    pub checksum: f64,
    /// Dispatches made.
    pub dispatches: u32,
}

/// Rows as one row-major vector and its shape.
fn flatten(name: &str, rows: &[Vec<f32>]) -> Result<(Vec<f32>, [u32; 2]), ToolError> {
    let width = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || width == 0 || rows.iter().any(|r| r.len() != width) {
        return Err(ToolError::invalid_input(format!("{name} must be a non-empty matrix with rows of equal length")));
    }
    let dim = |n: usize| {
        u32::try_from(n).map_err(|_| ToolError::invalid_input(format!("{name} has more than 2^32 rows or columns")))
    };
    Ok((rows.concat(), [dim(rows.len())?, dim(width)?]))
}

/// Uniform values in [-1, 1) from a xorshift generator.
pub fn random_values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Multiply.
///
/// # Errors
/// [`ToolError::InvalidInput`] unless exactly `a` and `b`, or `random`, are given, or when a matrix
/// is empty or ragged, a random side is not 1 to [`SIDE_MAX`], or `repeat` is not 1 to
/// [`REPEAT_MAX`]. A GPU error otherwise: [`ToolError::Denied`] when GPU work is refused,
/// [`ToolError::Failed`] for the rest (shapes that do not fit `op`, an unknown `op`, no GPU).
pub fn matmul(input: Input) -> Result<Output, ToolError> {
    let (a, a_shape, b, b_shape, keep) = match (&input.a, &input.b, &input.random) {
        (Some(a), Some(b), None) => {
            let (a, a_shape) = flatten("a", a)?;
            let (b, b_shape) = flatten("b", b)?;
            (a, a_shape, b, b_shape, true)
        }
        (None, None, Some(r)) => {
            if [r.m, r.k, r.n].iter().any(|&d| d == 0 || d > SIDE_MAX) {
                return Err(ToolError::invalid_input(format!("m, k and n must be 1 to {SIDE_MAX}")));
            }
            let a = random_values((r.m * r.k) as usize, r.seed);
            let b = random_values((r.k * r.n) as usize, r.seed.wrapping_add(1));
            (a, [r.m, r.k], b, [r.k, r.n], false)
        }
        _ => return Err(ToolError::invalid_input("give a and b, or random")),
    };
    let repeat = input.repeat.unwrap_or(1);
    if repeat == 0 || repeat > REPEAT_MAX {
        return Err(ToolError::invalid_input(format!("repeat must be 1 to {REPEAT_MAX}")));
    }
    let a = Tensor::from_f32(&a_shape, &a)?;
    let b = Tensor::from_f32(&b_shape, &b)?;
    let op = input.op.as_deref().unwrap_or("matmul");
    let [m, n] = if op == "matmul" { [a_shape[0], b_shape[1]] } else { a_shape };
    let c = Tensor::zeros(gpu::DType::F32, &[m, n])?;
    for _ in 0..repeat {
        gpu::dispatch(op, &[&a, &b], &[&c], &[])?;
    }
    let values = c.to_f32()?;
    let checksum = values.iter().map(|v| f64::from(*v)).sum();
    let c = keep.then(|| values.chunks(n as usize).map(<[f32]>::to_vec).collect());
    Ok(Output { shape: [m, n], c, checksum, dispatches: repeat })
}

guild_sdk::export_tool! {
    run: matmul,
    describe: Info::new("matmul", "Multiply two matrices on the GPU: given as rows, or generated from a seed.").gpu(),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_checked_before_any_gpu_call() {
        assert_eq!(
            flatten("a", &[vec![1.0, 2.0], vec![3.0, 4.0]]).expect("matrix"),
            (vec![1.0, 2.0, 3.0, 4.0], [2, 2])
        );
        assert!(flatten("a", &[vec![1.0], vec![2.0, 3.0]]).is_err());
        assert!(flatten("a", &[]).is_err());
        let neither = Input { a: None, b: None, random: None, repeat: None, op: None };
        assert!(matches!(matmul(neither), Err(ToolError::InvalidInput(_))));
        let huge = Input { random: Some(Random { m: 1, k: SIDE_MAX + 1, n: 1, seed: 0 }), ..empty() };
        assert!(matches!(matmul(huge), Err(ToolError::InvalidInput(_))));
    }

    #[test]
    fn generated_values_are_seeded_and_in_range() {
        let a = random_values(1000, 7);
        assert_eq!(a, random_values(1000, 7));
        assert_ne!(a, random_values(1000, 8));
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
    }

    fn empty() -> Input {
        Input { a: None, b: None, random: None, repeat: None, op: None }
    }
}
