//! Readiness: whether the service can do its work right now (`GET /readyz`). Liveness
//! (`GET /healthz`) needs nothing and is not here.

use std::sync::Arc;

use async_trait::async_trait;
use orders_app::OrderStore;

/// The key looked up to prove the store answers; no order is ever bound to it.
pub const STORE_PROBE_KEY: &str = "readyz-probe";

/// The result of one readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// The store answered a query.
    pub store: bool,
    /// The bus is reachable and the Orders subscriber is attached.
    pub bus: bool,
}

impl Readiness {
    /// Whether every dependency answered.
    #[must_use]
    pub const fn is_ready(&self) -> bool {
        self.store && self.bus
    }
}

/// Checks the service's dependencies. Dyn-compatible: the router holds
/// `Arc<dyn ReadinessProbe>`, so the composition root decides what "reachable" means.
#[async_trait]
pub trait ReadinessProbe: Send + Sync + 'static {
    /// Checks every dependency once. Must not fail: an error is a `false`.
    async fn check(&self) -> Readiness;
}

/// The standard probe: the store answers a cheap query
/// ([`OrderStore::find_by_idempotency_key`] with [`STORE_PROBE_KEY`]) and a bus check
/// (a closure, since each bus adapter knows its own) says yes.
pub struct StoreAndBusProbe {
    store: Arc<dyn OrderStore>,
    /// Whether the bus is usable; for the in-memory bus, whether the Orders subscriber
    /// is attached (it detaches when its handler panics or on shutdown).
    bus: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for StoreAndBusProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAndBusProbe").finish_non_exhaustive()
    }
}

impl StoreAndBusProbe {
    /// A probe of `store` and of the bus through `bus_is_ready`.
    #[must_use]
    pub fn new(
        store: Arc<dyn OrderStore>,
        bus_is_ready: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            store,
            bus: Arc::new(bus_is_ready),
        }
    }
}

#[async_trait]
impl ReadinessProbe for StoreAndBusProbe {
    async fn check(&self) -> Readiness {
        let store = match self.store.find_by_idempotency_key(STORE_PROBE_KEY).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "readiness: store does not answer");
                false
            }
        };
        let bus = (self.bus)();
        if !bus {
            tracing::warn!("readiness: bus is not usable");
        }
        Readiness { store, bus }
    }
}
