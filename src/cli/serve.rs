//! `cairn serve`: ingest when the index is empty, then serve until SIGTERM or Ctrl-C, with a
//! grace period for in-flight streams.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;

use crate::engine::Engine;
use crate::http::router;
use crate::http::state::AppState;

pub(super) fn run(
    engine: Arc<Engine>,
    runtime: &tokio::runtime::Runtime,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    if engine.index.stats()?.documents == 0 && !engine.config.sources.is_empty() {
        let reports = super::ingest::ingest_with_progress(&engine, None, false, quiet)?;
        super::ingest::print_reports(&reports);
    }
    runtime.block_on(serve(engine))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(engine: Arc<Engine>) -> anyhow::Result<()> {
    let bind = engine.config.bind;
    let grace = Duration::from_secs(engine.config.server.shutdown_grace_secs);
    crate::observe::metrics::handle();
    let app = router(AppState::new(engine.clone())?);
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {bind}: {e}; set [server] bind or --bind")
    })?;
    // The bound address, not the configured one: with port 0 the system picks the port.
    let bind = listener.local_addr()?;
    let listener = listener
        // Streamed tokens are small writes: without TCP_NODELAY, Nagle's algorithm holds each
        // one back until the previous one is acknowledged.
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
    tracing::info!(%bind, "cairn is serving");
    eprintln!("cairn is serving on http://{bind}");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    // In-flight streams finish during the grace period; after it the process exits anyway.
    let mut stop_rx = stop_rx;
    tokio::select! {
        r = server => r?,
        _ = async {
            let _ = stop_rx.wait_for(|v| *v).await;
            tokio::time::sleep(grace).await;
        } => eprintln!("shutdown grace period over; closing remaining connections"),
    }
    flush_traces(engine).await;
    Ok(())
}

/// Sends the traces still queued for OTLP export before the process ends.
pub(super) async fn flush_traces(engine: Arc<Engine>) {
    let _ = tokio::task::spawn_blocking(move || engine.traces.shutdown_export()).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
