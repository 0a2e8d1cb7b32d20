//! The TCP server: one task per connection over a [`Store`] behind a mutex.
//!
//! Writes are serialised by the mutex, which is what the state file's crash consistency needs
//! (one writer, at most one torn write). A reply is sent only after the request's effect is in
//! the mapping. On shutdown the server stops accepting, lets every connection finish the request
//! it is handling, and waits at most [`DRAIN_TIMEOUT`] for them.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::protocol::{self, Reply, Request, MAX_LINE};
use crate::store::Store;

/// How long shutdown waits for connections to finish their request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`serve`] did, for the shutdown log line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Served {
    /// Connections accepted.
    pub connections: u64,
    /// Requests answered.
    pub requests: u64,
    /// Connections still open at shutdown, after the drain.
    pub aborted: usize,
}

/// Serves `listener` until `shutdown` completes, then drains the connections.
pub async fn serve(
    listener: TcpListener,
    store: Arc<Mutex<Store>>,
    shutdown: impl Future<Output = ()>,
) -> Served {
    let (stop_tx, stop_rx) = watch::channel(false);
    let requests = Arc::new(AtomicU64::new(0));
    let mut connections = JoinSet::new();
    let mut served = Served::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    served.connections += 1;
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(
                        stream,
                        Arc::clone(&store),
                        stop_rx.clone(),
                        Arc::clone(&requests),
                    ));
                }
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    eprintln!("kvstore: accept failed error=\"{e}\"");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        served.aborted = connections.len();
        connections.shutdown().await;
    }
    served.requests = requests.load(Ordering::Relaxed);
    served
}

enum Line {
    Complete,
    TooLong,
    Eof,
}

/// Reads one line of at most [`MAX_LINE`] bytes (plus `\r\n`) into `buf`, without the `\n`.
/// A longer line is consumed up to its newline and reported as [`Line::TooLong`].
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Line> {
    let limit = MAX_LINE + 2;
    let n = (&mut *r).take(limit as u64).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Complete);
    }
    if n < limit {
        // The peer closed after a last line without a newline.
        return Ok(Line::Complete);
    }
    let mut sink = Vec::new();
    loop {
        sink.clear();
        let n = (&mut *r).take(4096).read_until(b'\n', &mut sink).await?;
        if n == 0 || sink.last() == Some(&b'\n') {
            return Ok(Line::TooLong);
        }
    }
}

async fn connection(
    stream: TcpStream,
    store: Arc<Mutex<Store>>,
    mut stop: watch::Receiver<bool>,
    requests: Arc<AtomicU64>,
) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::with_capacity(MAX_LINE + 2);
    let mut out = Vec::with_capacity(MAX_LINE);
    loop {
        line.clear();
        // A request not yet read in full when shutdown starts is dropped unanswered; one that
        // has been read is answered below, outside the select.
        let read = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => break,
            read = read_line(&mut reader, &mut line) => read,
        };
        let reply = match read {
            Ok(Line::Complete) => handle(&store, &line),
            Ok(Line::TooLong) => Reply::Err(protocol::ProtocolError::LineTooLong.to_string()),
            Ok(Line::Eof) | Err(_) => break,
        };
        out.clear();
        reply.encode(&mut out);
        if writer.write_all(&out).await.is_err() {
            break;
        }
        requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers one request line.
pub fn handle(store: &Mutex<Store>, line: &[u8]) -> Reply {
    let request = match protocol::parse(line) {
        Ok(request) => request,
        Err(e) => return Reply::Err(e.to_string()),
    };
    if request == Request::Ping {
        return Reply::Pong;
    }
    let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
    match request {
        Request::Set { key, value } => match store.set(key, value) {
            Ok(seq) => Reply::Ok { seq },
            Err(e) => Reply::Err(e.to_string()),
        },
        Request::Get { key } => store
            .get(key)
            .map_or(Reply::Nil, |value| Reply::Val(value.to_vec())),
        Request::Stats => {
            let stats = store.stats();
            Reply::Stats {
                keys: stats.keys,
                seq: stats.seq,
                bytes: stats.bytes,
            }
        }
        Request::Ping => Reply::Pong,
    }
}
