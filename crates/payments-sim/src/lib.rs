//! payments-sim
