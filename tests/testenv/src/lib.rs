//! A real, local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) for
//! integration tests and `make run`.
//!
//! [`TestEnv::global`] starts it once per test binary; every test then builds its own clients
//! (each `#[tokio::test]` has its own runtime, so nothing runtime-bound is kept in the global):
//!
//! ```no_run
//! # async fn test() {
//! let env = testenv::TestEnv::global();
//! let ns = env.namespace("my-test").await;
//! let admin = env.admin_client().await;      // system:masters
//! let operator = env.operator_client().await; // user `bootstrap-token-operator`, RBAC from deploy/rbac/
//! # }
//! ```
//!
//! At startup the CRDs in `<repo>/crds/` and the manifests in `<repo>/deploy/rbac/` are applied,
//! and each ClusterRole/Role found in the latter is bound to the operator's user. Tests run the
//! operator with a fresh namespace as its own (`--namespace`), so each namespace from
//! [`TestEnv::namespace`] gets a copy of deploy/rbac's Roles (the operator's own-namespace
//! rights, such as its Lease) bound the same way. The controller
//! manager runs the garbage collector, so ownerReferences really cascade.
//!
//! The binaries come from `<repo>/bin/k8s/` (`make control-plane`), or `$TESTENV_BIN_DIR`.

mod apply;
mod kms;
mod pki;
mod probe;
mod process;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use kms::{LocalKms, local_kms_binary};
pub use probe::{free_loopback_addr, http_get, metric};
use process::Proc;

/// Every request sent through a client from [`TestEnv::operator_client_counting_writes`].
#[derive(Debug, Clone, Default)]
pub struct WriteCounter(std::sync::Arc<std::sync::Mutex<Vec<LoggedRequest>>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: http::Method,
    pub path: String,
    /// The client asked for metadata only (`PartialObjectMetadata`), not the object.
    pub metadata_only: bool,
}

impl WriteCounter {
    /// Requests other than GET so far.
    pub fn get(&self) -> u64 {
        let writes = self
            .requests()
            .iter()
            .filter(|r| r.method != http::Method::GET)
            .count();
        u64::try_from(writes).unwrap_or(u64::MAX)
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The user name of the operator's identity (client certificate CN, no groups).
pub const OPERATOR_USER: &str = "bootstrap-token-operator";
/// The user name of the admin identity (group `system:masters`).
pub const ADMIN_USER: &str = "admin";

pub(crate) type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

const ETCD: &str = "etcd";
const APISERVER: &str = "kube-apiserver";
const CONTROLLER_MANAGER: &str = "kube-controller-manager";
const LOG_TAIL_LINES: usize = 40;

static GLOBAL: OnceLock<Result<TestEnv, String>> = OnceLock::new();

/// The repository checkout this crate lives in (`tests/testenv/../..`).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("tests/testenv has two parents")
}

/// Where the control-plane binaries are: `$TESTENV_BIN_DIR`, else `<repo>/bin/k8s`.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("TESTENV_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("bin/k8s"))
}

/// A running control plane. Dropping it (or [`TestEnv::stop`]) stops the processes and
/// removes the temporary directory; the processes also die with the process that started them.
pub struct TestEnv {
    dir: PathBuf,
    server: String,
    admin_kubeconfig: PathBuf,
    operator_kubeconfig: PathBuf,
    admin: Kubeconfig,
    operator: Kubeconfig,
    /// In start order.
    procs: Mutex<Vec<Proc>>,
    tempdir: Mutex<Option<TempDir>>,
    /// Set once a component failed: its logs are worth keeping.
    keep_dir: AtomicBool,
    /// kube-apiserver's flags, to start it again after [`TestEnv::stop_apiserver`].
    apiserver_args: Mutex<Vec<String>>,
    /// The Roles of deploy/rbac/, granted again in every namespace a test creates.
    own_roles: Mutex<Vec<kube::api::DynamicObject>>,
}

