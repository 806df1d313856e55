//! `neurod run`: start the topology and the HTTP server, then serve signals until the sources end.
//! SIGTERM/SIGINT drain and flush; SIGHUP reloads the config through the same path as startup
//! (validate, build) and, only if the new one is valid, applies the difference to the running
//! topology (see `topology`). A change of `data_dir` or `queue_batches` restarts everything.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pipelines::hub::Hub;
use pipelines::metrics::Metrics;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};

use crate::http;
use crate::topology::Topology;
use neurod::config::{self, Overrides};

pub fn run(config_path: PathBuf, overrides: Overrides) -> ExitCode {
    let plan = match config::load(&config_path, &overrides) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: {} problem(s):\n{e}", config_path.display(), e.0.len());
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("neurod-http")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(config_path, overrides, plan)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn notify(state: &[NotifyState]) {
    // Outside systemd NOTIFY_SOCKET is unset and this is a no-op.
    let _ = sd_notify::notify(state);
}

async fn serve(
    config_path: PathBuf,
    overrides: Overrides,
    plan: config::Plan,
) -> anyhow::Result<bool> {
    let metrics = Metrics::new();
    let hub = Hub::new(&metrics);
    hub.set_retention(plan.daemon.sql.retention());
    let live = neurod::sql::Live {
        hub: hub.clone(),
        metrics: metrics.clone(),
    };
    let sql = neurod::sql::SqlEngine::new(
        plan.daemon.data_dir.clone(),
        Some(live),
        plan.daemon.sql.limits(),
    )
    .context("cannot start the query engine")?;
    let security = plan
        .daemon
        .security()
        .map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let tls = security.rustls_config().map_err(anyhow::Error::msg)?;
    let listen = plan.daemon.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let flight_listen = plan.daemon.flight_listen.clone();
    let flight_listener = neurod::flight::bind(&flight_listen)
        .await
        .with_context(|| format!("cannot listen for Arrow Flight on {flight_listen}"))?;
    let flight = neurod::flight::FlightState {
        hub: hub.clone(),
        sql: sql.clone(),
        data_dir: plan.daemon.data_dir.clone(),
        subscriber_queue: plan.daemon.queue_batches,
    };
    let flight_server =
        neurod::flight::server(flight_listener, flight, &security).map_err(anyhow::Error::msg)?;
    tokio::spawn(async move {
        if let Err(e) = flight_server.await {
            tracing::error!("Arrow Flight server stopped: {e}");
        }
    });
    let state = http::AppState {
        metrics: metrics.clone(),
        hub: hub.clone(),
        started: Instant::now(),
        data_dir: plan.daemon.data_dir.display().to_string(),
        subscriber_queue: plan.daemon.queue_batches,
        sql,
    };
    // The web view's page holds no data: outside the token, so that a browser can ask for it.
    let app = security
        .protect(http::router(state))
        .merge(crate::view::page());
    http::spawn(listener, app, tls.clone()).context("cannot start the HTTP server")?;
    tracing::info!(%listen, %flight_listen, tls = tls.is_some(), token = security.token.is_some(), data_dir = %plan.daemon.data_dir.display(), "neurod running");

    let mut topology =
        Topology::start(plan, &metrics, &hub).context("cannot start the topology")?;
    notify(&[NotifyState::Ready]);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut watchdog = watchdog_interval().map(tokio::time::interval);

    let ok = loop {
        tokio::select! {
            _ = term.recv() => break stop(topology, "SIGTERM").await,
            _ = int.recv() => break stop(topology, "SIGINT").await,
            _ = hup.recv() => {
                topology = reload(topology, &config_path, &overrides, &metrics, &hub).await;
            }
            _ = topology.finished() => {
                tracing::info!("every source has ended; data flushed");
                break join(topology).await;
            }
            _ = tick(&mut watchdog) => notify(&[NotifyState::Watchdog]),
        }
    };
    notify(&[NotifyState::Stopping]);
    Ok(ok)
}

/// Half the systemd watchdog period, if one is set.
fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn stop(topology: Topology, why: &str) -> bool {
    tracing::info!("{why}: draining and flushing");
    notify(&[NotifyState::Stopping]);
    topology.stop();
    join(topology).await
}

async fn join(topology: Topology) -> bool {
    tokio::task::spawn_blocking(move || topology.join())
        .await
        .unwrap_or(false)
}

/// Validates the new config exactly as at startup; only a valid one changes the running topology.
async fn reload(
    mut topology: Topology,
    config_path: &std::path::Path,
    overrides: &Overrides,
    metrics: &Arc<Metrics>,
    hub: &Arc<Hub>,
) -> Topology {
    tracing::info!(config = %config_path.display(), "SIGHUP: reloading");
    // systemd >= 253 (Type=notify-reload) matches a reload to its start by MONOTONIC_USEC.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
    let plan = match config::load(config_path, overrides) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("reload refused, keeping the running topology:\n{e}");
            notify(&[NotifyState::Ready]);
            return topology;
        }
    };
    let running = topology.daemon();
    hub.set_retention(plan.daemon.sql.retention());
    if plan.daemon.sql.limits() != running.sql.limits() {
        tracing::warn!(
            "new [daemon.sql] query limits take effect at the next start, not on reload"
        );
    }
    let new = &plan.daemon;
    if (&new.token, &new.token_file, &new.tls_cert, &new.tls_key)
        != (
            &running.token,
            &running.token_file,
            &running.tls_cert,
            &running.tls_key,
        )
    {
        tracing::warn!("a new token or TLS files take effect at the next start, not on reload");
    }
    if plan.daemon.flight_listen != running.flight_listen {
        tracing::warn!(
            flight_listen = %plan.daemon.flight_listen,
            "a new `flight_listen` address takes effect at the next start, not on reload"
        );
    }
    if plan.daemon.listen != running.listen {
        tracing::warn!(
            listen = %plan.daemon.listen,
            "a new `listen` address takes effect at the next start, not on reload"
        );
    }
    let topology = if plan.daemon.data_dir == running.data_dir
        && plan.daemon.queue_batches == running.queue_batches
    {
        match topology.apply(plan) {
            Ok(c) => tracing::info!(
                unchanged = ?c.unchanged,
                restarted = ?c.restarted,
                removed = ?c.removed,
                added = ?c.added,
                "reloaded"
            ),
            // A thread that cannot be started: what did start keeps running.
            Err(e) => tracing::error!("reload incomplete: cannot start a component: {e}"),
        }
        topology
    } else {
        tracing::info!("`data_dir` or `queue_batches` changed: restarting every component");
        topology.stop();
        join(topology).await;
        metrics.clear_components();
        hub.clear_ports();
        match Topology::start(plan, metrics, hub) {
            Ok(t) => t,
            Err(e) => {
                // The old topology is gone; without a new one there is nothing to run.
                tracing::error!("cannot start the reloaded topology: {e}");
                std::process::exit(1);
            }
        }
    };
    notify(&[NotifyState::Ready]);
    topology
}
