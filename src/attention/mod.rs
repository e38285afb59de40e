//! A native reference for what the attention models compute.
//!
//! Masked softmax, scaled dot-product and multi-head attention, and the
//! positional encodings of the model study, written out plainly over
//! `ndarray` so that a reader can see what an exported ONNX graph does, and a
//! test can check an export against it (`integration-tests/attention_parity.rs`
//! runs one exported layer in ONNX Runtime and compares).
//!
//! The masking contract is the models' (`masked_softmax` and `MaskedMHA` in
//! `training/fraudlib/models.py`): padding gets weight exactly 0, and a query
//! with nothing but padding gets all-zero weights, never NaN.
//!
//! This is a reference, not the engine: scoring always runs the exported
//! model in ONNX Runtime ([`crate::scoring`]), and nothing here is on the hot
//! path or tuned for speed.

pub mod mha;
pub mod positional;
pub mod softmax;

pub use mha::{
    key_mask_from_f32, scaled_dot_product_attention, AttentionOutput, Linear, MultiHeadAttention,
    MultiHeadOutput, ShapeError,
};
pub use positional::{
    alibi_bias, alibi_bias_at, alibi_slopes, sinusoidal, sinusoidal_at, t5_buckets,
    t5_relative_bucket, time_encoding, time_encodings, LearnedPositional,
};
pub use softmax::{log_sum_exp, masked_softmax, masked_softmax_in_place};
