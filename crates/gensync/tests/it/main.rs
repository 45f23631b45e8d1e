//! Integration tests of flotilla-gensync: a replica on its own, replicas
//! syncing over real loopback TCP, and peers that send bad input.

mod ancestry;
mod crash;
mod gc;
mod harness;
mod hostile;
mod introspect;
mod lifecycle;
mod model;
mod peers;
mod replica;
mod reports;
mod sync;
mod trust;
