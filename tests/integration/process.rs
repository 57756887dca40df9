//! The operator binary as a separate process, for the tests that kill, stop and race replicas.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use testenv::{TestEnv, free_loopback_addr, http_get};

use crate::support::admin;

pub struct OperatorProcess {
    pub identity: String,
    pub admin_addr: SocketAddr,
    pub log: PathBuf,
    child: Child,
}

impl OperatorProcess {
    /// Starts `bootstrap-token-operator run` as the restricted identity, watching `namespace`
    /// and keeping its key and Lease there.
    pub fn spawn(namespace: &str, identity: &str) -> OperatorProcess {
        Self::spawn_as(
            TestEnv::global().operator_kubeconfig_path(),
            namespace,
            namespace,
            identity,
            &[],
        )
    }

    /// Starts the operator with `kubeconfig`'s identity, its key and Lease in `own_namespace`,
    /// watching `watched`.
    pub fn spawn_as(
        kubeconfig: &std::path::Path,
        own_namespace: &str,
        watched: &str,
        identity: &str,
        extra_args: &[&str],
    ) -> OperatorProcess {
        Self::spawn_with_env(
            kubeconfig,
            own_namespace,
            watched,
            identity,
            extra_args,
            &[],
        )
    }

    /// [`OperatorProcess::spawn_as`] with `extra_env` added to the process's environment.
    pub fn spawn_with_env(
        kubeconfig: &std::path::Path,
        own_namespace: &str,
        watched: &str,
        identity: &str,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> OperatorProcess {
        let env = TestEnv::global();
        let admin_addr = free_loopback_addr();
        let log = env.dir().join(format!("operator-{watched}-{identity}.log"));
        let log_file = std::fs::File::create(&log).expect("operator log file");
        let child = Command::new(env!("CARGO_BIN_EXE_bootstrap-token-operator"))
            .args([
                "run",
                "--namespace",
                own_namespace,
                "--watch-namespaces",
                watched,
            ])
            .args([
                "--identity",
                identity,
                "--admin-addr",
                &admin_addr.to_string(),
            ])
            // Tests and benchmarks run several operators at once: no fixed endpoint port,
            // unless the test chose one.
            .args(
                (!extra_args.contains(&"--endpoint-addr"))
                    .then_some(["--endpoint-addr", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("BTO_CONFIG")
            .envs(extra_env.iter().copied())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .stdin(Stdio::null())
            .spawn()
            .expect("the operator binary starts");
        OperatorProcess {
            identity: identity.to_string(),
            admin_addr,
            log,
            child,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub fn terminate(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the operator") {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                self.kill();
                panic!(
                    "operator {} did not exit within {limit:?}; log:\n{}",
                    self.identity,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running (it never exited, not even to be restarted).
    pub fn running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("waiting for the operator")
            .is_none()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// GET on the admin port: (status, body), or None while it does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin_addr, path).await
    }

    /// A sample from the operator's `/metrics` (see [`testenv::metric`]).
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        testenv::metric(&self.get("/metrics").await?.1, sample)
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The identity holding the operator's Lease in `namespace`, if any.
pub async fn lease_holder(namespace: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(admin().await, namespace);
    leases
        .get_opt(bootstrap_token_operator::leader::LEASE_NAME)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|holder| !holder.is_empty())
}

/// An operator process with its token endpoint on a free loopback port.
pub struct Replica {
    pub process: OperatorProcess,
    pub endpoint: SocketAddr,
}

/// `yaml` written as the operator configuration of the replicas of `namespace`; its path.
pub fn config_file(namespace: &str, yaml: &str) -> std::path::PathBuf {
    let path = TestEnv::global()
        .dir()
        .join(format!("{namespace}-config.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A replica of the operator watching `namespace`, leading under `identity`, configured by `config`.
pub fn spawn_replica(namespace: &str, identity: &str, config: &std::path::Path) -> Replica {
    spawn_replica_in(TestEnv::global(), namespace, identity, config)
}

/// [`spawn_replica`] on the control plane `env` (a private one, for fault tests).
pub fn spawn_replica_in(
    env: &TestEnv,
    namespace: &str,
    identity: &str,
    config: &std::path::Path,
) -> Replica {
    let endpoint = free_loopback_addr();
    let process = OperatorProcess::spawn_as(
        env.operator_kubeconfig_path(),
        namespace,
        namespace,
        identity,
        &[
            "--config",
            config.to_str().unwrap(),
            "--endpoint-addr",
            &endpoint.to_string(),
        ],
    );
    Replica { process, endpoint }
}

pub async fn wait_ready_replica(replica: &Replica) {
    crate::support::eventually(&format!("{} /readyz", replica.process.identity), || async {
        (replica.process.get("/readyz").await?.0 == 200).then_some(())
    })
    .await;
}
