// Shared by the row kernels (sum, max, softmax, layer_norm), appended to each by the catalogue:
// WGSL declarations may come after their use, so the shared header (src/params.wgsl) declares
// `p`, each kernel its input `x`, and this file supplies the workgroup fold.
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

