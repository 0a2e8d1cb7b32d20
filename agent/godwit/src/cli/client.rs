//! How the commands reach an agent's API: its Unix socket, where everything is served and
//! changes only to root and the members of the agent's group, or its TCP address, which serves
//! reads (another host's agent, or when the socket is closed to this user).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::exit;
use crate::config::{DEFAULT_API_GROUP, DEFAULT_API_PORT, DEFAULT_API_SOCKET};

/// Where a command that only reads finds the agent.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ReadFrom {
    /// Read from an agent's TCP API at this address instead of the local agent's socket.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// The local agent's API socket (`[api] socket`); when this user may not open it, the
    /// command reads from 127.0.0.1:9746 instead.
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    socket: PathBuf,
}

/// Where a command that changes something finds the agent: only its socket serves changes.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ActOn {
    /// The local agent's API socket (`[api] socket`). Changes are served only there, to root
    /// and the members of the agent's group (`[api] group`, godwit by default).
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    socket: PathBuf,
}

/// An agent's API.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// The Unix socket; reads fall back to `fallback` when it is missing or closed to this user.
    Socket {
        path: PathBuf,
        fallback: Option<SocketAddr>,
    },
    /// The TCP address: reads only.
    Tcp(SocketAddr),
}

impl ReadFrom {
    /// Where a change goes: the socket only, with no fallback (TCP serves reads only).
    pub(super) fn act_target(&self) -> Result<Target, String> {
        match self.addr {
            Some(addr) => Err(format!(
                "--addr {addr} serves reads only: changes go to the agent's socket (--socket)"
            )),
            None => Ok(Target::Socket {
                path: self.socket.clone(),
                fallback: None,
            }),
        }
    }

    pub(super) fn target(&self) -> Target {
        match self.addr {
            Some(addr) => Target::Tcp(addr),
            None => Target::Socket {
                path: self.socket.clone(),
                fallback: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT))),
            },
        }
    }
}

impl ActOn {
    pub(super) fn target(&self) -> Target {
        Target::Socket {
            path: self.socket.clone(),
            fallback: None,
        }
    }
}

/// An exit code and the message to print.
pub(super) type ClientError = (u8, String);

/// A connection made, and the name it goes by in messages and in the `Host` header.
enum Conn {
    Unix(tokio::net::UnixStream, PathBuf),
    Tcp(tokio::net::TcpStream, SocketAddr),
}

async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<Conn, ClientError> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(Conn::Tcp(s, addr)),
        Ok(Err(e)) => Err(no_agent_at(addr, &e.to_string())),
        Err(_) => Err(no_agent_at(addr, "timed out")),
    }
}

fn no_agent_at(addr: SocketAddr, why: &str) -> ClientError {
    (
        exit::UNAVAILABLE,
        format!("no agent answers at {addr} ({why}); is `godwit agent` running there?"),
    )
}

async fn connect(target: &Target, timeout: Duration) -> Result<Conn, ClientError> {
    let (path, fallback) = match target {
        Target::Tcp(addr) => return connect_tcp(*addr, timeout).await,
        Target::Socket { path, fallback } => (path, *fallback),
    };
    let e = match tokio::net::UnixStream::connect(path).await {
        Ok(s) => return Ok(Conn::Unix(s, path.clone())),
        Err(e) => e,
    };
    use std::io::ErrorKind;
    let closed = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied);
    if let (true, Some(addr)) = (closed, fallback) {
        return connect_tcp(addr, timeout).await.map_err(|(code, msg)| {
            (
                code,
                format!(
                    "cannot open the agent's socket {} ({e}), and {msg}",
                    path.display()
                ),
            )
        });
    }
    Err(match e.kind() {
        ErrorKind::PermissionDenied => (
            exit::NOPERM,
            format!(
                "permission denied on the agent's socket {}: run as root or a member of the \
                 {DEFAULT_API_GROUP} group (the agent's [api] group)",
                path.display()
            ),
        ),
        ErrorKind::NotFound => (
            exit::UNAVAILABLE,
            format!(
                "no agent socket at {}: is `godwit agent` running, with [api] socket at this \
                 path? (--socket PATH)",
                path.display()
            ),
        ),
        _ => (
            exit::UNAVAILABLE,
            format!(
                "no agent answers on {} ({e}); is `godwit agent` running?",
                path.display()
            ),
        ),
    })
}

/// Sends a bodiless request (GET, or POST for actions) and returns the JSON answer. A 403 is
/// [`exit::NOPERM`]; any other failure answer [`exit::UNAVAILABLE`].
pub(super) async fn request_json(
    target: &Target,
    method: hyper::Method,
    path: &str,
    timeout: Duration,
) -> Result<Value, ClientError> {
    match tokio::time::timeout(timeout, exchange(target, method, path, timeout)).await {
        Ok(result) => result,
        Err(_) => Err((
            exit::UNAVAILABLE,
            format!("the agent did not answer {path} within {timeout:?}"),
        )),
    }
}

async fn exchange(
    target: &Target,
    method: hyper::Method,
    path: &str,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let conn = connect(target, timeout).await?;
    let (host, name) = match &conn {
        Conn::Unix(_, p) => ("localhost".to_string(), p.display().to_string()),
        Conn::Tcp(_, a) => (a.to_string(), a.to_string()),
    };
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, &host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| (exit::USAGE, format!("bad request {path}: {e}")))?;
    let broken = |e: hyper::Error| {
        (
            exit::UNAVAILABLE,
            format!("the agent at {name} broke off ({e})"),
        )
    };
    let (mut sender, connection) = match conn {
        Conn::Unix(s, _) => handshake(s).await,
        Conn::Tcp(s, _) => handshake(s).await,
    }
    .map_err(broken)?;
    let driver = tokio::spawn(connection);
    let resp = sender.send_request(request).await.map_err(broken)?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(broken)?.to_bytes();
    drop(sender);
    driver.abort();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        let why = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string());
        let code = if status == hyper::StatusCode::FORBIDDEN {
            exit::NOPERM
        } else {
            exit::UNAVAILABLE
        };
        return Err((code, format!("agent at {name} answered {status}: {why}")));
    }
    serde_json::from_slice(&body).map_err(|e| (exit::FAILURE, format!("bad JSON from {name}: {e}")))
}

type Handshake = (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), hyper::Error>> + Send>>,
);

async fn handshake<S>(stream: S) -> Result<Handshake, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    Ok((sender, Box::pin(connection)))
}
