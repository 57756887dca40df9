//! A real endpoint on 127.0.0.1:0, in its own runtime thread, and `curl` to talk to it.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, LazyLock, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bootstrap_token_operator::app;
use bootstrap_token_operator::config::Config;
use bootstrap_token_operator::endpoint::{self, EndpointMetrics, State};
use bootstrap_token_operator::token::store::KeyProvider;
use bootstrap_token_operator::token::{KeySet, LocalKey};
use prometheus_client::registry::Registry;
use serde_json::Value;

/// Seed 000's bootstrap client and its secret (sent as Basic base64 in the seed).
pub const BOOTSTRAP_ID: &str = "f7d42348-c647-4efb-a52d-4c5787421e00";
pub const SEED_SECRET: &str = "f6h1FTI8Q3-7UScPZDzfXA";
/// Seed 001's client (raw `id:secret` Basic header).
pub const SEED1_ID: &str = "f7d42348-c647-4efb-a52d-4c5787421e72";
pub const BOOTSTRAP_SCOPE: &str =
    "A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2";
pub const SEED3_AUDIENCE: &str = "https://api.bokbasen.io/metadata/";
pub const SEED4_ID: &str = "1DR3434KDFJLR32L53L4235J6";
pub const SEED4_SECRET: &str = "wqe34tyyh7679jokkDa$7df46bbbbjui+b7-sdfsdfY";

/// One client per seed. Hashes made with Python's hashlib, independently of the code under test;
/// seed 001's is light-oauth2's PBKDF2 format.
pub const SEED_CONFIG: &str = r#"
issuer: urn:com:networknt:oauth2:v1
audience: urn:com.networknt
bootstrap:
  clientId: f7d42348-c647-4efb-a52d-4c5787421e00
  scope: [A8E73740C0041C03D67C3A951AA1D7533C8F9F2FB57D7BA107210B9BC9E06DA2]
policy:
  - serviceIds: ["com.networknt.*"]
  - namespaces: [team-a]
    serviceIds: ["*"]
endpoint:
  extraTokenPaths: [/oauth/token, /auth/token, /oauth]
  clients:
    - clientId: f7d42348-c647-4efb-a52d-4c5787421e00
      clientSecret: {hash: "sha256:300b400b5caf15a3c6b85faf3d35f176d2a38fc4e037ee404385bc8c66a27936"}
      grantTypes: [bootstrap_token]
    - clientId: f7d42348-c647-4efb-a52d-4c5787421e72
      clientSecret: {hash: "1000:8f3c1a2b4d5e6f708192a3b4c5d6e7f8:21407c6428dfe391f50e708d8072697b7769e8f0b30b66eac5ca9f7bf46a4797db49b6af8ae20ca7a823ca3bb99028642d6a1754577c8fe975db6f887747ed55"}
      scopes: [petstore.r, petstore.w]
    - clientId: client3x3mPl3
      clientSecret: {hash: "sha256:9f12a945539675d411a2e4e181f4dbafb1a2e29d68af61a8a492dca99fe0dca2"}
      scopes: [openid, accountId, username, roles, permissions, status, entityUser]
    - clientId: YOUR-CLIENT-ID
      clientSecret: {hash: "sha256:890cd9604c6ea37a401e7cc354cf02dfeb44007f0e8a5956285121574c89dc5f"}
      audiences: ["https://api.bokbasen.io/metadata/"]
      tokenLifetime: 24h
    - clientId: 1DR3434KDFJLR32L53L4235J6
      clientSecret: {hash: "sha256:111a752fe947ae5dccf3ad9f6e0c331478c6f810c99fd71bb8bf7353a0285133"}
      scopes: [can-create-locations, can-delete-own-locations, can-update-own-locations, can-create-own-location-rules]
      tokenLifetime: 1h
"#;

/// Key generation takes a while; every server of this binary signs with the same keys, the
/// active `100` (seed header) and a rotated-out `99`.
pub static KEYS: LazyLock<KeySet> = LazyLock::new(|| {
    KeySet::new(
        LocalKey::generate("100").expect("RSA key generation"),
        vec![LocalKey::generate("99").expect("RSA key generation")],
    )
});

pub struct Server {
    pub url: String,
    /// `127.0.0.1:port`
    pub address: String,
    pub metrics: EndpointMetrics,
    registry: Arc<Registry>,
    logs: Logs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(config_yaml: &str) -> Server {
        Server::start_with(config_yaml, || KeyProvider::from_keys(KEYS.clone()))
    }

