//! The agent-to-agent transport between real agents in network namespaces: mutual TLS under a
//! cluster CA, path measurement, and refusal of a node whose certificate comes from another CA.
//! Needs root; one test at a time (`cargo xtask test`).

use std::path::PathBuf;
use std::time::Duration;

use godwit::image::ImageStore;
use godwit::transport::{init_ca, issue_node};
use godwit_tests::cluster::Cluster;
use godwit_tests::{promtool_check, require_root, wait_for};
use serde_json::Value;

const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// n1 and n2 hold certificates of the cluster CA, n3 one of another CA, n4 none.
fn cluster(ca: PathBuf, other_ca: PathBuf) -> Cluster {
    Cluster::builder(4)
        .extra_toml(move |n| {
            let tls = n.dir.join("tls");
            match n.index {
                1 | 2 => {
                    issue_node(&ca, n.name, &tls).expect("issue a node certificate");
                }
                3 => {
                    issue_node(&other_ca, n.name, &tls).expect("issue a foreign certificate");
                }
                _ => {}
            }
            format!(
                "[probe]\nmode = \"procfs\"\ninterval_ms = 250\n\
                 [gossip]\nlisten = \"{a}:9747\"\nseeds = [\"{s}:9747\"]\nkeys = [\"{KEY}\"]\n\
                 interval_ms = 100\n\
                 [transport]\nlisten = \"{a}:9748\"\ntls_dir = \"{}\"\n",
                tls.display(),
                a = n.addr,
                s = n.all_addrs[0],
            )
        })
        .start()
}

