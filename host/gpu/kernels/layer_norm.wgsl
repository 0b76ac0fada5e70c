// Guild kernel `layer_norm`: each row of x (the last axis) is normalised to mean 0 and variance 1
// (eps = p.f0 added to the variance), then scaled by gamma and shifted by beta.
// `p: Params` (binding 0) is the shared header, src/params.wgsl, which the catalogue puts first.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// One workgroup per row: see rows.wgsl (the fold, appended by the catalogue).

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * p.groups_x + wid.x;
    if (row >= p.m) {
        return;
    }
    let base = row * p.n;
    let count = f32(p.n);
    var acc = 0.0;
    for (var j = lid; j < p.n; j = j + 256u) {
        acc = acc + x[base + j];
    }
    part[lid] = acc;
    workgroupBarrier();
    let mean = fold_sum(lid) / count;
    var dev = 0.0;
    for (var j = lid; j < p.n; j = j + 256u) {
        let d = x[base + j] - mean;
        dev = dev + d * d;
    }
    part[lid] = dev;
    workgroupBarrier();
    let inv = inverseSqrt(fold_sum(lid) / count + p.f0);
    for (var j = lid; j < p.n; j = j + 256u) {
        out[base + j] = (x[base + j] - mean) * inv * gamma[j] + beta[j];
    }
}
