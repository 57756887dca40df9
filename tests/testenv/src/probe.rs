//! Small probes of processes under test: a free loopback port, a plain HTTP GET, and reading a
//! Prometheus text exposition.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback address with a port that was free a moment ago, for a process to bind.
pub fn free_loopback_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// `GET path` over plain HTTP/1.1: (status, body), or None while nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A sample's value in a Prometheus/OpenMetrics text body, summed over its label sets; 0 for a
/// declared family without samples yet (a counter nobody incremented), None when the family is
/// not exposed at all.
pub fn metric(body: &str, sample: &str) -> Option<f64> {
    let family = sample.strip_suffix("_total").unwrap_or(sample);
    let declared = body
        .lines()
        .any(|line| line.starts_with(&format!("# TYPE {family} ")));
    let values: Vec<f64> = body
        .lines()
        .filter(|line| line.starts_with(sample) && line[sample.len()..].starts_with([' ', '{']))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (declared || !values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn reads_samples_and_declared_families() {
        let body = "# TYPE reconciles counter\n\
                    reconciles_total{result=\"success\"} 3\n\
                    reconciles_total{result=\"error\"} 1\n\
                    # TYPE idle counter\n\
                    leader 1\n\
                    leader_other 7\n";
        assert_eq!(metric(body, "reconciles_total"), Some(4.0));
        assert_eq!(metric(body, "idle_total"), Some(0.0));
        assert_eq!(metric(body, "leader"), Some(1.0));
        assert_eq!(metric(body, "missing"), None);
    }
}
