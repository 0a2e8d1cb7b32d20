//! The image store on real files, and pushes between endpoints on loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use super::push::{push_with, register};
use super::*;
use godwit_core::predict::testdata::noise;
use godwit_transport::testing::{node, pki, serve};
use godwit_transport::Services;

/// A small program tree: a 4 MiB binary, a config, a link, an empty directory.
fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("var/empty")).unwrap();
    std::fs::write(dir.join("bin/server"), noise(4 << 20, 1)).unwrap();
    std::fs::set_permissions(
        dir.join("bin/server"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(dir.join("server.conf"), b"port = 7379\n").unwrap();
    std::os::unix::fs::symlink("bin/server", dir.join("run")).unwrap();
}

/// Every path of a tree with its type, mode and content hash (or link target).
fn listing(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &p, out);
                format!("dir {mode:o}")
            } else {
                format!("file {mode:o} {}", ImageStore::file_digest(&p).unwrap())
            };
            out.push((rel, what));
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn an_exported_image_carries_no_setuid_setgid_sticky_or_world_writable_mode() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(&src.join("bin/server"), 0o4755).unwrap();
    mode(&src.join("server.conf"), 0o2666).unwrap();
    mode(&src.join("var/empty"), 0o1777).unwrap();
    let store = ImageStore::open(&t.path().join("store")).unwrap();
    let (id, _) = store.import_dir(&src).unwrap();
    let out = t.path().join("out");
    store.export(&id, &out).unwrap();
    let got = |rel: &str| {
        std::fs::metadata(out.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(got("bin/server"), 0o755);
    assert_eq!(got("server.conf"), 0o664);
    assert_eq!(got("var/empty"), 0o775);
}

#[test]
fn import_export_round_trip_and_dedup() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let store = ImageStore::open(&t.path().join("store")).unwrap();
    let (id, first) = store.import_dir(&src).unwrap();
    assert_eq!(first.files, 2);
    assert!(
        first.chunks >= 4 << 20 >> 18,
        "4 MiB cut into chunks of at most 256 KiB"
    );
    assert_eq!(
        first.new_chunks, first.chunks,
        "random data: no chunk repeats"
    );
    let out = t.path().join("out");
    store.export(&id, &out).unwrap();
    assert_eq!(listing(&src), listing(&out));
    // The same tree again: the same id, nothing new.
    let (again, second) = store.import_dir(&src).unwrap();
    assert_eq!((again, second.new_chunks), (id.clone(), 0));
    // Exporting over an existing directory is refused.
    assert!(matches!(
        store.export(&id, &out),
        Err(ImageError::Exists(_))
    ));
    assert_eq!(store.list(), vec![id]);
}

#[test]
fn an_edit_in_the_middle_of_a_file_adds_only_the_chunks_around_it() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let store = ImageStore::open(&t.path().join("store")).unwrap();
    let (v1, s1) = store.import_dir(&src).unwrap();
    let mut bin = std::fs::read(src.join("bin/server")).unwrap();
    bin[2 << 20..(2 << 20) + 1024].copy_from_slice(&noise(1024, 99));
    std::fs::write(src.join("bin/server"), &bin).unwrap();
    let (v2, s2) = store.import_dir(&src).unwrap();
    assert_ne!(v1, v2);
    assert!(
        (1..=3).contains(&s2.new_chunks),
        "a 1 KiB edit changed {} of {} chunks",
        s2.new_chunks,
        s1.chunks
    );
}

#[test]
fn a_corrupt_chunk_is_never_read_as_data() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let store = ImageStore::open(&t.path().join("store")).unwrap();
    let (id, _) = store.import_dir(&src).unwrap();
    let victim = store
        .manifest(&id)
        .unwrap()
        .chunks()
        .next()
        .unwrap()
        .digest
        .clone();
    let path = t
        .path()
        .join("store/chunks")
        .join(&victim.as_str()[..2])
        .join(victim.as_str());
    let mut data = std::fs::read(&path).unwrap();
    data[100] ^= 1;
    std::fs::write(&path, data).unwrap();
    let err = store.export(&id, &t.path().join("out")).unwrap_err();
    assert!(matches!(err, ImageError::CorruptChunk { .. }), "{err}");
    assert!(
        !t.path().join("out").exists(),
        "nothing half-written is left"
    );
    // And a chunk whose bytes do not match its name is not stored.
    assert!(store.put_chunk(&victim, b"something else").is_err());
}

