//! Connection limits and timeouts under a flood of stalled connections on 127.0.0.1: peers that
//! send nothing, part of a head, or a short body against a long `Content-Length` are closed by
//! the server in time, connections past the cap are closed on arrival, and a legitimate client
//! is served meanwhile.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Each stalled connection costs this process two descriptors (client and server side).
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a properly initialised struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(65_536);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// Runs the test `name` again alone in a child process, so the process's RSS is that test's
/// own; true in the parent (whose work is then done), false in the child.
fn run_isolated(name: &str) -> bool {
    const CHILD: &str = "ENDPOINT_TEST_ISOLATED";
    if std::env::var_os(CHILD).is_some() {
        return false;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .status()
        .expect("run the test binary again");
    assert!(status.success(), "{name} failed in its own process");
    true
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// Reads until the server closes; what it sent, or `None` if it is still open at `deadline`.
pub async fn until_closed(
    mut stream: impl AsyncRead + Unpin,
    deadline: tokio::time::Instant,
) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub const PARTIAL_HEAD: &str = "POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty";
const SHORT_BODY: &str = "POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\ngrant_type=client_cre";

const PER_KIND: usize = 500;

#[test]
fn stalled_connections_are_closed_and_others_served() {
    if run_isolated("limits::stalled_connections_are_closed_and_others_served") {
        return;
    }
    raise_open_files_limit();
    let server = Server::start(&format!(
        "{SEED_CONFIG}  connections: {{max: 2000, headerReadTimeout: 5s, bodyTimeout: 5s, idleTimeout: 5s}}\n"
    ));
    let rt = runtime();
    let legit = token_post(
        &server.address,
        "client3x3mPl3:s3cr3Tp@ass",
        "grant_type=client_credentials",
    );
    let opened = Instant::now();
    let mut streams = Vec::new();
    rt.block_on(async {
        for i in 0..3 * PER_KIND {
            let mut stream = TcpStream::connect(&server.address).await.expect("connect");
            match i % 3 {
                0 => {}
                1 => stream.write_all(PARTIAL_HEAD.as_bytes()).await.unwrap(),
                _ => stream.write_all(SHORT_BODY.as_bytes()).await.unwrap(),
            }
            streams.push(stream);
        }
    });
    server.wait_for("the flood is open", Duration::from_secs(10), |s| {
        s.metrics.open_connections.get() >= i64::try_from(3 * PER_KIND).unwrap()
    });
    let rss = rss_mib();
    eprintln!(
        "RSS {rss:.1} MiB with {} stalled connections open",
        3 * PER_KIND
    );
    assert!(rss < 96.0, "RSS {rss:.1} MiB with the flood open");

    // A legitimate client is served while the flood is held.
    let mut took: Vec<Duration> = (0..20)
        .map(|_| {
            let started = Instant::now();
            let reply = exchange(&server.address, &legit);
            assert_eq!(reply.status, 200, "{}", reply.body);
            started.elapsed()
        })
        .collect();
    took.sort();
    eprintln!(
        "legitimate requests during the flood: median {:?}, max {:?}",
        took[10], took[19]
    );
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "the flood and the legitimate requests took too long for this test to mean anything"
    );
    assert!(
        took[19] < Duration::from_secs(1),
        "legitimate requests during the flood: {took:?}"
    );

    // Every stalled connection is closed by the server, well within 30 s.
    let deadline = tokio::time::Instant::from_std(opened + Duration::from_secs(30));
    let answers = rt.block_on(async {
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|stream| tokio::spawn(until_closed(stream, deadline)))
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    });
    let closed_within = opened.elapsed();
    for (i, answer) in answers.iter().enumerate() {
        let answer = answer
            .as_deref()
            .unwrap_or_else(|| panic!("connection {i} still open after 30 s"));
        match i % 3 {
            // A short body is answered 408 before the close.
            2 => assert!(answer.starts_with("HTTP/1.1 408"), "{answer}"),
            _ => assert_eq!(answer, "", "connection {i}"),
        }
    }
    assert!(closed_within < Duration::from_secs(30));
    for phase in ["idle", "header", "body"] {
        let count = server.connection_timeouts(phase);
        assert!(count >= PER_KIND as f64, "{phase}: {count} timeouts");
    }
    server.wait_for("all connections closed", Duration::from_secs(10), |s| {
        s.metrics.open_connections.get() == 0
    });
}

#[test]
fn connections_past_the_cap_are_closed_on_arrival() {
    raise_open_files_limit();
    let server = Server::start(&format!(
        "{SEED_CONFIG}  connections: {{max: 50, idleTimeout: 5s}}\n"
    ));
    let rt = runtime();
    rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..50 {
            held.push(TcpStream::connect(&server.address).await.unwrap());
        }
        let started = Instant::now();
        server.wait_for("the cap is reached", Duration::from_secs(10), |s| {
            s.metrics.open_connections.get() == 50
        });
        let extra = TcpStream::connect(&server.address).await.unwrap();
        let closed =
            until_closed(extra, tokio::time::Instant::now() + Duration::from_secs(2)).await;
        assert_eq!(
            closed.as_deref(),
            Some(""),
            "the 51st connection is closed at once"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "before any idle timeout could have freed a place"
        );
        assert_eq!(server.metrics.connections_refused.get(), 1);
        // Once the held connections time out, new ones are served again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for stream in held {
            assert!(until_closed(stream, deadline).await.is_some());
        }
    });
    server.wait_for("the places are free", Duration::from_secs(10), |s| {
        s.metrics.open_connections.get() == 0
    });
    assert_eq!(curl(&[&format!("{}/oauth2/keys", server.url)]).status, 200);
}

/// An idle keep-alive connection is closed after `idleTimeout`, not held for the header timeout
/// or longer; one that is used in time stays open.
#[test]
fn idle_and_header_timeouts_are_apart() {
    let server = Server::start(&format!(
        "{SEED_CONFIG}  connections: {{headerReadTimeout: 2s, idleTimeout: 30s}}\n"
    ));
    let rt = runtime();
    rt.block_on(async {
        // Idle for longer than the header timeout, then a whole request: served.
        let mut idle = TcpStream::connect(&server.address).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        idle.write_all(b"GET /oauth2/keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(idle, tokio::time::Instant::now() + Duration::from_secs(10))
            .await
            .expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // A head that starts but does not finish: closed after the header timeout.
        let mut partial = TcpStream::connect(&server.address).await.unwrap();
        partial.write_all(PARTIAL_HEAD.as_bytes()).await.unwrap();
        let started = Instant::now();
        let closed = until_closed(
            partial,
            tokio::time::Instant::now() + Duration::from_secs(15),
        )
        .await;
        assert_eq!(closed.as_deref(), Some(""));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
            "{took:?}"
        );
    });
}
