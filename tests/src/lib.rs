//! Helpers of the end-to-end test package: the store adapters a suite runs against.
//! Each suite is written once and run against every store (see `e2e/main.rs`).
#![forbid(unsafe_code)]

use app::system::Stores;

/// A store the suites can run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `orders_store::InMemoryOrderStore`.
    Memory,
}

impl StoreKind {
    /// A fresh, empty store of this kind.
    ///
    /// # Errors
    /// When the store cannot be created.
    pub async fn fresh(self) -> anyhow::Result<Stores> {
        match self {
            Self::Memory => Ok(Stores::in_memory()),
        }
    }
}

/// Every kind of store, in the order the suites run them.
pub const ALL_STORES: [StoreKind; 1] = [StoreKind::Memory];
