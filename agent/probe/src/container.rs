//! Tells from a cgroup v2 path which container, pod or service a process belongs to.
//!
//! The path is read from the innermost component outwards and the first component that
//! names a container or unit wins, so a docker scope inside `system.slice` is docker, and a
//! process in a sub-cgroup of a container belongs to that container. Recognised:
//!
//! | runtime    | component                                                              |
//! |------------|------------------------------------------------------------------------|
//! | godwit     | `<name>.service` under `godwit.slice`, any `<name>` under `godwit`     |
//! | kubepods   | a container component (any form below) directly under a pod: `kubepods-…pod<uid>.slice` below `kubepods.slice`, or `pod<uid>` below `kubepods` |
//! | docker     | `docker-<id>.scope`, `<id>` under `docker`                             |
//! | containerd | `cri-containerd-<id>.scope`, `/default/<name>`, `/<namespace>/<id>`    |
//! | cri-o      | `crio-<id>.scope`, `crio-<id>` (never `crio-conmon-<id>.scope`)        |
//! | podman     | `libpod-<id>.scope`, `libpod-<id>` (never `libpod-conmon-<id>.scope`)  |
//! | systemd    | `<unit>.service` below `system.slice`; `.service` or `.scope` below `user.slice` |
//!
//! `<id>` is a 64-digit lowercase hex container id. conmon scopes are monitors, not
//! containers: they match nothing and the search goes on outwards.

use super::model::{ContainerInfo, Runtime};

const CONTAINER_ID_LEN: usize = 64;
const SHORT_ID_LEN: usize = 12;
/// Containerd's default namespace, whose containers may have any name as id.
const CONTAINERD_DEFAULT_NAMESPACE: &str = "default";

/// What the cgroup path says about its container, or `None` if no component matches.
pub fn classify(cgroup_path: &str) -> Option<ContainerInfo> {
    let found = find(cgroup_path)?;
    let name = match found.runtime {
        Runtime::Systemd | Runtime::Godwit | Runtime::Cgroup => found.id.to_owned(),
        Runtime::Docker
        | Runtime::Containerd
        | Runtime::Crio
        | Runtime::Podman
        | Runtime::Kubepods => found.id.chars().take(SHORT_ID_LEN).collect(),
    };
    Some(ContainerInfo {
        runtime: found.runtime,
        id: found.id.to_owned(),
        name,
        pod_uid: found.pod_uid.map(|uid| uid.replace('_', "-")),
    })
}

/// The prefix of `cgroup_path` that is the container (the component [`classify`] matched),
/// e.g. `/system.slice/docker-<id>.scope` for `/system.slice/docker-<id>.scope/sub`.
pub fn container_root(cgroup_path: &str) -> Option<&str> {
    find(cgroup_path).map(|found| &cgroup_path[..found.end])
}

struct Found<'a> {
    /// Byte offset in the path just past the matching component.
    end: usize,
    runtime: Runtime,
    id: &'a str,
    /// As written in the path (underscores in the systemd form).
    pod_uid: Option<&'a str>,
}

fn find(path: &str) -> Option<Found<'_>> {
    let mut ends = Vec::new();
    let mut names = Vec::new();
    let mut start = 0;
    for segment in path.split('/') {
        let end = start + segment.len();
        if !segment.is_empty() {
            ends.push(end);
            names.push(segment);
        }
        start = end + 1;
    }
    (0..names.len()).rev().find_map(|i| {
        let (runtime, id, pod_uid) = match_component(&names, i)?;
        Some(Found {
            end: ends[i],
            runtime,
            id,
            pod_uid,
        })
    })
}

type Match<'a> = (Runtime, &'a str, Option<&'a str>);

