#!/usr/bin/env python3
"""Writes the hand-made seeds of the fuzz corpus (fuzz/corpus/<target>/seed-*): valid inputs
of every decoder and the hostile claims its bounds must refuse. The fuzzer's minimised corpus
(`cargo xtask fuzz --minimise`) sits beside them. Run from anywhere: python3 fuzz/seeds.py"""

import hashlib
import json
import os
import struct
import subprocess

ROOT = os.path.dirname(os.path.abspath(__file__))
WIRE_VERSION = 7


def varint(n):
    # bincode 2 standard: < 251 one byte; else a tag and the little-endian value.
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


def s(text):
    b = text.encode()
    return varint(len(b)) + b


def frame(body, version=WIRE_VERSION, length=None):
    payload = struct.pack(">H", version) + body
    return struct.pack(">I", len(payload) if length is None else length) + payload


def block(kind, raw_len, payload):
    return bytes([kind]) + struct.pack(">II", raw_len, len(payload)) + payload


def piece(kind, file, offset, raw_len, payload, length=None):
    n = len(payload) if length is None else length
    return bytes([kind]) + struct.pack(">IQII", file, offset, raw_len, n) + payload


def zstd(data):
    return subprocess.run(["zstd", "-q", "-c", "-1"], input=data, capture_output=True,
                          check=True).stdout


def write(target, seeds):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(data)


zeros = bytes(8192)
zzeros = zstd(zeros)

write("transport_frame", {
    "hello": b"\0" + frame(b"\0" + s("n1")),
    "welcome-refused": b"\0" + frame(b"\1" + s("n2")) + frame(b"\2" + s("not of this CA")),
    "hello-operator": b"\0" + frame(b"\3" + s("alice")),
    "open": b"\1" + frame(b"\0" + s("image")),
    "opened": b"\2" + frame(b"\0") + frame(b"\1" + s("nope")),
    "message": b"\3" + frame(s("a") + varint(2) + varint(1) + varint(300) + b"\1\1\7\1"),
    "handshake-16mib": b"\0" + struct.pack(">I", 16 << 20),
    "message-16mib-short": b"\3" + struct.pack(">IH", 16 << 20, WIRE_VERSION) + bytes(8),
    "over-limit": b"\3" + struct.pack(">I", (16 << 20) + 1),
    "length-1": b"\0" + struct.pack(">I", 1) + b"\0",
    "other-version": b"\0" + frame(b"\0" + s("n1"), version=9),
    "string-2e40": b"\3" + frame(varint(1 << 40)),
    "trailing": b"\1" + frame(b"\0" + s("image") + b"xx"),
    "open-over-1k": b"\1" + frame(b"\0" + s("x" * 1100)),
})

write("transport_piece", {
    "raw-end": piece(0, 1, 4096, 5, b"hello") + piece(2, 0, 0, 0, b""),
    "zstd-end": piece(1, 0, 0, len(zeros), zzeros) + piece(2, 0, 0, 0, b""),
    "batch": piece(0, 0, 0, 3, b"abc") + piece(0, 2, 1 << 40, 1, b"z")
    + piece(1, 1, 8192, len(zeros), zzeros) + piece(2, 0, 0, 0, b""),
    "raw-lies": piece(0, 0, 0, 10, b"0123456789", length=20),
    "zstd-4mib-claim": piece(1, 0, 0, 4 << 20, zzeros),
    "zstd-bigger-than-raw": piece(1, 0, 0, 4, zzeros),
    "zstd-corrupt": piece(1, 0, 0, 100, b"\x28\xb5\x2f\xfd" + bytes(20)),
    "over-block": piece(0, 0, 0, (4 << 20) + 1, b"", length=(4 << 20) + 1),
    "bad-kind": piece(7, 0, 0, 0, b""),
    "offset-max": piece(0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 1, b"x"),
})

end = block(2, 0, b"")
write("transport_bulk", {
    "raw": b"\3" + block(0, 11, b"hello world") + end,
    "zstd": b"\3" + block(1, len(zeros), zzeros) + end,
    "mixed": b"\4" + block(0, 3, b"abc") + block(1, len(zeros), zzeros) + block(0, 1, b"z") + end,
    "past-max": b"\2" + block(1, len(zeros), zzeros) + end,
    "empty": b"\0" + end,
    "claim-4mib": b"\2" + struct.pack(">BII", 0, 4 << 20, 4 << 20),
    "zstd-lies": b"\3" + block(1, 100, zzeros) + end,
    "payload-over-raw": b"\3" + block(1, 10, bytes(100)) + end,
    "over-block": b"\4" + struct.pack(">BII", 1, (4 << 20) + 1, 16),
    "truncated": b"\3" + block(0, 11, b"hello")[:12],
})

