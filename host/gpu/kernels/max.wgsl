// Guild kernel `max`: out[r] = the largest element of row r of x (the last axis).
// `p: Params` (binding 0) is the shared header, src/params.wgsl, which the catalogue puts first.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// One workgroup per row: see rows.wgsl (the fold, appended by the catalogue).

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * p.groups_x + wid.x;
    if (row >= p.m) {
        return;
    }
    let best = row_max(row * p.n, lid);
    if (lid == 0u) {
        out[row] = best;
    }
}
