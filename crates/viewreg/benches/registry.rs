//! The registry's figures, each beside a baseline from the same run:
//!
//! - `healthy_views(features)` over 10,000 views while probe results keep
//!   swapping the snapshot (1,000 views flap), from 1 and from 2 threads
//!   at once, for queries returning 0, 10, 100, 1,000 and 10,000 views:
//!   `healthy_views` (its answer shares the snapshot's views), the same
//!   made into owned views (`to_vec`, a reference count each), and
//!   borrowed (`Snapshot::healthy_iter`);
//!   beside a mutex-guarded list of the same views answering the same
//!   query by a scan, with a writer changing a view's health as often;
//! - the time from a server's death to its view turning unhealthy, with
//!   checks every 100 ms bounded by 100 ms, beside the documented bound
//!   `unhealthy_threshold × (probe_interval + probe_timeout)`, for a server
//!   whose port refuses and for one that accepts and never answers;
//! - the CPU time of one health round of 1,000 endpoints on the
//!   diagnostics prober (server in the same process), beside the plain
//!   TCP-connect prober on the same endpoints.
//!
//! Run with `cargo bench -p flotilla-viewreg --bench registry`; the
//! results are in docs/benchmarks.md.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use flotilla_core_types::{Endpoint, Worker};
use flotilla_viewreg::{
    DiagnosticsConfig, DiagnosticsProber, DiagnosticsServer, DiagnosticsStatus, Health, ProbeError,
    ProbeOutcome, Prober, Registry, RegistryConfig, StaticLocator, TcpProber, WaitLimit,
    serve_diagnostics_over,
};
use futures_util::StreamExt;
use tokio::net::TcpListener;

type Features = BTreeSet<&'static str>;

const VIEWS: usize = 10_000;

/// What view `n` provides: everyone `kv`; every 10th `a`, every 100th `b`,
/// every 1,000th `c` (nested), so that queries return 10,000, 1,000, 100,
/// 10 and (for `none`) 0 views.
fn features_of(n: usize) -> Features {
    let mut features = BTreeSet::from(["kv"]);
    for (every, feature) in [(10, "a"), (100, "b"), (1_000, "c")] {
        if n.is_multiple_of(every) {
            features.insert(feature);
        }
    }
    features
}

fn endpoint_of(n: usize) -> Endpoint {
    let address = Ipv4Addr::from(0x0a00_0000 + u32::try_from(n).expect("few"));
    Endpoint::new(&address.to_string(), 80).expect("valid")
}

/// Every view serves its features, but every 10th from the 5th on flaps:
/// three failures, then two successes, over and over, so its health turns
/// about every five checks and the registry keeps publishing snapshots.
struct Flapping {
    checks: Mutex<HashMap<Endpoint, u32>>,
}

impl Prober<Features> for Flapping {
    async fn probe(&self, endpoint: &Endpoint) -> ProbeOutcome<Features> {
        let n = endpoint_index(endpoint);
        if n % 10 == 5 {
            let mut checks = self.checks.lock().expect("not poisoned");
            let count = checks.entry(endpoint.clone()).or_default();
            *count += 1;
            if *count % 5 < 3 {
                return ProbeOutcome::Failed(ProbeError::Protocol {
                    endpoint: endpoint.clone(),
                    reason: "flapping".to_owned(),
                });
            }
        }
        ProbeOutcome::serving(features_of(n))
    }
}

fn endpoint_index(endpoint: &Endpoint) -> usize {
    let address: Ipv4Addr = endpoint.host().parse().expect("an address");
    (u32::from(address) - 0x0a00_0000) as usize
}

/// The baseline: the same views in one list behind a mutex.
struct MutexMap {
    views: Mutex<Vec<Arc<BaselineView>>>,
}

struct BaselineView {
    endpoint: Endpoint,
    features: Features,
    healthy: bool,
}

impl MutexMap {
    fn healthy_views(&self, wanted: &Features) -> Vec<Arc<BaselineView>> {
        let views = self.views.lock().expect("not poisoned");
        views
            .iter()
            .filter(|view| view.healthy && wanted.is_subset(&view.features))
            .cloned()
            .collect()
    }
}

fn queries() -> [(&'static str, usize); 5] {
    [
        ("none", 0),
        ("c", 10),
        ("b", 100),
        ("a", 1_000),
        ("kv", 10_000),
    ]
}

/// Runs `query` `iters` times on each of `threads` threads at once and
/// returns the longest thread's time: per query, its latency when that
/// many threads query together.
fn contended(threads: usize, iters: u64, query: &(dyn Fn() + Sync)) -> Duration {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let started = Instant::now();
                    for _ in 0..iters {
                        query();
                    }
                    started.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a query thread"))
            .max()
            .unwrap_or_default()
    })
}

