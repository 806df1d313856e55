// Noise per channel by the median absolute deviation: one workgroup per channel computes the
// exact median m of the channel's values, then the exact median of |x − m|. The host divides by
// 0.6744897501960817 (in f32, like the twin; a WGSL division may be off by 2.5 ulp).
// CPU twin: kernels::noise (median_in_place / sigma_of_column, numpy semantics).
//
// An exact median without sorting: radix select on the values' order-preserving u32 keys
// (negative floats have all bits flipped, positive ones the sign bit set, which orders keys like
// f32::total_cmp). Four passes, 8 bits each, most significant first: each pass histograms the
// next byte of the keys that match the prefix found so far (256 atomic counters in workgroup
// memory) and picks the bucket holding the wanted rank. After the fourth pass the key of that
// rank is known exactly. For an even count the next rank is the same key again when the run of
// equal keys continues past it, else the smallest key above it (one pass with atomicMin); the
// median is then (a + b) · 0.5, which rounds like the twin's (a + b) / 2. |x − m| is recomputed
// from the data at every pass (exact and deterministic, so each pass sees the same values).
// Everything is compare, add, subtract and halve: bit-identical to the twin.
//
// The rows may wrap around the end of a ring buffer: row i of the window is buffer row
// (start_row + i) mod ring_rows. Order does not matter to a median.

struct Params {
    n_channels: u32,
    ring_rows: u32,
    start_row: u32,
    n_rows: u32,
    n_list: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
// The channels to estimate, one workgroup each.
@group(0) @binding(2) var<storage, read> channels: array<u32>;
// Per listed channel: median, MAD.
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> sh_prefix: u32;
var<workgroup> sh_rank: u32;
var<workgroup> sh_equal: u32;
var<workgroup> sh_min_above: atomic<u32>;
var<workgroup> sh_result: u32;

fn to_key(f: f32) -> u32 {
    let b = bitcast<u32>(f);
    if (b & 0x80000000u) != 0u {
        return ~b;
    }
    return b | 0x80000000u;
}

fn from_key(k: u32) -> f32 {
    if (k & 0x80000000u) != 0u {
        return bitcast<f32>(k & 0x7fffffffu);
    }
    return bitcast<f32>(~k);
}

fn value(c: u32, i: u32, deviation: bool, m: f32) -> f32 {
    var row = params.start_row + i;
    if row >= params.ring_rows {
        row -= params.ring_rows;
    }
    let x = data[row * params.n_channels + c];
    if deviation {
        return abs(x - m);
    }
    return x;
}

// Key of the value of rank `rank` (0-based, ascending). Leaves in sh_rank its rank within the
// run of values with the same key, and in sh_equal that run's length.
fn select_rank(c: u32, rank: u32, deviation: bool, m: f32, lid: u32) -> u32 {
    workgroupBarrier();
    if lid == 0u {
        sh_prefix = 0u;
        sh_rank = rank;
    }
    for (var digit = 0u; digit < 4u; digit++) {
        let shift = 24u - 8u * digit;
        atomicStore(&hist[lid], 0u);
        // Also the barrier between clearing the histogram and counting into it.
        let prefix = workgroupUniformLoad(&sh_prefix);
        var mask = 0u;
        if digit > 0u {
            mask = 0xffffffffu << (shift + 8u);
        }
        for (var i = lid; i < params.n_rows; i += WG) {
            let k = to_key(value(c, i, deviation, m));
            if (k & mask) == prefix {
                atomicAdd(&hist[(k >> shift) & 0xffu], 1u);
            }
        }
        workgroupBarrier();
        if lid == 0u {
            let r = sh_rank;
            var below = 0u;
            for (var b = 0u; b < 256u; b++) {
                let h = atomicLoad(&hist[b]);
                if r < below + h {
                    sh_prefix = prefix | (b << shift);
                    sh_rank = r - below;
                    sh_equal = h;
                    break;
                }
                below += h;
            }
        }
        workgroupBarrier();
    }
    return workgroupUniformLoad(&sh_prefix);
}

// The smallest key above `key`.
fn min_above(c: u32, key: u32, deviation: bool, m: f32, lid: u32) -> u32 {
    workgroupBarrier();
    if lid == 0u {
        atomicStore(&sh_min_above, 0xffffffffu);
    }
    workgroupBarrier();
    var best = 0xffffffffu;
    for (var i = lid; i < params.n_rows; i += WG) {
        let k = to_key(value(c, i, deviation, m));
        if k > key {
            best = min(best, k);
        }
    }
    atomicMin(&sh_min_above, best);
    workgroupBarrier();
    if lid == 0u {
        sh_result = atomicLoad(&sh_min_above);
    }
    return workgroupUniformLoad(&sh_result);
}

// numpy's median of the channel's values (or of their deviations from m).
fn median(c: u32, deviation: bool, m: f32, lid: u32) -> f32 {
    let n = params.n_rows;
    let lo = select_rank(c, (n - 1u) / 2u, deviation, m, lid);
    if (n & 1u) == 1u {
        return from_key(lo);
    }
    var hi = lo;
    let rank_in_run = workgroupUniformLoad(&sh_rank);
    let run = workgroupUniformLoad(&sh_equal);
    if rank_in_run + 1u >= run {
        hi = min_above(c, lo, deviation, m, lid);
    }
    return (from_key(lo) + from_key(hi)) * 0.5;
}

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let job = wid.x + wid.y * nwg.x;
    if job >= params.n_list || params.n_rows == 0u {
        return;
    }
    let c = channels[job];
    let m = median(c, false, 0.0, lid);
    let mad = median(c, true, m, lid);
    if lid == 0u {
        out[job * 2u] = m;
        out[job * 2u + 1u] = mad;
    }
}
