// Negative peak detection with local exclusion (SpikeInterface `locally_exclusive`, streaming):
// one invocation per (sample, channel) to decide. CPU twin: kernels::detect::PeakDetector, whose
// module docs state the rules this mirrors exactly:
// - candidate at (s, c): x[s,c] <= −thr and x[s,c] < x[s−1,c] and x[s,c] <= x[s+1,c], with the
//   threshold in force when sample s arrived, and s−1, s+1 inside the stream segment;
// - a candidate is dropped if a candidate on a neighbour channel (CSR list of c, c included)
//   within ±exclude samples has a larger score (−x)·(1/thr), or an equal score at an earlier
//   sample. Only candidates compete.
// Survivors are appended to `out` through an atomic counter (unordered); the host sorts them by
// (sample, channel) and applies the per-channel dead time, which is sequential by nature (whether
// a peak is kept depends on the previous *kept* peak of its channel).
//
// The window of rows is the detector's history (`hist`, the last rows of earlier chunks, still
// needed as context or still undecided) followed by the new rows in `cur` (from row `cur_row0`
// of that buffer). Scores are single correctly rounded products of the host's f32 reciprocals,
// so every comparison is bit-identical to the twin's. WGSL lets compilers assume no infinities
// or NaNs, so thresholds whose reciprocal is infinite (threshold ±0) are classed on the host and
// compared by class here instead of through ±∞ arithmetic.

struct Params {
    n_channels: u32,
    n_hist: u32,
    n_rows: u32,
    cur_row0: u32,
    decide_lo: u32,
    decide_hi: u32,
    exclude: u32,
    capacity: u32,
    cur_set: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// One channel of one threshold set.
struct Threshold {
    // −threshold (f32::MAX for a threshold of −∞: every local minimum is a candidate).
    neg: f32,
    // 1/threshold when finite.
    inv: f32,
    kind: u32,
    _pad: u32,
}

const DISABLED: u32 = 0u; // threshold +∞ or NaN: never a candidate
const FINITE: u32 = 1u;
const POS_INF: u32 = 2u; // 1/threshold = +∞
const NEG_INF: u32 = 3u; // 1/threshold = −∞

// Score order classes: −∞ < finite < +∞; NaN (−0·∞) never beats and is never beaten.
const ORDER_NEG_INF: u32 = 0u;
const ORDER_FINITE: u32 = 1u;
const ORDER_POS_INF: u32 = 2u;
const ORDER_NAN: u32 = 3u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> hist: array<f32>;
@group(0) @binding(2) var<storage, read> cur: array<f32>;
// Threshold set of each history row.
@group(0) @binding(3) var<storage, read> hist_set: array<u32>;
// thresholds[set * C + c].
@group(0) @binding(4) var<storage, read> thresholds: array<Threshold>;
// CSR: C + 1 offsets, then the neighbour indices.
@group(0) @binding(5) var<storage, read> neighbours: array<u32>;
// Per survivor: window row, channel, value bits, 0.
@group(0) @binding(6) var<storage, read_write> out: array<u32>;
@group(0) @binding(7) var<storage, read_write> counter: array<atomic<u32>>;

struct Candidate {
    ok: bool,
    order: u32,
    score: f32,
    value: f32,
}

fn x_at(r: u32, c: u32) -> f32 {
    if r < params.n_hist {
        return hist[r * params.n_channels + c];
    }
    return cur[(params.cur_row0 + r - params.n_hist) * params.n_channels + c];
}

fn set_of(r: u32) -> u32 {
    if r < params.n_hist {
        return hist_set[r];
    }
    return params.cur_set;
}

fn candidate(r: u32, c: u32) -> Candidate {
    var none = Candidate(false, ORDER_NAN, 0.0, 0.0);
    // The first row of a segment has no predecessor, the last one (at the end) no successor.
    if r == 0u || r + 1u >= params.n_rows {
        return none;
    }
    let t = thresholds[set_of(r) * params.n_channels + c];
    if t.kind == DISABLED {
        return none;
    }
    let x = x_at(r, c);
    if !(x <= t.neg && x < x_at(r - 1u, c) && x <= x_at(r + 1u, c)) {
        return none;
    }
    if t.kind == FINITE {
        return Candidate(true, ORDER_FINITE, -x * t.inv, x);
    }
    // −x · (±∞): NaN at x = 0, else ±∞ with the sign of −x times that of 1/threshold.
    if x == 0.0 {
        return Candidate(true, ORDER_NAN, 0.0, x);
    }
    if (x < 0.0) == (t.kind == POS_INF) {
        return Candidate(true, ORDER_POS_INF, 0.0, x);
    }
    return Candidate(true, ORDER_NEG_INF, 0.0, x);
}

// Whether candidate j (row rj) suppresses candidate i (row ri): a larger score, or an equal one
// at an earlier sample.
fn beats(j: Candidate, rj: u32, i: Candidate, ri: u32) -> bool {
    if j.order == ORDER_NAN || i.order == ORDER_NAN {
        return false;
    }
    if j.order != i.order {
        return j.order > i.order;
    }
    if j.order == ORDER_FINITE {
        return j.score > i.score || (j.score == i.score && rj < ri);
    }
    // Both +∞ or both −∞: equal scores.
    return rj < ri;
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let job = (wid.x + wid.y * nwg.x) * 256u + lid;
    let n_ch = params.n_channels;
    if job >= (params.decide_hi - params.decide_lo) * n_ch {
        return;
    }
    let r = params.decide_lo + job / n_ch;
    let c = job % n_ch;
    let me = candidate(r, c);
    if !me.ok {
        return;
    }
    let e = params.exclude;
    var r_lo = 0u;
    if r > e {
        r_lo = r - e;
    }
    let r_hi = min(r + e, params.n_rows - 1u);
    let nb_end = neighbours[c + 1u];
    for (var k = neighbours[c]; k < nb_end; k++) {
        let other = neighbours[n_ch + 1u + k];
        for (var r2 = r_lo; r2 <= r_hi; r2++) {
            if r2 == r && other == c {
                continue;
            }
            let them = candidate(r2, other);
            if them.ok && beats(them, r2, me, r) {
                return;
            }
        }
    }
    let slot = atomicAdd(&counter[0], 1u);
    if slot < params.capacity {
        out[slot * 4u] = r;
        out[slot * 4u + 1u] = c;
        out[slot * 4u + 2u] = bitcast<u32>(me.value);
        out[slot * 4u + 3u] = 0u;
    }
}
