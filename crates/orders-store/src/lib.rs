//! orders-store
