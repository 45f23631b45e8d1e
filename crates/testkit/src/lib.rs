//! Test harness for Flotilla: real etcd servers on loopback, and
//! [`anonymous_tls_client`], a TLS client that presents no certificate,
//! for tests that a server refuses one.
//!
//! [`EtcdCluster`] starts one etcd process, or a three-member cluster, on
//! free loopback ports, each member with its own temporary data directory,
//! and hands the cluster over only once it answers and has a leader.
//! Members can be killed (SIGKILL, as a crash) and restarted on the same
//! data. Dropping the cluster kills every process and removes every
//! directory, also when the test panics.
//!
//! [`EtcdCluster::with_tls`] starts one that speaks only TLS, to clients
//! and between members, with client certificates required
//! (`--client-cert-auth`), every certificate made for it by a CA of its
//! own ([`EtcdTls`]); [`EtcdCluster::with_tls_and_auth`] also enables
//! etcd's authentication, with a root user, a user [`USER`] whose role may
//! use only the keys under [`PREFIX`], and a user [`OUTSIDER`] whose role
//! may use only other keys.
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

use etcd_client::{Client, ConnectOptions, Permission};
use flotilla_core_types::etcd::EtcdOptions;
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

/// The user of a cluster with authentication whose role may read and
/// write the keys under [`PREFIX`], and nothing else.
pub const USER: &str = "flotilla";
/// The user of a cluster with authentication whose role may read and
/// write only the keys under `elsewhere/`: it has no permission on
/// [`PREFIX`].
pub const OUTSIDER: &str = "outsider";
/// The password of [`USER`] and of [`OUTSIDER`].
pub const PASSWORD: &str = "test-password";
/// The prefix [`USER`] may use.
pub const PREFIX: &str = "flotilla/";
/// The root user's password.
const ROOT_PASSWORD: &str = "root-password";

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
    /// A certificate could not be made.
    #[error("making a test certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// The certificates of a cluster started [`with_tls`](EtcdCluster::with_tls):
/// a CA of its own, which signed each member's certificate (for
/// 127.0.0.1 and localhost, to serve clients and to dial peers) and
/// signs clients' certificates on request.
pub struct EtcdTls {
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
    ca_pem: String,
    /// The root user's client certificate and key, which the cluster's
    /// own client uses.
    root: (String, String),
}

