//! Token endpoint throughput under wrk on loopback, against the raw RS256 signing rate of the
//! same key on the same cores.
//!
//! Phases (each at most 8 s): raw signing on every core; uncached `client_credentials` (re-use
//! off, so every request signs) — goal ≥ 0.9× raw signing; re-use on — goal ≥ 20× raw signing;
//! uncached at half the measured peak — its p99 latency; for scale, a route with no work
//! (GET of the cached JWKS); and the endpoint signing with a key in a KMS (local-kms on the same
//! cores, through the AWS SDK) against the same endpoint signing locally, uncached and with re-use,
//! as ratios. CPU per token: this process's own CPU time (`/proc/self/stat`; the server runs
//! in-process, wrk is another process) over the requests served, against the CPU time of one
//! signature with the same key and crate, measured in the same run. Needs `wrk` (Debian package `wrk`) and, for the KMS rows, `make kms` (skipped, and
//! said so, without it). Run with `cargo bench --bench endpoint`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bootstrap_token_operator::app;
use bootstrap_token_operator::config::Config;
use bootstrap_token_operator::token::store::KeyProvider;
use bootstrap_token_operator::token::{KeySet, LocalKey};

// The tests' local-kms helper; the benchmark uses only part of it.
#[allow(dead_code)]
#[path = "../tests/common/kms.rs"]
mod local_kms;

mod common;
use common::{AUTHORIZATION, CONNECTIONS};

const PACED_CONNECTIONS: u32 = 64;
/// sha256 of "bench-secret": a cheap check, so signing is what is measured.
const CONFIG: &str = r#"
endpoint:
  clients:
    - clientId: bench
      clientSecret: {hash: "sha256:0159438a9235d6abde38e49fb98944660d067d6b9b03d8a8f4ee4e522feb62cb"}
      scopes: [bench.read, bench.write]
"#;

