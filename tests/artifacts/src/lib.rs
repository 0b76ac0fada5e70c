//! Paths of the example tools and hostile fixtures, built for `wasm32-wasip2` by this crate's
//! build script. Tests and benchmarks use these instead of building guests themselves.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
