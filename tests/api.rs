//! Who may act through a real agent's API: root and the members of the API group on the Unix
//! socket; a caller of another uid is refused on every route that changes something, audited
//! (at a bounded rate), and nothing starts; over TCP every change and every foreign `Host` is
//! refused; a public TCP address is refused unless it is declared read-only.
//!
//! The callers of other uids are `curl` (and `godwit`) run through `setpriv`. Needs root; one
//! test at a time (`cargo xtask test`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use godwit_tests::{godwit_bin, http_request, require_root, unique, wait_for, Agent, ServiceSlice};
use serde_json::Value;

/// The user the refused callers run as (nobody).
const NOBODY: u32 = 65534;

/// A caller's credentials, as `setpriv` sets them.
struct Who {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

impl Who {
    fn nobody() -> Who {
        Who {
            uid: NOBODY,
            gid: NOBODY,
            groups: Vec::new(),
        }
    }

    /// `setpriv` with these credentials, then `program`.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid));
        if self.groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            cmd.arg(format!("--groups={}", groups.join(",")));
        }
        cmd.arg(program);
        cmd
    }
}

/// What curl got: the status code (`None`: no HTTP answer, curl's exit code in `exit`) and
/// the body.
#[derive(Debug)]
struct Answer {
    code: Option<u16>,
    exit: Option<i32>,
    body: String,
}

