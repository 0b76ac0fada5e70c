//! Host-side tensors: an element type, a shape and little-endian bytes. Guests' buffers live
//! here, in host memory; a dispatch uploads its inputs and reads its outputs back, because every
//! output is digested (and, when recording, stored) anyway.

use crate::GpuError;
use serde::{Deserialize, Serialize};

/// Element type of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 32-bit unsigned integer.
    U32,
    /// 32-bit signed integer.
    I32,
}

impl DType {
    /// Bytes per element.
    pub const fn size_bytes(self) -> u64 {
        4
    }

    /// The name used in errors and records.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::U32 => "u32",
            DType::I32 => "i32",
        }
    }

    /// Parse a name as written by [`DType::name`].
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "f32" => Some(DType::F32),
            "u32" => Some(DType::U32),
            "i32" => Some(DType::I32),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A scalar parameter of a kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    /// A 32-bit float, such as `scale`'s `factor` or `layer_norm`'s `eps`.
    F32(f32),
    /// A 32-bit unsigned integer (no kernel of the catalogue takes one yet).
    U32(u32),
    /// A 32-bit signed integer (no kernel of the catalogue takes one yet).
    I32(i32),
}

impl Scalar {
    /// Exact text for records: the type and the value's bits in hex (`f32:3f800000`), so a
    /// float parameter round-trips bit for bit.
    pub fn record(&self) -> String {
        match self {
            Scalar::F32(v) => format!("f32:{:08x}", v.to_bits()),
            Scalar::U32(v) => format!("u32:{v:08x}"),
            Scalar::I32(v) => format!("i32:{:08x}", u32::from_ne_bytes(v.to_ne_bytes())),
        }
    }

    /// Parse what [`Scalar::record`] wrote.
    pub fn parse_record(text: &str) -> Option<Self> {
        let (kind, hex) = text.split_once(':')?;
        let bits = u32::from_str_radix(hex, 16).ok()?;
        match kind {
            "f32" => Some(Scalar::F32(f32::from_bits(bits))),
            "u32" => Some(Scalar::U32(bits)),
            "i32" => Some(Scalar::I32(bits as i32)),
            _ => None,
        }
    }
}

/// What a buffer is, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorMeta {
    /// The element type (`f32`, `u32`, `i32`: 4 bytes each).
    pub dtype: DType,
    /// Dimensions, outermost first. An empty shape is a scalar (one element).
    pub shape: Vec<u32>,
}

impl TensorMeta {
    /// A tensor of `dtype` with `shape`.
    pub fn new(dtype: DType, shape: &[u32]) -> Self {
        Self { dtype, shape: shape.to_vec() }
    }

    /// Elements: the product of the dimensions.
    ///
    /// # Errors
    /// [`GpuError::Invalid`] when the product of the dimensions overflows a `u64`.
    pub fn elements(&self) -> Result<u64, GpuError> {
        self.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d))).ok_or_else(|| {
            GpuError::Invalid(format!("shape {} has more elements than a u64 holds", show_shape(&self.shape)))
        })
    }

    /// Bytes of its data.
    ///
    /// # Errors
    /// [`GpuError::Invalid`] when the element count, or the bytes it takes, overflows a `u64`.
    pub fn size_bytes(&self) -> Result<u64, GpuError> {
        self.elements()?
            .checked_mul(self.dtype.size_bytes())
            .ok_or_else(|| GpuError::Invalid(format!("shape {} is too large", show_shape(&self.shape))))
    }
}

impl std::fmt::Display for TensorMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.dtype, show_shape(&self.shape))
    }
}

/// A shape as messages print it: `[2, 3]` for two rows of three (`[]` for a scalar).
pub fn show_shape(shape: &[u32]) -> String {
    let dims: Vec<String> = shape.iter().map(u32::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Little-endian bytes of `values`.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian bytes of `values`.
pub fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The floats in little-endian `bytes` (a trailing partial element is ignored).
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The unsigned integers in little-endian `bytes` (a trailing partial element is ignored).
pub fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_round_trip_bit_for_bit() {
        for s in [Scalar::F32(-0.0), Scalar::F32(f32::NAN), Scalar::U32(7), Scalar::I32(-3)] {
            let back = Scalar::parse_record(&s.record()).expect("parses");
            assert_eq!(back.record(), s.record());
        }
        assert_eq!(Scalar::parse_record("f64:00"), None);
    }

    #[test]
    fn sizes_and_overflow() {
        assert_eq!(TensorMeta::new(DType::F32, &[3, 5]).size_bytes(), Ok(60));
        assert_eq!(TensorMeta::new(DType::U32, &[]).elements(), Ok(1));
        assert!(TensorMeta::new(DType::F32, &[u32::MAX, u32::MAX, u32::MAX]).elements().is_err());
    }
}
