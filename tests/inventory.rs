//! The pattern-based inventory of a real agent: processes, cgroups and a loop device appear and
//! disappear within a second of the change, the file is written, and a malformed pattern is a
//! configuration error naming the field. Needs root; one test at a time.

use std::process::Command;
use std::time::{Duration, Instant};

use godwit_tests::{cgroup_layout, godwit_bin, http_get, require_root, unique, Agent};
use serde_json::Value;

fn inventory(agent: &Agent) -> Value {
    http_get(agent.addr, "/v1/inventory")
        .ok()
        .filter(|(c, _)| *c == 200)
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null)
}

/// Items of pattern `name` in section `kind`.
fn items(agent: &Agent, kind: &str, name: &str) -> Vec<Value> {
    inventory(agent)[kind]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["pattern"] == name)
        .and_then(|m| m["items"].as_array().cloned())
        .unwrap_or_default()
}

/// How long until `cond` holds (polled every 10 ms), panicking after 5 s.
fn time_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn processes_cgroups_and_a_loop_device_come_and_go_within_a_second() {
    require_root();
    let tag = unique("gwinv").replace(['.', '/'], "-");
    let comm: String = format!("gwi{}", &tag[tag.len().saturating_sub(8)..]);
    let work = std::path::Path::new("/var/tmp").join(&tag);
    std::fs::create_dir_all(&work).unwrap();
    // Removed however the test ends (a failed assertion too), after the agent it outlives.
    let _removed = godwit_tests::RemoveDir(work.clone());
    let inv_file = work.join("inventory.json");
    let mut agent = Agent::start(&format!(
        "[inventory]\nfile = \"{}\"\n\
         [[inventory.process]]\nname = \"probe-me\"\ncomm = \"{comm}*\"\n\
         [[inventory.container]]\nname = \"test-cgroups\"\ncgroup = \"/{tag}*\"\n\
         [[inventory.device]]\nname = \"loops\"\nblock = \"loop*\"\n\
         [[inventory.interface]]\nname = \"loopback\"\niface = \"lo\"\n",
        inv_file.display()
    ));
    // The first resolution follows the first sample, which is all /healthz waits for.
    time_until("loopback resolved", || {
        items(&agent, "interfaces", "loopback").len() == 1
    });

    // A process whose command name matches: exec'd through a link named after the pattern.
    let link = work.join(&comm);
    std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
    let mut child = Command::new(&link).arg("30").spawn().unwrap();
    let pid = child.id();
    let seen = time_until("process listed", || {
        items(&agent, "processes", "probe-me")
            .iter()
            .any(|p| p["pid"] == pid)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = time_until("process dropped", || {
        !items(&agent, "processes", "probe-me")
            .iter()
            .any(|p| p["pid"] == pid)
    });
    eprintln!("process: listed after {seen:?}, dropped {gone:?} after exit");
    assert!(seen < Duration::from_secs(1) && gone < Duration::from_secs(1));

    // A cgroup created and removed (inotify on cgroupfs).
    let cg = cgroup_layout().v2_root.join(format!("{tag}-x"));
    std::fs::create_dir(&cg).unwrap();
    let cg_path = format!("/{tag}-x");
    let seen = time_until("cgroup listed", || {
        items(&agent, "containers", "test-cgroups")
            .iter()
            .any(|c| c["cgroup"] == cg_path.as_str())
    });
    std::fs::remove_dir(&cg).unwrap();
    let gone = time_until("cgroup dropped", || {
        items(&agent, "containers", "test-cgroups").is_empty()
    });
    eprintln!("cgroup: listed after {seen:?}, dropped {gone:?} after rmdir");
    assert!(seen < Duration::from_secs(1) && gone < Duration::from_secs(1));

    // A loop device attached and detached (netlink uevents).
    let backing = work.join("disk.img");
    std::fs::write(&backing, vec![0u8; 16 << 20]).unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let name = dev.trim_start_matches("/dev/").to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let guard = Detach(dev.clone());
    let seen = time_until("loop device listed", || {
        items(&agent, "devices", "loops")
            .iter()
            .any(|d| d["name"] == name.as_str() && d["size_bytes"] == 16u64 << 20)
    });
    drop(guard);
    let gone = time_until("loop device dropped", || {
        !items(&agent, "devices", "loops")
            .iter()
            .any(|d| d["name"] == name.as_str())
    });
    eprintln!("{name}: listed after {seen:?}, dropped {gone:?} after detach");
    assert!(seen < Duration::from_secs(1) && gone < Duration::from_secs(1));

    // The file holds the same document, and the CLI shows it.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&inv_file).unwrap()).unwrap();
    assert!(file["interfaces"].is_array() && file["resolved_at_unix_ms"].as_u64() > Some(0));
    let out = Command::new(godwit_bin())
        .args(["inventory", "--addr", &agent.addr.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("loopback") && table.contains("lo"),
        "{table}"
    );
    let (_, metrics) = http_get(agent.addr, "/metrics").unwrap();
    assert!(
        metrics.contains("godwit_inventory_matches{kind=\"interface\",pattern=\"loopback\"} 1"),
        "{metrics}"
    );
    assert_eq!(agent.terminate(), Some(0));
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn a_malformed_pattern_is_a_configuration_error_naming_the_field() {
    let dir = std::env::temp_dir().join(unique("godwit-inv-bad"));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, field) in [
        (
            "[[inventory.process]]\nname = \"x\"\nregex = \"(unclosed\"\n",
            "regex",
        ),
        (
            "[[inventory.device]]\nname = \"x\"\nblock = \"[\"\n",
            "block",
        ),
        (
            "[[inventory.process]]\nname = \"x\"\n",
            "inventory.process[0]",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(godwit_bin())
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text}: {err}");
        assert!(err.contains(field), "{text}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
