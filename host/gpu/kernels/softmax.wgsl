// Guild kernel `softmax`: each row of x (the last axis) becomes exp(x - max) / sum(exp(x - max)).
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
    let base = row * p.n;
    let top = row_max(base, lid);
    var acc = 0.0;
    for (var j = lid; j < p.n; j = j + 256u) {
        acc = acc + exp(x[base + j] - top);
    }
    part[lid] = acc;
    workgroupBarrier();
    let total = fold_sum(lid);
    for (var j = lid; j < p.n; j = j + 256u) {
        out[base + j] = exp(x[base + j] - top) / total;
    }
}
