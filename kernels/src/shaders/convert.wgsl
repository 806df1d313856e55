// Raw int16 samples → f32 µV: data[i] = f32(raw[i]) * uv_per_bit[i % C].
// The int16 values arrive packed two per u32 word, little endian (element 2k in the low half),
// so the upload is exactly the bytes the rig wrote.
// CPU twin: the conversion at the head of kernels::chain (one exact int→float conversion and one
// correctly rounded multiply, so the result is bit-identical).

struct Params {
    n_values: u32,
    n_channels: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> raw: array<u32>;
@group(0) @binding(2) var<storage, read> uv_per_bit: array<f32>;
@group(0) @binding(3) var<storage, read_write> data: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if i >= params.n_values {
        return;
    }
    let word = raw[i >> 1u];
    var v: i32;
    if (i & 1u) == 0u {
        v = bitcast<i32>(word << 16u) >> 16u;
    } else {
        v = bitcast<i32>(word) >> 16u;
    }
    data[i] = f32(v) * uv_per_bit[i % params.n_channels];
}
