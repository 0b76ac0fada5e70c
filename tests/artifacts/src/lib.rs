//! Paths of the example tools and hostile fixtures as components, built by this crate's build
//! script: the Rust ones for `wasm32-wasip2`, the Python and JavaScript tools with their own
//! toolchains. Tests, benchmarks and doctests use these instead of building guests themselves.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