/// Whether component `i` of `names` is a container or unit on its own, given its ancestors.
fn match_component<'a>(names: &[&'a str], i: usize) -> Option<Match<'a>> {
    let comp = names[i];
    let ancestors = &names[..i];
    let parent = ancestors.last().copied();
    if comp.starts_with("crio-conmon-") || comp.starts_with("libpod-conmon-") {
        return None;
    }

    match parent {
        Some("godwit") => return Some((Runtime::Godwit, comp, None)),
        Some("godwit.slice") => {
            if let Some(name) = unit_stem(comp, ".service") {
                return Some((Runtime::Godwit, name, None));
            }
        }
        _ => {}
    }

    if let Some(pod_uid) = parent.and_then(|p| pod_uid(p, ancestors)) {
        let id = prefixed_container_id(comp)
            .map(|(_, id)| id)
            .or_else(|| is_container_id(comp).then_some(comp));
        if let Some(id) = id {
            return Some((Runtime::Kubepods, id, Some(pod_uid)));
        }
    }

    if let Some((runtime, id)) = prefixed_container_id(comp) {
        return Some((runtime, id, None));
    }

    match parent {
        Some("docker") if is_container_id(comp) => return Some((Runtime::Docker, comp, None)),
        // containerd's default cgroup is /<namespace>/<id>.
        Some(CONTAINERD_DEFAULT_NAMESPACE) if i == 1 && is_containerd_name(comp) => {
            return Some((Runtime::Containerd, comp, None));
        }
        Some(namespace)
            if i == 1 && is_containerd_namespace(namespace) && is_container_id(comp) =>
        {
            return Some((Runtime::Containerd, comp, None));
        }
        _ => {}
    }

    let under = |slice: &str| ancestors.contains(&slice);
    let is_unit = (under("system.slice") && unit_stem(comp, ".service").is_some())
        || (under("user.slice")
            && (unit_stem(comp, ".service").is_some() || unit_stem(comp, ".scope").is_some()));
    is_unit.then_some((Runtime::Systemd, comp, None))
}

/// Container components whose prefix names the runtime.
fn prefixed_container_id(comp: &str) -> Option<(Runtime, &str)> {
    const FORMS: [(&str, &str, Runtime); 6] = [
        ("docker-", ".scope", Runtime::Docker),
        ("cri-containerd-", ".scope", Runtime::Containerd),
        ("crio-", ".scope", Runtime::Crio),
        ("crio-", "", Runtime::Crio),
        ("libpod-", ".scope", Runtime::Podman),
        ("libpod-", "", Runtime::Podman),
    ];
    FORMS.iter().find_map(|&(prefix, suffix, runtime)| {
        let id = comp.strip_prefix(prefix)?.strip_suffix(suffix)?;
        is_container_id(id).then_some((runtime, id))
    })
}

/// The pod uid if `parent` is a kubepods pod cgroup: `kubepods[-<qos>]-pod<uid>.slice` below
/// `kubepods.slice` (systemd driver, uid with underscores) or `pod<uid>` below `kubepods`
/// (cgroupfs driver).
fn pod_uid<'a>(parent: &'a str, ancestors: &[&str]) -> Option<&'a str> {
    let uid = if let Some(stem) = parent.strip_suffix(".slice") {
        if !ancestors.contains(&"kubepods.slice") || !stem.starts_with("kubepods") {
            return None;
        }
        stem.rsplit_once("-pod")?.1
    } else {
        if !ancestors.contains(&"kubepods") {
            return None;
        }
        parent.strip_prefix("pod")?
    };
    let valid = !uid.is_empty()
        && uid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    valid.then_some(uid)
}

