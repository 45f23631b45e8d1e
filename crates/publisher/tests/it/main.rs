//! Integration tests of flotilla-publisher: the embedded table and the
//! publisher on tokio's paused clock, a proptest model, the errors'
//! messages and their use in a `flotilla-depengine` start function, and the
//! etcd backend against real etcd processes.

mod endpoints;
mod errors;
mod harness;
mod model;
mod publisher;
mod report;
mod table;
mod wait;

#[cfg(feature = "etcd")]
mod etcd;
