//! What a service's process is started from: its image made ready (a directory, a tarball
//! unpacked, or an image of the store written out) and its command.

use std::path::{Path, PathBuf};

use super::error::ServiceError;
use super::spec::ServiceSpec;
use super::status::Runtime;

/// The service's process as every start runs it: program, arguments (`{state}` and
/// `{image}` substituted), environment and pipes, in a process group of its own. Returns the
/// command (without a current directory or cgroup), the program and the directory it runs in.
pub(super) fn command(
    spec: &ServiceSpec,
    image: Option<&Path>,
    state_dir: &Path,
) -> (tokio::process::Command, PathBuf, PathBuf) {
    let image_dir = image.unwrap_or(Path::new("/"));
    let subst = |a: &str| {
        a.replace("{state}", &state_dir.display().to_string())
            .replace("{image}", &image_dir.display().to_string())
    };
    let argv: Vec<String> = spec.command.iter().map(|a| subst(a)).collect();
    let program = resolve_program(&argv[0], image);
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&argv[1..])
        .envs(&spec.env)
        .env("GODWIT_SERVICE", &spec.name)
        .env("GODWIT_STATE_DIR", state_dir)
        .env("GODWIT_IMAGE_DIR", image_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    let cwd = image.unwrap_or(state_dir).to_path_buf();
    (cmd, program, cwd)
}

/// An image ready to run from.
pub(super) struct PreparedImage {
    /// Where it is written out.
    pub dir: PathBuf,
    /// Its content hash, when the store holds it.
    pub id: Option<String>,
}

/// Imports the spec's image into the store (content-addressed) and writes it out once per
/// content to run from. Without a store, a directory image runs in place.
pub(super) fn prepare_image(
    rt: &Runtime,
    spec: &ServiceSpec,
) -> Result<Option<PreparedImage>, ServiceError> {
    if let Some(id) = &spec.image_id {
        let store = rt.images.as_ref().ok_or_else(|| {
            ServiceError::Image("image_id needs the image store, which is off here".into())
        })?;
        let digest =
            godwit_image::Digest::parse(id).map_err(|e| ServiceError::Image(e.to_string()))?;
        if !store.has_image(&digest) {
            return Err(ServiceError::Spec {
                service: spec.name.clone(),
                field: "image_id".into(),
                reason: format!("no image {id} in this node's store (push it first)"),
            });
        }
        let dir = rt.run_root.join(id);
        if !dir.exists() {
            std::fs::create_dir_all(&rt.run_root).map_err(|e| ServiceError::io(&rt.run_root, e))?;
            match store.export(&digest, &dir) {
                Ok(()) | Err(godwit_image::ImageError::Exists(_)) => {}
                Err(e) => return Err(ServiceError::Image(e.to_string())),
            }
        }
        return Ok(Some(PreparedImage {
            dir,
            id: Some(id.clone()),
        }));
    }
    let Some(image) = &spec.image else {
        return Ok(None);
    };
    let unpacked;
    let src: &Path = if image.is_dir() {
        image
    } else {
        // A tarball: unpack it next to the run directory first.
        let tmp = rt
            .run_root
            .join(format!(".unpack-{}-{}", spec.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| ServiceError::io(&tmp, e))?;
        let out = std::process::Command::new("tar")
            .arg("-xf")
            .arg(image)
            .arg("-C")
            .arg(&tmp)
            .output()
            .map_err(|e| ServiceError::Image(format!("cannot run tar: {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ServiceError::Spec {
                service: spec.name.clone(),
                field: "image".into(),
                reason: format!(
                    "{}: {}",
                    image.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        unpacked = tmp;
        &unpacked
    };
    let result = match &rt.images {
        None => Ok(Some(PreparedImage {
            dir: src.to_path_buf(),
            id: None,
        })),
        Some(store) => {
            let (id, _) = store
                .import_dir(src)
                .map_err(|e| ServiceError::Image(e.to_string()))?;
            let dir = rt.run_root.join(id.as_str());
            if !dir.exists() {
                std::fs::create_dir_all(&rt.run_root)
                    .map_err(|e| ServiceError::io(&rt.run_root, e))?;
                match store.export(&id, &dir) {
                    Ok(()) => {}
                    // Written out meanwhile by another service of the same image.
                    Err(godwit_image::ImageError::Exists(_)) => {}
                    Err(e) => return Err(ServiceError::Image(e.to_string())),
                }
            }
            Ok(Some(PreparedImage {
                dir,
                id: Some(id.to_string()),
            }))
        }
    };
    if !image.is_dir() {
        let _ = std::fs::remove_dir_all(src);
    }
    result
}

/// The program to run for `argv0`: a relative path (`bin/server`) is in the image; a bare
/// name (`server`) is the image's file of that name when there is one, else found on `PATH`
/// (left for exec to look up); an absolute path is itself.
fn resolve_program(argv0: &str, image: Option<&Path>) -> PathBuf {
    let path = Path::new(argv0);
    match image {
        Some(dir) if path.is_relative() && argv0.contains('/') => dir.join(path),
        Some(dir) if !argv0.contains('/') && dir.join(path).is_file() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_looked_up_in_the_image_then_on_the_path() {
        let image = tempfile::tempdir().unwrap();
        std::fs::create_dir(image.path().join("bin")).unwrap();
        std::fs::write(image.path().join("server"), "#!/bin/sh\n").unwrap();
        std::fs::write(image.path().join("bin/tool"), "#!/bin/sh\n").unwrap();
        let img = Some(image.path());
        // A bare name the image has: the image's file.
        assert_eq!(resolve_program("server", img), image.path().join("server"));
        // A bare name it has not: left to PATH.
        assert_eq!(resolve_program("sleep", img), PathBuf::from("sleep"));
        // A directory of that name is not a program.
        assert_eq!(resolve_program("bin", img), PathBuf::from("bin"));
        // Relative paths are in the image, absolute ones are themselves.
        assert_eq!(
            resolve_program("bin/tool", img),
            image.path().join("bin/tool")
        );
        assert_eq!(
            resolve_program("/bin/sleep", img),
            PathBuf::from("/bin/sleep")
        );
        // Without an image, every name is itself.
        assert_eq!(resolve_program("server", None), PathBuf::from("server"));
    }
}
