// Common median reference: one invocation per (sample, group). The group's values at that
// sample are copied into private memory as order-preserving u32 keys (negative floats with all
// bits flipped, positive ones with the sign bit set: the order of f32::total_cmp, which the twin
// sorts by), the key of rank (n−1)/2 is found by Wirth's selection (Hoare partitioning around
// a[k] until the partitions meet at k), and for an even count the next rank is the smallest key
// to its right. The median, the middle value or the mean of the two middle values computed as
// (a + b) · 0.5 (which rounds exactly like the twin's (a + b) / 2), is subtracted from every
// member.
// CPU twin: kernels::cmr::MedianReference. Selecting, adding and halving are exact or correctly
// rounded, so the output is bit-identical to the twin's on the same input.
//
// Why one invocation per sample: selection is O(n) on average, a few thousand operations for 384
// channels, with no barriers. (A workgroup per sample that sorts or ranks in workgroup memory
// needs either ~45 barriers or n² = 147k comparisons per sample; on lavapipe, which runs
// invocations as SIMD lanes and coroutines on CPU cores, both were 10–25× slower than this.)

struct Params {
    n_channels: u32,
    n_samples: u32,
    n_groups: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// groups[0..=n_groups]: offsets into the member list that follows them, i.e. the members of
// group g are groups[n_groups + 1 + groups[g] .. n_groups + 1 + groups[g + 1]].
@group(0) @binding(1) var<storage, read> groups: array<u32>;
@group(0) @binding(2) var<storage, read_write> data: array<f32>;

const WG: u32 = 64u;
const MAX_GROUP: u32 = 1024u;

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

@compute @workgroup_size(64)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let job = (wid.x + wid.y * nwg.x) * WG + lid;
    if job >= params.n_samples * params.n_groups {
        return;
    }
    // Neighbouring invocations take neighbouring samples of the same group (same trip counts).
    let g = job / params.n_samples;
    let t = job % params.n_samples;
    let members = params.n_groups + 1u + groups[g];
    let n = min(groups[g + 1u] - groups[g], MAX_GROUP);
    if n == 0u {
        return;
    }
    let row = t * params.n_channels;
    var a: array<u32, MAX_GROUP>;
    for (var i = 0u; i < n; i++) {
        a[i] = to_key(data[row + groups[members + i]]);
    }
    // Wirth's selection of rank k (indices as i32: j may step below l).
    let k = i32((n - 1u) / 2u);
    var l = 0i;
    var r = i32(n) - 1i;
    while l < r {
        let pivot = a[k];
        var i = l;
        var j = r;
        loop {
            while a[i] < pivot {
                i++;
            }
            while pivot < a[j] {
                j--;
            }
            if i <= j {
                let s = a[i];
                a[i] = a[j];
                a[j] = s;
                i++;
                j--;
            }
            if i > j {
                break;
            }
        }
        if j < k {
            l = i;
        }
        if k < i {
            r = j;
        }
    }
    var median = from_key(a[k]);
    if (n & 1u) == 0u {
        // Everything right of k ranks at or above it: the next rank is their minimum.
        var next = 0xffffffffu;
        for (var i = u32(k) + 1u; i < n; i++) {
            next = min(next, a[i]);
        }
        median = (median + from_key(next)) * 0.5;
    }
    for (var i = 0u; i < n; i++) {
        let idx = row + groups[members + i];
        data[idx] = data[idx] - median;
    }
}
