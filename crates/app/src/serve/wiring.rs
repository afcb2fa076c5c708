//! Wiring of `app serve`: binds the listener, opens the store, connects the bus
//! (in-memory or NATS), and starts the Orders subscriber, the simulators, the outbox relay, the retention task,
//! the payment deadline task and the HTTP server, handing back a [`RunningServer`].

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use orders_app::{
    ORDERS_SUBSCRIBER, OrdersMessageHandler, OrdersService, OutboxRelay, PaymentDeadlines,
    Retention, SystemClock,
};
use payments_sim::PaymentsService;
use stock_sim::StockService;
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
};

use super::{
    config::{ServeConfig, SimsMode},
    shutdown::RunningServer,
    store::{OpenedStore, open_store},
};
use crate::{
    bus::ConnectedBus,
    http::{self, AppState, StoreAndBusProbe},
};

/// Connections the kernel may hold for us before they are accepted. tokio's `bind`
/// (like std's) asks for 128: a burst of more new connections than that (the bench's 256
/// clients at once; any crowd reconnecting after a restart) overflowed it, and each
/// dropped SYN cost its client a one-second retransmission. The kernel caps the value
/// at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds `addr` (address reuse on, as tokio's `bind` does) and listens with
/// [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Opens the store, binds the listener, starts the subscriber, the simulators, the relay,
/// the retention task and the HTTP server, and returns once it accepts connections.
///
/// # Errors
/// When the store cannot be opened, the bus cannot be reached, the address cannot be
/// bound, or a subscription fails;
/// whatever was started is stopped again.
pub async fn spawn(config: ServeConfig) -> anyhow::Result<RunningServer> {
    let edge = config.edge.settings(config.listen)?;
    let opened = open_store(&config.store).await.with_context(|| {
        format!(
            "cannot open the {} store {}",
            config.store.kind(),
            config.store
        )
    })?;
    let opened = Arc::new(opened);
    let stores = opened.stores.clone();
    let listener =
        listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let bus = ConnectedBus::connect(&config.bus).await?;
    let shared = bus.shared();
    // Committed changes wake blocking reads (`GET /orders/{id}?afterVersion=&waitMs=`).
    let instruments = crate::telemetry::Instruments::new(config.telemetry);
    let changes = Arc::new(
        crate::changes::OrderChanges::default().on_finished(instruments.finished_orders()),
    );
    // On PostgreSQL, other replicas' commits wake this one's blocking reads too.
    opened
        .follow_commits(changes.clone())
        .await
        .context("cannot listen to other replicas' commits")?;
    let watched = Arc::new(crate::changes::WatchedStore::new(
        stores.store.clone(),
        changes.clone(),
    ));
    let orders = OrdersService::new(watched, Arc::new(SystemClock), config.orders());
    // Dropped handles stop their workers, so an early return below leaves nothing running.
    let subscription = shared
        .subscribe(
            OrdersMessageHandler::subscription().concurrency(stores.handler_concurrency),
            instruments.orders_handler(OrdersMessageHandler::new(orders.clone())),
        )
        .await
        .context("cannot subscribe the Orders handler")?;
    let simulators = match config.sims {
        SimsMode::InProcess => {
            let shared = instruments.subscriber_bus(shared.clone());
            let lanes = config.bus.bus.simulator_lanes();
            let payments = PaymentsService::start(
                shared.clone(),
                config.simulators.payments().lanes_at_least(lanes),
            )
            .await
            .context("cannot start the Payments simulator")?;
            let stock = StockService::start(
                shared.clone(),
                config.simulators.stock().lanes_at_least(lanes),
            )
            .await
            .context("cannot start the Stock simulator")?;
            Some((payments, stock))
        }
        SimsMode::None => {
            tracing::warn!("no simulators: orders wait for Payments and Stock on the bus");
            None
        }
    };

    // The in-memory bus lived and died with the previous process: whatever it held then
    // is gone. Orders still waiting on Payments or Stock get their request sent again
    // (same message id; the simulators and inboxes are idempotent). NATS kept what it
    // acknowledged, so nothing is sent twice there.
    if bus.is_in_process() {
        match stores.outbox.requeue_stalled(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(requeued) => tracing::warn!(
                requeued,
                "re-sending the pending request of orders still waiting after a restart"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot requeue the requests of waiting orders")
            }
        }
    }
    let (stop_background, stop_rx) = watch::channel(false);
    if instruments.is_on() {
        tokio::spawn(crate::telemetry::gauges::sample_every(
            Some(stores.outbox.clone()),
            shared.clone(),
            crate::telemetry::gauges::DEFAULT_SAMPLE_INTERVAL,
            stopped(stop_rx.clone()),
        ));
    }
    let relay = tokio::spawn(
        OutboxRelay::new(stores.outbox.clone(), instruments.relay_bus(shared))
            .run(stopped(stop_rx.clone())),
    );
    let retention = tokio::spawn(
        Retention::new(
            orders.clone(),
            Duration::from_secs(config.retention_interval_secs),
        )
        .run(stopped(stop_rx.clone())),
    );
    // Orders unpaid past their deadline (kept in the store, so ones that passed while
    // the service was down are found by the first pass) are cancelled; with several
    // replicas each runs this, and a lost race is a conflict, so each is cancelled once.
    let payment_timeout = config.orders().payment_timeout;
    let deadlines = tokio::spawn(
        PaymentDeadlines::new(orders.clone(), PaymentDeadlines::tick_for(payment_timeout))
            .run(stopped(stop_rx)),
    );

    let probe_bus = bus.clone();
    let probe = StoreAndBusProbe::new(stores.store.clone(), move || {
        probe_bus.is_ready(ORDERS_SUBSCRIBER)
    });
    // Open `GET /events` streams end when the server stops accepting.
    let feeds = changes.clone();
    let state = AppState::new(orders.clone(), Arc::new(probe))
        .request_timeout(Duration::from_secs(config.request_timeout_secs))
        .changes(changes)
        .auth(edge.tokens)
        .rate_limit(edge.rate_limit)
        .dead_letters(bus.dead_letters())
        .metrics(instruments.metrics())
        .stats(Arc::new(ServiceStats {
            dead_letters: bus.dead_letters(),
            bus: bus.clone(),
            outbox: stores.outbox.clone(),
            store: opened.clone(),
        }));
    let (stop_accepting, stop_accepting_rx) = oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        // The peer address keys the per-client rate limit.
        axum::serve(
            listener,
            axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
                SocketAddr,
            >(http::service(state)),
        )
        .with_graceful_shutdown(async move {
            let _ = stop_accepting_rx.await;
            feeds.close();
        })
        .await
    });
    tracing::info!(listen = %local_addr, store = config.store.kind(), store_url = %config.store,
        bus = config.bus.bus.kind(), bus_url = %config.bus.bus, sims = ?config.sims, "orders service listening on http://{local_addr}");
    Ok(RunningServer {
        local_addr,
        orders,
        stop_accepting: Some(stop_accepting),
        http: Some(http),
        stop_background,
        relay,
        retention,
        deadlines,
        subscription,
        simulators,
        shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        store: opened,
    })
}

