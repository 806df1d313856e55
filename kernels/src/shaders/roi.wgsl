// Sparse ROI extraction: one invocation per (frame, ROI). F = Σ w·x over the ROI's pixels in the
// table's order, each product rounded before it is added (the XOR with a runtime zero, as in
// sosfilt.wgsl, keeps the compiler from fusing it into a multiply-add), so F is bit-identical to
// the twin's. The neuropil sum is exact: pixels are offset to x + 32768 (0..65535, unsigned) and
// added into a 64-bit (lo, hi) pair with carry; the host subtracts the offsets and divides in
// f64, as the twin does.
// CPU twin: kernels::roi::RoiTable::extract.

struct Params {
    n_frames: u32,
    n_rois: u32,
    n_pixels: u32,
    // Always 0; see rounded().
    opaque_zero: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// [cell_offsets: K + 1][np_offsets: K + 1][cell pixels][neuropil pixels]; the offsets are
// relative to the start of their pixel list.
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
// i16 frames, two per word (little-endian: the lower half first).
@group(0) @binding(3) var<storage, read> frames: array<u32>;
// f[frame * K + roi]
@group(0) @binding(4) var<storage, read_write> f_out: array<f32>;
// (lo, hi) of Σ (x + 32768) at [2 (frame * K + roi)]
@group(0) @binding(5) var<storage, read_write> np_out: array<u32>;

const WG: u32 = 64u;

fn rounded(p: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(p) ^ params.opaque_zero);
}

// The i16 at element `i` of the frames, sign-extended.
fn pixel(i: u32) -> i32 {
    let word = frames[i >> 1u];
    let shift = 16u - 16u * (i & 1u);
    return bitcast<i32>(word << shift) >> 16u;
}

@compute @workgroup_size(64)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let job = (wid.x + wid.y * nwg.x) * WG + lid;
    let k = params.n_rois;
    if job >= params.n_frames * k {
        return;
    }
    // Neighbouring invocations take the same ROI in neighbouring frames: same pixels, same trip
    // counts.
    let roi = job / params.n_frames;
    let frame = job % params.n_frames;
    let base = frame * params.n_pixels;
    let cells = 2u * (k + 1u);
    let nps = cells + table[k];
    var s = 0.0f;
    for (var i = table[roi]; i < table[roi + 1u]; i++) {
        let x = f32(pixel(base + table[cells + i]));
        s = s + rounded(weights[i] * x);
    }
    var lo = 0u;
    var hi = 0u;
    for (var i = table[k + 1u + roi]; i < table[k + 2u + roi]; i++) {
        let v = u32(pixel(base + table[nps + i]) + 32768i);
        lo = lo + v;
        if lo < v {
            hi = hi + 1u;
        }
    }
    let out = frame * k + roi;
    f_out[out] = s;
    np_out[2u * out] = lo;
    np_out[2u * out + 1u] = hi;
}
