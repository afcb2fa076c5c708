//! Graceful shutdown of a running service: why it stops ([`StopReason`], from SIGINT or
//! SIGTERM via [`shutdown_signal`]), and the order things stop in
//! ([`RunningServer::shutdown`]): no new connections, in-flight requests drained up to
//! the grace period, then the relay (last flush), the subscriber, the retention and
//! payment deadline tasks, the simulators, and the store.

use std::{fmt, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use messaging::SubscriptionHandle;
use orders_app::{OrdersService, RelayStopped};
use payments_sim::PaymentsHandle;
use stock_sim::StockHandle;
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};

use super::store::OpenedStore;

/// Why the service stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT (Ctrl-C).
    Interrupted,
    /// SIGTERM.
    Terminated,
    /// [`RunningServer::shutdown`] was called (tests, embedding).
    Requested,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupted => "interrupted (SIGINT)",
            Self::Terminated => "terminated (SIGTERM)",
            Self::Requested => "shutdown requested",
        })
    }
}

/// A started service: its address, and everything [`RunningServer::shutdown`] stops.
pub struct RunningServer {
    /// The address actually bound (the real port when 0 was asked for).
    pub(super) local_addr: SocketAddr,
    /// The Orders use cases the API runs on (for tests and embedding).
    pub(super) orders: OrdersService,
    /// Fired to stop accepting connections; axum then drains the open ones.
    pub(super) stop_accepting: Option<oneshot::Sender<()>>,
    /// The HTTP server; ends when every connection is closed after `stop_accepting`.
    pub(super) http: Option<JoinHandle<std::io::Result<()>>>,
    /// Set to `true` to stop the relay, the retention task and the payment deadline task.
    pub(super) stop_background: watch::Sender<bool>,
    /// The outbox relay; flushes once more when stopped.
    pub(super) relay: JoinHandle<RelayStopped>,
    /// The retention task.
    pub(super) retention: JoinHandle<()>,
    /// The payment deadline task.
    pub(super) deadlines: JoinHandle<()>,
    /// The Orders subscriber on the bus.
    pub(super) subscription: SubscriptionHandle,
    /// The in-process simulators, when `--sims in-process`.
    pub(super) simulators: Option<(PaymentsHandle, StockHandle)>,
    /// How long in-flight requests get on shutdown.
    pub(super) shutdown_grace: Duration,
    /// The store adapter, closed last.
    pub(super) store: Arc<OpenedStore>,
}

impl fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The address the server listens on.
    #[must_use]
    pub const fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Orders use cases behind the API.
    #[must_use]
    pub const fn orders(&self) -> &OrdersService {
        &self.orders
    }

    /// Runs until `signal` resolves (e.g. [`shutdown_signal`]), then shuts down. Returns
    /// why it stopped.
    ///
    /// # Errors
    /// When the HTTP server fails on its own (it is then shut down as well).
    pub async fn run_until(
        mut self,
        signal: impl Future<Output = StopReason>,
    ) -> anyhow::Result<StopReason> {
        let Some(mut http) = self.http.take() else {
            anyhow::bail!("the HTTP server is not running");
        };
        tokio::select! {
            reason = signal => {
                self.http = Some(http);
                self.shutdown(reason).await?;
                Ok(reason)
            }
            ended = &mut http => {
                let error = http_server_ended(ended);
                tracing::error!(
                    error = format!("{error:#}"),
                    "orders service stopping: HTTP server ended"
                );
                self.stop_background().await;
                Err(error)
            }
        }
    }

    /// Graceful shutdown: stops accepting, lets in-flight requests finish (up to the
    /// grace period), then stops the relay (after a last flush), the subscriber (after
    /// the message in hand), the retention and payment deadline tasks and the simulators.
    /// Logs `reason`.
    ///
    /// # Errors
    /// When the HTTP server failed while draining; everything else is stopped anyway.
    pub async fn shutdown(mut self, reason: StopReason) -> anyhow::Result<()> {
        tracing::info!(%reason, "orders service shutting down: no new connections");
        if let Some(stop) = self.stop_accepting.take() {
            let _ = stop.send(());
        }
        let mut outcome = Ok(());
        if let Some(mut http) = self.http.take() {
            match tokio::time::timeout(self.shutdown_grace, &mut http).await {
                Ok(Ok(Ok(()))) => tracing::info!("in-flight requests finished"),
                Ok(Ok(Err(e))) => {
                    outcome = Err(anyhow::Error::new(e).context("the HTTP server failed"))
                }
                Ok(Err(e)) => {
                    outcome = Err(anyhow::Error::new(e).context("the HTTP server task failed"))
                }
                Err(_) => {
                    tracing::warn!(
                        grace = ?self.shutdown_grace,
                        "requests still in flight after the grace period: aborted"
                    );
                    http.abort();
                }
            }
        }
        self.stop_background().await;
        tracing::info!(%reason, "orders service stopped");
        outcome
    }

    /// Stops everything but the HTTP server, in order: relay (flush), subscriber,
    /// retention, payment deadlines, simulators, and closes the store.
    async fn stop_background(self) {
        let _ = self.stop_background.send(true);
        match self.relay.await {
            Ok(RelayStopped::Shutdown) => {}
            Err(e) => tracing::error!(error = %e, "outbox relay task failed"),
        }
        self.subscription.unsubscribe().await;
        if let Err(e) = self.retention.await {
            tracing::error!(error = %e, "retention task failed");
        }
        if let Err(e) = self.deadlines.await {
            tracing::error!(error = %e, "payment deadline task failed");
        }
        if let Some((payments, stock)) = self.simulators {
            payments.stop().await;
            stock.stop().await;
        }
        self.store.close().await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM with which one it was. A signal that cannot be
/// listened for is logged and never fires.
pub async fn shutdown_signal() -> StopReason {
    let interrupt = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => StopReason::Interrupted,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGINT");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
                StopReason::Terminated
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<StopReason>();
    tokio::select! {
        reason = interrupt => reason,
        reason = terminate => reason,
    }
}

/// Why an HTTP server task that ended on its own (no shutdown was asked) is an error.
#[must_use]
pub fn http_server_ended(
    ended: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> anyhow::Error {
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("the HTTP server stopped on its own"),
        Ok(Err(e)) => anyhow::Error::new(e).context("the HTTP server failed"),
        Err(e) => anyhow::Error::new(e).context("the HTTP server task failed"),
    }
}