/// `GET /stats` of the running service.
struct ServiceStats {
    dead_letters: Arc<dyn messaging::DeadLetters>,
    bus: ConnectedBus,
    outbox: Arc<dyn orders_app::Outbox>,
    store: Arc<OpenedStore>,
}

#[async_trait::async_trait]
impl http::StatsProbe for ServiceStats {
    async fn stats(&self) -> http::Stats {
        let dead_letters = match self.dead_letters.count().await {
            Ok(count) => count,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the dead letters; /stats shows this process's");
                self.bus.dead_letter_count()
            }
        };
        http::Stats {
            dead_letters,
            parked_outbox_rows: self.store.parked().await,
            unsent_outbox_rows: self.outbox.unsent().await.ok(),
        }
    }
}

/// Resolves once `stop` turns `true` (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_300_connections_is_queued_not_dropped() {
        // Nothing accepts: the kernel holds the connections in the listen queue. With
        // tokio's default backlog of 128 the rest of the SYNs were dropped, and their
        // clients retried after a second.
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects: Vec<_> = (0..300)
            .map(|_| {
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_millis(700),
                        tokio::net::TcpStream::connect(addr),
                    )
                    .await
                })
            })
            .collect();
        let mut connected = Vec::new();
        for connect in connects {
            connected.push(
                connect
                    .await
                    .unwrap()
                    .expect("connect waited for a SYN retry")
                    .unwrap(),
            );
        }
        assert_eq!(connected.len(), 300);
        drop(listener);
    }
}