hello = hashlib.sha256(b"hello").hexdigest()
good = {"format": 1, "entries": [
    {"path": "bin", "mode": 0o755, "type": "dir"},
    {"path": "bin/server", "mode": 0o755, "type": "file", "size": 5,
     "chunks": [{"digest": hello, "len": 5}]},
    {"path": "etc.conf", "mode": 0o644, "type": "file", "size": 10,
     "chunks": [{"digest": hello, "len": 5}, {"digest": hello, "len": 5}]},
    {"path": "run", "mode": 0o777, "type": "symlink", "target": "bin/server"},
]}


def manifest(entries):
    return json.dumps({"format": 1, "entries": entries}, separators=(",", ":"))


write("image_manifest", {
    "valid": json.dumps(good, separators=(",", ":")),
    "empty": manifest([]),
    "dotdot": manifest([{"path": "../etc", "mode": 0o755, "type": "dir"}]),
    "absolute": manifest([{"path": "/etc", "mode": 0o755, "type": "dir"}]),
    "unsorted": manifest([{"path": "b", "mode": 1, "type": "dir"},
                          {"path": "a", "mode": 1, "type": "dir"}]),
    "below-link": manifest([{"path": "l", "mode": 1, "type": "symlink", "target": "/"},
                            {"path": "l/x", "mode": 1, "type": "dir"}]),
    "size-lies": manifest([{"path": "f", "mode": 1, "type": "file", "size": 6,
                            "chunks": [{"digest": hello, "len": 5}]}]),
    "chunk-too-long": manifest([{"path": "f", "mode": 1, "type": "file", "size": 1 << 20,
                                 "chunks": [{"digest": hello, "len": 1 << 20}]}]),
    "setuid": manifest([{"path": "f", "mode": 0o4755, "type": "file", "size": 0, "chunks": []}]),
    "mode-too-big": manifest([{"path": "f", "mode": 0o10000, "type": "dir"}]),
    "bad-digest": manifest([{"path": "f", "mode": 1, "type": "file", "size": 5,
                             "chunks": [{"digest": "xyz", "len": 5}]}]),
    "format-2": '{"format":2,"entries":[]}',
    "huge-size": manifest([{"path": "f", "mode": 1, "type": "file",
                            "size": 18446744073709551615, "chunks": []}]),
})


def sealed(c, counter=0, skew=0, payload=b"hello", flip=0, tick=10):
    return bytes([c]) + struct.pack(">HbBBB", counter, skew, len(payload), flip, tick) + payload


write("gossip_open", {
    "one": sealed(0x80),
    "replay": sealed(0x80) + sealed(0x80),
    "in-order": sealed(0x80, 0) + sealed(0x80, 1) + sealed(0x80, 2),
    "reordered": sealed(0x81, 5) + sealed(0x81, 3) + sealed(0x81, 4) + sealed(0x81, 3),
    "window": sealed(0x82, 1000) + sealed(0x82, 800) + sealed(0x82, 999),
    "tampered": sealed(0xC0, flip=50),
    "tampered-header": sealed(0xC0, flip=20),
    "other-key": sealed(0xA0),
    "stale": sealed(0x80, skew=-100) + sealed(0x83, skew=100),
    "sessions": b"".join(sealed(0x80 | i, i) for i in range(8)),
    "junk": bytes([12]) + b"GW\x01\x00junkjunk",
    "short": bytes([3]) + b"GW\x01",
    "clear": bytes([20]) + bytes(range(20)),
})

source = {"migration": "kv-1a2b", "service": "kv", "to": "n2", "addr": "198.18.0.2:9747",
          "phase": "copying", "spec": "{}", "target_spec": "{}",
          "cgroup": "/sys/fs/cgroup/unified/godwit.slice/kv.service",
          "state_dir": "/var/lib/godwit/state/kv", "at_unix_ms": 1800000000000}
target = {"migration": "kv-1a2b", "service": "kv", "from": "n1", "phase": "prepared",
          "staging": "/var/lib/godwit/state/.kv.staging", "dest": "/var/lib/godwit/state/kv",
          "spec": None, "at_unix_ms": 1800000000000}
write("migrate_journal", {
    "source": json.dumps(source, indent=2),
    "target": json.dumps(target, indent=2),
    "target-owned-spec": json.dumps(dict(target, phase="owned", spec='{"name":"kv"}')),
    "truncated": json.dumps(source)[:60],
    "unknown-phase": json.dumps(dict(target, phase="flying")),
    "bad-addr": json.dumps(dict(source, addr="nowhere")),
    "empty": "",
    "null": "null",
})

