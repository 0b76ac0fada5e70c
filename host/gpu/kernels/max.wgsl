// Guild kernel `max`: out[r] = the largest element of row r of x (the last axis).
// Uniform parameters every Guild kernel receives; the host fills them from shapes and params.
struct Params { n: u32, m: u32, k: u32, groups_x: u32, f0: f32, f1: f32, u0: u32, u1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// One workgroup per row (p.m rows of p.n elements), workgroups laid out in 2-D; 256 threads
// stride over the row, then fold their partial results in workgroup memory.
var<workgroup> part: array<f32, 256>;

fn fold_sum(lid: u32) -> f32 {
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            part[lid] = part[lid] + part[lid + stride];
        }
        workgroupBarrier();
    }
    let total = part[0];
    workgroupBarrier();
    return total;
}

fn fold_max(lid: u32) -> f32 {
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            part[lid] = max(part[lid], part[lid + stride]);
        }
        workgroupBarrier();
    }
    let total = part[0];
    workgroupBarrier();
    return total;
}

fn row_max(base: u32, lid: u32) -> f32 {
    // Any element of the row is neutral for max, so a thread with no elements offers the first.
    var best = x[base];
    for (var j = lid; j < p.n; j = j + 256u) {
        best = max(best, x[base + j]);
    }
    part[lid] = best;
    workgroupBarrier();
    return fold_max(lid);
}

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