impl TestEnv {
    /// The control plane shared by every test of this test binary, started on first use.
    /// Panics (in every caller) if it cannot be started, or if a component has died since.
    pub fn global() -> &'static TestEnv {
        let env = GLOBAL.get_or_init(|| {
            let env = TestEnv::start()?;
            // Statics are never dropped: tear down when the test binary exits normally
            // (PDEATHSIG covers every other way out).
            extern "C" fn at_exit() {
                if let Some(Ok(env)) = GLOBAL.get() {
                    env.kill_now();
                }
            }
            // SAFETY: registers a plain extern "C" fn without captured state.
            unsafe { libc::atexit(at_exit) };
            Ok(env)
        });
        match env {
            Ok(env) => {
                env.check_alive();
                env
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts a new control plane in a fresh temporary directory and waits until it is ready.
    /// Blocks; may be called from inside or outside an async runtime.
    pub fn start() -> Result<TestEnv, String> {
        std::thread::Builder::new()
            .name("testenv-startup".into())
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(Self::boot()).map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())?
            .join()
            .unwrap_or_else(|_| Err("testenv startup thread panicked".into()))
    }

    async fn boot() -> Result<TestEnv> {
        let bin = bin_dir();
        for name in [ETCD, APISERVER, CONTROLLER_MANAGER] {
            if !bin.join(name).is_file() {
                return Err(format!(
                    "control-plane binaries missing: run `make control-plane` (no {})",
                    bin.join(name).display()
                )
                .into());
            }
        }
        let tempdir = tempfile::Builder::new().prefix("testenv-").tempdir()?;
        let dir = tempdir.path().to_owned();
        let [etcd_port, peer_port, api_port, kcm_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{api_port}");

        let ca = pki::Ca::new()?;
        let serving = ca.serving(&["127.0.0.1", "localhost"])?;
        let sa_key = rcgen::KeyPair::generate()?;
        let write = |name: &str, content: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, content)?;
            Ok(path)
        };
        let ca_file = write("ca.crt", &ca.cert)?;
        let cert_file = write("apiserver.crt", &serving.cert)?;
        let key_file = write("apiserver.key", &serving.key)?;
        let sa_private = write("sa.key", &sa_key.serialize_pem())?;
        let sa_public = write("sa.pub", &sa_key.public_key_pem())?;
        let kubeconfig = |user: &str, group: Option<&str>| -> Result<PathBuf> {
            let id = ca.client(user, group)?;
            write(
                &format!("{user}.kubeconfig"),
                &pki::kubeconfig(&server, &ca.cert, user, &id),
            )
        };
        let admin_kubeconfig = kubeconfig(ADMIN_USER, Some("system:masters"))?;
        let operator_kubeconfig = kubeconfig(OPERATOR_USER, None)?;

        let env = TestEnv {
            admin: Kubeconfig::read_from(&admin_kubeconfig)?,
            operator: Kubeconfig::read_from(&operator_kubeconfig)?,
            dir: dir.clone(),
            server,
            admin_kubeconfig,
            operator_kubeconfig,
            procs: Mutex::new(Vec::new()),
            tempdir: Mutex::new(Some(tempdir)),
            keep_dir: AtomicBool::new(false),
            apiserver_args: Mutex::new(Vec::new()),
            own_roles: Mutex::new(Vec::new()),
        };
        let path = |p: &Path| p.display().to_string();

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        env.launch(
            ETCD,
            vec![
                "--name=testenv".into(),
                format!("--data-dir={}", path(&dir.join("etcd"))),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testenv={peer_url}"),
                "--unsafe-no-fsync".into(),
            ],
        )?;
        env.wait_ready(ETCD, async || etcd_healthy(etcd_port).await)
            .await?;

        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", path(&dir.join("apiserver"))),
            format!("--tls-cert-file={}", path(&cert_file)),
            format!("--tls-private-key-file={}", path(&key_file)),
            format!("--client-ca-file={}", path(&ca_file)),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", path(&sa_public)),
            format!("--service-account-signing-key-file={}", path(&sa_private)),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            // No real network behind 127.0.0.1: don't maintain the `kubernetes` Endpoints.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
        ];
        *lock(&env.apiserver_args) = apiserver_args.clone();
        env.launch(APISERVER, apiserver_args)?;
        let admin = client_from(env.admin.clone()).await?;
        env.wait_ready(APISERVER, async || get(&admin, "/readyz").await)
            .await?;