write("migrate_protocol", {
    "begin": b"\0" + frame(b"\0" + s("kv-1") + s("kv") + b"\0" + b"\0") + frame(b"\1"),
    "begin-replace": b"\0" + frame(b"\0" + s("kv-1") + s("kv") + b"\0" + b"\1"),
    "round": b"\0" + frame(b"\2" + varint(1) + varint(2) + s("data") + varint(0o755) + b"\0"
                          + s("data/log") + varint(0o644) + b"\1" + varint(8192))
    + frame(b"\3" + varint(1) + varint(8192)),
    "verify": b"\0" + frame(b"\4" + varint(1) + s("data") + s("ab" * 32) + s("cd" * 32) + b"\1"),
    "digests": b"\0" + frame(b"\5" + varint(1) + s("data/log") + b"\0"),
    "commit": b"\0" + frame(b"\x08") + frame(b"\x0a") + frame(b"\x0c" + s("stop")),
    "round-dotdot": b"\0" + frame(b"\2" + varint(1) + varint(1) + s("../../etc/passwd")
                                 + varint(0o4755) + b"\1" + varint(1 << 60)),
    "round-many-claimed": b"\0" + frame(b"\2" + varint(1) + varint(1 << 40)),
    "handoff-abandon": b"\1" + frame(b"\5" + s("kv-1")) + frame(b"\6"),
    "handoff-failed": b"\1" + frame(b"\2" + s("no")),
    "handoff-not-held": b"\1" + frame(b"\3" + s("not held here")),
    "handoff-forget": b"\1" + frame(b"\7" + s("kv-1")) + frame(b"\x08"),
    "request": b"\2" + frame(b"\0" + s("kv") + s("n2")),
    "reply": b"\3" + frame(b"\1" + s("x")),
})

with open(os.path.join(ROOT, "..", "packaging", "godwit.toml")) as f:
    default_toml = f.read()
write("config", {
    "default": default_toml,
    "empty": "",
    "node": '[node]\nname = "n1"\n',
    "service": '[[service]]\nname = "kv"\ncommand = ["/bin/kv", "--dir", "{state}"]\n'
               'state = ["data"]\n[service.health]\ntcp = "127.0.0.1:7000"\n',
    "unknown-field": '[node]\nnmae = "n1"\n',
    "duplicate-service": '[[service]]\nname = "a"\ncommand = ["x"]\n'
                         '[[service]]\nname = "a"\ncommand = ["y"]\n',
    "bad-toml": "[node\nname = ",
    "gossip": '[gossip]\nlisten = "0.0.0.0:9748"\nseeds = ["198.18.0.2:9748"]\n',
})

spec = {"name": "kv", "image_id": "00" * 32, "command": ["bin/kv", "--dir", "{state}"],
        "env": {"A": "1"}, "state": ["data"],
        "health": {"tcp": "127.0.0.1:7000", "send": "PING\n", "expect": "+PONG"},
        "demand": {"cpu": 0.5, "memory_bytes": 1048576}, "restart": {"policy": "on-failure"},
        "vip": "10.0.0.7", "autostart": False}
write("service_spec", {
    "json": json.dumps(spec),
    "json-minimal": '{"name":"a","command":["x"]}',
    "toml": 'name = "kv"\ncommand = ["/bin/kv"]\nstate = ["data"]\n'
            '[health]\nhttp = "127.0.0.1:8080/health"\n',
    "bad-name": '{"name":"../x","command":["x"]}',
    "state-outside": '{"name":"a","command":["x"],"state":["/etc"]}',
    "two-checks": json.dumps(dict(spec, health={"tcp": "127.0.0.1:1", "http": "x"})),
    "nan-cpu": 'name = "a"\ncommand = ["x"]\n[demand]\ncpu = nan\n',
    "loopback-vip": '{"name":"a","command":["x"],"vip":"127.0.0.1"}',
    "image-and-id": json.dumps(dict(spec, image="/nonexistent")),
    "empty-command": '{"name":"a","command":[]}',
})


def piece_step(session, pid, index, count, share, tick=1):
    return bytes([session, pid, index, count, tick, len(share)]) + share


write("gossip_reassemble", {
    "empty": b"",
    "two-halves": piece_step(1, 7, 0, 2, b"a" * 40) + piece_step(1, 7, 1, 2, b"b" * 40),
    "out-of-order": piece_step(2, 3, 1, 2, b"x" * 10) + piece_step(2, 3, 0, 2, b"y" * 10),
    "count-changes": piece_step(0, 1, 0, 2, b"z") + piece_step(0, 1, 1, 3, b"z"),
    "bad-count": piece_step(0, 1, 0, 9, b"q") + piece_step(0, 1, 5, 1, b"q"),
    "expired": piece_step(3, 4, 0, 2, b"e", tick=0) + piece_step(3, 4, 1, 2, b"e", tick=255),
})
