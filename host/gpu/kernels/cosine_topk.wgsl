// Guild kernel `cosine_topk`: the cosine similarity of a query (p.n values) against each of the
// p.m rows of a matrix, then the p.k best rows, best first (ties to the lower index). Two stages:
// `scores` (one thread per row) fills a scratch buffer; `topk` (one workgroup) selects k times
// the best row ordered after the previous pick. Scores lie in [-1, 1]; NaN counts as -2.
// `p: Params` (binding 0) is the shared header, src/params.wgsl, which the catalogue puts first.
@group(0) @binding(1) var<storage, read> query: array<f32>;
@group(0) @binding(2) var<storage, read> matrix: array<f32>;
@group(0) @binding(3) var<storage, read_write> indices: array<u32>;
@group(0) @binding(4) var<storage, read_write> top: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;

@compute @workgroup_size(256)
fn scores_stage(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wid.y * p.groups_x + wid.x) * 256u + lid;
    if (row >= p.m) {
        return;
    }
    let base = row * p.n;
    var dot_qm = 0.0;
    var norm_q = 0.0;
    var norm_m = 0.0;
    for (var j = 0u; j < p.n; j++) {
        let q = query[j];
        let v = matrix[base + j];
        dot_qm = dot_qm + q * v;
        norm_q = norm_q + q * q;
        norm_m = norm_m + v * v;
    }
    var s = 0.0;
    if (norm_q > 0.0 && norm_m > 0.0) {
        s = dot_qm / (sqrt(norm_q) * sqrt(norm_m));
    }
    // NaN is the only value not equal to itself.
    if (s != s) {
        s = -2.0;
    }
    scores[row] = s;
}

var<workgroup> best_score: array<f32, 256>;
var<workgroup> best_index: array<u32, 256>;

// Whether (s, i) ranks before (t, j): higher score first, then lower index.
fn before(s: f32, i: u32, t: f32, j: u32) -> bool {
    return s > t || (s == t && i < j);
}

@compute @workgroup_size(256)
fn topk_stage(@builtin(local_invocation_index) lid: u32) {
    var prev_score = 3.0;
    var prev_index = 0u;
    for (var pick = 0u; pick < p.k; pick++) {
        var s = -3.0;
        var i = 0xffffffffu;
        for (var r = lid; r < p.m; r = r + 256u) {
            let v = scores[r];
            if (before(prev_score, prev_index, v, r) && before(v, r, s, i)) {
                s = v;
                i = r;
            }
        }
        best_score[lid] = s;
        best_index[lid] = i;
        workgroupBarrier();
        for (var stride = 128u; stride > 0u; stride = stride / 2u) {
            if (lid < stride && before(best_score[lid + stride], best_index[lid + stride], best_score[lid], best_index[lid])) {
                best_score[lid] = best_score[lid + stride];
                best_index[lid] = best_index[lid + stride];
            }
            workgroupBarrier();
        }
        prev_score = best_score[0];
        prev_index = best_index[0];
        workgroupBarrier();
        if (lid == 0u) {
            indices[pick] = prev_index;
            top[pick] = prev_score;
        }
    }
}