struct Wrk {
    requests_per_second: f64,
    requests: f64,
    /// This process's CPU seconds during the phase: the server's.
    cpu_seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() {
    common::require_wrk();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let keys = KeySet::new(
        LocalKey::generate("100").expect("RSA key generation"),
        vec![],
    );
    check_secret_hash();

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    let (raw_before, cpu_before) = raw_signing_rate(&keys, cores);

    let uncached_config = format!("{CONFIG}  reuse: {{enabled: false}}\n");
    let uncached_server = start(
        &uncached_config,
        KeyProvider::from_keys(keys.clone()),
        cores,
    );
    let uncached = wrk(&uncached_server.0, true, None);
    println!(
        "uncached client_credentials: {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
        uncached.requests_per_second, uncached.p50_ms, uncached.p99_ms
    );

    // Signing measured on both sides of the uncached phase: this machine's speed drifts.
    let (raw_after, cpu_after) = raw_signing_rate(&keys, cores);
    let raw = (raw_before + raw_after) / 2.0;
    let signature_ms = (cpu_before + cpu_after) / 2.0 * 1000.0;
    println!(
        "raw RS256 signing, {cores} threads: {raw:.0} signatures/s (before {raw_before:.0}, after {raw_after:.0}); CPU per signature {signature_ms:.3} ms (before {:.3}, after {:.3})",
        cpu_before * 1000.0,
        cpu_after * 1000.0
    );

    let cached_server = start(CONFIG, KeyProvider::from_keys(keys.clone()), cores);
    let cached = wrk(&cached_server.0, true, None);
    println!(
        "re-use on: {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
        cached.requests_per_second, cached.p50_ms, cached.p99_ms
    );

    // What HTTP alone costs here: a route with no work (the cached JWKS), same server and wrk.
    let ceiling = wrk(
        &cached_server.0.replace("/oauth2/token", "/oauth2/keys"),
        false,
        None,
    );
    println!(
        "HTTP ceiling (GET /oauth2/keys): {:.0} req/s",
        ceiling.requests_per_second
    );

    let half = uncached.requests_per_second / 2.0;
    let paced = wrk(
        &uncached_server.0,
        true,
        Some((half, cores as f64 * 1000.0 / raw)),
    );
    println!(
        "uncached at half of peak (target {half:.0} req/s, achieved {:.0}): p50 {:.2} ms, p99 {:.2} ms",
        paced.requests_per_second, paced.p50_ms, paced.p99_ms
    );

    let uncached_ratio = uncached.requests_per_second / raw;
    let cached_ratio = cached.requests_per_second / raw;
    println!();
    // Throughput ratios for reference; wrk shares the cores, so the CPU ratios below are the goals.
    println!("uncached / raw signing, throughput: {uncached_ratio:.2}x");
    println!("re-use on / raw signing, throughput: {cached_ratio:.1}x");
    println!(
        "re-use on / HTTP ceiling: {:.2}x (wrk shares the cores)",
        cached.requests_per_second / ceiling.requests_per_second
    );
    println!(
        "p99 at half of peak: {:.2} ms (goal < 5 ms) {}",
        paced.p99_ms,
        verdict(paced.p99_ms < 5.0)
    );
    let per_token = |w: &Wrk| w.cpu_seconds / w.requests * 1000.0;
    let uncached_cpu = per_token(&uncached) / signature_ms;
    let cached_cpu = per_token(&cached) / signature_ms;
    println!(
        "server CPU per uncached token: {:.3} ms = {uncached_cpu:.3}x a signature (goal <= 1.05x) {}",
        per_token(&uncached),
        verdict(uncached_cpu <= 1.05)
    );
    println!(
        "server CPU per re-used token: {:.4} ms = 1/{:.1} of a signature (goal <= 1/40) {}",
        per_token(&cached),
        1.0 / cached_cpu,
        verdict(cached_cpu <= 1.0 / 40.0)
    );
    // The floor under both goals: what one HTTP request with no work costs this server.
    let floor = per_token(&ceiling);
    println!(
        "server CPU per JWKS GET (HTTP alone): {floor:.4} ms = 1/{:.1} of a signature; re-used token / JWKS GET: {:.2}x; uncached token beyond its signature: {:.4} ms = {:.2}x a JWKS GET",
        signature_ms / floor,
        per_token(&cached) / floor,
        per_token(&uncached) - signature_ms,
        (per_token(&uncached) - signature_ms) / floor
    );

    kms_phases(&uncached_config, &uncached, &cached, cores);
}

/// The same two token phases with the key in local-kms: every uncached token is one KMS `Sign`
/// call (HTTP, SigV4, JSON, and the KMS's own RSA on these same cores).
fn kms_phases(uncached_config: &str, local_uncached: &Wrk, local_cached: &Wrk, cores: usize) {
    println!();
    if !testenv::local_kms_binary().is_file() {
        println!(
            "KMS signing: SKIPPED, local-kms is not built (run `make kms`; no {})",
            testenv::local_kms_binary().display()
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (kms, key_id) = runtime.block_on(async {
        let kms = local_kms::Kms::start().await;
        let key_id = kms.create_signing_key().await;
        (kms, key_id)
    });
    let uncached_server = start(
        uncached_config,
        KeyProvider::from_kms(kms.source("100", &key_id)),
        cores,
    );
    let uncached = wrk(&uncached_server.0, true, None);
    println!(
        "KMS signing, uncached client_credentials: {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
        uncached.requests_per_second, uncached.p50_ms, uncached.p99_ms
    );
    let cached_server = start(
        CONFIG,
        KeyProvider::from_kms(kms.source("100", &key_id)),
        cores,
    );
    let cached = wrk(&cached_server.0, true, None);
    println!(
        "KMS signing, re-use on: {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
        cached.requests_per_second, cached.p50_ms, cached.p99_ms
    );
    println!(
        "KMS / local signing, uncached: {:.3}x",
        uncached.requests_per_second / local_uncached.requests_per_second
    );
    println!(
        "KMS / local signing, re-use on: {:.2}x",
        cached.requests_per_second / local_cached.requests_per_second
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT MET" }
}

/// Guards the constant above against a typo that would turn every request into a 401.
fn check_secret_hash() {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"bench-secret");
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert!(CONFIG.contains(&hex), "CONFIG must hold sha256:{hex}");
}

/// This process's CPU time so far (user + system, every thread), in seconds.
fn cpu_seconds() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        let out = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("CLK_TCK")
    });
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let field = |n: usize| fields[n - 3].parse::<f64>().expect("a tick count");
    (field(14) + field(15)) / ticks
}

