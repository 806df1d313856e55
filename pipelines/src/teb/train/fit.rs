//! The training loop of one stage: Adam over truncated-backpropagation windows, the state
//! carried (detached) from window to window, early stopping on the validation loss with the
//! best weights kept.

use std::time::Instant;

use candle_core::{Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use kernels::teb::model::TebWeights;

use super::batches::{Window, Windows};
use super::model::{CResult, Net, Params, Prior, State};
use super::{Progress, Stage, TrainOptions};

/// Global gradient-norm clip (LSTMs trained by BPTT occasionally get a large gradient).
const CLIP_NORM: f64 = 5.0;

/// What a stage did.
pub struct StageRun {
    pub epochs: usize,
    pub best_epoch: usize,
    pub best_validation_loss: f64,
    pub seconds: f64,
}

/// The target module's output (detached) for every window of a split: stage 2 reads it.
pub fn priors(params: &Params, w: &Windows, hidden: usize) -> CResult<Vec<Prior>> {
    let mut state = State::zeros(w.lanes, hidden)?;
    w.windows
        .iter()
        .map(|win| params.target(&win.y, &win.keep, &mut state))
        .collect()
}

/// Loss summed over the window's steps with a target (κ·NLL + KL per step).
fn window_loss(
    stage: Stage,
    params: &Params,
    win: &Window,
    prior: Option<&Prior>,
    kappa: f64,
    ty: &mut State,
    sx: &mut State,
) -> CResult<Tensor> {
    let losses = match (stage, prior) {
        (Stage::Source, Some(prior)) => {
            let (mu_x, delta) = params.source(&win.x, &win.keep, prior, sx)?;
            params.stage2_losses(prior, &mu_x, &delta, &win.y_next)?
        }
        _ => {
            let prior = params.target(&win.y, &win.keep, ty)?;
            params.stage1_losses(&prior, &win.y_next)?
        }
    };
    ((losses.nll * kappa)? + losses.kl)?
        .mul(&win.mask)?
        .sum_all()
}

/// Mean per-step loss over a split, without gradients.
pub fn evaluate(
    stage: Stage,
    params: &Params,
    w: &Windows,
    priors: Option<&[Prior]>,
    kappa: f64,
    hidden: (usize, usize),
) -> CResult<f64> {
    let mut ty = State::zeros(w.lanes, hidden.0)?;
    let mut sx = State::zeros(w.lanes, hidden.1)?;
    let (mut total, mut count) = (0.0, 0usize);
    for (i, win) in w.windows.iter().enumerate() {
        let prior = priors.and_then(|p| p.get(i));
        let l = window_loss(stage, params, win, prior, kappa, &mut ty, &mut sx)?;
        total += l.to_scalar::<f32>()? as f64;
        count += win.count;
    }
    Ok(total / count.max(1) as f64)
}

pub struct StageData<'a> {
    pub train: &'a Windows,
    pub validation: &'a Windows,
    pub train_priors: Option<&'a [Prior]>,
    pub validation_priors: Option<&'a [Prior]>,
}

/// Trains the variables of `stage` (target module and decoder, or the source module) until the
/// validation loss has not improved for `patience` epochs; leaves the best weights in `net`.
pub fn run_stage(
    net: &Net,
    stage: Stage,
    data: &StageData,
    opts: &TrainOptions,
    kappa: f64,
    on_epoch: &mut dyn FnMut(&Progress),
) -> CResult<StageRun> {
    let prefixes: &[&str] = match stage {
        Stage::TargetOnly => &["target.", "decoder."],
        Stage::Source => &["source."],
    };
    let vars = net.vars(prefixes)?;
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: opts.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let params = net.params()?;
    let hidden = (net.dims.hidden.target_lstm, net.dims.hidden.source_lstm);
    let eval = |p: &Params| {
        evaluate(
            stage,
            &p.detach(),
            data.validation,
            data.validation_priors,
            kappa,
            hidden,
        )
    };
    let start = Instant::now();
    let mut best: (f64, usize, TebWeights) = (eval(&params)?, 0, net.export()?);
    let mut epochs = 0;
    for epoch in 1..=opts.max_epochs {
        epochs = epoch;
        let mut ty = State::zeros(data.train.lanes, hidden.0)?;
        let mut sx = State::zeros(data.train.lanes, hidden.1)?;
        let (mut total, mut count) = (0.0, 0usize);
        for (i, win) in data.train.windows.iter().enumerate() {
            if win.count == 0 {
                continue;
            }
            let prior = data.train_priors.and_then(|p| p.get(i));
            let sum = window_loss(stage, &params, win, prior, kappa, &mut ty, &mut sx)?;
            ty = ty.detach();
            sx = sx.detach();
            total += sum.to_scalar::<f32>()? as f64;
            count += win.count;
            let loss = (sum / win.count as f64)?;
            let mut grads = loss.backward()?;
            clip_gradients(&vars, &mut grads)?;
            opt.step(&grads)?;
        }
        let train_loss = total / count.max(1) as f64;
        let validation_loss = eval(&params)?;
        on_epoch(&Progress {
            stage,
            epoch,
            max_epochs: opts.max_epochs,
            train_loss,
            validation_loss,
        });
        if !train_loss.is_finite() {
            break;
        }
        if validation_loss < best.0 {
            best = (validation_loss, epoch, net.export()?);
        } else if epoch - best.1 >= opts.patience {
            break;
        }
    }
    net.import(&best.2)?;
    Ok(StageRun {
        epochs,
        best_epoch: best.1,
        best_validation_loss: best.0,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn clip_gradients(vars: &[Var], grads: &mut candle_core::backprop::GradStore) -> CResult<()> {
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sq.sqrt();
    if norm > CLIP_NORM && norm.is_finite() {
        let scale = CLIP_NORM / norm;
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(())
}
