//! `RUN --mount` flag values: BuildKit's syntax and defaults, turned into the graph's [`ExecMount`]s.
//!
//! The value is one CSV record (so a field may be quoted to contain a comma) of `key=value` fields, plus bare
//! boolean keys (`readonly`, `rw`, `required`). Values are expanded with the stage's ARGs and ENV first, as
//! BuildKit does, and relative targets are taken from the working directory. Where a mount reads another stage,
//! an image or the build context is decided by the converter (it owns the graph); this module only reports the
//! `from` it was given, so parsing stays a pure function that tests can call on strings.

use rbuild_solver::{CacheSharing, ExecMount};

/// Mount types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    fn parse(s: &str) -> Option<MountType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "bind" => MountType::Bind,
            "cache" => MountType::Cache,
            "tmpfs" => MountType::Tmpfs,
            "secret" => MountType::Secret,
            "ssh" => MountType::Ssh,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// One parsed `--mount`, defaults applied, with `from` still a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub typ: MountType,
    /// Absolute (joined with the working directory). `None` only for a secret exposed through `env` alone.
    pub target: Option<String>,
    /// The path inside `from` (bind, cache); relative to its root.
    pub source: String,
    /// A stage name or index, or an image; `None` means the build context (bind) or an empty directory (cache).
    pub from: Option<String>,
    /// Secret, SSH agent or cache id.
    pub id: String,
    pub readonly: bool,
    pub sharing: CacheSharing,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub required: bool,
    pub env: Option<String>,
    pub size: Option<u64>,
}

/// A `--mount` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --mount {:?}: {reason}", shorten(.value))]
pub struct MountError {
    pub value: String,
    pub reason: String,
    pub hint: Option<&'static str>,
}

/// A value as shown in an error: at most 200 characters of it.
fn shorten(value: &str) -> String {
    if value.chars().count() <= 200 {
        value.to_string()
    } else {
        format!("{}...", value.chars().take(197).collect::<String>())
    }
}

/// The default target of the `n`th SSH mount of a step.
pub fn default_ssh_target(n: usize) -> String {
    format!("/run/buildkit/ssh_agent.{n}")
}