/// One request to the agent's socket by `who`, with curl.
fn curl_as(who: &Who, socket: &Path, method: &str, path: &str, json: Option<&str>) -> Answer {
    let mut cmd = who.command(Path::new("/usr/bin/curl"));
    cmd.args(["-s", "-X", method, "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket);
    if let Some(body) = json {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    cmd.arg(format!("http://localhost{path}"));
    let out = cmd.output().expect("run setpriv curl (util-linux, curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Answer {
        code: code.trim().parse().ok().filter(|c| *c != 0),
        exit: out.status.code(),
        body: body.to_string(),
    }
}

/// A raw HTTP/1.1 request over TCP with the `Host` header given.
fn tcp_request(addr: SocketAddr, host: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// The routes that change something, as `(method, path, body)`: on the services `idle`
/// (stopped) and `up` (running) of [`start_agent`].
fn changes(marker: &Path) -> Vec<(&'static str, String, Option<String>)> {
    let spec = serde_json::json!({
        "name": "intruder",
        "command": ["/bin/sh", "-c", format!("touch {}.intruder; exec sleep 1000", marker.display())],
    })
    .to_string();
    vec![
        ("POST", "/v1/services".into(), Some(spec)),
        ("POST", "/v1/services/idle/start".into(), None),
        ("POST", "/v1/services/up/stop".into(), None),
        ("POST", "/v1/services/up/freeze".into(), None),
        ("POST", "/v1/services/up/thaw".into(), None),
        ("POST", "/v1/services/up/migrate?to=n2".into(), None),
        ("PUT", "/v1/risk".into(), Some(r#"{"risk": 1.0}"#.into())),
        (
            "POST",
            format!("/v1/images/{}/push?to=n2", "ab".repeat(32)),
            None,
        ),
        ("POST", "/v1/transport/probe/n2?bytes=0".into(), None),
    ]
}

/// An agent with two services, `idle` (not started; starting it touches `marker`) and `up`
/// (running), JSON logs, and no gossip or transport.
fn start_agent(svc: &ServiceSlice, state: &Path, marker: &Path) -> Agent {
    let agent = Agent::start(&format!(
        "[probe]\nmode = \"procfs\"\ninterval_ms = 250\n[gossip]\nenabled = false\n\
         [transport]\nenabled = false\n[log]\nformat = \"json\"\n{}\
         [[service]]\nname = \"idle\"\nautostart = false\n\
         command = [\"/bin/sh\", \"-c\", \"touch {}; exec sleep 1000\"]\n\
         [[service]]\nname = \"up\"\ncommand = [\"/bin/sleep\", \"1000\"]\n",
        svc.toml(state),
        marker.display()
    ));
    wait_for(Duration::from_secs(15), || {
        (service(&agent, "up")["state"] == "running").then_some(())
    })
    .unwrap_or_else(|| panic!("service up never ran: {}", agent.log()));
    agent
}

fn services(agent: &Agent) -> Vec<Value> {
    agent.json("/v1/services")["services"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn service(agent: &Agent, name: &str) -> Value {
    services(agent)
        .into_iter()
        .find(|s| s["name"] == name)
        .unwrap_or(Value::Null)
}

/// Each service's name, state and pid: what a refused change must leave as it was.
fn fingerprint(agent: &Agent) -> Vec<(String, String, Option<u64>)> {
    let mut v: Vec<_> = services(agent)
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("?").to_string(),
                s["state"].as_str().unwrap_or("?").to_string(),
                s["pid"].as_u64(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The agent's JSON log lines whose message is `message`.
fn log_lines(agent: &Agent, message: &str) -> Vec<Value> {
    agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

const REFUSED: &str = "API change refused: the caller is neither root nor in the group";
const LEFT_OUT: &str = "API refusals left out of the log";

/// The refusals the log accounts for: lines logged, and the counts of those left out.
fn refusals_accounted(agent: &Agent) -> (usize, u64) {
    let logged = log_lines(agent, REFUSED).len();
    let left_out = log_lines(agent, LEFT_OUT)
        .iter()
        .filter_map(|v| v["fields"]["left_out"].as_u64())
        .sum();
    (logged, left_out)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        // The services write their markers here as the unprivileged service user.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_caller_neither_root_nor_in_the_group_is_refused_on_every_change_and_nothing_starts() {
    require_root();
    let svc = ServiceSlice::new();
    let tmp = TempDir::new("godwit-api");
    let marker = tmp.0.join("started");
    let agent = start_agent(&svc, &tmp.0.join("state"), &marker);
    let before = fingerprint(&agent);
    let nobody = Who::nobody();

    // The socket's mode keeps nobody out before the agent is even asked; the CLI says why.
    let a = curl_as(&nobody, &agent.socket, "GET", "/v1/services", None);
    assert_eq!(
        (a.code, a.exit),
        (None, Some(7)),
        "nobody may not open the socket (curl: cannot connect): {a:?}"
    );
    let out = nobody
        .command(&godwit_bin())
        .args(["service", "start", "idle", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.contains("run as root or a member of the godwit group"),
        "{err}"
    );

    // Opened to everyone, the socket still lets nobody change anything: the kernel names the
    // caller, and the agent refuses it.
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _) = {
        let a = curl_as(&nobody, &agent.socket, "GET", "/v1/services", None);
        (a.code, a.body)
    };
    assert_eq!(code, Some(200), "reads are anyone's on the socket");
    let routes = changes(&marker);
    for (method, path, body) in &routes {
        let a = curl_as(&nobody, &agent.socket, method, path, body.as_deref());
        assert_eq!(a.code, Some(403), "{method} {path}: {a:?}");
        assert!(
            a.body.contains("uid 65534") && a.body.contains("group godwit"),
            "{method} {path}: {}",
            a.body
        );
    }
    let out = nobody
        .command(&godwit_bin())
        .args(["service", "start", "idle", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(err.contains("403") && err.contains("uid 65534"), "{err}");
    let refused = routes.len() + 1;

    // Nothing changed: the same services in the same states with the same processes, no
    // command of the refused ones ran, the risk level is as it was, no migration refused.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fingerprint(&agent), before);
    assert!(!marker.exists(), "the refused start ran the service");
    assert!(
        !PathBuf::from(format!("{}.intruder", marker.display())).exists(),
        "the refused spec ran"
    );
    assert_eq!(agent.json("/v1/risk")["risk"], 0.0);
    // Each refusal is audited with the caller's uid, gid and pid.
    let lines = log_lines(&agent, REFUSED);
    assert_eq!(lines.len(), refused, "{}", agent.log());
    for l in &lines {
        let f = &l["fields"];
        assert_eq!(f["uid"], NOBODY, "{l}");
        assert_eq!(f["gid"], NOBODY, "{l}");
        assert!(f["pid"].as_u64().is_some_and(|p| p > 0), "{l}");
    }

    // Root acts: the same routes reach their handlers.
    let (code, body) = agent.act("POST", "/v1/services/idle/start", None);
    assert_eq!(code, 200, "{body}");
    wait_for(Duration::from_secs(10), || marker.exists().then_some(()))
        .unwrap_or_else(|| panic!("root's start did not run the service: {}", agent.log()));
    let (code, body) = agent.act("PUT", "/v1/risk", Some(r#"{"risk": 0.5}"#));
    assert_eq!(code, 200, "{body}");
    assert_eq!(agent.json("/v1/risk")["risk"], 0.5);
    let (code, body) = agent.act("POST", "/v1/transport/probe/n2?bytes=0", None);
    assert_eq!(
        code, 404,
        "root reaches the handler (transport off): {body}"
    );
    assert!(body.contains("transport is off"), "{body}");

    // A flood of refusals does not flood the log: a few lines a second, then a count, and
    // every refusal is accounted for.
    const FLOOD: usize = 300;
    let mut cmd = nobody.command(Path::new("/usr/bin/curl"));
    cmd.args(["-s", "-X", "POST", "-w", "%{http_code}\n", "--unix-socket"])
        .arg(&agent.socket);
    for _ in 0..FLOOD {
        cmd.args(["-o", "/dev/null", "http://localhost/v1/services/up/stop"]);
    }
    let out = cmd.output().unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        codes.lines().filter(|c| *c == "403").count(),
        FLOOD,
        "every request of the flood is refused"
    );
    let total = refused + FLOOD;
    let accounted = wait_for(Duration::from_secs(10), || {
        let (logged, left_out) = refusals_accounted(&agent);
        (logged as u64 + left_out == total as u64).then_some((logged, left_out))
    });
    let (logged, left_out) = accounted.unwrap_or_else(|| {
        panic!(
            "{total} refusals, the log accounts for {:?}:\n{}",
            refusals_accounted(&agent),
            agent.log()
        )
    });
    eprintln!("{total} refusals: {logged} logged, {left_out} counted");
    assert!(
        left_out > 0,
        "a flood of {FLOOD} is rate-limited: {logged} lines"
    );
    assert_eq!(service(&agent, "up")["state"], "running");
}

/// The `godwit` group, made for the test when the host has none (and then removed).
struct GodwitGroup {
    gid: u32,
    made: bool,
}

impl GodwitGroup {
    fn ensure() -> GodwitGroup {
        if let Some(gid) = godwit::api::access::group_id("godwit").unwrap() {
            return GodwitGroup { gid, made: false };
        }
        let st = Command::new("groupadd")
            .args(["--system", "godwit"])
            .status()
            .expect("groupadd");
        assert!(st.success(), "groupadd --system godwit");
        let gid = godwit::api::access::group_id("godwit")
            .unwrap()
            .expect("godwit group after groupadd");
        GodwitGroup { gid, made: true }
    }
}

impl Drop for GodwitGroup {
    fn drop(&mut self) {
        if self.made {
            let _ = Command::new("groupdel").arg("godwit").status();
        }
    }
}

#[test]
fn root_and_members_of_the_godwit_group_act_through_the_socket() {
    require_root();
    let group = GodwitGroup::ensure();
    let svc = ServiceSlice::new();
    let tmp = TempDir::new("godwit-api");
    let marker = tmp.0.join("started");
    let agent = start_agent(&svc, &tmp.0.join("state"), &marker);

    // root:godwit, 0660.
    let meta = std::fs::symlink_metadata(&agent.socket).unwrap();
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.gid(), group.gid);
    assert_eq!(meta.mode() & 0o777, 0o660);

    // A member by a supplementary group (its primary is another) adds a service and stops it.
    let member = Who {
        uid: NOBODY,
        gid: NOBODY,
        groups: vec![group.gid],
    };
    let spec = r#"{"name": "added", "command": ["/bin/sleep", "1000"]}"#;
    let a = curl_as(&member, &agent.socket, "POST", "/v1/services", Some(spec));
    assert_eq!(a.code, Some(201), "{a:?}\n{}", agent.log());
    wait_for(Duration::from_secs(10), || {
        (service(&agent, "added")["state"] == "running").then_some(())
    })
    .unwrap_or_else(|| panic!("added never ran: {}", service(&agent, "added")));
    let a = curl_as(
        &member,
        &agent.socket,
        "POST",
        "/v1/services/added/stop",
        None,
    );
    assert_eq!(a.code, Some(200), "{a:?}");
    assert_eq!(service(&agent, "added")["state"], "stopped");

    // A member by its primary group starts it again, with the CLI.
    let primary = Who {
        uid: NOBODY,
        gid: group.gid,
        groups: Vec::new(),
    };
    let out = primary
        .command(&godwit_bin())
        .args(["service", "start", "added", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(service(&agent, "added")["state"], "running");
    let a = curl_as(
        &primary,
        &agent.socket,
        "PUT",
        "/v1/risk",
        Some(r#"{"risk": 0.25}"#),
    );
    assert_eq!(a.code, Some(200), "{a:?}");
    assert_eq!(agent.json("/v1/risk")["risk"], 0.25);

    // Root, with the CLI's default of reaching the socket.
    let out = Command::new(godwit_bin())
        .args(["service", "stop", "added", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(service(&agent, "added")["state"], "stopped");

    // Whoever is in neither cannot open the socket at all.
    let a = curl_as(
        &Who::nobody(),
        &agent.socket,
        "POST",
        "/v1/services/added/start",
        None,
    );
    assert_eq!((a.code, a.exit), (None, Some(7)), "{a:?}");
    assert_eq!(service(&agent, "added")["state"], "stopped");
    assert!(log_lines(&agent, REFUSED).is_empty(), "{}", agent.log());
}

#[test]
fn the_tcp_address_refuses_every_change_and_every_foreign_host() {
    require_root();
    let svc = ServiceSlice::new();
    let tmp = TempDir::new("godwit-api");
    let marker = tmp.0.join("started");
    let agent = start_agent(&svc, &tmp.0.join("state"), &marker);
    let before = fingerprint(&agent);

    // Every change, and any method but GET, as root from loopback: refused, pointing to the
    // socket.
    let mut routes = changes(&marker);
    routes.push(("DELETE", "/v1/services".into(), None));
    routes.push(("PATCH", "/v1/risk".into(), Some(r#"{"risk": 1.0}"#.into())));
    routes.push(("POST", "/v1/nowhere".into(), None));
    for (method, path, body) in &routes {
        let (code, text) = http_request(agent.addr, method, path, body.as_deref()).unwrap();
        assert_eq!(code, 403, "{method} {path} over TCP: {text}");
        assert!(
            text.contains("reads only") && text.contains(&*agent.socket.to_string_lossy()),
            "{method} {path}: {text}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fingerprint(&agent), before);
    assert!(!marker.exists(), "a change over TCP ran the service");
    assert_eq!(agent.json("/v1/risk")["risk"], 0.0);
    assert!(
        !agent.log().contains("migration request refused"),
        "the migrate route was not reached:\n{}",
        agent.log()
    );

    // Reads answer under the agent's own names only: a page of another site, resolved to
    // 127.0.0.1 (DNS rebinding), gets nothing.
    let port = agent.addr.port();
    for host in [
        "localhost".to_string(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (code, text) = tcp_request(agent.addr, &host, "GET", "/v1/node");
        assert_eq!(code, 200, "Host: {host}: {text}");
    }
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        format!("198.18.0.1:{port}"),
    ] {
        for path in ["/v1/node", "/metrics", "/healthz"] {
            let (code, text) = tcp_request(agent.addr, &host, "GET", path);
            assert_eq!(code, 421, "Host: {host} GET {path}: {text}");
        }
        let (code, text) = tcp_request(agent.addr, &host, "POST", "/v1/services/idle/start");
        assert_eq!(code, 421, "Host: {host} POST: {text}");
    }
    assert!(!marker.exists());
}

#[test]
fn a_public_listen_address_is_refused_unless_declared_read_only() {
    let tmp = TempDir::new("godwit-api-config");
    let validate = |text: &str| {
        let file = tmp.0.join(unique("godwit.toml"));
        std::fs::write(&file, text).unwrap();
        let out = Command::new(godwit_bin())
            .args(["validate", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for listen in ["0.0.0.0:9746", "198.18.0.1:9746", "[::]:9746"] {
        let (code, err) = validate(&format!("[api]\nlisten = \"{listen}\"\n"));
        assert_eq!(code, Some(78), "{listen}: {err}");
        assert!(
            err.contains("api.listen")
                && err.contains("not a loopback address")
                && err.contains("api.public_read_only = true"),
            "{listen}: {err}"
        );
        let (code, err) = validate(&format!(
            "[api]\nlisten = \"{listen}\"\npublic_read_only = true\n"
        ));
        assert_eq!(code, Some(0), "{listen} read-only: {err}");
    }
    let (code, err) = validate("[api]\nlisten = \"[::1]:9746\"\n");
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = validate("[api]\nsocket = \"relative.sock\"\n");
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("api.socket"), "{err}");
}
