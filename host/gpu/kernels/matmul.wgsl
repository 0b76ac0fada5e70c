// Guild kernel `matmul`: out[m, n] = a[m, k] · b[k, n], f32, row-major. Each workgroup of 16×16
// threads computes a 64×64 tile of out, each thread a 4×4 block, staging 64×16 slices of a and
// 16×64 slices of b in workgroup memory. Every output sums its k products in order 0..k.
// `p: Params` (binding 0) is the shared header, src/params.wgsl, which the catalogue puts first.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const TILE: u32 = 64u;
const DEPTH: u32 = 16u;
var<workgroup> tile_a: array<array<f32, 64>, 16>;
var<workgroup> tile_b: array<array<f32, 64>, 16>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) flat: u32) {
    let rows = p.m;
    let cols = p.n;
    let depth = p.k;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    // One vec4 of outputs per row of the thread's 4×4 block: no dynamically indexed private
    // arrays, which some drivers (lavapipe among them) keep in memory instead of registers.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let steps = (depth + DEPTH - 1u) / DEPTH;
    for (var s = 0u; s < steps; s++) {
        let k0 = s * DEPTH;
        for (var r = 0u; r < 4u; r++) {
            let e = flat + 256u * r;
            // a: 64 rows × 16 columns of the k range.
            let ar = e / DEPTH;
            let ac = e % DEPTH;
            var va = 0.0;
            if (row0 + ar < rows && k0 + ac < depth) {
                va = a[(row0 + ar) * depth + k0 + ac];
            }
            tile_a[ac][ar] = va;
            // b: 16 rows of the k range × 64 columns.
            let br = e / TILE;
            let bc = e % TILE;
            var vb = 0.0;
            if (k0 + br < depth && col0 + bc < cols) {
                vb = b[(k0 + br) * cols + col0 + bc];
            }
            tile_b[br][bc] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < DEPTH; kk++) {
            let bv = vec4<f32>(tile_b[kk][lid.x], tile_b[kk][lid.x + 16u], tile_b[kk][lid.x + 32u], tile_b[kk][lid.x + 48u]);
            acc0 = acc0 + tile_a[kk][lid.y] * bv;
            acc1 = acc1 + tile_a[kk][lid.y + 16u] * bv;
            acc2 = acc2 + tile_a[kk][lid.y + 32u] * bv;
            acc3 = acc3 + tile_a[kk][lid.y + 48u] * bv;
        }
        workgroupBarrier();
    }
    store_row(row0 + lid.y, col0 + lid.x, acc0);
    store_row(row0 + lid.y + 16u, col0 + lid.x, acc1);
    store_row(row0 + lid.y + 32u, col0 + lid.x, acc2);
    store_row(row0 + lid.y + 48u, col0 + lid.x, acc3);
}

// Write the four outputs of one row of a thread's block (columns c, c+16, c+32, c+48).
fn store_row(r: u32, c: u32, v: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = c + 16u * j;
        if (col < p.n) {
            out[r * p.n + col] = v[j];
        }
    }
}