/// Signatures per second with one signing thread per core, the claims the endpoint signs, and
/// the CPU seconds one signature takes.
fn raw_signing_rate(keys: &KeySet, threads: usize) -> (f64, f64) {
    let issuer = app::issuer(
        &Config::default(),
        Arc::new(KeyProvider::from_keys(keys.clone())),
        &mut Default::default(),
    );
    let claims = issuer.bootstrap_claims("bench", Duration::from_secs(600), 1_700_000_000);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let cpu = cpu_seconds();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (stop, count, claims) = (stop.clone(), count.clone(), claims.clone());
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // The same JWS assembly and signer the endpoint uses.
                    std::hint::black_box(futures::executor::block_on(keys.active().sign(&claims)))
                        .expect("signing");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
    });
    let signatures = count.load(Ordering::Relaxed) as f64;
    (
        signatures / started.elapsed().as_secs_f64(),
        (cpu_seconds() - cpu) / signatures,
    )
}

/// The endpoint on 127.0.0.1 in a runtime with one worker per core, its keys loaded before it
/// listens; runs until the process ends.
fn start(config: &str, keys: KeyProvider, cores: usize) -> (String, std::thread::JoinHandle<()>) {
    let config = Config::parse(config).expect("bench config");
    let (address, (), thread) = common::serve(config.endpoint.clone(), cores, || async move {
        let issuer = Arc::new(app::issuer(
            &config,
            Arc::new(keys),
            &mut Default::default(),
        ));
        issuer.keys().await.expect("the signing keys load");
        (issuer, ())
    });
    (format!("http://{address}/oauth2/token"), thread)
}

/// Runs wrk for one phase: token requests or plain GETs; `pace` (requests/s, service time in
/// ms) gives every connection a fixed delay between its requests, less the serving time.
fn wrk(url: &str, token_request: bool, pace: Option<(f64, f64)>) -> Wrk {
    let mut script = String::new();
    if token_request {
        script.push_str(&format!(
            "wrk.method = \"POST\"\nwrk.body = \"grant_type=client_credentials\"\n\
             wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
             wrk.headers[\"Authorization\"] = \"{AUTHORIZATION}\"\n"
        ));
    }
    let connections = if pace.is_some() {
        PACED_CONNECTIONS
    } else {
        CONNECTIONS
    };
    if let Some((rate, service_ms)) = pace {
        // wrk delays in whole milliseconds; many connections keep the rounding error small.
        let delay_ms = (f64::from(connections) * 1000.0 / rate - service_ms)
            .round()
            .max(1.0);
        script.push_str(&format!("function delay() return {delay_ms} end\n"));
    }
    let cpu = cpu_seconds();
    let (text, _) = common::wrk(url, &script, connections, true);
    let cpu_seconds = cpu_seconds() - cpu;
    let field = |prefix: &str| common::field(&text, prefix);
    let requests = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"));
    Wrk {
        requests_per_second: field("Requests/sec:").parse().expect("a number"),
        requests,
        cpu_seconds,
        p50_ms: millis(field("50%")),
        p99_ms: millis(field("99%")),
    }
}

/// wrk prints latencies as `812.00us`, `1.23ms` or `1.01s`.
fn millis(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().expect("a latency");
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        other => panic!("unknown latency unit {other:?}"),
    }
}