/// Parses one `--mount` value. `expand` expands variables in a value; `workdir` resolves relative targets;
/// `ssh_index` is how many SSH mounts came before this one in the same RUN (for the default socket path).
pub fn parse_mount(
    value: &str,
    workdir: &str,
    ssh_index: usize,
    expand: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<MountSpec, MountError> {
    let fail = |reason: String, hint: Option<&'static str>| MountError { value: value.to_string(), reason, hint };
    let fields = split_csv(value).map_err(|r| fail(r, None))?;

    // The type decides the defaults of other keys, wherever it is written.
    let mut typ = MountType::Bind;
    for field in &fields {
        if let Some((k, v)) = field.split_once('=')
            && k.eq_ignore_ascii_case("type")
        {
            let v = expand(v).map_err(|r| fail(r, None))?;
            typ = MountType::parse(&v).ok_or_else(|| {
                fail(format!("unsupported mount type {v:?}"), Some("types are bind, cache, tmpfs, secret and ssh"))
            })?;
        }
    }

    let mut target: Option<String> = None;
    let mut source: Option<String> = None;
    let mut from: Option<String> = None;
    let mut id: Option<String> = None;
    let mut readonly: Option<bool> = None;
    let mut sharing = CacheSharing::Shared;
    let mut mode: Option<u32> = None;
    let (mut uid, mut gid) = (0u32, 0u32);
    let mut required = false;
    let mut env: Option<String> = None;
    let mut size: Option<u64> = None;

    let only = |allowed: &[MountType], key: &str| {
        if allowed.contains(&typ) {
            Ok(())
        } else {
            Err(fail(format!("{key} is not allowed for type={}", typ.name()), None))
        }
    };
    for field in &fields {
        let Some((key, raw)) = field.split_once('=') else {
            match field.to_ascii_lowercase().as_str() {
                "readonly" | "ro" => readonly = Some(true),
                "readwrite" | "rw" => readonly = Some(false),
                "required" => {
                    only(&[MountType::Secret, MountType::Ssh], "required")?;
                    required = true;
                }
                other => return Err(fail(format!("unexpected key {other:?}"), Some("fields look like key=value"))),
            }
            continue;
        };
        let key = key.to_ascii_lowercase();
        // BuildKit resolves stage dependencies before expanding anything, so `from` must be literal.
        if key == "from" && raw.contains('$') {
            return Err(fail(
                "'from' doesn't support variable expansion, define alias stage instead".into(),
                Some("name the stage with FROM <image> AS <name> and use from=<name>"),
            ));
        }
        let v = expand(raw).map_err(|r| fail(r, None))?;
        let boolean = |v: &str| parse_bool(v).ok_or_else(|| fail(format!("{key}={v:?} is not a boolean"), None));
        let number = |v: &str| v.parse::<u32>().map_err(|_| fail(format!("{key}={v:?} is not a number"), None));
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => target = Some(v),
            "source" | "src" => {
                only(&[MountType::Bind, MountType::Cache, MountType::Secret], "source")?;
                source = Some(v);
            }
            "from" => {
                only(&[MountType::Bind, MountType::Cache], "from")?;
                from = Some(v);
            }
            "readonly" | "ro" => readonly = Some(boolean(&v)?),
            "readwrite" | "rw" => readonly = Some(!boolean(&v)?),
            "required" => {
                only(&[MountType::Secret, MountType::Ssh], "required")?;
                required = boolean(&v)?;
            }
            "id" => {
                only(&[MountType::Cache, MountType::Secret, MountType::Ssh], "id")?;
                id = Some(v);
            }
            "sharing" => {
                only(&[MountType::Cache], "sharing")?;
                sharing = match v.to_ascii_lowercase().as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    _ => {
                        return Err(fail(
                            format!("unknown sharing mode {v:?}"),
                            Some("sharing is shared, private or locked"),
                        ));
                    }
                };
            }
            "mode" => {
                only(&[MountType::Cache, MountType::Secret, MountType::Ssh], "mode")?;
                mode = Some(
                    u32::from_str_radix(&v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| fail(format!("mode={v:?} is not an octal mode"), Some("e.g. mode=0755")))?,
                );
            }
            "uid" => {
                only(&[MountType::Cache, MountType::Secret, MountType::Ssh], "uid")?;
                uid = number(&v)?;
            }
            "gid" => {
                only(&[MountType::Cache, MountType::Secret, MountType::Ssh], "gid")?;
                gid = number(&v)?;
            }
            "env" => {
                only(&[MountType::Secret], "env")?;
                if v.is_empty() || v.contains('=') {
                    return Err(fail(format!("env={v:?} is not a variable name"), None));
                }
                env = Some(v);
            }
            "size" => {
                only(&[MountType::Tmpfs], "size")?;
                size = Some(parse_size(&v).ok_or_else(|| {
                    fail(format!("size={v:?} is not a size"), Some("sizes look like 65536, 64k, 512m, 1g"))
                })?);
            }
            other => {
                return Err(fail(
                    format!("unexpected key {other:?}"),
                    Some("see `RUN --mount` in the Dockerfile reference"),
                ));
            }
        }
    }

    let target = target.filter(|t| !t.is_empty()).map(|t| crate::convert::join_path(workdir, &t));
    if target.as_deref() == Some("/") {
        return Err(fail("a mount cannot replace the root filesystem".into(), Some("choose a target below /")));
    }
    // Without a target, BuildKit mounts at the working directory (moby's own Dockerfile relies on it).
    let need_target = |t: Option<String>| match t {
        Some(t) => Ok(t),
        None if workdir != "/" && !workdir.is_empty() => Ok(crate::convert::join_path("/", workdir)),
        None => Err(fail(format!("type={} needs a target", typ.name()), Some("add target=/path"))),
    };
    let spec = match typ {
        MountType::Bind => MountSpec {
            typ,
            target: Some(need_target(target)?),
            source: source.unwrap_or_default(),
            from,
            id: String::new(),
            readonly: readonly.unwrap_or(true),
            sharing,
            mode: 0,
            uid: 0,
            gid: 0,
            required: false,
            env: None,
            size: None,
        },
        MountType::Cache => {
            let target = need_target(target)?;
            MountSpec {
                id: id.filter(|i| !i.is_empty()).unwrap_or_else(|| target.clone()),
                typ,
                target: Some(target),
                source: source.unwrap_or_default(),
                from,
                readonly: readonly.unwrap_or(false),
                sharing,
                mode: mode.unwrap_or(0o755),
                uid,
                gid,
                required: false,
                env: None,
                size: None,
            }
        }
        MountType::Tmpfs => MountSpec {
            typ,
            target: Some(need_target(target)?),
            source: String::new(),
            from: None,
            id: String::new(),
            readonly: false,
            sharing,
            mode: 0,
            uid: 0,
            gid: 0,
            required: false,
            env: None,
            size,
        },
        MountType::Secret => {
            let id = id.or(source).filter(|i| !i.is_empty()).or_else(|| {
                target.as_deref().and_then(|t| t.rsplit('/').next()).filter(|b| !b.is_empty()).map(str::to_string)
            });
            let Some(id) = id else {
                return Err(fail("type=secret needs an id or a target".into(), Some("add id=NAME")));
            };
            let target = match (target, &env) {
                (Some(t), _) => Some(t),
                (None, Some(_)) => None,
                (None, None) => Some(format!("/run/secrets/{id}")),
            };
            MountSpec {
                typ,
                target,
                source: String::new(),
                from: None,
                id,
                readonly: true,
                sharing,
                mode: mode.unwrap_or(0o400),
                uid,
                gid,
                required,
                env,
                size: None,
            }
        }
        MountType::Ssh => MountSpec {
            typ,
            target: Some(target.unwrap_or_else(|| default_ssh_target(ssh_index))),
            source: String::new(),
            from: None,
            id: id.filter(|i| !i.is_empty()).unwrap_or_else(|| "default".into()),
            readonly: true,
            sharing,
            mode: mode.unwrap_or(0o600),
            uid,
            gid,
            required,
            env: None,
            size: None,
        },
    };
    Ok(spec)
}