#[test]
fn manifests_that_could_escape_or_lie_are_refused() {
    let file = |path: &str| Entry {
        path: path.into(),
        mode: 0o644,
        kind: EntryKind::File {
            size: 0,
            chunks: vec![],
        },
    };
    let link = |path: &str| Entry {
        path: path.into(),
        mode: 0o777,
        kind: EntryKind::Symlink {
            target: "/etc".into(),
        },
    };
    let m = |entries: Vec<Entry>| Manifest { format: 1, entries };
    assert!(m(vec![file("a"), file("b/c")]).validate().is_ok());
    for (bad, why) in [
        (m(vec![file("../etc/passwd")]), "parent"),
        (m(vec![file("/etc/passwd")]), "absolute"),
        (m(vec![file("a//b")]), "empty component"),
        (m(vec![file("b"), file("a")]), "unsorted"),
        (m(vec![file("a"), file("a")]), "repeated"),
        (m(vec![link("l"), file("l/passwd")]), "below a link"),
        (m(vec![file("f"), file("f/x")]), "below a file"),
        (
            m(vec![Entry {
                path: "x".into(),
                mode: 0o644,
                kind: EntryKind::File {
                    size: 10,
                    chunks: vec![],
                },
            }]),
            "size",
        ),
        (
            Manifest {
                format: 9,
                entries: vec![],
            },
            "format",
        ),
    ] {
        assert!(bad.validate().is_err(), "{why} accepted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_moves_only_missing_chunks_and_resends_corrupt_ones() {
    let p = pki();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let here = ImageStore::open(&t.path().join("a")).unwrap();
    let there = Arc::new(ImageStore::open(&t.path().join("b")).unwrap());
    let (a, b) = (node(&p, "a"), node(&p, "b"));
    let services = Services::default();
    register(&services, there.clone());
    let _server = serve(&b, services);
    let peer = a.connect(b.local_addr().unwrap(), "b").await.unwrap();

    // v1: everything moves; the first chunk is corrupted on the wire once and sent again.
    let (v1, s1) = here.import_dir(&src).unwrap();
    let mut corrupted = None;
    let stats = push_with(&peer, &here, &v1, |d, data| {
        if corrupted.is_none() {
            corrupted = Some(d.clone());
            data[0] ^= 0xff;
        }
    })
    .await
    .unwrap();
    assert_eq!(stats.chunks_total, s1.chunks);
    assert_eq!(stats.resent, 1, "{stats:?}");
    assert_eq!(stats.chunks_sent, s1.chunks + 1);
    assert_eq!(stats.rounds, 2);
    assert!(there.has_image(&v1));
    there.export(&v1, &t.path().join("out1")).unwrap();
    assert_eq!(listing(&src), listing(&t.path().join("out1")));

    // Again: nothing moves.
    let again = push(&peer, &here, &v1).await.unwrap();
    assert_eq!((again.chunks_sent, again.rounds), (0, 0));

    // v2, one edit: only the chunks around it move.
    let mut bin = std::fs::read(src.join("bin/server")).unwrap();
    bin[1 << 20] ^= 0x55;
    std::fs::write(src.join("bin/server"), &bin).unwrap();
    let (v2, s2) = here.import_dir(&src).unwrap();
    let stats = push(&peer, &here, &v2).await.unwrap();
    assert_eq!(stats.chunks_sent, s2.new_chunks, "{stats:?}");
    assert!(stats.chunks_sent <= 3, "{stats:?}");
    assert!(stats.bytes_sent <= 3 * u64::from(MAX_CHUNK));
    there.export(&v2, &t.path().join("out2")).unwrap();
    assert_eq!(listing(&src), listing(&t.path().join("out2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupt_every_time_ends_the_push_without_an_image() {
    let p = pki();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let here = ImageStore::open(&t.path().join("a")).unwrap();
    let there = Arc::new(ImageStore::open(&t.path().join("b")).unwrap());
    let (a, b) = (node(&p, "a"), node(&p, "b"));
    let services = Services::default();
    register(&services, there.clone());
    let _server = serve(&b, services);
    let peer = a.connect(b.local_addr().unwrap(), "b").await.unwrap();
    let (id, _) = here.import_dir(&src).unwrap();
    let victim = here
        .manifest(&id)
        .unwrap()
        .chunks()
        .next()
        .unwrap()
        .digest
        .clone();
    let err = push_with(&peer, &here, &id, |d, data| {
        if *d == victim {
            data[0] ^= 0xff;
        }
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(!there.has_image(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_longer_than_its_manifest_says_is_refused() {
    let p = pki();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let here = ImageStore::open(&t.path().join("a")).unwrap();
    let there = Arc::new(ImageStore::open(&t.path().join("b")).unwrap());
    let (a, b) = (node(&p, "a"), node(&p, "b"));
    let services = Services::default();
    register(&services, there.clone());
    let _server = serve(&b, services);
    let peer = a.connect(b.local_addr().unwrap(), "b").await.unwrap();
    let (id, _) = here.import_dir(&src).unwrap();
    // The sender decides nothing: a chunk longer than the manifest gives is refused at the
    // block that goes past its length, from that block's header, and no image is recorded.
    let err = push_with(&peer, &here, &id, |_, data| {
        data.extend_from_slice(&[0u8; 10]);
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("bytes expected"), "{err}");
    assert!(!there.has_image(&id));
}

#[test]
fn a_manifest_is_parsed_and_validated_in_one_step() {
    let m = Manifest {
        format: 1,
        entries: vec![Entry {
            path: "a".into(),
            mode: 0o644,
            kind: EntryKind::File {
                size: 5,
                chunks: vec![ChunkRef {
                    digest: Digest::of(b"hello"),
                    len: 5,
                }],
            },
        }],
    };
    let json = serde_json::to_vec(&m).unwrap();
    assert_eq!(Manifest::parse(&json).unwrap(), m);
    let lying = String::from_utf8(json)
        .unwrap()
        .replace("\"size\":5", "\"size\":6");
    let err = Manifest::parse(lying.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("do not add up"), "{err}");
    assert!(Manifest::parse(b"{\"format\":1,\"entries\":[").is_err());
}
