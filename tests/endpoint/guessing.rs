//! Online guessing (RFC 6749 §2.3.1): failures are throttled per client and source address with
//! 429 + Retry-After, the legitimate client keeps working from elsewhere, and slow PBKDF2
//! checks never hold up the async workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

const GUESS: &str = "ZQXguessed-secret";

fn seed1_from(server: &Server, interface: &str, secret: &str) -> Reply {
    curl(&[
        "--interface",
        interface,
        "-u",
        &format!("{SEED1_ID}:{secret}"),
        "-d",
        "grant_type=client_credentials",
        &format!("{}/oauth2/token", server.url),
    ])
}

#[test]
fn guessing_is_throttled_per_client_and_source() {
    let server = Server::start(&format!(
        "{SEED_CONFIG}  throttle: {{burst: 3, interval: 1h}}\n"
    ));
    for attempt in 0..8 {
        let reply = seed1_from(&server, "127.0.0.1", GUESS);
        let json = reply.json();
        if attempt < 3 {
            assert_eq!(reply.status, 401, "attempt {attempt}: {}", reply.body);
            assert_eq!(json["code"], "ERR12007");
            continue;
        }
        assert_eq!(reply.status, 429, "attempt {attempt}: {}", reply.body);
        let retry_after: u64 = reply
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("Retry-After in seconds");
        assert!((3500..=3600).contains(&retry_after), "{retry_after}");
        assert_eq!(json["error"], "slow_down");
        assert_eq!(json["code"], "ERR12909");
        assert_eq!(json["statusCode"], 429);
        assert_eq!(json["error_description"], json["description"]);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
    }
    // The guesses past the burst cost no hash at all.
    assert_eq!(server.metrics.secret_hashes.get(), 3);
    assert_eq!(server.metrics.throttled.get(), 5);
    assert!(
        server
            .metrics_text()
            .contains("token_endpoint_throttled_total 5"),
        "{}",
        server.metrics_text()
    );

    // Throttled is throttled, whatever the secret, for this client from this source...
    assert_eq!(seed1_from(&server, "127.0.0.1", SEED_SECRET).status, 429);
    // ...but the client still gets its token from another source,
    seed1_from(&server, "127.0.0.2", SEED_SECRET).token();
    // and other clients from this source are not affected.
    curl(&[
        "--interface",
        "127.0.0.1",
        "-d",
        "grant_type=client_credentials&client_id=client3x3mPl3&client_secret=s3cr3Tp%40ass",
        &format!("{}/oauth2/token", server.url),
    ])
    .token();

    let logs = server.logs();
    let warned = |needle: &str| {
        logs.lines().any(|line| {
            line.contains(" WARN ")
                && line.contains(needle)
                && line.contains(SEED1_ID)
                && line.contains("peer=127.0.0.1")
        })
    };
    assert!(warned("wrong client secret"), "{logs}");
    assert!(warned("throttling"), "{logs}");
    assert!(
        !logs.contains(GUESS) && !logs.contains(SEED_SECRET),
        "{logs}"
    );
}

/// Parallel guesses do not race past the throttle: they queue for the hash, and each looks at
/// the throttle again before hashing, so a source never costs more hashes than its burst.
#[test]
fn parallel_guesses_cost_at_most_the_burst() {
    let server = Server::start(&format!(
        "{SEED_CONFIG}  throttle: {{burst: 2, interval: 1h}}\n"
    ));
    let guess = token_post(
        &server.address,
        &format!("{SEED1_ID}:{GUESS}"),
        "grant_type=client_credentials",
    );
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| exchange(&server.address, &guess).status))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&s| s == 401).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(server.metrics.secret_hashes.get(), 2);
}

/// A client whose PBKDF2 hash takes a good fraction of a second, verified by hashlib:
/// `pbkdf2_hmac("sha1", b"slow-client-secret", bytes.fromhex(salt), 1000000, 16)`.
const SLOW_CLIENT: &str = r#"    - clientId: slow-client
      clientSecret: {hash: "1000000:5a51584d41524b45525f73616c745f31:558820ce0e128241e2cb21d42c89078f"}
"#;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Wrong guesses from many sources (the throttle off, as if each came from elsewhere) keep the
/// hashing busy; requests of another client do not wait for it.
#[test]
fn slow_hashes_stay_off_the_workers() {
    let server = Server::start(&format!(
        "{SEED_CONFIG}{SLOW_CLIENT}  throttle: {{enabled: false}}\n"
    ));
    let address = server.address.clone();
    let guess = token_post(
        &address,
        "slow-client:wrong",
        "grant_type=client_credentials",
    );
    let unrelated = token_post(
        &address,
        "client3x3mPl3:s3cr3Tp@ass",
        "grant_type=client_credentials",
    );
    let timed = |request: &str| {
        let started = Instant::now();
        let reply = exchange(&address, request);
        (reply, started.elapsed())
    };
    let (reply, hash_time) = timed(&guess);
    assert_eq!(reply.status, 401, "{}", reply.body);
    let baseline = median(
        (0..15)
            .map(|_| {
                let (reply, took) = timed(&unrelated);
                assert_eq!(reply.status, 200, "{}", reply.body);
                took
            })
            .collect(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let guessers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, address, guess) = (stop.clone(), address.clone(), guess.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    assert_eq!(exchange(&address, &guess).status, 401);
                }
            })
        })
        .collect();
    server.wait_for("guessing under way", Duration::from_secs(20), |s| {
        s.metrics.secret_hashes.get() >= 3
    });
    let during: Vec<Duration> = (0..15)
        .map(|_| {
            let (reply, took) = timed(&unrelated);
            assert_eq!(reply.status, 200, "{}", reply.body);
            took
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    for guesser in guessers {
        guesser.join().unwrap();
    }
    let during = median(during);
    eprintln!(
        "unrelated requests: median {during:?} under guessing, {baseline:?} before; one hash {hash_time:?}"
    );
    // Hashing on the workers makes an unrelated request wait about half a hash or more.
    assert!(
        during < baseline + hash_time / 4,
        "unrelated requests: median {during:?} under guessing, {baseline:?} before; one hash takes {hash_time:?}"
    );
}

/// Issue 12: guessing buys no CPU amplification. A wrong secret costs one slow hash, what a right
/// one costs the first time, however long it is; a right one, once verified, costs none (it is
/// compared by digest); an unknown client costs none.
#[test]
fn a_wrong_secret_never_costs_more_hashing_than_a_right_one() {
    let server = Server::start(&format!(
        "{SEED_CONFIG}{SLOW_CLIENT}  throttle: {{enabled: false}}\n"
    ));
    let request = |credentials: &str| {
        let reply = exchange(
            &server.address,
            &token_post(
                &server.address,
                credentials,
                "grant_type=client_credentials",
            ),
        );
        (reply.status, server.metrics.secret_hashes.get())
    };
    let (status, hashes) = request("slow-client:slow-client-secret");
    assert_ne!(status, 401, "the right secret authenticates");
    assert_eq!(hashes, 1, "the right secret is hashed once");
    for _ in 0..3 {
        assert_eq!(request("slow-client:slow-client-secret"), (status, 1));
    }
    let long = format!("slow-client:{}", "w".repeat(4096));
    for (i, wrong) in ["slow-client:wrong", long.as_str(), "slow-client:wrong"]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            request(wrong),
            (401, 2 + i as u64),
            "one hash per wrong secret"
        );
    }
    assert_eq!(
        request("nobody:wrong"),
        (401, 4),
        "an unknown client is not hashed"
    );
}