impl MountSpec {
    /// The graph's mount; `input` is the vertex input that `from` (or the context copy) became, if any.
    pub fn to_exec_mount(&self, input: Option<usize>) -> ExecMount {
        let target = self.target.clone().unwrap_or_default();
        match self.typ {
            MountType::Bind => ExecMount::Bind {
                target,
                input: input.unwrap_or(0),
                source: clean_source(&self.source),
                readonly: self.readonly,
            },
            MountType::Cache => ExecMount::Cache {
                target,
                id: self.id.clone(),
                sharing: self.sharing,
                from: input,
                source: clean_source(&self.source),
                mode: self.mode,
                uid: self.uid,
                gid: self.gid,
                readonly: self.readonly,
            },
            MountType::Tmpfs => ExecMount::Tmpfs { target, size: self.size },
            MountType::Secret => ExecMount::Secret {
                id: self.id.clone(),
                target: self.target.clone(),
                env: self.env.clone(),
                required: self.required,
                mode: self.mode,
                uid: self.uid,
                gid: self.gid,
            },
            MountType::Ssh => ExecMount::Ssh {
                id: self.id.clone(),
                target,
                required: self.required,
                mode: self.mode,
                uid: self.uid,
                gid: self.gid,
            },
        }
    }
}

/// A source path as a clean absolute path inside its root (`""`, `.` and `/` are all the root).
fn clean_source(source: &str) -> String {
    crate::convert::join_path("/", source)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Some(true),
        "0" | "f" | "false" => Some(false),
        _ => None,
    }
}

/// Bytes, with an optional binary unit, as Docker's `RAMInBytes` reads them (see [`rbuild_types::units`]).
pub fn parse_size(v: &str) -> Option<u64> {
    rbuild_types::units::ram_in_bytes(v)
}