    /// `keys` is called on the server's runtime.
    pub fn start_with(
        config_yaml: &str,
        keys: impl FnOnce() -> KeyProvider + Send + 'static,
    ) -> Server {
        let config = Config::parse(config_yaml).expect("test config is valid");
        let tls = config.endpoint.tls.is_some();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let logs = Logs::default();
        let dispatch = logs.dispatch();
        let thread = std::thread::spawn(move || {
            // Every thread of the server's runtime, blocking ones too, logs into `logs`.
            let _logging = tracing::dispatcher::set_default(&dispatch);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .on_thread_start(move || {
                    std::mem::forget(tracing::dispatcher::set_default(&dispatch));
                })
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut registry = Registry::default();
                let metrics = EndpointMetrics::new(&mut registry);
                let issuer = Arc::new(app::issuer(&config, Arc::new(keys()), &mut registry));
                let state = State::new(issuer, config.endpoint, None, metrics.clone())
                    .await
                    .expect("endpoint state");
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let port = listener.local_addr().expect("local addr").port();
                ready_tx
                    .send((port, metrics, Arc::new(registry)))
                    .expect("test alive");
                endpoint::serve(Arc::new(state), listener, async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
            });
        });
        let (port, metrics, registry) = ready_rx.recv().expect("server started");
        let scheme = if tls { "https" } else { "http" };
        Server {
            url: format!("{scheme}://127.0.0.1:{port}"),
            address: format!("127.0.0.1:{port}"),
            metrics,
            registry,
            logs,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Everything the server logged so far, at every level.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.0.lock().unwrap()).into_owned()
    }

    /// Polls `condition` until it holds; panics naming `what` after `within`.
    pub fn wait_for(&self, what: &str, within: Duration, condition: impl Fn(&Server) -> bool) {
        let deadline = Instant::now() + within;
        while !condition(self) {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connections closed (or answered 408) because `phase` ran out, as `/metrics` shows it.
    pub fn connection_timeouts(&self, phase: &str) -> f64 {
        let sample = format!("token_endpoint_connection_timeouts_total{{phase=\"{phase}\"}} ");
        self.metrics_text()
            .lines()
            .find_map(|line| line.strip_prefix(&sample)?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The text exposition of this server's metrics.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encode metrics");
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
            && !std::thread::panicking()
        {
            panic!("the server thread panicked");
        }
    }
}

/// A log sink shared by the server's threads.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn dispatch(&self) -> tracing::Dispatch {
        let sink = self.clone();
        tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::TRACE)
                .with_writer(move || sink.clone())
                .finish(),
        )
    }
}

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) on a new connection and
/// reads the answer to its end.
pub fn exchange(address: &str, request: &str) -> Reply {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    parse_reply(&String::from_utf8_lossy(&answer))
}

/// A form POST to `/oauth2/token` for [`exchange`].
pub fn token_post(address: &str, credentials: &str, form: &str) -> String {
    format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nAuthorization: Basic {credentials}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The answer of a token request that must have succeeded, with its token's claims.
    pub fn token(&self) -> (Value, Value) {
        assert_eq!(self.status, 200, "{}", self.body);
        assert_eq!(self.header("cache-control"), Some("no-store"));
        assert_eq!(self.header("pragma"), Some("no-cache"));
        assert!(
            self.header("content-type")
                .unwrap_or("")
                .starts_with("application/json")
        );
        let json = self.json();
        let token = json["access_token"].as_str().expect("access_token");
        (json.clone(), claims(token))
    }
}

/// Runs the Python `script` with `args`, `stdin` on its standard input, and returns what it
/// printed; the script exits 3 when a package it imports is missing. Under CI the packages must
/// be there (.ci/run installs tests/requirements.txt); elsewhere a missing package skips loudly
/// (`None`).
pub fn python(script: &str, args: &[&str], stdin: &str) -> Option<String> {
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("writing to python3");
    let output = child.wait_with_output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) {
        let message = format!(
            "Python packages missing ({}): pip install -r tests/requirements.txt",
            stderr.trim()
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{message}");
        }
        eprintln!("\n!!!!!!!! SKIPPED {script}: {message} !!!!!!!!\n");
        return None;
    }
    assert!(output.status.success(), "{script}: {stdout}\n{stderr}");
    Some(stdout)
}

/// Runs curl with `args` (the command line of a seed, URL included) and reads the answer.
pub fn curl(args: &[&str]) -> Reply {
    let output = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_reply(&String::from_utf8_lossy(&output.stdout))
}

pub fn parse_reply(raw: &str) -> Reply {
    let mut rest = raw;
    loop {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {raw:?}"));
        if status == 100 {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        return Reply {
            status,
            headers,
            body: body.to_string(),
        };
    }
}

/// The claims of a compact JWT, decoded without verification (verification is tested apart).
pub fn claims(token: &str) -> Value {
    serde_json::from_str(&payload(token)).expect("payload is JSON")
}

/// The payload's JSON text, to check the order of the claims.
pub fn payload(token: &str) -> String {
    let part = token.split('.').nth(1).expect("three parts");
    String::from_utf8(URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("UTF-8")
}

pub fn header_b64(token: &str) -> &str {
    token.split('.').next().expect("header")
}

/// The object keys of a JSON text in the order written.
pub fn key_order(json_text: &str) -> Vec<String> {
    let map: serde_json::Map<String, Value> = serde_json::from_str(json_text).expect("object");
    map.keys().cloned().collect()
}
