//! local-kms, a KMS that speaks the AWS KMS API, as a child process on a free loopback port with
//! its own data directory: for the tests and benchmarks of signing with a key that never leaves a
//! KMS. Each [`LocalKms`] is its own server, so a test may stop and restart it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{Proc, tail};
use crate::{Result, free_loopback_addr, repo_root};

const NAME: &str = "local-kms";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the local-kms binary is: `$TESTENV_LOCAL_KMS`, else `<repo>/bin/local-kms/local-kms`
/// (`make kms`).
pub fn local_kms_binary() -> PathBuf {
    std::env::var_os("TESTENV_LOCAL_KMS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("bin/local-kms/local-kms"))
}

pub struct LocalKms {
    addr: SocketAddr,
    dir: TempDir,
    proc: Mutex<Option<Proc>>,
}

impl LocalKms {
    /// The region and account the server puts in its key ARNs.
    pub const REGION: &str = "eu-west-2";
    pub const ACCOUNT_ID: &str = "111122223333";

    /// Starts a server with an empty data directory and waits until it accepts connections.
    pub async fn start() -> Result<LocalKms, String> {
        let binary = local_kms_binary();
        if !binary.is_file() {
            return Err(format!(
                "local-kms missing: run `make kms` (no {})",
                binary.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("local-kms-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let kms = LocalKms {
            addr: free_loopback_addr(),
            dir,
            proc: Mutex::new(None),
        };
        kms.launch().await?;
        Ok(kms)
    }

    /// `http://127.0.0.1:<port>`, the same across restarts.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the server at once, as a crash or a network cut would.
    pub fn stop(&self) {
        if let Some(mut proc) = self.lock().take() {
            proc.stop(Duration::ZERO);
        }
    }

    /// Starts the server again on the same port with the same data: the same keys.
    pub async fn restart(&self) -> Result<(), String> {
        self.stop();
        self.launch().await
    }

    async fn launch(&self) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("local-kms.log");
        let env = [
            ("PORT", self.addr.port().to_string()),
            ("KMS_DATA_PATH", data.display().to_string()),
            ("KMS_REGION", Self::REGION.to_string()),
            ("KMS_ACCOUNT_ID", Self::ACCOUNT_ID.to_string()),
            // No seeding: the tests create their keys through the API.
            (
                "KMS_SEED_PATH",
                self.dir.path().join("no-seed.yaml").display().to_string(),
            ),
        ];
        let proc =
            Proc::spawn(NAME, &local_kms_binary(), &[], &env, &log).map_err(|e| e.to_string())?;
        *self.lock() = Some(proc);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.lock().as_mut().and_then(Proc::exited) {
                return Err(format!("local-kms exited ({status}):\n{}", tail(&log, 20)));
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "local-kms did not listen on {} within {START_TIMEOUT:?}:\n{}",
                    self.addr,
                    tail(&log, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Proc>> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LocalKms {
    fn drop(&mut self) {
        self.stop();
    }
}
