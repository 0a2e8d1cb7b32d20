//! Endpoints on loopback with real certificates: who is accepted, who is refused and counted.

use std::time::Duration;

use super::testing::{bind, identity, node, pki, serve};
use super::*;

/// Accepts peers on `server` and echoes one message on their control channel.
fn serve_echo(server: &Endpoint) -> tokio::task::JoinHandle<Vec<String>> {
    let server = server.clone();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(mut peer)) =
            tokio::time::timeout(Duration::from_secs(3), server.accept()).await
        {
            seen.push(peer.node().to_string());
            if let Ok(Some(msg)) = peer.control.recv::<String>().await {
                let _ = peer.control.send(&format!("echo {msg}")).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), peer.closed()).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_one_ca_talk_and_know_who_they_talk_to() {
    let p = pki();
    let a = node(&p, "a");
    let b = node(&p, "b");
    let server = serve_echo(&b);
    let mut peer = a.connect(b.local_addr().unwrap(), "b").await.unwrap();
    assert_eq!(peer.node(), "b");
    peer.control.send(&"ping".to_string()).await.unwrap();
    assert_eq!(
        peer.control.recv::<String>().await.unwrap().as_deref(),
        Some("echo ping")
    );
    assert!(peer.rtt() < Duration::from_secs(1));
    peer.close("done");
    assert_eq!(server.await.unwrap(), vec!["a".to_string()]);
    assert_eq!((a.stats().connected, b.stats().accepted), (1, 1));
    assert_eq!(a.stats().refused_out + b.stats().refused_in, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused_both_ways_and_counted() {
    let p = pki();
    let b = node(&p, "b");
    let server = serve_echo(&b);
    // A client whose certificate and trust come from another CA.
    let stranger = bind(identity(&p.other_ca, "a", &p.root.join("stranger")));
    let err = stranger
        .connect(b.local_addr().unwrap(), "b")
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Connect { .. }),
        "refused by the client's own check of the server: {err}"
    );
    assert_eq!(stranger.stats().refused_out, 1);
    // A client that trusts our CA but holds a certificate of another CA.
    let dir = p.root.join("mixed");
    let files = issue_node(&p.other_ca, "m", &dir).unwrap();
    let mut mixed = files.clone();
    mixed.ca = p.ca.join(CA_CERT);
    let client = bind(Identity::load_unchecked_for_tests("m", &mixed));
    let err = client
        .connect(b.local_addr().unwrap(), "b")
        .await
        .unwrap_err();
    eprintln!("client with a foreign certificate: {err}");
    let refused = tokio::time::timeout(Duration::from_secs(3), async {
        while b.stats().refused_in < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "server counted {:?}", b.stats());
    assert_eq!(b.stats().accepted, 0);
    assert!(server.await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_node_at_an_address_is_refused() {
    let p = pki();
    let a = node(&p, "a");
    let c = node(&p, "c");
    let _server = serve_echo(&c);
    // `a` dials "b" but "c" answers: the server's certificate does not name b.
    let err = a.connect(c.local_addr().unwrap(), "b").await.unwrap_err();
    assert!(err.to_string().contains("b"), "{err}");
    assert_eq!(a.stats().refused_out, 1);
    assert_eq!(a.stats().connected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_claiming_another_name_is_refused() {
    let p = pki();
    // `a`'s certificate, but it says hello as "b".
    let files = issue_node(&p.ca, "a", &p.root.join("a")).unwrap();
    let liar = bind(Identity::load_unchecked_for_tests("b", &files));
    let c = node(&p, "c");
    let server = serve_echo(&c);
    let err = liar
        .connect(c.local_addr().unwrap(), "c")
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Refused(_)), "{err}");
    // The server counts the refusal once its side of the handshake has ended.
    let counted = tokio::time::timeout(Duration::from_secs(3), async {
        while c.stats().refused_in == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "{:?}", c.stats());
    assert_eq!((c.stats().refused_in, c.stats().accepted), (1, 0));
    assert!(server.await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_data_on_parallel_streams_arrives_intact() {
    let p = pki();
    let a = node(&p, "a");
    let b = node(&p, "b");
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i / 4096 % 251) as u8).collect();
    let expected = data.clone();
    let receiver = tokio::spawn({
        let b = b.clone();
        async move {
            let peer = b.accept().await.unwrap();
            let mut parts = Vec::new();
            for _ in 0..4 {
                let mut ch = peer.accept().await.unwrap();
                parts.push(tokio::spawn(async move {
                    let index: u32 = ch.recv().await.unwrap().unwrap();
                    let mut out = Vec::new();
                    read_bulk(&mut ch.recv, &mut out, 2 << 20).await.unwrap();
                    (index, out)
                }));
            }
            let mut got = Vec::new();
            for part in parts {
                got.push(part.await.unwrap());
            }
            got.sort_by_key(|(i, _)| *i);
            got.into_iter().flat_map(|(_, d)| d).collect::<Vec<u8>>()
        }
    });
    let peer = a.connect(b.local_addr().unwrap(), "b").await.unwrap();
    let quarter = data.len() / 4;
    let mut senders = Vec::new();
    for i in 0..4u32 {
        let mut ch = peer.open().await.unwrap();
        let part = data[i as usize * quarter..(i as usize + 1) * quarter].to_vec();
        senders.push(tokio::spawn(async move {
            ch.send(&i).await.unwrap();
            let stats = write_bulk(&mut ch.send, &part, 256 << 10, Some(1))
                .await
                .unwrap();
            ch.finish().unwrap();
            stats
        }));
    }
    let mut wire = 0;
    for s in senders {
        wire += s.await.unwrap().wire_bytes;
    }
    let got = receiver.await.unwrap();
    assert!(got == expected, "data differs after transfer");
    assert!(
        wire < expected.len() as u64 / 10,
        "repetitive data compresses: {wire} wire bytes for {}",
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_to_a_peer_is_measured() {
    let p = pki();
    let a = node(&p, "a");
    let b = node(&p, "b");
    let services = Services::default();
    path::register(&services);
    let server = serve(&b, services);
    let m = measure(&a, b.local_addr().unwrap(), "b", 32 << 20)
        .await
        .unwrap();
    eprintln!("{m:?}");
    assert_eq!((m.node.as_str(), m.probe_bytes), ("b", 32 << 20));
    assert!(m.rtt_ms > 0.0 && m.rtt_ms < 500.0, "{m:?}");
    // Loopback moves far more than 10 MB/s even in a debug build on a busy machine.
    assert!(m.bandwidth_bytes_per_second > 10e6, "{m:?}");
    // Over the limit: refused before anything is sent.
    assert!(
        measure(&a, b.local_addr().unwrap(), "b", MAX_PROBE_BYTES + 1)
            .await
            .is_err()
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_is_refused_and_the_connection_lives_on() {
    let p = pki();
    let a = node(&p, "a");
    let b = node(&p, "b");
    let services = Services::default();
    path::register(&services);
    let _server = serve(&b, services);
    let peer = b_peer(&a, &b).await;
    let err = open(&peer, "no-such-service").await.unwrap_err();
    assert!(err.to_string().contains("no-such-service"), "{err}");
    // The same connection still serves a known one.
    assert!(open(&peer, path::SERVICE).await.is_ok());
}

async fn b_peer(a: &Endpoint, b: &Endpoint) -> Peer {
    a.connect(b.local_addr().unwrap(), "b").await.unwrap()
}

/// An operator's client endpoint, signed by the CA in `ca_dir`.
fn operator(ca_dir: &std::path::Path, name: &str, out: &std::path::Path) -> Endpoint {
    let files = issue_operator(ca_dir, name, out).unwrap();
    let id = Identity::load_operator(name, &files).unwrap();
    assert_eq!(id.principal(), &Principal::Operator(name.into()));
    Endpoint::client(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_opens_only_the_services_for_operators() {
    let p = pki();
    let b = node(&p, "b");
    let services = Services::default();
    path::register(&services);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    services.register_for_operators("control", move |peer, mut ch| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(peer.principal.clone());
            let _ = ch.send(&peer.principal.to_string()).await;
            let _ = ch.finish();
        }
    });
    let _server = serve(&b, services);
    let alice = operator(&p.ca, "alice", &p.root.join("ops"));
    let peer = alice.connect(b.local_addr().unwrap(), "b").await.unwrap();
    // A service of nodes only looks like no service at all.
    let err = open(&peer, path::SERVICE).await.unwrap_err();
    assert!(err.to_string().contains("no service"), "{err}");
    let mut ch = open(&peer, "control").await.unwrap();
    assert_eq!(
        ch.recv::<String>().await.unwrap().as_deref(),
        Some("operator alice")
    );
    assert_eq!(seen.recv().await, Some(Principal::Operator("alice".into())));
    // A node opens both.
    let a = node(&p, "a");
    let peer = b_peer(&a, &b).await;
    assert!(open(&peer, path::SERVICE).await.is_ok());
    let mut ch = open(&peer, "control").await.unwrap();
    assert_eq!(
        ch.recv::<String>().await.unwrap().as_deref(),
        Some("node a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_never_passes_for_a_node_nor_one_of_another_ca() {
    let p = pki();
    let c = node(&p, "c");
    let server = serve_echo(&c);
    // alice's operator certificate, saying hello as the node "alice".
    let files = issue_operator(&p.ca, "alice", &p.root.join("ops")).unwrap();
    let liar = bind(Identity::load_unchecked_for_tests("alice", &files));
    let err = liar
        .connect(c.local_addr().unwrap(), "c")
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Refused(_)), "{err}");
    // An operator of another CA (trusting ours) is refused by the TLS handshake.
    let files = issue_operator(&p.other_ca, "mallory", &p.root.join("other-ops")).unwrap();
    let mut mixed = files.clone();
    mixed.ca = p.ca.join(CA_CERT);
    assert!(
        Identity::load_operator("mallory", &mixed).is_err(),
        "not loadable against our CA"
    );
    let counted = tokio::time::timeout(Duration::from_secs(3), async {
        while c.stats().refused_in == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "{:?}", c.stats());
    assert_eq!(c.stats().accepted, 0);
    assert!(server.await.unwrap().is_empty());
}
