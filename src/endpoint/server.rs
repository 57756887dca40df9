//! Connections: the accept loop with its cap, TLS handshakes, the per-connection timeouts and
//! graceful shutdown (README "Security"). HTTP/1.1 through hyper's connection builder, each
//! request handed to the router with the peer's address as axum's `ConnectInfo`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use super::State;
use super::config::ConnectionsConfig;
use super::metrics::EndpointMetrics;

/// After the shutdown signal, connections still busy get this long to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves until `shutdown` completes, then lets requests in flight finish (for up to [`DRAIN`]).
pub async fn run(
    state: Arc<State>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = super::router(state.clone());
    let limits = state.config.connections.clone();
    let permits = Arc::new(Semaphore::new(limits.max));
    let graceful = GracefulShutdown::new();
    let watching = state.tls.clone().map(|tls| tokio::spawn(tls.watch()));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::debug!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Closed at once: a full server answers nothing rather than queueing.
            state.metrics.connections_refused.inc();
            tracing::debug!(%peer, max = limits.max, "connection limit reached; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = Open::new(permit, &state.metrics);
        let connection = Connection {
            app: app.clone(),
            peer,
            limits: limits.clone(),
            metrics: state.metrics.clone(),
            watcher: graceful.watcher(),
        };
        match state.tls.as_ref().map(|tls| tls.acceptor()) {
            None => tokio::spawn(async move {
                connection.serve(stream).await;
                drop(open);
            }),
            Some(acceptor) => tokio::spawn(async move {
                let handshake = acceptor.accept(stream);
                match tokio::time::timeout(limits.tls_handshake_timeout, handshake).await {
                    Ok(Ok(tls)) => connection.serve(tls).await,
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => {
                        connection.metrics.timeout("handshake");
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
                drop(open);
            }),
        };
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("connections still busy after the drain; closing them");
    }
    if let Some(watching) = watching {
        watching.abort();
    }
    Ok(())
}

/// One accepted connection: holds its permit and counts in the open-connections gauge.
struct Open {
    _permit: OwnedSemaphorePermit,
    metrics: EndpointMetrics,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, metrics: &EndpointMetrics) -> Open {
        metrics.open_connections.inc();
        Open {
            _permit: permit,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.open_connections.dec();
    }
}

struct Connection {
    app: Router,
    peer: SocketAddr,
    limits: ConnectionsConfig,
    metrics: EndpointMetrics,
    watcher: Watcher,
}

impl Connection {
    /// HTTP/1.1 over `io` until the peer closes, a timeout strikes or shutdown drains it.
    async fn serve<T>(self, io: T)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let (app, peer) = (self.app, self.peer);
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = Busy::start(requests.clone());
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await;
                drop(busy);
                response
            }
        });
        let io = TokioIo::new(Watched {
            inner: io,
            activity: activity.clone(),
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service);
        let connection = self.watcher.watch(connection);
        tokio::pin!(connection);
        // A phase can start between two looks, so look again at least this often.
        let step = self
            .limits
            .header_read_timeout
            .min(self.limits.idle_timeout);
        loop {
            let wake = activity
                .deadline(&self.limits)
                .map_or(Instant::now() + step, |(_, due)| {
                    due.min(Instant::now() + step)
                });
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(wake) => {
                    if let Some((phase, due)) = activity.deadline(&self.limits)
                        && due <= Instant::now()
                    {
                        self.metrics.timeout(phase.label());
                        tracing::debug!(%peer, phase = phase.label(), "closing a stalled connection");
                        return;
                    }
                }
            }
        }
    }
}

/// Where a connection is, for its timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request: just accepted, or its last answer handed over.
    Idle,
    /// Part of a request head has arrived.
    Head,
    /// A request is being served; the token handler bounds its body read itself.
    Busy,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Head => "header",
            Phase::Busy => "busy",
        }
    }
}

struct Activity {
    phase: Mutex<(Phase, Instant)>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: Mutex::new((Phase::Idle, Instant::now())),
        }
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = (phase, Instant::now());
    }

    /// Bytes arrived: an idle connection has started a request head.
    fn received(&self) {
        let mut current = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if current.0 == Phase::Idle {
            *current = (Phase::Head, Instant::now());
        }
    }

    /// The phase and when it runs out; none while a request is served.
    fn deadline(&self, limits: &ConnectionsConfig) -> Option<(Phase, Instant)> {
        let (phase, since) = *self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let allowed = match phase {
            Phase::Idle => limits.idle_timeout,
            Phase::Head => limits.header_read_timeout,
            Phase::Busy => return None,
        };
        Some((phase, since + allowed))
    }
}

/// A request in the router; idle again once its answer is handed to hyper.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Busy {
        activity.set(Phase::Busy);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(Phase::Idle);
    }
}

/// The connection's stream, noting when request bytes arrive.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.received();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
