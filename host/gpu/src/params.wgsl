// The uniform block every Guild kernel receives at binding 0, put before each kernel's own source
// by the catalogue (catalogue.rs). The host fills it from shapes and params; its Rust twin is
// `Params` in params.rs, and a test there holds the two to one layout.
struct Params { n: u32, m: u32, k: u32, groups_x: u32, f0: f32, f1: f32, u0: u32, u1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
