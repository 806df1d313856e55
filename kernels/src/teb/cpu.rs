//! The CPU twin of one TEB step (docs/teb.md, "The computation of one step"): the
//! specification of `teb.wgsl`, the fallback, and the oracle its tests compare against.
//! Allocation-free per step: every buffer is sized once from the model.

use super::model::{Linear, Lstm, TebModel};

/// What one step gives, in the target's raw units.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    /// The full model's prediction of the target's next bin (`Dy`).
    pub prediction: Vec<f32>,
    /// The target-only model's prediction of the same (`Dy`).
    pub target_only: Vec<f32>,
    /// KL(q ‖ p) of this step, nats: the information taken from the source.
    pub rate_nats: f32,
}

impl StepOutput {
    pub fn for_model(model: &TebModel) -> Self {
        let dy = model.config.target_dim();
        StepOutput {
            prediction: vec![0.0; dy],
            target_only: vec![0.0; dy],
            rate_nats: 0.0,
        }
    }
}

/// Recurrent state of one LSTM.
#[derive(Debug, Clone)]
struct LstmState {
    h: Vec<f32>,
    c: Vec<f32>,
    gates: Vec<f32>,
}

impl LstmState {
    fn new(hidden: usize) -> Self {
        LstmState {
            h: vec![0.0; hidden],
            c: vec![0.0; hidden],
            gates: vec![0.0; 4 * hidden],
        }
    }
    fn reset(&mut self) {
        self.h.fill(0.0);
        self.c.fill(0.0);
    }
}

/// The model with its recurrent state, stepped once per bin.
pub struct TebCpu {
    model: TebModel,
    target: LstmState,
    source: LstmState,
    x: Vec<f32>,
    y: Vec<f32>,
    /// target.enc output: μ_c | log σ_c² | u_c.
    enc: Vec<f32>,
    /// [h_x ; u_c]
    mlp_in: Vec<f32>,
    mlp_hidden: Vec<f32>,
    /// μ_x | Δ
    mlp_out: Vec<f32>,
    z: Vec<f32>,
}

impl TebCpu {
    pub fn new(model: &TebModel) -> Self {
        let d = model.dims();
        let l = d.latent;
        TebCpu {
            model: model.clone(),
            target: LstmState::new(d.hidden.target_lstm),
            source: LstmState::new(d.hidden.source_lstm),
            x: vec![0.0; d.source],
            y: vec![0.0; d.target],
            enc: vec![0.0; 3 * l],
            mlp_in: vec![0.0; d.hidden.source_lstm + l],
            mlp_hidden: vec![0.0; d.hidden.source_mlp],
            mlp_out: vec![0.0; 2 * l],
            z: vec![0.0; l],
        }
    }

    pub fn model(&self) -> &TebModel {
        &self.model
    }

    /// Zero recurrent state (at the start, and after a gap in the data).
    pub fn reset(&mut self) {
        self.target.reset();
        self.source.reset();
    }

    /// One bin: `x` (Dx) and `y` (Dy) raw values of the bin that just closed; `out` gets the
    /// prediction of the next bin and this step's rate. Lengths are the caller's contract
    /// (checked when the stream's columns are matched to the model).
    pub fn step(&mut self, x: &[f32], y: &[f32], out: &mut StepOutput) {
        let cfg = &self.model.config;
        let w = &self.model.weights;
        let n = &cfg.normalisation;
        normalise(x, &n.source_mean, &n.source_std, &mut self.x);
        normalise(y, &n.target_mean, &n.target_std, &mut self.y);
        let l = cfg.latent;

        lstm_step(&w.target_lstm, &self.y, &mut self.target);
        linear(&w.target_enc, &self.target.h, &mut self.enc);
        lstm_step(&w.source_lstm, &self.x, &mut self.source);
        let hx = self.source.h.len();
        self.mlp_in[..hx].copy_from_slice(&self.source.h);
        self.mlp_in[hx..].copy_from_slice(&self.enc[2 * l..3 * l]);
        linear(&w.source_mlp1, &self.mlp_in, &mut self.mlp_hidden);
        self.mlp_hidden.iter_mut().for_each(|v| *v = v.tanh());
        linear(&w.source_mlp2, &self.mlp_hidden, &mut self.mlp_out);

        let (mu_c, rest) = self.enc.split_at(l);
        let logvar_c = &rest[..l];
        let (mu_x, delta) = self.mlp_out.split_at(l);
        out.rate_nats = kl_rate(mu_x, delta, logvar_c);

        // Target-only prediction first (decoder of μ_c), then the full one (of μ_c + μ_x).
        self.z.copy_from_slice(mu_c);
        decode(
            &w.decoder,
            &self.z,
            &n.target_mean,
            &n.target_std,
            &mut out.target_only,
        );
        self.z.iter_mut().zip(mu_x).for_each(|(z, m)| *z += m);
        decode(
            &w.decoder,
            &self.z,
            &n.target_mean,
            &n.target_std,
            &mut out.prediction,
        );
    }
}