fn post(c: &Cluster, i: usize, path: &str) -> (u16, Value) {
    let (code, body) = c
        .act_within(i, "POST", path, None, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("POST {path} to n{i}: {e}"));
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn agents_measure_paths_over_mutual_tls_and_refuse_another_ca() {
    require_root();
    let pki = tempfile_dir();
    let (ca, other) = (pki.join("ca"), pki.join("other-ca"));
    init_ca(&ca, "test").unwrap();
    init_ca(&other, "test").unwrap();
    let c = cluster(ca, other);
    wait_for_addresses(&c);

    // n1 -> n2: both of the cluster CA.
    let (code, m) = post(&c, 1, "/v1/transport/probe/n2?bytes=8388608");
    assert_eq!(code, 200, "{m}\n{}", c.log(1));
    let rtt = m["rtt_ms"].as_f64().unwrap();
    let bw = m["bandwidth_bytes_per_second"].as_f64().unwrap();
    assert!(rtt > 0.0 && rtt < 100.0, "rtt {rtt} ms");
    assert!(bw > 1e6, "throughput {bw} B/s over a veth pair");
    eprintln!("n1 -> n2: rtt {rtt:.3} ms, {:.1} MB/s", bw / 1e6);
    assert_eq!(c.json(2, "/v1/transport")["stats"]["accepted"], 1);
    // The CLI shows the same measurement.
    let out = std::process::Command::new(godwit_tests::godwit_bin())
        .args(["path", "n2", "--bytes", "1048576", "--socket"])
        .arg(c.socket(1))
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && line.contains("n2 at") && line.contains("MB/s"),
        "{line}"
    );

    // n1 -> n3: n3's certificate is of another CA; n1 refuses it, and n3 refuses n1.
    let (code, body) = post(&c, 1, "/v1/transport/probe/n3?bytes=0");
    assert_eq!(code, 502, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("n3"),
        "{body}"
    );
    assert!(c.json(1, "/v1/transport")["stats"]["refused_out"].as_u64() >= Some(1));
    wait_for(Duration::from_secs(5), || {
        (c.json(3, "/v1/transport")["stats"]["refused_in"].as_u64() >= Some(1)).then_some(())
    })
    .unwrap_or_else(|| panic!("n3 counted no refusal: {}", c.json(3, "/v1/transport")));
    assert_eq!(c.json(3, "/v1/transport")["stats"]["accepted"], 0);

    // n4 has no certificate: its transport is off, said once, and it publishes no address.
    assert_eq!(c.get(4, "/v1/transport").unwrap().0, 404);
    assert_eq!(
        c.log(4).matches("no certificate for this node").count(),
        1,
        "{}",
        c.log(4)
    );
    let (code, body) = post(&c, 1, "/v1/transport/probe/n4?bytes=0");
    assert_eq!(code, 404, "{body}");

    // The figures reach Prometheus.
    let (_, metrics) = c.get(1, "/metrics").unwrap();
    promtool_check(&metrics);
    assert!(
        metrics.contains("godwit_transport_path_rtt_seconds{peer=\"n2\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("godwit_transport_connections_total{outcome=\"refused_out\"}"));
    std::fs::remove_dir_all(&pki).ok();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(godwit_tests::unique("godwit-pki"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until n1 sees every summary with the transport addresses (n4: none).
fn wait_for_addresses(c: &Cluster) {
    // n1 sees the others' summaries (and the transport addresses in them).
    wait_for(Duration::from_secs(10), || {
        let doc = c.json(1, "/v1/nodes");
        let quic = |name: &str| {
            doc["members"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["id"]["node_id"] == name)
                .map(|m| m["summary"]["addresses"]["quic"].clone())
        };
        (quic("n2").is_some_and(|q| q.is_string())
            && quic("n3").is_some_and(|q| q.is_string())
            && quic("n4").is_some_and(|q| q.is_null()))
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "summaries with transport addresses: {}",
            c.json(1, "/v1/nodes")
        )
    });
}

/// A tree with a 3 MiB program file in it.
fn write_tree(dir: &std::path::Path, seed: u64) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let mut x = seed | 1;
    let data: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("bin/app"), data).unwrap();
    std::fs::write(dir.join("app.conf"), b"listen = 7379\n").unwrap();
}

#[test]
fn an_image_is_pushed_and_a_new_version_moves_only_its_changed_chunks() {
    require_root();
    let pki = tempfile_dir();
    let (ca, other) = (pki.join("ca"), pki.join("other-ca"));
    init_ca(&ca, "test").unwrap();
    init_ca(&other, "test").unwrap();
    let c = cluster(ca, other);
    wait_for_addresses(&c);
    let src = pki.join("app");
    write_tree(&src, 7);
    // Imported with the CLI into n1's store (its data directory).
    let out = std::process::Command::new(godwit_tests::godwit_bin())
        .args(["image", "import"])
        .arg(&src)
        .arg("--config")
        .arg(&c.node(1).config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v1 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(v1.len(), 64, "image id: {v1}");

    let (code, first) = post(&c, 1, &format!("/v1/images/{v1}/push?to=n2"));
    assert_eq!(code, 200, "{first}\n{}", c.log(1));
    let total = first["chunks_total"].as_u64().unwrap();
    assert!(total >= 12, "3 MiB in chunks of at most 256 KiB: {first}");
    assert_eq!(first["chunks_sent"].as_u64(), Some(total), "{first}");
    // n2 lists it and holds exactly the same tree.
    let listed = c.json(2, "/v1/images");
    assert!(listed["images"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == v1.as_str()));
    let n2_store = ImageStore::open(&c.node(2).dir.join("data/images")).unwrap();
    let copy = pki.join("copy1");
    n2_store
        .export(&godwit::image::Digest::parse(&v1).unwrap(), &copy)
        .unwrap();
    assert_eq!(
        std::fs::read(copy.join("bin/app")).unwrap(),
        std::fs::read(src.join("bin/app")).unwrap()
    );

    // Version 2: 4 KiB changed in the middle of the program.
    let mut app = std::fs::read(src.join("bin/app")).unwrap();
    for b in &mut app[3 << 19..(3 << 19) + 4096] {
        *b ^= 0x5a;
    }
    std::fs::write(src.join("bin/app"), &app).unwrap();
    let n1_store = ImageStore::open(&c.node(1).dir.join("data/images")).unwrap();
    let (v2, _) = n1_store.import_dir(&src).unwrap();
    let (code, second) = post(&c, 1, &format!("/v1/images/{v2}/push?to=n2"));
    assert_eq!(code, 200, "{second}");
    let sent = second["chunks_sent"].as_u64().unwrap();
    assert!(
        (1..=3).contains(&sent),
        "a 4 KiB edit should move 1 to 3 chunks, moved {sent} of {}",
        second["chunks_total"]
    );
    eprintln!(
        "v1: {total} chunks pushed; v2: {sent} chunks ({} bytes) pushed",
        second["bytes_sent"]
    );
    let copy = pki.join("copy2");
    n2_store.export(&v2, &copy).unwrap();
    assert_eq!(std::fs::read(copy.join("bin/app")).unwrap(), app);

    // n3 holds a certificate of another CA: nothing is pushed there.
    let (code, body) = post(&c, 1, &format!("/v1/images/{v1}/push?to=n3"));
    assert_eq!(code, 502, "{body}");
    let n3_store = ImageStore::open(&c.node(3).dir.join("data/images")).unwrap();
    assert!(n3_store.list().is_empty());
    std::fs::remove_dir_all(&pki).ok();
}
