//! stock-sim