impl EtcdTls {
    fn new() -> Result<EtcdTls, TestkitError> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flotilla-testkit etcd CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = pem_of("CERTIFICATE", ca_params.self_signed(&ca_key)?.der());
        let mut tls = EtcdTls {
            ca_params,
            ca_key,
            ca_pem,
            root: (String::new(), String::new()),
        };
        tls.root = tls.client_certificate("root")?;
        Ok(tls)
    }

    /// The CA's certificate, PEM: what a client trusts the members by.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A new client certificate and its key (PEM, PKCS#8) whose common
    /// name is `user`: etcd takes the common name as the user when no
    /// password is given.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Certificate`] if rcgen fails.
    pub fn client_certificate(&self, user: &str) -> Result<(String, String), TestkitError> {
        self.issue(&[], user, &[rcgen::ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// A member's certificate: for loopback, to serve and to dial peers.
    fn member_certificate(&self, name: &str) -> Result<(String, String), TestkitError> {
        self.issue(
            &["127.0.0.1", "localhost"],
            name,
            &[
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    fn issue(
        &self,
        names: &[&str],
        common_name: &str,
        usages: &[rcgen::ExtendedKeyUsagePurpose],
    ) -> Result<(String, String), TestkitError> {
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages = usages.to_vec();
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let certificate = params.signed_by(&key, &issuer)?;
        Ok((
            pem_of("CERTIFICATE", certificate.der()),
            pem_of("PRIVATE KEY", &key.serialize_der()),
        ))
    }

    /// Client options that trust the cluster's CA and present the root
    /// user's certificate.
    fn root_options(&self) -> etcd_client::TlsOptions {
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca_pem))
            .identity(etcd_client::Identity::from_pem(&self.root.0, &self.root.1))
    }
}

/// A TLS 1.3 client that presents no certificate of its own and takes any
/// server's: what a stranger without credentials dials with.
pub fn anonymous_tls_client() -> tokio_rustls::TlsConnector {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring offers TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer(algorithms)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Accepts any server certificate; checks only that the server holds its
/// key.
#[derive(Debug)]
struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls").finish_non_exhaustive()
    }
}

/// One etcd process or a cluster of them, on loopback, torn down on drop.
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    tls: Option<EtcdTls>,
    /// Whether etcd's authentication is on.
    auth: bool,
    /// The member certificates' files, when the cluster speaks TLS.
    tls_files: Option<TlsFiles>,
    // Dropped last: the directories outlive the processes.
    _dir: tempfile::TempDir,
}

/// Where a TLS cluster's certificate files are.
struct TlsFiles {
    ca: PathBuf,
    /// Each member's certificate and key.
    members: Vec<(PathBuf, PathBuf)>,
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
        EtcdCluster::start_as(size, None).await
    }

    /// A cluster of `size` members that speaks TLS only, to clients and
    /// between members, and requires a client certificate signed by its
    /// CA ([`tls`](Self::tls)). Its [`client`](Self::client) presents the
    /// root user's.
    ///
    /// # Errors
    ///
    /// As for [`single`](Self::single), and
    /// [`TestkitError::Certificate`].
    pub async fn with_tls(size: usize) -> Result<EtcdCluster, TestkitError> {
        EtcdCluster::start_as(size, Some(EtcdTls::new()?)).await
    }

    /// [`with_tls`](Self::with_tls), with etcd's authentication enabled:
    /// a root user, [`USER`] (password [`PASSWORD`]) with read and write
    /// on the keys under [`PREFIX`] only, and [`OUTSIDER`] (the same
    /// password) with read and write on `elsewhere/` only. Set up through
    /// etcd's API before authentication is turned on.
    ///
    /// # Errors
    ///
    /// As for [`with_tls`](Self::with_tls), and [`TestkitError::Client`]
    /// when setting up the users fails.
    pub async fn with_tls_and_auth(size: usize) -> Result<EtcdCluster, TestkitError> {
        let mut cluster = EtcdCluster::with_tls(size).await?;
        let mut client = cluster.client().await?;
        client.user_add("root", ROOT_PASSWORD, None).await?;
        client.user_grant_role("root", "root").await?;
        for (user, role, prefix) in [
            (USER, "flotilla-prefix", PREFIX),
            (OUTSIDER, "elsewhere-prefix", "elsewhere/"),
        ] {
            client.user_add(user, PASSWORD, None).await?;
            client.role_add(role).await?;
            client
                .role_grant_permission(role, Permission::read_write(prefix).with_prefix())
                .await?;
            client.user_grant_role(user, role).await?;
        }
        client.auth_enable().await?;
        cluster.auth = true;
        Ok(cluster)
    }

    /// The certificates of a cluster started [`with_tls`](Self::with_tls).
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// The options a backend connects to this cluster with: its endpoints,
    /// and for a cluster [`with_tls`](Self::with_tls) its CA and, when
    /// `user` is given, a client certificate for `user` and, with
    /// authentication on, its password ([`PASSWORD`]).
    ///
    /// # Errors
    ///
    /// [`TestkitError::Certificate`] if the client certificate cannot be
    /// made.
    pub fn options_as(&self, user: Option<&str>) -> Result<EtcdOptions, TestkitError> {
        let options = EtcdOptions::new(self.endpoints());
        let Some(tls) = &self.tls else {
            return Ok(options);
        };
        let options = options.with_ca_pem(tls.ca_pem());
        Ok(match user {
            Some(user) => {
                let (certificate, key) = tls.client_certificate(user)?;
                let options = options.with_client_pem(certificate, key);
                if self.auth {
                    options.with_user(user, PASSWORD)
                } else {
                    options
                }
            }
            None => options,
        })
    }

    async fn start_as(size: usize, tls: Option<EtcdTls>) -> Result<EtcdCluster, TestkitError> {
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
        let scheme = if tls.is_some() { "https" } else { "http" };
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}={scheme}://127.0.0.1:{}", member.name, member.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let tls_files = match &tls {
            Some(tls) => Some(write_tls_files(tls, dir.path(), &members)?),
            None => None,
        };
        let token = dir.path().file_name().map_or_else(
            || String::from("flotilla"),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut cluster = EtcdCluster {
            binary,
            members,
            initial_cluster,
            token,
            tls,
            auth: false,
            tls_files,
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

    /// The client URL of member `index`, such as `http://127.0.0.1:41234`
    /// (`https://` for a cluster [`with_tls`](Self::with_tls)).
    ///
    /// # Panics
    ///
    /// Panics when `index` is out of range (a bug in the test).
    pub fn endpoint(&self, index: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[index].client_port
        )
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Every member's client URL, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// A client of the whole cluster (with TLS, as the root user, by its
    /// certificate).
    ///
    /// # Errors
    ///
    /// [`TestkitError::Client`] when it cannot be built.
    pub async fn client(&self) -> Result<Client, TestkitError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // etcd drops connections that ping more often than every 5 s.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.root_options());
        }
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
            let status = match member_client(&self.endpoint(index), self.tls.as_ref()).await {
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
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", member.client_port);
        let peer_url = format!("{scheme}://127.0.0.1:{}", member.peer_port);
        let mut command = Command::new(&binary);
        if let Some(files) = &self.tls_files {
            let (certificate, key) = &files.members[index];
            for side in ["", "peer-"] {
                command
                    .arg(format!("--{side}cert-file"))
                    .arg(certificate)
                    .arg(format!("--{side}key-file"))
                    .arg(key)
                    .arg(format!("--{side}trusted-ca-file"))
                    .arg(&files.ca)
                    .arg(format!("--{side}client-cert-auth"));
            }
        }
        let process = command
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
        let tls = self.tls.as_ref();
        let mut last_error = String::from("no answer yet");
        while started.elapsed() < READY_TIMEOUT {
            if let Some(process) = self.members[index].process.as_mut()
                && let Ok(Some(exit)) = process.try_wait()
            {
                self.members[index].process = None;
                last_error = format!("the process exited: {exit}");
                break;
            }
            match member_client(&endpoint, tls).await {
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
async fn member_client(
    endpoint: &str,
    tls: Option<&EtcdTls>,
) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        options = options.with_tls(tls.root_options());
    }
    Client::connect([endpoint], Some(options)).await
}

/// `der` in PEM under `label`.
fn pem_of(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// Writes the CA's certificate and each member's certificate and key into
/// `dir`, the keys readable by their owner only.
fn write_tls_files(
    tls: &EtcdTls,
    dir: &Path,
    members: &[Member],
) -> Result<TlsFiles, TestkitError> {
    use std::os::unix::fs::PermissionsExt;
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::write(path, text)
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
            .map_err(|source| TestkitError::Io {
                what: format!("writing {}", path.display()),
                source,
            })
    };
    let ca = dir.join("ca.pem");
    write(&ca, tls.ca_pem(), 0o644)?;
    let mut files = Vec::with_capacity(members.len());
    for member in members {
        let (certificate, key) = tls.member_certificate(&member.name)?;
        let certificate_path = dir.join(format!("{}.pem", member.name));
        let key_path = dir.join(format!("{}-key.pem", member.name));
        write(&certificate_path, &certificate, 0o644)?;
        write(&key_path, &key, 0o600)?;
        files.push((certificate_path, key_path));
    }
    Ok(TlsFiles { ca, members: files })
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
