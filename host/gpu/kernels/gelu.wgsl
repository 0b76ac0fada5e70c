// Guild kernel `gelu`: GELU (tanh approximation) over n elements, 256 per workgroup, workgroups laid out in 2-D.
// `p: Params` (binding 0) is the shared header, src/params.wgsl, which the catalogue puts first.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * p.groups_x + wid.x) * 256u + lid;
    if (i < p.n) {
        let x = a[i];
        // The tanh form of GELU; the argument is clamped so tanh never sees an overflowing exp.
        let t = clamp(0.7978845608 * (x + 0.044715 * x * x * x), -10.0, 10.0);
        out[i] = 0.5 * x * (1.0 + tanh(t));
    }
}
