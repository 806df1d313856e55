//! `neurod`: the acquisition daemon's command line.

use neurod::config;
mod http;
mod live;
mod ls;
mod resume;
mod run;
mod sql_cli;
mod supervise;
mod topology;
mod train_teb;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "neurod",
    version,
    about = "Live Neuropixels and two-photon acquisition into Arrow"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the topology in a config until its sources end or a signal stops it.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Overrides `[daemon] data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides `[daemon] listen` (HTTP: /metrics, /healthz, /status).
        #[arg(long)]
        listen: Option<String>,
        /// Overrides `[daemon] flight_listen` (Arrow Flight and Flight SQL).
        #[arg(long)]
        flight_listen: Option<String>,
    },
    /// Check a config without starting anything; print every problem, exit 1 if any.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Describe a SpikeGLX .meta/.bin, an Open Ephys structure.oebin or recording folder, a
    /// Suite2p plane folder (with each ROI's skewness, kurtosis and POYO-SSL label), or a TIFF
    /// stack or folder of stacks.
    Inspect {
        #[arg(long)]
        json: bool,
        path: PathBuf,
    },
    /// List what is stored under a data directory (or one store's directory): every stream with
    /// its layout, rate, files, rows, bytes and index and time range.
    Ls {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Train a transfer-entropy-bottleneck model predicting a target stream from its past and a
    /// source stream's (docs/teb.md); print its validation report.
    TrainTeb(Box<train_teb::Args>),
    /// SQL over the streams stored under a data directory (every stream is a table named by its
    /// id; `streams` lists them). Without a query, an interactive prompt.
    Sql(sql_cli::Args),
    /// Write stored streams as one file: temporaldata HDF5 (POYO training; optionally one
    /// POYO-SSL population) or NWB.
    Export(neurod::export::Args),
}

/// mimalloc instead of glibc's allocator: batches are allocated on one thread and freed on
/// another, where glibc kept returning memory to the kernel and faulting it back in (end to end,
/// a probe's detection 0.79 -> 0.65 s and its raw store 2.65 -> 2.53 s for 30 s of data on one
/// core; ~65 MB more peak RSS, `bench/throughput.sh`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (libmimalloc-sys has no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed pages go back to the kernel at once. mimalloc v3 waits 1 s, and looks only when the
/// page's owning thread next allocates; batches are freed by other threads than the ones that made
/// them, and a 30-minute soak grew by ~1.2 MB/min that way (side by side for 9 minutes: +1.5
/// MB/min by default, flat at 0). `MIMALLOC_PURGE_DELAY` in the environment still decides.
fn purge_freed_pages_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a C call with a valid option id; mimalloc lets options change at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
    }
}

fn main() -> ExitCode {
    purge_freed_pages_at_once();
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            data_dir,
            listen,
            flight_listen,
        } => run::run(
            config,
            config::Overrides {
                data_dir,
                listen,
                flight_listen,
            },
        ),
        Command::Validate { config } => validate(&config),
        Command::Inspect { json, path } => inspect(&path, json),
        Command::Ls { json, data_dir } => ls::ls(&data_dir, json),
        Command::TrainTeb(args) => train_teb::train_teb(*args),
        Command::Sql(args) => sql_cli::sql(args),
        Command::Export(args) => neurod::export::export(args),
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NEUROD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A panic is a bug (data paths return errors); the topology turns it into a failed component
    // and goes on. Logged here with its thread, which names the component (`store-write`,
    // `detect probe`), with a timestamp and where the rest of the log goes; then Rust's own
    // report as usual.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), "{info}");
        report(info);
    }));
}

fn validate(path: &std::path::Path) -> ExitCode {
    match config::load(path, &config::Overrides::default()) {
        Ok(plan) => {
            println!(
                "{}: ok ({} sources, {} transforms, {} sinks)",
                path.display(),
                plan.count(config::Kind::Source),
                plan.count(config::Kind::Transform),
                plan.count(config::Kind::Sink)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {} problem(s):\n{e}", path.display(), e.0.len());
            ExitCode::FAILURE
        }
    }
}

fn inspect(path: &std::path::Path, json: bool) -> ExitCode {
    match pipelines::inspect::inspect(path) {
        Ok(desc) => {
            if json {
                let v = desc.to_json();
                match serde_json::to_string_pretty(&v) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("cannot encode JSON: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", desc.render_text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// The id is mimalloc's purge delay: no other option defaults to 1000 (v3's options.c), so a
    /// mimalloc whose options were renumbered fails here instead of setting another option.
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: a C call with a valid option id.
            let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
            assert_eq!(delay, 1000);
        }
    }
}
