//! Test harness for Flotilla: real etcd servers on loopback.
//!
//! [`EtcdCluster`] starts one etcd process, or a three-member cluster, on
//! free loopback ports, each member with its own temporary data directory,
//! and hands the cluster over only once it answers and has a leader.
//! Members can be killed (SIGKILL, as a crash) and restarted on the same
//! data. Dropping the cluster kills every process and removes every
//! directory, also when the test panics.
//!
//! The etcd binary is `$ETCD_BIN` when set, else `etcd` on `PATH` (Debian's
//! `etcd-server` package). When it is missing, starting a cluster fails
//! with [`TestkitError::EtcdNotFound`], which says what to install: tests
//! against etcd fail rather than skip.
//!
//! Every wait here is for a condition, bounded by [`READY_TIMEOUT`]; none is
//! a fixed sleep.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), flotilla_testkit::TestkitError> {
//! let mut cluster = flotilla_testkit::EtcdCluster::three().await?;
//! let leader = cluster.leader().await?;
//! cluster.kill(leader)?;
//! cluster.restart(leader).await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::time::Instant;

/// How long a member (or a cluster) may take to answer and elect a leader.
/// About 2 s is usual; the margin is for loaded CI machines.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often readiness is polled while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Raft timings for tests: a tenth of etcd's defaults would be fragile on
/// a loaded machine; half makes a lost leader replaced in about a second.
const HEARTBEAT_MS: u32 = 50;
const ELECTION_TIMEOUT_MS: u32 = 500;

/// What can go wrong starting or driving a test cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// There is no etcd binary to run.
    #[error(
        "no etcd binary: {tried} could not be run ({source}); install Debian's etcd-server \
         (`apt-get install -y etcd-server`) or set ETCD_BIN to an etcd 3.4+ binary"
    )]
    EtcdNotFound {
        /// What was tried.
        tried: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A file system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A member did not become ready in time.
    #[error(
        "etcd member {member} not ready after {waited:?}: {last_error}; its log ends:\n{log_tail}"
    )]
    NotReady {
        /// The member's index.
        member: usize,
        /// How long it was given.
        waited: Duration,
        /// The last error seen while polling.
        last_error: String,
        /// The end of its log.
        log_tail: String,
    },
    /// No member knows a leader.
    #[error("no leader among the running members: {0}")]
    NoLeader(String),
    /// The member index is out of range, or the member is not in the state
    /// the operation needs.
    #[error("member {member}: {reason}")]
    BadMember {
        /// The index.
        member: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The etcd client failed.
    #[error("etcd client: {0}")]
    Client(#[from] etcd_client::Error),
}

/// One etcd process or a cluster of them, on loopback, torn down on drop.
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    // Dropped last: the directories outlive the processes.
    _dir: tempfile::TempDir,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<Child>,
}

impl EtcdCluster {
    /// One etcd member, ready.
    ///
    /// # Errors
    ///
    /// [`TestkitError::EtcdNotFound`] when etcd is missing;
    /// [`TestkitError::NotReady`] when it does not answer in time.
    pub async fn single() -> Result<EtcdCluster, TestkitError> {
        EtcdCluster::start(1).await
    }

    /// A three-member cluster, ready (every member answers and knows the
    /// leader).
    ///
    /// # Errors
    ///
    /// As for [`single`](Self::single).
    pub async fn three() -> Result<EtcdCluster, TestkitError> {
        EtcdCluster::start(3).await
    }

    /// A cluster of `size` members, ready.
    ///
    /// # Errors
    ///
    /// As for [`single`](Self::single).
    pub async fn start(size: usize) -> Result<EtcdCluster, TestkitError> {
        let binary = etcd_binary();
        let dir = temp_dir()?;
        let ports = free_ports(size * 2)?;
        let members: Vec<Member> = (0..size)
            .map(|index| {
                let name = format!("m{index}");
                Member {
                    data_dir: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    client_port: ports[index * 2],
                    peer_port: ports[index * 2 + 1],
                    process: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}=http://127.0.0.1:{}", member.name, member.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = dir.path().file_name().map_or_else(
            || String::from("flotilla"),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut cluster = EtcdCluster {
            binary,
            members,
            initial_cluster,
            token,
            _dir: dir,
        };
        for index in 0..size {
            cluster.spawn(index, "new")?;
        }
        for index in 0..size {
            cluster.wait_ready(index).await?;
        }
        Ok(cluster)
    }

    /// How many members the cluster has, running or not.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The client URL of member `index`, such as `http://127.0.0.1:41234`.
    ///
    /// # Panics
    ///
    /// Panics when `index` is out of range (a bug in the test).
    pub fn endpoint(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[index].client_port)
    }

    /// Every member's client URL, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// A client of the whole cluster.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Client`] when it cannot be built.
    pub async fn client(&self) -> Result<Client, TestkitError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // etcd drops connections that ping more often than every 5 s.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        Ok(Client::connect(self.endpoints(), Some(options)).await?)
    }

    /// Whether member `index` is running.
    pub fn is_running(&self, index: usize) -> bool {
        self.members
            .get(index)
            .is_some_and(|member| member.process.is_some())
    }

    /// The index of the member that is the Raft leader now, as the running
    /// members see it.
    ///
    /// # Errors
    ///
    /// [`TestkitError::NoLeader`] when no running member names a leader
    /// among the members.
    pub async fn leader(&self) -> Result<usize, TestkitError> {
        let mut seen = Vec::new();
        for index in (0..self.members.len()).filter(|&i| self.is_running(i)) {
            let status = match member_client(&self.endpoint(index)).await {
                Ok(mut client) => client.status().await,
                Err(error) => Err(error),
            };
            let status = match status {
                Ok(status) => status,
                Err(error) => {
                    seen.push(format!("m{index}: {error}"));
                    continue;
                }
            };
            let own_id = status.header().map(|header| header.member_id());
            if own_id == Some(status.leader()) {
                return Ok(index);
            }
            seen.push(format!("m{index}: follower of {:x}", status.leader()));
        }
        Err(TestkitError::NoLeader(seen.join("; ")))
    }

