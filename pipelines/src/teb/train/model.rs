//! The TEB network in candle, with the tensor names of docs/teb.md held in a [`VarMap`], so the
//! trained weights export by name into [`TebWeights`] (and from there to `weights.safetensors`).
//! The LSTMs run a window of `T` steps for `B` lanes at once: the input projection of the whole
//! window is one matrix product, only `h · W_hhᵀ` is in the recurrence; everything after the
//! LSTMs (encoder, source MLP, bottleneck, decoder, losses) is one batched pass over `T·B` rows.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use kernels::teb::model::{Dims, Linear, Lstm, TebWeights};

pub type CResult<T> = candle_core::Result<T>;

/// Variance added to the decoded distribution (docs/teb.md: `diag(W_dec² σ²) + 1e-4`).
const DECODER_VAR_FLOOR: f64 = 1e-4;
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// The model's variables, by their docs/teb.md names.
pub struct Net {
    pub dims: Dims,
    pub varmap: VarMap,
    /// `[Dy, L]` 0/1: which decoder weights training may use ([`decoder_mask`]); `None` is all.
    decoder_mask: Option<Tensor>,
}

/// One set of the model's tensors (the live variables, or detached copies for evaluation).
#[derive(Clone)]
pub struct Params {
    target_lstm: LstmParams,
    target_enc: (Tensor, Tensor),
    source_lstm: LstmParams,
    mlp0: (Tensor, Tensor),
    mlp2: (Tensor, Tensor),
    decoder: (Tensor, Tensor),
    decoder_mask: Option<Tensor>,
}

#[derive(Clone)]
struct LstmParams {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

/// Recurrent state of one LSTM for `B` lanes (`[B, H]` each).
#[derive(Clone)]
pub struct State {
    pub h: Tensor,
    pub c: Tensor,
}

impl State {
    pub fn zeros(lanes: usize, hidden: usize) -> CResult<Self> {
        let z = Tensor::zeros((lanes, hidden), DType::F32, &Device::Cpu)?;
        Ok(State { h: z.clone(), c: z })
    }
    /// Cut from the graph (truncated backpropagation: the values carry over, the gradient not).
    pub fn detach(&self) -> Self {
        State {
            h: self.h.detach(),
            c: self.c.detach(),
        }
    }
}

/// The target module's output for `N` rows: `[N, L]` each.
#[derive(Clone)]
pub struct Prior {
    pub mu: Tensor,
    pub logvar: Tensor,
    pub u: Tensor,
}

/// Per-row losses of a batch: `[N]` each.
pub struct RowLosses {
    /// Gaussian NLL of `y_{t+1}` under the decoded distribution, averaged over target columns.
    pub nll: Tensor,
    /// KL term: KL(p ‖ N(0, I)) in stage 1, KL(q ‖ p) (the rate) in stage 2.
    pub kl: Tensor,
}

impl Net {
    /// Variables set to `w` (shapes from `dims`).
    pub fn new(dims: Dims, w: &TebWeights) -> CResult<Self> {
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().map_err(|_| poisoned())?;
            for ((name, shape), (_, values)) in dims.tensor_shapes().into_iter().zip(w.named()) {
                let t = Tensor::from_slice(values, shape, &Device::Cpu)?;
                data.insert(name.to_string(), Var::from_tensor(&t)?);
            }
        }
        Ok(Net {
            dims,
            varmap,
            decoder_mask: None,
        })
    }

    /// Restricts the decoder to [`decoder_mask`] (and zeroes the weights outside it).
    pub fn with_decoder_mask(mut self) -> CResult<Self> {
        let mask = decoder_mask(self.dims)?;
        let w = self.var("decoder.weight")?;
        w.set(&w.as_tensor().mul(&mask)?)?;
        self.decoder_mask = Some(mask);
        Ok(self)
    }

