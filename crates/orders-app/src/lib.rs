//! orders-app