fn healthy_views(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut config = RegistryConfig::default();
    config.probe_interval = Duration::from_secs(1);
    let registry = runtime.block_on(async {
        let registry = Registry::start(
            StaticLocator::new((0..VIEWS).map(endpoint_of)),
            Flapping {
                checks: Mutex::new(HashMap::new()),
            },
            |endpoint: &Endpoint| endpoint.clone(),
            config,
        )
        .expect("valid config");
        let limit = WaitLimit::timeout(Duration::from_secs(60));
        let mut snapshot = registry.snapshot();
        while snapshot.summary().healthy < VIEWS * 9 / 10 {
            snapshot = registry
                .wait_for_change(snapshot.stamp(), &limit)
                .await
                .expect("the views turn healthy");
        }
        registry
    });

    let baseline = Arc::new(MutexMap {
        views: Mutex::new(
            (0..VIEWS)
                .map(|n| {
                    Arc::new(BaselineView {
                        endpoint: endpoint_of(n),
                        features: features_of(n),
                        healthy: true,
                    })
                })
                .collect(),
        ),
    });
    // The baseline's writer: as the registry's prober turns about 200
    // views a second, it turns one view's health every 5 ms, under the lock.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (baseline, writing) = (Arc::clone(&baseline), Arc::clone(&writing));
        std::thread::spawn(move || {
            let mut n = 5;
            while writing.load(Ordering::Relaxed) {
                {
                    let mut views = baseline.views.lock().expect("not poisoned");
                    let old = &views[n];
                    views[n] = Arc::new(BaselineView {
                        endpoint: old.endpoint.clone(),
                        features: old.features.clone(),
                        healthy: !old.healthy,
                    });
                }
                n = (n + 10) % VIEWS;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let before = registry.last_changed();
    for threads in [1, 2] {
        let mut group = c.benchmark_group(format!("healthy_views of 10,000, {threads} thread(s)"));
        for (feature, returned) in queries() {
            let wanted = BTreeSet::from([feature]);
            let id = format!("{returned} returned");
            group.bench_function(BenchmarkId::new("registry", &id), |b| {
                b.iter_custom(|iters| {
                    contended(threads, iters, &|| {
                        std::hint::black_box(registry.healthy_views(&wanted));
                    })
                });
            });
            group.bench_function(BenchmarkId::new("registry, to_vec", &id), |b| {
                b.iter_custom(|iters| {
                    contended(threads, iters, &|| {
                        std::hint::black_box(registry.healthy_views(&wanted).to_vec());
                    })
                });
            });
            group.bench_function(BenchmarkId::new("registry, borrowed", &id), |b| {
                b.iter_custom(|iters| {
                    contended(threads, iters, &|| {
                        let snapshot = registry.snapshot();
                        std::hint::black_box(snapshot.healthy_iter(&wanted).len());
                    })
                });
            });
            group.bench_function(BenchmarkId::new("mutex map", &id), |b| {
                b.iter_custom(|iters| {
                    contended(threads, iters, &|| {
                        std::hint::black_box(baseline.healthy_views(&wanted));
                    })
                });
            });
        }
        group.finish();
    }
    let swaps = registry.last_changed().as_u64() - before.as_u64();
    println!("healthy_views: the registry published {swaps} snapshots while it was queried");
    writing.store(false, Ordering::Relaxed);
    writer.join().expect("the writer");
    registry.kill();
    runtime
        .block_on(registry.wait())
        .expect("the registry stops");
}

/// A diagnostics server that can be made to go silent: from then on it
/// accepts connections and never answers, as a host that hangs does.
struct Silenceable {
    address: SocketAddr,
    silent: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

async fn silenceable() -> Silenceable {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let address = listener.local_addr().expect("bound");
    let silent = Arc::new(AtomicBool::new(false));
    let quiet = Arc::clone(&silent);
    let task = tokio::spawn(async move {
        let (_status_tx, status) =
            tokio::sync::watch::channel(DiagnosticsStatus::serving(BTreeSet::from([
                "kv".to_owned()
            ])));
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            if quiet.load(Ordering::Relaxed) {
                held.push(stream);
            } else {
                let status = status.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = transport("server").accept(stream).await {
                        let _ =
                            serve_diagnostics_over(stream, &status, Duration::from_secs(5)).await;
                    }
                });
            }
        }
    });
    Silenceable {
        address,
        silent,
        task,
    }
}

/// TLS as the device `name` of one cluster made for the run: probes are
/// secured as a registry's are.
fn transport(name: &str) -> flotilla_identity::Transport {
    static CLUSTER: std::sync::OnceLock<flotilla_identity::LocalCluster> =
        std::sync::OnceLock::new();
    let cluster = CLUSTER
        .get_or_init(|| flotilla_identity::LocalCluster::new("benchmarks").expect("a cluster"));
    let device = flotilla_core_types::DeviceId::new(name).expect("a valid id");
    cluster.transport(&device).expect("a TLS configuration")
}

fn death_to_unhealthy(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut config = RegistryConfig::default();
    config.probe_interval = Duration::from_millis(100);
    config.probe_timeout = Duration::from_millis(100);
    let bound = (config.probe_interval + config.probe_timeout) * config.unhealthy_threshold;
    println!("death to unhealthy: the documented bound is {bound:?}");
    let mut group = c.benchmark_group("death to unhealthy (checks every 100 ms, timeout 100 ms)");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for silent in [false, true] {
        let name = if silent {
            "accepts, never answers"
        } else {
            "port refuses"
        };
        let config = config.clone();
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let config = config.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += one_death(&config, silent).await;
                    }
                    total
                }
            });
        });
    }
    group.finish();
}

