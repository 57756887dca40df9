//! Runs the test control plane locally.
//!
//! ```text
//! local-cluster                 # until Ctrl-C / SIGTERM
//! local-cluster -- CMD ARGS...  # runs CMD with KUBECONFIG (admin) and OPERATOR_KUBECONFIG set,
//!                               # then stops the control plane and exits with CMD's status
//! ```
//!
//! The admin kubeconfig is copied to `<repo>/.local/kubeconfig` (the operator's to
//! `<repo>/.local/operator.kubeconfig`).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use testenv::{TestEnv, repo_root};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let mut command: Vec<OsString> = std::env::args_os().skip(1).collect();
    if command.first().is_some_and(|a| a == "--") {
        command.remove(0);
    }

    let started = std::time::Instant::now();
    let env = match TestEnv::start() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("control plane started in {:.1?}", started.elapsed());
    let code = match run(&env, command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("local-cluster: {e}");
            ExitCode::FAILURE
        }
    };
    eprintln!("stopping control plane");
    let stopping = std::time::Instant::now();
    env.stop();
    eprintln!("stopped in {:.1?}", stopping.elapsed());
    code
}

fn run(env: &TestEnv, command: Vec<OsString>) -> std::io::Result<ExitCode> {
    let local = repo_root().join(".local");
    std::fs::create_dir_all(&local)?;
    let kubeconfig = local.join("kubeconfig");
    let operator_kubeconfig = local.join("operator.kubeconfig");
    copy_private(env.admin_kubeconfig_path(), &kubeconfig)?;
    copy_private(env.operator_kubeconfig_path(), &operator_kubeconfig)?;
    println!(
        "control plane ready; export KUBECONFIG={}",
        kubeconfig.display()
    );
    eprintln!(
        "api server {}, logs in {}",
        env.server(),
        env.dir().display()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let Some((program, args)) = command.split_first() else {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return Ok(ExitCode::SUCCESS);
        };
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("OPERATOR_KUBECONFIG", &operator_kubeconfig)
            .spawn()?;
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                let code = status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    128 + status.signal().unwrap_or(0)
                });
                Ok(ExitCode::from(code.clamp(0, 255) as u8))
            }
            _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) on our own child, not yet reaped.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                }
                if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                    child.kill().await?;
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Copies a kubeconfig (it holds a private key) readable by the owner only.
fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let content = std::fs::read(from)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    std::io::Write::write_all(&mut file, &content)
}