fn is_container_id(s: &str) -> bool {
    s.len() == CONTAINER_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Containerd's identifier rule: alphanumeric runs joined by single `.`, `_` or `-`.
fn is_containerd_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.windows(2).all(|w| alnum(&w[0]) || alnum(&w[1]))
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A containerd namespace that is not one of the well-known top-level cgroups.
fn is_containerd_namespace(s: &str) -> bool {
    is_containerd_name(s)
        && !s.ends_with(".slice")
        && !s.ends_with(".scope")
        && !matches!(s, "docker" | "kubepods" | "godwit")
}

/// `comp` without `suffix`, if it has that suffix and something before it.
fn unit_stem<'a>(comp: &'a str, suffix: &str) -> Option<&'a str> {
    comp.strip_suffix(suffix).filter(|stem| !stem.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e9c2b1a0d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";
    const SHORT: &str = "3f4e9c2b1a0d";
    const UID: &str = "8a1b2c3d-4e5f-6789-abcd-ef0123456789";
    const UID_: &str = "8a1b2c3d_4e5f_6789_abcd_ef0123456789";

    struct Case {
        path: String,
        runtime: Runtime,
        id: String,
        name: String,
        pod_uid: Option<&'static str>,
        root: String,
    }

    fn case(path: String, runtime: Runtime, id: &str, name: &str, root: String) -> Case {
        Case {
            path,
            runtime,
            id: id.to_owned(),
            name: name.to_owned(),
            pod_uid: None,
            root,
        }
    }

    fn same(path: String, runtime: Runtime, id: &str, name: &str) -> Case {
        case(path.clone(), runtime, id, name, path)
    }

    #[test]
    fn classifies_known_runtimes() {
        let kube = |path: String, root: String| Case {
            pod_uid: Some(UID),
            ..case(path, Runtime::Kubepods, ID, SHORT, root)
        };
        let kube_systemd_pod =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        let cases = [
            // docker
            same(format!("/system.slice/docker-{ID}.scope"), Runtime::Docker, ID, SHORT),
            case(
                format!("/system.slice/docker-{ID}.scope/init/worker"),
                Runtime::Docker,
                ID,
                SHORT,
                format!("/system.slice/docker-{ID}.scope"),
            ),
            same(format!("/docker/{ID}"), Runtime::Docker, ID, SHORT),
            same(
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope"),
                Runtime::Docker,
                ID,
                SHORT,
            ),
            // containerd
            same(format!("/system.slice/cri-containerd-{ID}.scope"), Runtime::Containerd, ID, SHORT),
            same("/default/redis".to_owned(), Runtime::Containerd, "redis", "redis"),
            same(
                "/default/my-long_container.name".to_owned(),
                Runtime::Containerd,
                "my-long_container.name",
                "my-long_cont",
            ),
            same(format!("/k8s.io/{ID}"), Runtime::Containerd, ID, SHORT),
            case(
                "/default/redis/sub".to_owned(),
                Runtime::Containerd,
                "redis",
                "redis",
                "/default/redis".to_owned(),
            ),
            // cri-o
            same(format!("/system.slice/crio-{ID}.scope"), Runtime::Crio, ID, SHORT),
            // podman
            same(format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman, ID, SHORT),
            same(format!("/libpod_parent/libpod-{ID}"), Runtime::Podman, ID, SHORT),
            same(
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                Runtime::Podman,
                ID,
                SHORT,
            ),
            // kubepods, systemd driver
            kube(
                format!("{kube_systemd_pod}/cri-containerd-{ID}.scope"),
                format!("{kube_systemd_pod}/cri-containerd-{ID}.scope"),
            ),
            kube(
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"),
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope"),
            ),
            kube(
                format!("{kube_systemd_pod}/docker-{ID}.scope/sub"),
                format!("{kube_systemd_pod}/docker-{ID}.scope"),
            ),
            // kubepods, cgroupfs driver
            kube(
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                format!("/kubepods/burstable/pod{UID}/{ID}"),
            ),
            kube(format!("/kubepods/pod{UID}/{ID}"), format!("/kubepods/pod{UID}/{ID}")),
            kube(
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
            ),
            // kubepods inside a kind node container: the pod wins over the node
            kube(
                format!("/system.slice/docker-{}.scope/kubepods/pod{UID}/{ID}", "0".repeat(64)),
                format!("/system.slice/docker-{}.scope/kubepods/pod{UID}/{ID}", "0".repeat(64)),
            ),
            // godwit
            same("/godwit.slice/redis.service".to_owned(), Runtime::Godwit, "redis", "redis"),
            same("/godwit/redis".to_owned(), Runtime::Godwit, "redis", "redis"),
            case(
                "/godwit/pg/workers".to_owned(),
                Runtime::Godwit,
                "pg",
                "pg",
                "/godwit/pg".to_owned(),
            ),
            same("/system.slice/godwit/cache".to_owned(), Runtime::Godwit, "cache", "cache"),
            // systemd
            same(
                "/system.slice/sshd.service".to_owned(),
                Runtime::Systemd,
                "sshd.service",
                "sshd.service",
            ),
            case(
                "/system.slice/foo.service/delegated/sub".to_owned(),
                Runtime::Systemd,
                "foo.service",
                "foo.service",
                "/system.slice/foo.service".to_owned(),
            ),
            same(
                "/system.slice/system-getty.slice/getty@tty1.service".to_owned(),
                Runtime::Systemd,
                "getty@tty1.service",
                "getty@tty1.service",
            ),
            same(
                "/user.slice/user-1000.slice/session-3.scope".to_owned(),
                Runtime::Systemd,
                "session-3.scope",
                "session-3.scope",
            ),
            same(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service".to_owned(),
                Runtime::Systemd,
                "foo.service",
                "foo.service",
            ),
            // a rootless conmon is not a container: it counts with the user's manager
            case(
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID}.scope"),
                Runtime::Systemd,
                "user@1000.service",
                "user@1000.service",
                "/user.slice/user-1000.slice/user@1000.service".to_owned(),
            ),
        ];
        for c in cases {
            let want = ContainerInfo {
                runtime: c.runtime,
                id: c.id,
                name: c.name,
                pod_uid: c.pod_uid.map(str::to_owned),
            };
            assert_eq!(classify(&c.path), Some(want), "{}", c.path);
            assert_eq!(container_root(&c.path), Some(c.root.as_str()), "{}", c.path);
        }
    }

    #[test]
    fn rejects_paths_that_are_not_containers() {
        let short_id = &ID[..12];
        let upper_id = ID.to_uppercase();
        let cases = [
            String::new(),
            "/".to_owned(),
            "/init.scope".to_owned(),
            "/system.slice".to_owned(),
            "/system.slice/.service".to_owned(),
            "/system.slice/foo.mount".to_owned(),
            "/user.slice/user-1000.slice".to_owned(),
            "/machine.slice/machine-qemu-1-vm.scope".to_owned(),
            "/godwit.slice".to_owned(),
            "/godwit.slice/redis.scope".to_owned(),
            format!("/system.slice/crio-conmon-{ID}.scope"),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/system.slice/docker-{short_id}.scope"),
            format!("/system.slice/docker-{upper_id}.scope"),
            "/docker/not-a-container".to_owned(),
            format!("/docker/{short_id}"),
            // not directly below a namespace
            format!("/a/b/{ID}"),
            "/k8s.io/redis".to_owned(),
            format!("/system.slice/{ID}"),
            // pod-level cgroups and conmon inside a pod
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
            ),
            format!("/kubepods/burstable/pod{UID}"),
            "/kubepods/burstable".to_owned(),
        ];
        for path in cases {
            assert_eq!(classify(&path), None, "{path}");
            assert_eq!(container_root(&path), None, "{path}");
        }
    }

    #[test]
    fn containerd_names() {
        let cases = [
            ("redis", true),
            ("a", true),
            ("my-app.v2_x", true),
            ("", false),
            ("-lead", false),
            ("trail.", false),
            ("double--dash", false),
            ("spa ce", false),
        ];
        for (name, want) in cases {
            assert_eq!(is_containerd_name(name), want, "{name:?}");
        }
    }
}
