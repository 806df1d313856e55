// Causal bandpass: second-order sections in transposed direct form II, f32, one invocation per
// channel looping over the chunk's samples (a recursive filter is sequential in time; channels
// are the parallel axis). State (z1, z2 per section and channel) lives in a storage buffer and
// carries over to the next chunk, so the output does not depend on chunking.
// CPU twin: kernels::filter::SosFilter (same operation order as scipy's _sosfilt:
// y = b0·x + z1; z1 = b1·x − a1·y + z2; z2 = b2·x − a2·y). Vulkan compilers may contract
// a·b + c into one fused multiply-add (one rounding where the twin rounds twice), and WGSL has
// no `precise`; through the filter's recursion that grows to ~1e-5 of the output's scale. Every
// product therefore goes through `rounded()`, which XORs its bits with a runtime zero the
// compiler cannot see through: the product is materialised (rounded) before it is added, and
// each add, subtract and multiply is then a single correctly rounded IEEE operation, as on the
// CPU. The output is bit-identical to the twin's (up to denormals, which Vulkan may flush).

struct Params {
    n_channels: u32,
    n_samples: u32,
    n_sections: u32,
    // Always 0; see rounded().
    opaque_zero: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// Per section: b0 b1 b2 a1 a2 (a0 == 1).
@group(0) @binding(1) var<storage, read> coeffs: array<f32>;
// state[(s * 2 + k) * C + c]: z1 (k = 0), z2 (k = 1) — the twin's (planar) layout.
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
// Sample-major chunk, filtered in place.
@group(0) @binding(3) var<storage, read_write> data: array<f32>;

const MAX_SECTIONS: u32 = 16u;

// a · b, rounded to f32 before any later addition can be fused with it.
fn rounded(p: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(p) ^ params.opaque_zero);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let n_ch = params.n_channels;
    if c >= n_ch {
        return;
    }
    let n_sec = min(params.n_sections, MAX_SECTIONS);
    var z1: array<f32, MAX_SECTIONS>;
    var z2: array<f32, MAX_SECTIONS>;
    for (var s = 0u; s < n_sec; s++) {
        z1[s] = state[(s * 2u) * n_ch + c];
        z2[s] = state[(s * 2u + 1u) * n_ch + c];
    }
    for (var t = 0u; t < params.n_samples; t++) {
        let idx = t * n_ch + c;
        var x = data[idx];
        for (var s = 0u; s < n_sec; s++) {
            let b0 = coeffs[s * 5u];
            let b1 = coeffs[s * 5u + 1u];
            let b2 = coeffs[s * 5u + 2u];
            let a1 = coeffs[s * 5u + 3u];
            let a2 = coeffs[s * 5u + 4u];
            let y = rounded(b0 * x) + z1[s];
            z1[s] = rounded(b1 * x) - rounded(a1 * y) + z2[s];
            z2[s] = rounded(b2 * x) - rounded(a2 * y);
            x = y;
        }
        data[idx] = x;
    }
    for (var s = 0u; s < n_sec; s++) {
        state[(s * 2u) * n_ch + c] = z1[s];
        state[(s * 2u + 1u) * n_ch + c] = z2[s];
    }
}