/// Starts a server and a registry of it, waits for it to turn healthy,
/// kills it (or silences it), and returns how long until its view turned
/// unhealthy.
async fn one_death(config: &RegistryConfig, silent: bool) -> Duration {
    let server = silenceable().await;
    let endpoint: Endpoint = server.address.try_into().expect("an endpoint");
    let registry = Registry::start(
        StaticLocator::new([endpoint.clone()]),
        DiagnosticsProber::new(transport("registry")),
        |_: &Endpoint| (),
        config.clone(),
    )
    .expect("valid config");
    let limit = WaitLimit::timeout(Duration::from_secs(30));
    let health = |registry: &Registry<BTreeSet<String>, ()>| {
        registry
            .snapshot()
            .view(&endpoint)
            .map(|view| view.health())
    };
    while health(&registry) != Some(Health::Healthy) {
        registry
            .wait_for_change(registry.last_changed(), &limit)
            .await
            .expect("turns healthy");
    }
    let died = Instant::now();
    if silent {
        server.silent.store(true, Ordering::Relaxed);
    } else {
        server.task.abort();
    }
    while health(&registry) != Some(Health::Unhealthy) {
        registry
            .wait_for_change(registry.last_changed(), &limit)
            .await
            .expect("turns unhealthy");
    }
    let elapsed = died.elapsed();
    registry.kill();
    registry.wait().await.expect("stops");
    server.task.abort();
    elapsed
}

/// This process's CPU time so far, user and system, from /proc (Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses.
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // Linux reports in USER_HZ, 100 on every architecture it runs on.
    Duration::from_millis(ticks * 10)
}

fn health_round(c: &mut Criterion) {
    const ENDPOINTS: usize = 1_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    // One server on every loopback address; 1,000 endpoints on distinct
    // addresses of 127/8 reach it, each a distinct view.
    let (server, endpoints) = runtime.block_on(async {
        let listener = TcpListener::bind("0.0.0.0:0").await.expect("binds");
        let port = listener.local_addr().expect("bound").port();
        let mut config = DiagnosticsConfig::default();
        config.max_connections = 1_024;
        let server = DiagnosticsServer::start(
            listener,
            transport("server"),
            DiagnosticsStatus::serving(BTreeSet::from(["kv".to_owned()])),
            config,
        )
        .expect("starts");
        let endpoints: Vec<Endpoint> = (0..ENDPOINTS)
            .map(|n| {
                let address = Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250 + 1) as u8);
                Endpoint::new(&address.to_string(), port).expect("valid")
            })
            .collect();
        (server, endpoints)
    });
    let diagnostics = DiagnosticsProber::new(transport("registry"));
    let tcp = TcpProber::with_features(BTreeSet::from(["kv".to_owned()]));
    let mut group = c.benchmark_group("health round of 1,000 endpoints, CPU time");
    group.sample_size(10);
    group.bench_function("diagnostics prober", |b| {
        b.iter_custom(|iters| cpu_of_rounds(&runtime, iters, &endpoints, &diagnostics))
    });
    group.bench_function("tcp prober", |b| {
        b.iter_custom(|iters| cpu_of_rounds(&runtime, iters, &endpoints, &tcp))
    });
    group.finish();
    server.kill();
    runtime.block_on(server.wait()).expect("stops");
}

/// The CPU time of `iters` rounds, each a check of every endpoint, 64 at a
/// time (so the listener's backlog never overflows into SYN retries).
fn cpu_of_rounds<P: Prober<BTreeSet<String>>>(
    runtime: &tokio::runtime::Runtime,
    iters: u64,
    endpoints: &[Endpoint],
    prober: &P,
) -> Duration {
    let before = cpu_time();
    runtime.block_on(async {
        for _ in 0..iters {
            let serving = futures_util::stream::iter(endpoints)
                .map(|endpoint| prober.probe(endpoint))
                .buffer_unordered(64)
                .filter(|outcome| {
                    std::future::ready(matches!(outcome, ProbeOutcome::Serving { .. }))
                })
                .count()
                .await;
            assert_eq!(serving, endpoints.len(), "every check succeeds");
        }
    });
    cpu_time() - before
}

criterion_group!(benches, healthy_views, death_to_unhealthy, health_round);
criterion_main!(benches);