    fn var(&self, name: &str) -> CResult<Var> {
        let data = self.varmap.data().lock().map_err(|_| poisoned())?;
        data.get(name)
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("no variable `{name}`")))
    }

    /// The variables whose names start with one of `prefixes` (what a stage trains).
    pub fn vars(&self, prefixes: &[&str]) -> CResult<Vec<Var>> {
        self.dims
            .tensor_shapes()
            .into_iter()
            .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p)))
            .map(|(n, _)| self.var(n))
            .collect()
    }

    /// The live variables (gradients flow into them).
    pub fn params(&self) -> CResult<Params> {
        let t = |n: &str| self.var(n).map(|v| v.as_tensor().clone());
        let lstm = |p: &str| -> CResult<LstmParams> {
            Ok(LstmParams {
                w_ih: t(&format!("{p}.weight_ih_l0"))?,
                w_hh: t(&format!("{p}.weight_hh_l0"))?,
                b_ih: t(&format!("{p}.bias_ih_l0"))?,
                b_hh: t(&format!("{p}.bias_hh_l0"))?,
            })
        };
        let lin = |p: &str| -> CResult<(Tensor, Tensor)> {
            Ok((t(&format!("{p}.weight"))?, t(&format!("{p}.bias"))?))
        };
        Ok(Params {
            target_lstm: lstm("target.lstm")?,
            target_enc: lin("target.enc")?,
            source_lstm: lstm("source.lstm")?,
            mlp0: lin("source.mlp.0")?,
            mlp2: lin("source.mlp.2")?,
            decoder: lin("decoder")?,
            decoder_mask: self.decoder_mask.clone(),
        })
    }

    /// The current values as [`TebWeights`] (what `weights.safetensors` holds).
    pub fn export(&self) -> CResult<TebWeights> {
        let v =
            |n: &str| -> CResult<Vec<f32>> { self.var(n)?.as_tensor().flatten_all()?.to_vec1() };
        let d = self.dims;
        let (dx, dy, l) = (d.source, d.target, d.latent);
        let lstm = |p: &str, input, hidden| -> CResult<Lstm> {
            Ok(Lstm {
                input,
                hidden,
                weight_ih: v(&format!("{p}.weight_ih_l0"))?,
                weight_hh: v(&format!("{p}.weight_hh_l0"))?,
                bias_ih: v(&format!("{p}.bias_ih_l0"))?,
                bias_hh: v(&format!("{p}.bias_hh_l0"))?,
            })
        };
        let lin = |p: &str, rows, cols| -> CResult<Linear> {
            Ok(Linear {
                rows,
                cols,
                weight: v(&format!("{p}.weight"))?,
                bias: v(&format!("{p}.bias"))?,
            })
        };
        let h = d.hidden;
        Ok(TebWeights {
            target_lstm: lstm("target.lstm", dy, h.target_lstm)?,
            target_enc: lin("target.enc", 3 * l, h.target_lstm)?,
            source_lstm: lstm("source.lstm", dx, h.source_lstm)?,
            source_mlp1: lin("source.mlp.0", h.source_mlp, h.source_lstm + l)?,
            source_mlp2: lin("source.mlp.2", 2 * l, h.source_mlp)?,
            decoder: lin("decoder", dy, l)?,
        })
    }

    /// Sets every variable to `w` (restoring the best weights after early stopping).
    pub fn import(&self, w: &TebWeights) -> CResult<()> {
        for ((name, shape), (_, values)) in self.dims.tensor_shapes().into_iter().zip(w.named()) {
            self.var(name)?
                .set(&Tensor::from_slice(values, shape, &Device::Cpu)?)?;
        }
        Ok(())
    }
}

