//! What the HTTP benchmarks share: the endpoint served in a runtime of its own, and wrk.

use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bootstrap_token_operator::endpoint::{self, EndpointConfig, EndpointMetrics, State};
use bootstrap_token_operator::token::Issuer;

/// How long each wrk phase runs.
pub const PHASE: Duration = Duration::from_secs(8);
/// wrk's connections in an unpaced phase.
pub const CONNECTIONS: u32 = 16;
/// base64("bench:bench-secret"): the benchmarks' client, whose secret is checked by SHA-256.
pub const AUTHORIZATION: &str = "Basic YmVuY2g6YmVuY2gtc2VjcmV0";

/// Exits with a hint when wrk is missing.
pub fn require_wrk() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is not installed: apt-get install -y wrk");
        std::process::exit(1);
    }
}

/// The endpoint on 127.0.0.1, served in a runtime with `cores` workers until the process ends.
/// `prepare` runs in that runtime first and returns the issuer to serve with (keys loaded) and
/// whatever else the caller needs from there.
pub fn serve<T, F, Fut>(
    config: EndpointConfig,
    cores: usize,
    prepare: F,
) -> (SocketAddr, T, std::thread::JoinHandle<()>)
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = (Arc<Issuer>, T)>,
{
    let (ready, started) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let (issuer, prepared) = prepare().await;
            let metrics = EndpointMetrics::new(&mut Default::default());
            let state = State::new(issuer, config, None, metrics)
                .await
                .expect("state");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            ready
                .send((listener.local_addr().expect("address"), prepared))
                .expect("bench alive");
            endpoint::serve(Arc::new(state), listener, std::future::pending())
                .await
                .expect("serve");
        });
    });
    let (address, prepared) = started.recv().expect("server started");
    (address, prepared, thread)
}

/// One wrk phase of [`PHASE`] with `connections` against `url`, driven by the Lua `script` (empty:
/// plain GETs), with latency percentiles when `latency`. Its output and its errors, checked for
/// success and for no answer but 2xx.
pub fn wrk(url: &str, script: &str, connections: u32, latency: bool) -> (String, String) {
    let path = std::env::temp_dir().join(format!("bto-bench-{}.lua", std::process::id()));
    std::fs::write(&path, script).expect("write wrk script");
    let mut command = Command::new("wrk");
    command.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{}s", PHASE.as_secs()),
    ]);
    if latency {
        command.arg("--latency");
    }
    let output = command
        .arg("-s")
        .arg(&path)
        .arg(url)
        .output()
        .expect("wrk runs");
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let errors = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "wrk failed: {text}{errors}");
    assert!(!text.contains("Non-2xx"), "requests failed:\n{text}");
    (text, errors)
}

/// What follows `prefix` on the line of wrk's output that starts with it.
pub fn field<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {prefix:?} in wrk output:\n{text}"))
}
