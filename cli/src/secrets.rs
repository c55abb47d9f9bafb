//! `--secret` and `--ssh`: read once here, handed to the worker, never put into the build graph.
//!
//! The syntax is docker buildx's: `--secret id=NAME,src=FILE` (or `source=`, `type=file`), `--secret
//! id=NAME,env=VAR` (or `type=env`, where the variable defaults to the id), and a bare `--secret id=NAME` taking
//! the variable NAME if it is set; `--ssh ID[=SOCKET]` with `default` taking `$SSH_AUTH_SOCK`. Only agent
//! sockets are forwarded (buildx can also load key files into an agent of its own; rbuild does not).

use anyhow::{Context as _, Result, bail};
use rbuild_builder::{MountSources, SecretValue};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

/// Reads the secrets and agent sockets named on the command line. `getenv` looks up environment variables.
pub fn mount_sources(
    secrets: &[String],
    ssh: &[String],
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<MountSources> {
    let mut out = MountSources::default();
    for spec in secrets {
        let (id, value) = read_secret(spec, getenv)?;
        out.secrets.insert(id, value);
    }
    for spec in ssh {
        let (id, socket) = match spec.split_once('=') {
            Some((id, path)) => (id.to_string(), PathBuf::from(path)),
            None => {
                let sock = getenv("SSH_AUTH_SOCK").filter(|s| !s.is_empty()).with_context(|| {
                    format!("--ssh {spec}: SSH_AUTH_SOCK is not set; give the agent socket as --ssh {spec}=SOCKET")
                })?;
                (spec.clone(), PathBuf::from(sock))
            }
        };
        if id.is_empty() {
            bail!("--ssh {spec:?}: the id is empty");
        }
        if socket.as_os_str().to_string_lossy().contains(',') {
            bail!("--ssh {spec:?}: only one agent socket per id is supported");
        }
        let meta = std::fs::metadata(&socket).with_context(|| format!("--ssh {id}: {}", socket.display()))?;
        if !meta.file_type().is_socket() {
            bail!("--ssh {id}: {} is not an agent socket (key files are not supported)", socket.display());
        }
        out.ssh.insert(id, socket);
    }
    Ok(out)
}

fn read_secret(spec: &str, getenv: &dyn Fn(&str) -> Option<String>) -> Result<(String, SecretValue)> {
    let (mut id, mut typ, mut src, mut env) = (None, None, None, None);
    // Quoted as buildx quotes it: `"src=a,b"` is one field.
    let fields = rbuild_types::csv::split_record(spec).with_context(|| format!("--secret {spec:?}"))?;
    for field in &fields {
        let (k, v) = field.split_once('=').with_context(|| format!("--secret {spec:?}: expected key=value"))?;
        match k.to_ascii_lowercase().as_str() {
            "id" => id = Some(v.to_string()),
            "type" => typ = Some(v.to_ascii_lowercase()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            other => bail!("--secret {spec:?}: unknown key {other:?} (keys are id, type, src, env)"),
        }
    }
    let id = id.filter(|i| !i.is_empty()).with_context(|| format!("--secret {spec:?}: id= is required"))?;
    let from_env = |var: &str| -> Result<SecretValue> {
        getenv(var)
            .map(|v| SecretValue::new(v.into_bytes()))
            .with_context(|| format!("--secret id={id}: the environment variable {var} is not set"))
    };
    let from_file = |path: &str| -> Result<SecretValue> {
        std::fs::read(path).map(SecretValue::new).with_context(|| format!("--secret id={id}: reading {path}"))
    };
    let value = match (typ.as_deref(), src, env) {
        (_, Some(_), Some(_)) => bail!("--secret id={id}: give either src= or env=, not both"),
        (Some("env"), Some(var), None) | (_, None, Some(var)) => from_env(&var)?,
        (Some("env"), None, None) => from_env(&id)?,
        (None | Some("file"), Some(path), None) => from_file(&path)?,
        (Some("file"), None, None) => from_file(&id)?,
        (None, None, None) => match getenv(&id) {
            Some(v) => SecretValue::new(v.into_bytes()),
            None => bail!("--secret id={id}: give src=FILE or env=VAR"),
        },
        (Some(other), _, _) => bail!("--secret id={id}: unknown type {other:?} (file or env)"),
    };
    Ok((id, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("from-env".into()),
            "plain" => Some("by-id".into()),
            _ => None,
        }
    }

    #[test]
    fn secrets_from_files_and_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s");
        std::fs::write(&file, "from-file").expect("write");
        let specs = [
            format!("id=a,src={}", file.display()),
            format!("type=file,id=b,source={}", file.display()),
            "id=c,env=TOKEN".to_string(),
            "type=env,id=TOKEN".to_string(),
            "id=plain".to_string(),
        ];
        let got = mount_sources(&specs, &[], &env).expect("parse");
        let value = |id: &str| String::from_utf8_lossy(got.secrets[id].bytes()).into_owned();
        assert_eq!(value("a"), "from-file");
        assert_eq!(value("b"), "from-file");
        assert_eq!(value("c"), "from-env");
        assert_eq!(value("TOKEN"), "from-env");
        assert_eq!(value("plain"), "by-id");
    }

    #[test]
    fn bad_secrets_say_why() {
        for (spec, want) in [
            ("src=/x", "id= is required"),
            ("id=a,env=NOPE", "NOPE is not set"),
            ("id=a,src=/nonexistent/file", "reading /nonexistent/file"),
            ("id=a,src=/x,env=TOKEN", "not both"),
            ("id=a,type=vault", "unknown type"),
            ("id=a,colour=red", "unknown key"),
            ("id=missing", "give src=FILE or env=VAR"),
        ] {
            let err = mount_sources(&[spec.to_string()], &[], &env).err().map(|e| format!("{e:#}"));
            assert!(err.as_deref().is_some_and(|e| e.contains(want)), "{spec}: {err:?}");
        }
    }

    #[test]
    fn ssh_sockets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let with_sock = |name: &str| (name == "SSH_AUTH_SOCK").then(|| sock.display().to_string());
        let got = mount_sources(&[], &["default".into()], &with_sock).expect("default");
        assert_eq!(got.ssh["default"], sock);
        let got = mount_sources(&[], &[format!("gh={}", sock.display())], &env).expect("explicit");
        assert_eq!(got.ssh["gh"], sock);
        let err = mount_sources(&[], &["default".into()], &env).err().map(|e| format!("{e:#}"));
        assert!(err.is_some_and(|e| e.contains("SSH_AUTH_SOCK is not set")));
        let file = dir.path().join("key");
        std::fs::write(&file, "k").expect("write");
        let err = mount_sources(&[], &[format!("default={}", file.display())], &env).err().map(|e| format!("{e:#}"));
        assert!(err.is_some_and(|e| e.contains("not an agent socket")));
    }
}