    /// Kills member `index` with SIGKILL, as a crash would, and reaps it.
    ///
    /// # Errors
    ///
    /// [`TestkitError::BadMember`] when it is not running.
    pub fn kill(&mut self, index: usize) -> Result<(), TestkitError> {
        let member = self.members.get_mut(index).ok_or(TestkitError::BadMember {
            member: index,
            reason: "no such member",
        })?;
        let mut process = member.process.take().ok_or(TestkitError::BadMember {
            member: index,
            reason: "not running",
        })?;
        kill_and_reap(&mut process).map_err(|source| TestkitError::Io {
            what: format!("killing etcd member {index}"),
            source,
        })
    }

    /// Starts member `index` again on its data, and waits until it answers
    /// and knows the leader.
    ///
    /// # Errors
    ///
    /// [`TestkitError::BadMember`] when it is running already;
    /// [`TestkitError::NotReady`] when it does not come back in time.
    pub async fn restart(&mut self, index: usize) -> Result<(), TestkitError> {
        if index >= self.members.len() || self.is_running(index) {
            return Err(TestkitError::BadMember {
                member: index,
                reason: "not a stopped member",
            });
        }
        self.spawn(index, "existing")?;
        self.wait_ready(index).await
    }

    fn spawn(&mut self, index: usize, cluster_state: &str) -> Result<(), TestkitError> {
        let initial_cluster = self.initial_cluster.clone();
        let token = self.token.clone();
        let binary = self.binary.clone();
        let member = &mut self.members[index];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(|source| TestkitError::Io {
                what: format!("opening {}", member.log.display()),
                source,
            })?;
        let log_for_stderr = log.try_clone().map_err(|source| TestkitError::Io {
            what: String::from("duplicating the log file handle"),
            source,
        })?;
        let client_url = format!("http://127.0.0.1:{}", member.client_port);
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let process = Command::new(&binary)
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", cluster_state])
            .args(["--initial-cluster-token", &token])
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_TIMEOUT_MS.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                    TestkitError::EtcdNotFound {
                        tried: binary.display().to_string(),
                        source,
                    }
                }
                _ => TestkitError::Io {
                    what: format!("starting {}", binary.display()),
                    source,
                },
            })?;
        member.process = Some(process);
        Ok(())
    }

    /// Polls member `index` until it answers a status request naming a
    /// leader, or the deadline passes.
    async fn wait_ready(&mut self, index: usize) -> Result<(), TestkitError> {
        let started = Instant::now();
        let endpoint = self.endpoint(index);
        let mut last_error = String::from("no answer yet");
        while started.elapsed() < READY_TIMEOUT {
            if let Some(process) = self.members[index].process.as_mut()
                && let Ok(Some(exit)) = process.try_wait()
            {
                self.members[index].process = None;
                last_error = format!("the process exited: {exit}");
                break;
            }
            match member_client(&endpoint).await {
                Ok(mut client) => match client.status().await {
                    Ok(status) if status.leader() != 0 => return Ok(()),
                    Ok(_) => last_error = String::from("answers, but knows no leader yet"),
                    Err(error) => last_error = error.to_string(),
                },
                Err(error) => last_error = error.to_string(),
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(TestkitError::NotReady {
            member: index,
            waited: started.elapsed(),
            last_error,
            log_tail: log_tail(&self.members[index].log),
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut process) = member.process.take() {
                // Best effort: nothing useful can be done with an error
                // while tearing down (possibly during a panic).
                let _ = kill_and_reap(&mut process);
            }
        }
    }
}

impl fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let running: Vec<bool> = (0..self.members.len())
            .map(|i| self.is_running(i))
            .collect();
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("running", &running)
            .finish()
    }
}

/// A client of one member only, with short timeouts for polling.
async fn member_client(endpoint: &str) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(2));
    Client::connect([endpoint], Some(options)).await
}

fn kill_and_reap(process: &mut Child) -> std::io::Result<()> {
    // On Unix, `Child::kill` is SIGKILL.
    process.kill()?;
    process.wait().map(drop)
}

fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

/// A temporary directory, in memory when the machine offers `/dev/shm`:
/// etcd syncs every write, and tests need not pay for a disk.
fn temp_dir() -> Result<tempfile::TempDir, TestkitError> {
    let builder = || {
        let mut builder = tempfile::Builder::new();
        builder.prefix("flotilla-etcd-");
        builder
    };
    let shm = Path::new("/dev/shm");
    let made = if shm.is_dir() {
        builder().tempdir_in(shm).or_else(|_| builder().tempdir())
    } else {
        builder().tempdir()
    };
    made.map_err(|source| TestkitError::Io {
        what: String::from("creating a temporary directory"),
        source,
    })
}

/// `count` distinct loopback ports that were free a moment ago. All are
/// held open together while choosing, so they differ from each other.
fn free_ports(count: usize) -> Result<Vec<u16>, TestkitError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TestkitError::Io {
            what: String::from("finding free loopback ports"),
            source,
        })?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TestkitError::Io {
            what: String::from("reading a port"),
            source,
        })
}

/// The last lines of a member's log, for error messages.
fn log_tail(path: &Path) -> String {
    const LINES: usize = 20;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LINES)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}
