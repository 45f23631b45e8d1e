//! Integration tests of flotilla-presence on the embedded store and tokio's
//! paused clock: the batcher's writes and retries, pingers' incarnations and
//! stops, watchers' first states, transitions, slow subscribers and
//! out-of-touch rule, the death and liveness bounds, the pruner's exact
//! counts, the parts under depengine, and a model of random starts, stops,
//! crashes, flush failures and clock steps; with the `etcd` feature, the
//! etcd store against real etcd processes and a three-member cluster.

mod batcher;
mod bounds;
mod engine;
#[cfg(feature = "etcd")]
mod etcd;
mod harness;
mod model;
mod pinger;
mod pruner;
mod watcher;