/// Splits one CSV record (see [`rbuild_types::csv`]); empty fields are dropped, as BuildKit does.
fn split_csv(s: &str) -> Result<Vec<String>, String> {
    let fields = rbuild_types::csv::split_record(s).map_err(|e| e.to_string())?;
    Ok(fields.into_iter().filter(|f| !f.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<MountSpec, MountError> {
        parse_at(v, "/work")
    }

    fn parse_at(v: &str, workdir: &str) -> Result<MountSpec, MountError> {
        parse_mount(v, workdir, 0, &mut |s: &str| Ok(s.replace("$HOME", "/root")))
    }

    #[test]
    fn cache_defaults() {
        let m = parse("type=cache,target=/root/.cache").expect("parse");
        assert_eq!(m.typ, MountType::Cache);
        assert_eq!(m.id, "/root/.cache", "the id defaults to the target");
        assert_eq!((m.sharing, m.mode, m.uid, m.gid, m.readonly), (CacheSharing::Shared, 0o755, 0, 0, false));
        let m = parse("type=cache,id=go,target=$HOME/go,sharing=locked,mode=0700,uid=1000,gid=50,ro").expect("parse");
        assert_eq!(m.target.as_deref(), Some("/root/go"), "values are expanded");
        assert_eq!((m.id.as_str(), m.sharing, m.mode, m.uid, m.gid), ("go", CacheSharing::Locked, 0o700, 1000, 50));
        assert!(m.readonly);
    }

    #[test]
    fn relative_targets_are_taken_from_the_workdir() {
        assert_eq!(
            parse("type=cache,target=node_modules").expect("parse").target.as_deref(),
            Some("/work/node_modules")
        );
        assert_eq!(parse_at("type=tmpfs,dst=./t", "/").expect("parse").target.as_deref(), Some("/t"));
    }

    #[test]
    fn a_missing_target_is_the_working_directory() {
        let m = parse_at("from=src,src=/usr/src/delve,rw", "/usr/src/delve").expect("parse");
        assert_eq!((m.target.as_deref(), m.readonly), (Some("/usr/src/delve"), false));
        assert!(parse_at("type=cache", "/").is_err(), "not at /");
    }

    #[test]
    fn bind_is_default_type_and_readonly_unless_rw() {
        let m = parse("target=/src").expect("parse");
        assert_eq!((m.typ, m.readonly, m.from.as_deref()), (MountType::Bind, true, None));
        let m = parse("type=bind,from=builder,source=/out,target=/in,rw").expect("parse");
        assert_eq!((m.readonly, m.from.as_deref(), m.source.as_str()), (false, Some("builder"), "/out"));
        assert_eq!(
            m.to_exec_mount(Some(2)),
            ExecMount::Bind { target: "/in".into(), input: 2, source: "/out".into(), readonly: false }
        );
        let m = parse("type=bind,target=/in,readwrite=true").expect("parse");
        assert!(!m.readonly);
    }

    #[test]
    fn secret_defaults() {
        let m = parse("type=secret,id=npmrc").expect("parse");
        assert_eq!((m.target.as_deref(), m.mode, m.required), (Some("/run/secrets/npmrc"), 0o400, false));
        let m = parse("type=secret,target=/etc/token,required").expect("parse");
        assert_eq!((m.id.as_str(), m.required), ("token", true), "the id defaults to the target's name");
        let m = parse("type=secret,id=tok,env=TOKEN").expect("parse");
        assert_eq!((m.target, m.env.as_deref()), (None, Some("TOKEN")), "env alone mounts no file");
        let m = parse("type=secret,id=tok,env=TOKEN,target=/t,required=false,mode=0440,uid=1,gid=2").expect("parse");
        assert_eq!(
            m.to_exec_mount(None),
            ExecMount::Secret {
                id: "tok".into(),
                target: Some("/t".into()),
                env: Some("TOKEN".into()),
                required: false,
                mode: 0o440,
                uid: 1,
                gid: 2,
            }
        );
        assert!(parse("type=secret").is_err());
    }

    #[test]
    fn ssh_defaults() {
        let m = parse_mount("type=ssh", "/", 1, &mut |s: &str| Ok(s.to_string())).expect("parse");
        assert_eq!((m.id.as_str(), m.target.as_deref(), m.mode), ("default", Some("/run/buildkit/ssh_agent.1"), 0o600));
        let m = parse("type=ssh,id=gh,target=/agent.sock,required").expect("parse");
        assert_eq!((m.id.as_str(), m.target.as_deref(), m.required), ("gh", Some("/agent.sock"), true));
    }

    #[test]
    fn tmpfs_size_units() {
        assert_eq!(parse("type=tmpfs,target=/t,size=64m").expect("parse").size, Some(64 << 20));
        assert_eq!(parse("type=tmpfs,target=/t").expect("parse").size, None);
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("2x"), None);
        assert_eq!(parse_size("m"), None);
    }

    #[test]
    fn quoted_fields_may_hold_commas() {
        let m = parse("type=bind,\"target=/a,b\",source=x").expect("parse");
        assert_eq!((m.target.as_deref(), m.source.as_str()), (Some("/a,b"), "x"));
        assert_eq!(split_csv("a,\"b\"\"c\",d").expect("csv"), ["a", "b\"c", "d"]);
        assert!(split_csv("\"open").is_err());
    }

    #[test]
    fn bad_values_are_rejected_with_reasons() {
        for (value, reason) in [
            ("type=volume,target=/x", "unsupported mount type"),
            ("type=cache,target=/x,sharing=sometimes", "unknown sharing mode"),
            ("type=cache,target=/x,mode=999", "octal"),
            ("type=tmpfs,target=/x,from=a", "from is not allowed"),
            ("type=bind,target=/x,env=A", "env is not allowed"),
            ("type=bind,target=/x,required", "required is not allowed"),
            ("type=cache,target=/x,uid=me", "not a number"),
            ("type=bind,target=/x,bogus=1", "unexpected key"),
            ("type=bind,target=/x,bogus", "unexpected key"),
            ("type=bind,target=/", "root filesystem"),
            ("type=bind,target=/x,ro=maybe", "not a boolean"),
        ] {
            let err = parse(value).expect_err(value);
            assert!(err.reason.contains(reason), "{value}: {}", err.reason);
        }
    }

    #[test]
    fn expansion_errors_surface() {
        let err = parse_mount("type=cache,target=${X:?unset}", "/", 0, &mut |_| Err("X: unset".into()))
            .expect_err("expansion fails");
        assert_eq!(err.reason, "X: unset");
    }
}
