// Guild kernel `mul`: out[i] = a[i] * b[i] over n elements, 256 per workgroup, workgroups laid out in 2-D.
// `p: Params` (binding 0) is the shared header, src/params.wgsl, which the catalogue puts first.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * p.groups_x + wid.x) * 256u + lid;
    if (i < p.n) {
        out[i] = a[i] * b[i];
    }
}
