//! `neurod train-teb`: reads a source and a target (stored streams or Parquet files), bins and
//! aligns them (`pipelines::teb::load`), trains a TEB model on the CPU
//! (`pipelines::teb::train`), saves it and prints its validation report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipelines::teb::load::{load, Loaded, Request};
use pipelines::teb::train::{train, Progress, Report, Stage, TrainOptions};

#[derive(clap::Args)]
pub struct Args {
    /// What predicts: a stream directory, a stream id (with --data-dir), a Parquet file or a
    /// folder of them.
    #[arg(long)]
    source: String,
    /// What is predicted (the same kinds of PATH).
    #[arg(long)]
    target: String,
    /// The model directory to write (model.json, weights.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Where stream ids are looked up (as `neurod ls --data-dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Source columns: names or globs (`count_*`), comma-separated; default every value column.
    #[arg(long, value_delimiter = ',')]
    source_columns: Vec<String>,
    /// Target columns, as --source-columns.
    #[arg(long, value_delimiter = ',')]
    target_columns: Vec<String>,
    /// Bin width in ms; default the source's own bins (or row period).
    #[arg(long)]
    bin_ms: Option<f64>,
    /// Latent size L [default: 16].
    #[arg(long)]
    latent: Option<usize>,
    /// Hidden size of the LSTMs and the source MLP [default: 64].
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Weight of the reconstruction term (κ = target columns · β) [default: 50].
    #[arg(long)]
    beta: Option<f64>,
    /// Epochs at most, per stage [default: 100].
    #[arg(long)]
    epochs: Option<usize>,
    /// Epochs without a better validation loss before a stage stops [default: 8].
    #[arg(long)]
    patience: Option<usize>,
    /// Lags of the linear-Gaussian baseline [default: 20].
    #[arg(long)]
    lags: Option<usize>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

impl Args {
    fn options(&self) -> TrainOptions {
        let d = TrainOptions::default();
        TrainOptions {
            latent: self.latent.unwrap_or(d.latent),
            hidden: self.hidden.unwrap_or(d.hidden),
            seed: self.seed.unwrap_or(d.seed),
            beta: self.beta.unwrap_or(d.beta),
            max_epochs: self.epochs.unwrap_or(d.max_epochs),
            patience: self.patience.unwrap_or(d.patience),
            lags: self.lags.unwrap_or(d.lags),
            ..d
        }
    }
}

/// One line on stderr, exit 1.
fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("neurod train-teb: {msg}");
    ExitCode::FAILURE
}

pub fn train_teb(args: Args) -> ExitCode {
    let request = Request {
        source: args.source.clone(),
        target: args.target.clone(),
        data_dir: args.data_dir.clone(),
        source_columns: args.source_columns.clone(),
        target_columns: args.target_columns.clone(),
        bin_s: args.bin_ms.map(|ms| ms / 1e3),
    };
    let loaded = match load(&request) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    // Before the training, not after it: a model directory that cannot be written.
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        return fail(format!("--out {}: {e}", args.out.display()));
    }
    print!("{}", describe(&loaded));
    let bar = progress_bar();
    let mut on_epoch = |p: &Progress| show(&bar, p);
    let trained = match train(&loaded.aligned, &args.options(), &mut on_epoch) {
        Ok(t) => t,
        Err(e) => {
            bar.abandon();
            return fail(format!(
                "source {} and target {}: {e}",
                args.source, args.target
            ));
        }
    };
    bar.finish_and_clear();
    if let Err(e) = trained.model.save(&args.out) {
        return fail(e);
    }
    print!("{}", render(&trained.report, &loaded));
    println!("model written to {}", args.out.display());
    if let Some(path) = &args.report {
        if let Err(e) = write_report(path, &trained.report) {
            return fail(format!("--report {}: {e}", path.display()));
        }
    }
    ExitCode::SUCCESS
}

fn write_report(path: &Path, report: &Report) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| e.to_string())
}

/// A bar per stage with the losses; drawn only on a terminal.
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:20}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn show(bar: &ProgressBar, p: &Progress) {
    let prefix = match p.stage {
        Stage::TargetOnly => "stage 1, target only",
        Stage::Source => "stage 2, source",
    };
    bar.set_message(format!(
        "loss {:.4} (validation {:.4})",
        p.train_loss, p.validation_loss
    ));
    if bar.prefix() != prefix {
        bar.set_prefix(prefix);
        bar.reset();
    }
    bar.set_length(p.max_epochs as u64);
    bar.set_position(p.epoch as u64);
}

fn describe(l: &Loaded) -> String {
    let a = &l.aligned;
    let side = |what: &str, s: &pipelines::teb::load::Side| {
        format!(
            "{what:<8} {} ({} columns): {} rows into {} bins\n",
            s.stream_id, s.columns, s.rows, s.bins
        )
    };
    format!(
        "{}{}aligned  {} bins of {} ms in {} segment(s)\n",
        side("source", &l.source),
        side("target", &l.target),
        a.len(),
        a.bin_s * 1e3,
        a.segments().len()
    )
}

/// The report as a table (the JSON of `--report` has every field).
fn render(r: &Report, l: &Loaded) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\nTEB {} -> {} (validation: {} bins, {} segment(s))\n",
        l.source.stream_id, l.target.stream_id, r.bins_validation, r.segments_validation
    ));
    out.push_str(&format!(
        "  rate (transfer entropy estimate)   {:>10.4} nats/bin  {:>10.3} bits/s\n",
        r.rate_nats_per_step, r.rate_bits_per_s
    ));
    out.push_str(&format!(
        "  linear-Gaussian transfer entropy   {:>10.4} nats/bin  ({} lags)\n",
        r.linear_gaussian_te_nats_per_step, r.baseline_lags
    ));
    out.push_str(&format!(
        "  {:<34} {:>10} {:>10}\n",
        "prediction of the next bin", "mse", "r2"
    ));
    for (name, fit) in [
        ("target-only model", r.target_only),
        ("full model (target + source)", r.full),
        ("linear baseline (target + source)", r.baseline),
    ] {
        out.push_str(&format!(
            "  {name:<34} {:>10.4} {:>10.4}\n",
            fit.mse, fit.r2
        ));
    }
    out.push_str(&format!(
        "  epochs: {} target-only, {} source; {:.2} s per epoch, {:.1} s in all\n",
        r.epochs_target_only, r.epochs_source, r.seconds_per_epoch, r.train_seconds
    ));
    out
}