/// `(v − mean) / std`, the inputs' normalisation (also the GPU path's, on the host).
pub(crate) fn normalise(raw: &[f32], mean: &[f32], std: &[f32], out: &mut [f32]) {
    for (((o, v), m), s) in out.iter_mut().zip(raw).zip(mean).zip(std) {
        *o = (v - m) / s;
    }
}

/// `out = W · input + b`.
pub fn linear(layer: &Linear, input: &[f32], out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        let row = &layer.weight[r * layer.cols..(r + 1) * layer.cols];
        *o = dot(row, input) + layer.bias[r];
    }
}

/// Dot product in 8 independent lanes (vectorises; the GPU sums in its own order, within 1e-4).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// PyTorch's LSTM cell: gates `W_ih x + b_ih + W_hh h + b_hh` in the order i, f, g, o.
fn lstm_step(w: &Lstm, input: &[f32], s: &mut LstmState) {
    let h = w.hidden;
    for r in 0..4 * h {
        let wi = &w.weight_ih[r * w.input..(r + 1) * w.input];
        let wh = &w.weight_hh[r * h..(r + 1) * h];
        s.gates[r] = dot(wi, input) + w.bias_ih[r] + dot(wh, &s.h) + w.bias_hh[r];
    }
    for j in 0..h {
        let i = sigmoid(s.gates[j]);
        let f = sigmoid(s.gates[h + j]);
        let g = s.gates[2 * h + j].tanh();
        let o = sigmoid(s.gates[3 * h + j]);
        s.c[j] = f * s.c[j] + i * g;
        s.h[j] = o * s.c[j].tanh();
    }
}

/// KL(N(μ_c + μ_x, σ_x²) ‖ N(μ_c, σ_c²)) with log σ_x² = log σ_c² + Δ, summed over the latent:
/// Σ ½ [e^Δ + μ_x² e^(−log σ_c²) − 1 − Δ].
pub fn kl_rate(mu_x: &[f32], delta: &[f32], logvar_c: &[f32]) -> f32 {
    mu_x.iter()
        .zip(delta)
        .zip(logvar_c)
        .map(|((m, d), lc)| 0.5 * (d.exp() + m * m * (-lc).exp() - 1.0 - d))
        .sum()
}

fn decode(w: &Linear, z: &[f32], mean: &[f32], std: &[f32], out: &mut [f32]) {
    linear(w, z, out);
    for ((o, m), s) in out.iter_mut().zip(mean).zip(std) {
        *o = *o * s + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teb::model::{Dims, Hidden};

    fn dims() -> Dims {
        Dims {
            source: 7,
            target: 2,
            latent: 3,
            hidden: Hidden {
                target_lstm: 5,
                source_lstm: 6,
                source_mlp: 4,
            },
        }
    }

    #[test]
    fn with_the_source_head_at_its_initialisation_the_rate_is_zero_and_both_predictions_agree() {
        // docs/teb.md: mean head and Δ zero ⇒ q = p, no information from the source.
        let mut model = TebModel::random(dims(), 3);
        model.weights.source_mlp2.weight.fill(0.0);
        model.weights.source_mlp2.bias.fill(0.0);
        let mut cpu = TebCpu::new(&model);
        let mut out = StepOutput::for_model(&model);
        for t in 0..20 {
            let x: Vec<f32> = (0..7).map(|c| ((t * 7 + c) as f32).sin()).collect();
            cpu.step(&x, &[0.3, -(t as f32) * 0.1], &mut out);
            assert_eq!(out.rate_nats, 0.0);
            assert_eq!(out.prediction, out.target_only);
        }
    }

    #[test]
    fn kl_rate_matches_the_gaussian_kl_written_out() {
        // One latent dimension, prior N(0, 2), posterior N(0.5, 2·e^0.3):
        // ½[σq²/σp² + μ²/σp² − 1 + ln σp² − ln σq²] with σq²/σp² = e^0.3.
        let (lc, d, m) = (2f32.ln(), 0.3f32, 0.5f32);
        let expected = 0.5 * (0.3f32.exp() + 0.25 / 2.0 - 1.0 - 0.3);
        assert!((kl_rate(&[m], &[d], &[lc]) - expected).abs() < 1e-6);
    }

    #[test]
    fn reset_returns_to_the_first_step() {
        let model = TebModel::random(dims(), 9);
        let mut cpu = TebCpu::new(&model);
        let mut first = StepOutput::for_model(&model);
        let mut out = first.clone();
        let x = [0.5f32; 7];
        cpu.step(&x, &[1.0, 2.0], &mut first);
        cpu.step(&x, &[1.0, 2.0], &mut out);
        assert_ne!(out, first, "the state carries over");
        cpu.reset();
        cpu.step(&x, &[1.0, 2.0], &mut out);
        assert_eq!(out, first);
    }
}
