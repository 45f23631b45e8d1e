//! Integration tests of the dependency engine, one binary for the crate.
//!
//! Every test runs on tokio's paused clock: time moves only when every task
//! is idle, so delays and backoffs are checked to the millisecond without
//! real waiting, and every run takes the same path.

mod harness;
mod model;
mod policies;
mod scenarios;
mod typed;
