// One step of a TEB model (docs/teb.md, "The computation of one step"), as six dispatches in one
// submission: LSTM gates of both LSTMs (`matvec`) → both cell updates (`cell`) → target.enc
// (`matvec`) → source MLP layer 1 with tanh (`matvec`) → layer 2 (`matvec`) → the Gaussian
// bottleneck's KL rate and the decoder (`finish`).
// CPU twin: kernels::teb::cpu::TebCpu::step. The host normalises the inputs ((v − mean) / std in
// f32, as the twin) and writes them into `s`; the recurrent state stays in `s` between steps.
//
// Buffers: `w` holds every tensor of the model (PyTorch state-dict order) followed by the
// target's mean and std; `s` holds the activations. Every offset below is an index of f32s into
// one of them, set once by the host (kernels::gpu::teb).

@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read_write> s: array<f32>;

// ---------------------------------------------------------------------------------------------
// matvec: out[r] = act(Σ_seg W_seg[r, :] · in_seg + bias_a[r] + bias_b[r]), a workgroup per row
// (a grid-stride loop over rows when there are more rows than workgroups), 64 invocations
// striding over the columns, then a tree reduction. Two segments give the LSTM's
// W_ih x + W_hh h and the MLP's W [h_x ; u_c] (the two column ranges of one weight matrix).
// Up to two independent jobs per dispatch (workgroup_id.y): the two LSTMs' gates at once.

struct Segment {
    // Offset of W[0, 0] of this segment in `w`, and the row stride.
    weight: u32,
    stride: u32,
    // Offset of the input vector in `s`, and its length (0: no segment).
    input: u32,
    cols: u32,
}

struct Job {
    rows: u32,
    // Offset of the output in `s`.
    out: u32,
    // Offsets of the biases in `w`; NONE for no second bias.
    bias_a: u32,
    bias_b: u32,
    // 0: identity, 1: tanh.
    act: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    seg: array<Segment, 2>,
}

struct Matvec {
    jobs: array<Job, 2>,
}

const NONE: u32 = 0xffffffffu;
const WG: u32 = 64u;

@group(0) @binding(2) var<uniform> mv: Matvec;

var<workgroup> partial: array<f32, 64>;

// tanh of a clamped argument: some implementations compute tanh as a ratio of exponentials,
// which overflows to NaN for large |x|; tanh(±15) is ±1 in f32 anyway.
fn tanh_safe(x: f32) -> f32 {
    return tanh(clamp(x, -15.0, 15.0));
}

// Sums `partial` over the workgroup into partial[0] (a tree: 6 rounds for 64). Called from
// workgroup-uniform control flow, after each invocation wrote its own entry.
fn reduce_partial(lid: u32) {
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half >>= 1u) {
        if lid < half {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

@compute @workgroup_size(64)
fn matvec(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let job = mv.jobs[wid.y];
    for (var r = wid.x; r < job.rows; r += nwg.x) {
        var acc = 0.0f;
        for (var g = 0u; g < 2u; g++) {
            let seg = job.seg[g];
            let row = seg.weight + r * seg.stride;
            for (var k = lid; k < seg.cols; k += WG) {
                acc += w[row + k] * s[seg.input + k];
            }
        }
        partial[lid] = acc;
        reduce_partial(lid);
        if lid == 0u {
            var v = partial[0] + w[job.bias_a + r];
            if job.bias_b != NONE {
                v += w[job.bias_b + r];
            }
            if job.act == 1u {
                v = tanh_safe(v);
            }
            s[job.out + r] = v;
        }
        // `partial` is reused by the next row.
        workgroupBarrier();
    }
}

// ---------------------------------------------------------------------------------------------
// cell: PyTorch's LSTM cell update from the gates (i, f, g, o stacked), one invocation per hidden
// unit of either LSTM: c' = σ(f) c + σ(i) tanh(g), h' = σ(o) tanh(c').

struct Lstm {
    // Offsets in `s` of the gates (4H), h (H) and c (H); H.
    gates: u32,
    h: u32,
    c: u32,
    hidden: u32,
}

struct Cell {
    lstm: array<Lstm, 2>,
}

@group(0) @binding(3) var<uniform> cell_params: Cell;

@compute @workgroup_size(64)
fn cell(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    var j = (wid.x + wid.y * nwg.x) * WG + lid;
    var m = cell_params.lstm[0];
    if j >= m.hidden {
        j -= m.hidden;
        m = cell_params.lstm[1];
        if j >= m.hidden {
            return;
        }
    }
    let hn = m.hidden;
    let i = sigmoid(s[m.gates + j]);
    let f = sigmoid(s[m.gates + hn + j]);
    let g = tanh_safe(s[m.gates + 2u * hn + j]);
    let o = sigmoid(s[m.gates + 3u * hn + j]);
    let c = f * s[m.c + j] + i * g;
    s[m.c + j] = c;
    s[m.h + j] = o * tanh_safe(c);
}

// ---------------------------------------------------------------------------------------------
// finish: one workgroup. rate = Σ_j ½ [e^Δ_j + μ_x,j² e^(−log σ_c,j²) − 1 − Δ_j] (KL(q ‖ p) with
// log σ_x² = log σ_c² + Δ); then for each target column r, the decoder of μ_c (target-only) and
// of μ_c + μ_x (full), de-normalised: ŷ · std + mean.
// Output in `s` at `out`: prediction (Dy) | target-only (Dy) | rate.

struct Finish {
    latent: u32,
    target_dim: u32,
    // In `w`: decoder weight [Dy, L], bias, target mean, target std.
    dec_w: u32,
    dec_b: u32,
    mean: u32,
    sd: u32,
    // In `s`: target.enc output (μ_c | log σ_c² | u_c), source MLP output (μ_x | Δ), output.
    enc: u32,
    mlp: u32,
    out: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(4) var<uniform> fin: Finish;

@compute @workgroup_size(64)
fn finish(@builtin(local_invocation_index) lid: u32) {
    let l = fin.latent;
    var kl = 0.0f;
    for (var j = lid; j < l; j += WG) {
        let mu_x = s[fin.mlp + j];
        let delta = s[fin.mlp + l + j];
        let logvar_c = s[fin.enc + l + j];
        kl += 0.5 * (exp(delta) + mu_x * mu_x * exp(-logvar_c) - 1.0 - delta);
    }
    partial[lid] = kl;
    reduce_partial(lid);
    let dy = fin.target_dim;
    if lid == 0u {
        s[fin.out + 2u * dy] = partial[0];
    }
    for (var r = lid; r < dy; r += WG) {
        var only = 0.0f;
        var full = 0.0f;
        for (var k = 0u; k < l; k++) {
            let wk = w[fin.dec_w + r * l + k];
            let mu_c = s[fin.enc + k];
            only += wk * mu_c;
            full += wk * (mu_c + s[fin.mlp + k]);
        }
        let b = w[fin.dec_b + r];
        let sd = w[fin.sd + r];
        let mean = w[fin.mean + r];
        s[fin.out + r] = (full + b) * sd + mean;
        s[fin.out + dy + r] = (only + b) * sd + mean;
    }
}