/// Output `k` of the decoder reads latent dimension `k mod L` only. With an affine decoder and
/// a diagonal decoded variance, more latent dimensions per output add nothing the decoded
/// distribution can express, but they let the prior's decoded variance spread over several
/// dimensions, and then KL(q ‖ p) in the latent (the rate) exceeds the KL between the decoded
/// distributions (by ~0.13 nats/step at L = 16 on ALGORITHMS.md's known-answer process).
/// With one dimension per output the two KLs are equal, as docs/teb.md's reading of the rate
/// (a transfer-entropy estimate) needs.
fn decoder_mask(dims: Dims) -> CResult<Tensor> {
    let (dy, l) = (dims.target, dims.latent);
    let m: Vec<f32> = (0..dy * l)
        .map(|i| if i % l == (i / l) % l { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_vec(m, (dy, l), &Device::Cpu)
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("variable map lock poisoned".into())
}

impl Params {
    /// The same values, cut from the graph: evaluation, and the frozen target module of stage 2.
    pub fn detach(&self) -> Params {
        let l = |p: &LstmParams| LstmParams {
            w_ih: p.w_ih.detach(),
            w_hh: p.w_hh.detach(),
            b_ih: p.b_ih.detach(),
            b_hh: p.b_hh.detach(),
        };
        let lin = |p: &(Tensor, Tensor)| (p.0.detach(), p.1.detach());
        Params {
            target_lstm: l(&self.target_lstm),
            target_enc: lin(&self.target_enc),
            source_lstm: l(&self.source_lstm),
            mlp0: lin(&self.mlp0),
            mlp2: lin(&self.mlp2),
            decoder: lin(&self.decoder),
            decoder_mask: self.decoder_mask.clone(),
        }
    }

    /// Target module over a window: `y` `[T, B, Dy]` (normalised), `keep` `[T, B, 1]` (0 where
    /// the state resets before the step). Returns the prior of each of the `T·B` rows.
    pub fn target(&self, y: &Tensor, keep: &Tensor, state: &mut State) -> CResult<Prior> {
        let hs = lstm_window(&self.target_lstm, y, keep, state)?;
        let enc = linear(&hs, &self.target_enc)?;
        let l = enc.dim(1)? / 3;
        Ok(Prior {
            mu: enc.narrow(1, 0, l)?,
            logvar: enc.narrow(1, l, l)?,
            u: enc.narrow(1, 2 * l, l)?,
        })
    }

    /// Source module over a window: `x` `[T, B, Dx]`; `prior` from [`Params::target`] (its `u_c`
    /// enters the MLP). Returns (μ_x, Δ), `[T·B, L]` each.
    pub fn source(
        &self,
        x: &Tensor,
        keep: &Tensor,
        prior: &Prior,
        state: &mut State,
    ) -> CResult<(Tensor, Tensor)> {
        let hs = lstm_window(&self.source_lstm, x, keep, state)?;
        let m = linear(&Tensor::cat(&[&hs, &prior.u], 1)?, &self.mlp0)?.tanh()?;
        let o = linear(&m, &self.mlp2)?;
        let l = o.dim(1)? / 2;
        Ok((o.narrow(1, 0, l)?, o.narrow(1, l, l)?))
    }

    /// Decoded mean and variance of `y_{t+1}` (normalised units) for latent mean `mu` and
    /// log-variance `logvar`, `[N, Dy]` each.
    pub fn decode(&self, mu: &Tensor, logvar: &Tensor) -> CResult<(Tensor, Tensor)> {
        // Masked in the graph at every use (a product taken once would be a stale copy of the
        // variable): the weights outside the mask get no gradient and stay 0.
        let w = match &self.decoder_mask {
            Some(m) => self.decoder.0.mul(m)?,
            None => self.decoder.0.clone(),
        };
        let mean = linear(mu, &(w.clone(), self.decoder.1.clone()))?;
        let w2 = w.sqr()?;
        let var = (logvar.exp()?.matmul(&w2.t()?)? + DECODER_VAR_FLOOR)?;
        Ok((mean, var))
    }

    /// Stage 1 per-row losses: NLL of `y_next` (`[N, Dy]`) under the decoded prior, and
    /// KL(p ‖ N(0, I)).
    pub fn stage1_losses(&self, prior: &Prior, y_next: &Tensor) -> CResult<RowLosses> {
        let (mean, var) = self.decode(&prior.mu, &prior.logvar)?;
        let kl = ((prior.logvar.exp()? + prior.mu.sqr()?)? - 1.0)?
            .sub(&prior.logvar)?
            .sum(D::Minus1)?
            .affine(0.5, 0.0)?;
        Ok(RowLosses {
            nll: gaussian_nll(&mean, &var, y_next)?,
            kl,
        })
    }

    /// Stage 2 per-row losses: NLL of `y_next` under the decoded posterior, and KL(q ‖ p).
    pub fn stage2_losses(
        &self,
        prior: &Prior,
        mu_x: &Tensor,
        delta: &Tensor,
        y_next: &Tensor,
    ) -> CResult<RowLosses> {
        let (mean, var) = self.decode(&(&prior.mu + mu_x)?, &(&prior.logvar + delta)?)?;
        Ok(RowLosses {
            nll: gaussian_nll(&mean, &var, y_next)?,
            kl: kl_rate(mu_x, delta, &prior.logvar)?,
        })
    }
}

/// Σ_j ½ [e^Δ + μ_x² e^(−log σ_c²) − 1 − Δ] per row (docs/teb.md's rate).
pub fn kl_rate(mu_x: &Tensor, delta: &Tensor, logvar_c: &Tensor) -> CResult<Tensor> {
    let t = (delta.exp()? + mu_x.sqr()?.mul(&logvar_c.neg()?.exp()?)?)?;
    ((t - 1.0)? - delta)?.sum(D::Minus1)?.affine(0.5, 0.0)
}

/// ½ [ln 2π + ln var + (y − mean)² / var], averaged over columns: `[N]`.
fn gaussian_nll(mean: &Tensor, var: &Tensor, y: &Tensor) -> CResult<Tensor> {
    let sq = (y - mean)?.sqr()?.div(var)?;
    ((var.log()? + sq)? + LN_2PI)?
        .mean(D::Minus1)?
        .affine(0.5, 0.0)
}

/// `x W ᵀ + b` for `x` `[N, in]`.
fn linear(x: &Tensor, (w, b): &(Tensor, Tensor)) -> CResult<Tensor> {
    x.matmul(&w.t()?)?.broadcast_add(b)
}

/// PyTorch's LSTM over `T` steps for `B` lanes; returns the hidden states as `[T·B, H]`
/// (time-major) and leaves the last state in `state`.
fn lstm_window(p: &LstmParams, xs: &Tensor, keep: &Tensor, state: &mut State) -> CResult<Tensor> {
    let (t_len, lanes, input) = xs.dims3()?;
    let hidden = p.w_hh.dim(1)?;
    let bias = (&p.b_ih + &p.b_hh)?;
    let xw = xs
        .reshape((t_len * lanes, input))?
        .matmul(&p.w_ih.t()?)?
        .broadcast_add(&bias)?
        .reshape((t_len, lanes, 4 * hidden))?;
    let w_hh_t = p.w_hh.t()?;
    let mut hs = Vec::with_capacity(t_len);
    let (mut h, mut c) = (state.h.clone(), state.c.clone());
    for t in 0..t_len {
        let k = keep.get(t)?;
        h = h.broadcast_mul(&k)?;
        c = c.broadcast_mul(&k)?;
        let gates = (xw.get(t)? + h.matmul(&w_hh_t)?)?;
        let sig = candle_nn::ops::sigmoid(&gates)?;
        let i = sig.narrow(1, 0, hidden)?;
        let f = sig.narrow(1, hidden, hidden)?;
        let g = gates.narrow(1, 2 * hidden, hidden)?.tanh()?;
        let o = sig.narrow(1, 3 * hidden, hidden)?;
        c = ((f * &c)? + (i * g)?)?;
        h = (o * c.tanh()?)?;
        hs.push(h.clone());
    }
    *state = State { h, c };
    Tensor::stack(&hs, 0)?.reshape((t_len * lanes, hidden))
}