        // Before the controller manager starts, so that its garbage collector watches the
        // custom resources from the beginning instead of after its next discovery resync.
        let crds = apply::apply_dir(&admin, &repo_root().join("crds")).await?;
        apply::wait_established(&admin, &crds).await?;
        let rbac = apply::apply_dir(&admin, &repo_root().join("deploy/rbac")).await?;
        apply::bind_to_operator(&admin, &rbac).await?;
        *lock(&env.own_roles) = rbac;

        let admin_kc = path(&env.admin_kubeconfig);
        env.launch(
            CONTROLLER_MANAGER,
            vec![
                format!("--kubeconfig={admin_kc}"),
                "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller"
                    .into(),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                format!("--cert-dir={}", path(&dir.join("kube-controller-manager"))),
            ],
        )?;
        let mut kcm = Config::new(format!("https://127.0.0.1:{kcm_port}").parse()?);
        kcm.accept_invalid_certs = true;
        let kcm = Client::try_from(kcm)?;
        env.wait_ready(CONTROLLER_MANAGER, async || get(&kcm, "/healthz").await)
            .await?;
        Ok(env)
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The temporary directory with certificates, kubeconfigs, etcd data and `<component>.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The PEM key (PKCS#8, ECDSA P-256) kube-apiserver signs ServiceAccount tokens with
    /// (`--service-account-signing-key-file`), for tests that forge one.
    pub fn service_account_signing_key_path(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    /// Kubeconfig of the admin identity (`system:masters`), certificates embedded.
    pub fn admin_kubeconfig_path(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// Kubeconfig of the operator identity (user `bootstrap-token-operator`, no groups).
    pub fn operator_kubeconfig_path(&self) -> &Path {
        &self.operator_kubeconfig
    }

    /// A new client as admin, bound to the calling runtime.
    pub async fn admin_client(&self) -> Client {
        self.check_alive();
        client_from(self.admin.clone())
            .await
            .expect("admin client from kubeconfig")
    }

    /// A new client as the operator, bound to the calling runtime.
    pub async fn operator_client(&self) -> Client {
        self.check_alive();
        client_from(self.operator.clone())
            .await
            .expect("operator client from kubeconfig")
    }

    /// An operator client that counts the writes (every request but GET) it sends, so tests can
    /// show that a reconcile of an unchanged object writes nothing — a no-op server-side apply
    /// leaves resourceVersion alone, so watching objects alone would not tell.
    pub async fn operator_client_counting_writes(&self) -> (Client, WriteCounter) {
        self.check_alive();
        let config =
            Config::from_custom_kubeconfig(self.operator.clone(), &KubeConfigOptions::default())
                .await
                .expect("operator config from kubeconfig");
        let counter = WriteCounter::default();
        let writes = counter.clone();
        let layer =
            tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
                let metadata_only = request
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|accept| accept.to_str().ok())
                    .is_some_and(|accept| accept.contains("as=PartialObjectMetadata"));
                writes
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(LoggedRequest {
                        method: request.method().clone(),
                        path: request.uri().path().to_string(),
                        metadata_only,
                    });
                request
            });
        let client = kube::client::ClientBuilder::try_from(config)
            .expect("client stack from config")
            .with_layer(&layer)
            .build();
        (client, counter)
    }

    /// Creates a fresh namespace named `<prefix>-<random>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> String {
        let mut prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        prefix = prefix.trim_matches('-').to_string();
        if prefix.is_empty() {
            prefix = "test".into();
        }
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                ..Default::default()
            },
            ..Default::default()
        };
        let admin = self.admin_client().await;
        let name = Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace")
            .metadata
            .name
            .expect("created namespace has a name");
        let roles = lock(&self.own_roles).clone();
        apply::grant_roles_in(&admin, &roles, &name)
            .await
            .expect("the operator's own-namespace Roles granted");
        name
    }

    /// Stops the components in reverse start order (SIGTERM, then SIGKILL after 10 s) and
    /// removes the temporary directory (kept if a component failed). Idempotent.
    pub fn stop(&self) {
        let procs = std::mem::take(&mut *lock(&self.procs));
        for mut proc in procs.into_iter().rev() {
            proc.stop(Duration::from_secs(10));
        }
        self.remove_dir(lock(&self.tempdir).take());
    }

    /// Teardown at process exit: no waiting, and never blocks on a lock.
    fn kill_now(&self) {
        if let Ok(mut procs) = self.procs.try_lock() {
            for proc in procs.iter_mut() {
                proc.stop(Duration::ZERO);
            }
        }
        if let Ok(mut tempdir) = self.tempdir.try_lock() {
            self.remove_dir(tempdir.take());
        }
    }

    fn remove_dir(&self, tempdir: Option<TempDir>) {
        if let Some(tempdir) = tempdir
            && self.keep_dir.load(Ordering::SeqCst)
        {
            let _ = tempdir.keep();
        }
    }

    /// Panics with the component's log if one of them has exited.
    /// Stops kube-apiserver and leaves etcd and its data alone: an API server outage, for fault
    /// tests. Use it on a private [`TestEnv::start`], never on the shared global one.
    pub fn stop_apiserver(&self) {
        let mut procs = lock(&self.procs);
        if let Some(i) = procs.iter().position(|p| p.name == APISERVER) {
            procs.remove(i).stop(Duration::from_secs(10));
        }
    }

    /// Starts kube-apiserver again with the same flags, port and etcd, and waits until it is ready.
    pub async fn start_apiserver(&self) {
        let args = lock(&self.apiserver_args).clone();
        self.launch(APISERVER, args)
            .expect("relaunching kube-apiserver");
        let admin = client_from(self.admin.clone()).await.expect("admin client");
        self.wait_ready(APISERVER, async || get(&admin, "/readyz").await)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn check_alive(&self) {
        let dead = lock(&self.procs)
            .iter_mut()
            .find_map(|p| p.exited().map(|status| (p.name, status)));
        if let Some((name, status)) = dead {
            panic!("{}", self.failure(name, &format!("exited ({status})")));
        }
    }

    fn launch(&self, name: &'static str, args: Vec<String>) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let proc = Proc::spawn(name, &bin_dir().join(name), &args, &[], &log)?;
        lock(&self.procs).push(proc);
        Ok(())
    }

    /// Polls `probe` until it succeeds, the component exits, or 60 s pass.
    async fn wait_ready(
        &self,
        name: &str,
        mut probe: impl AsyncFnMut() -> Result<()>,
    ) -> Result<()> {
        const TIMEOUT: Duration = Duration::from_secs(60);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let exited = lock(&self.procs)
                .iter_mut()
                .find(|p| p.name == name)
                .and_then(|p| p.exited());
            if let Some(status) = exited {
                return Err(self.failure(name, &format!("exited ({status})")).into());
            }
            let last_error = match tokio::time::timeout(Duration::from_secs(5), probe()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "probe timed out".to_string(),
            };
            if Instant::now() > deadline {
                let why = format!("not ready after {TIMEOUT:?} (last probe: {last_error})");
                return Err(self.failure(name, &why).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn failure(&self, name: &str, why: &str) -> String {
        self.keep_dir.store(true, Ordering::SeqCst);
        let log = self.dir.join(format!("{name}.log"));
        format!(
            "testenv: {name} {why}; last {LOG_TAIL_LINES} lines of {}:\n{}",
            log.display(),
            process::tail(&log, LOG_TAIL_LINES)
        )
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("server", &self.server)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn client_from(kubeconfig: Kubeconfig) -> Result<Client> {
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Distinct free loopback ports (all bound at once, then released).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

async fn get(client: &Client, path: &str) -> Result<()> {
    client
        .request_text(http::Request::get(path).body(Vec::new())?)
        .await?;
    Ok(())
}

async fn etcd_healthy(port: u16) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    if response.contains(r#""health":"true""#) {
        Ok(())
    } else {
        Err(format!("etcd /health: {}", response.lines().last().unwrap_or("")).into())
    }
}
