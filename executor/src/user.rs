//! Turning a Dockerfile `USER` value into the uid, gid and groups of the container process.
//!
//! The rules are Docker's (which are runc's `GetExecUser`), because a Dockerfile that works with `docker build`
//! must resolve to the same ids here: names come from the *image's* `/etc/passwd` and `/etc/group`, numeric ids
//! need no entry, and supplementary groups are only looked up when no group was given explicitly. The files are
//! read through [`resolve_in_root`] so a symlink in the image can never make us read a host file.

mod rootpath;

use std::io;
use std::path::{Path, PathBuf};

pub use rootpath::resolve_in_root;

/// The largest uid/gid Docker accepts (runc's `maxID`).
const MAX_ID: u32 = i32::MAX as u32;

/// The identity a container process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, in `/etc/group` order, without duplicates.
    pub additional_gids: Vec<u32>,
    /// The home directory from `/etc/passwd`, when the user has an entry there.
    pub home: Option<String>,
}

/// Why a `USER` value could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    #[error("unable to find user {name}: no matching entries in the image's /etc/passwd")]
    UnknownUser { name: String },
    #[error("unable to find group {name}: no matching entries in the image's /etc/group")]
    UnknownGroup { name: String },
    #[error("{what} id {value} is out of range (0..={MAX_ID})")]
    IdOutOfRange { what: &'static str, value: String },
    #[error("reading {path} of the image")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Resolves `user` (`""`, `name`, `uid`, each optionally followed by `:group` or `:gid`) against the
/// `/etc/passwd` and `/etc/group` of `rootfs`. A missing file counts as empty.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<ResolvedUser, UserError> {
    let passwd = read_in_root(rootfs, "/etc/passwd")?;
    let group = read_in_root(rootfs, "/etc/group")?;
    resolve_user_from(user, &parse_passwd(&passwd), &parse_group(&group))
}

/// The pure part of [`resolve_user`]: resolution against already parsed databases.
pub fn resolve_user_from(user: &str, passwd: &[PasswdEntry], groups: &[GroupEntry]) -> Result<ResolvedUser, UserError> {
    let (user_arg, group_arg) = match user.split_once(':') {
        // Like Docker, anything after a second colon is ignored.
        Some((u, rest)) => (u, rest.split(':').next().unwrap_or_default()),
        None => (user, ""),
    };
    let numeric_uid = parse_numeric(user_arg);
    let numeric_gid = parse_numeric(group_arg);

    let matched = passwd.iter().find(|entry| {
        if user_arg.is_empty() {
            entry.uid == 0
        } else if let Some(uid) = numeric_uid {
            entry.uid == uid
        } else {
            entry.name == user_arg
        }
    });

    let mut resolved = ResolvedUser::default();
    match matched {
        Some(entry) => {
            resolved.uid = entry.uid;
            resolved.gid = entry.gid;
            resolved.home = Some(entry.home.clone());
        }
        None if user_arg.is_empty() => {}
        None => {
            let uid = numeric_uid.ok_or_else(|| UserError::UnknownUser { name: user_arg.to_string() })?;
            resolved.uid = check_range("user", user_arg, uid)?;
        }
    }

    if !group_arg.is_empty() {
        let found = groups.iter().find(|g| match numeric_gid {
            Some(gid) => g.gid == gid,
            None => g.name == group_arg,
        });
        resolved.gid = match (found, numeric_gid) {
            (Some(g), _) => g.gid,
            (None, Some(gid)) => check_range("group", group_arg, gid)?,
            (None, None) => return Err(UserError::UnknownGroup { name: group_arg.to_string() }),
        };
    } else if let Some(entry) = matched {
        // Supplementary groups only exist in the implicit form, as with Docker.
        for g in groups.iter().filter(|g| g.members.contains(&entry.name)) {
            if !resolved.additional_gids.contains(&g.gid) {
                resolved.additional_gids.push(g.gid);
            }
        }
    }
    // The primary group is always among the supplementary ones too (`id` shows `groups=0(root)`), as in
    // BuildKit's containers; checked by the differential suite.
    if !resolved.additional_gids.contains(&resolved.gid) {
        resolved.additional_gids.insert(0, resolved.gid);
    }
    Ok(resolved)
}

/// Parses `/etc/passwd` text; malformed lines (bad ids, too few fields) are skipped, as libc would.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    records(text, 4)
        .filter_map(|fields| {
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields.get(5).copied().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    records(text, 3)
        .filter_map(|fields| {
            let members = fields
                .get(3)
                .map(|list| list.split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect())
                .unwrap_or_default();
            Some(GroupEntry { name: fields[0].to_string(), gid: fields[2].parse().ok()?, members })
        })
        .collect()
}

/// The colon-separated fields of each line of a passwd or group file with at least `min_fields` of them; blank
/// lines and comments are skipped.
fn records(text: &str, min_fields: usize) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split(':').collect::<Vec<&str>>())
        .filter(move |fields| fields.len() >= min_fields)
}

/// A decimal id. Docker would also parse a sign and then reject negative ids; here they are names, unknown ones.
fn parse_numeric(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits that overflow u32 are still "numeric"; map them past MAX_ID so the range check rejects them.
    Some(s.parse::<u32>().unwrap_or(u32::MAX))
}

fn check_range(what: &'static str, text: &str, id: u32) -> Result<u32, UserError> {
    if id > MAX_ID {
        return Err(UserError::IdOutOfRange { what, value: text.to_string() });
    }
    Ok(id)
}

/// Reads a file of the image, resolving symlinks inside `rootfs`; a missing file reads as empty.
fn read_in_root(rootfs: &Path, path: &str) -> Result<String, UserError> {
    let host = resolve_in_root(rootfs, Path::new(path))
        .map_err(|source| UserError::Read { path: PathBuf::from(path), source })?;
    match std::fs::read(&host) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(UserError::Read { path: PathBuf::from(path), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1::/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
broken:x:notanumber:1::/:/bin/sh
dup:x:1000:5::/dup:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";

    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,app
app:x:1000:
audio:x:29: app , other
staff:x:50:other
video:x:44:app
wheel2:x:10:app
nogroup:x:65534:
";

    fn resolve(user: &str) -> Result<ResolvedUser, UserError> {
        resolve_user_from(user, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    fn ids(uid: u32, gid: u32, sgids: &[u32], home: Option<&str>) -> ResolvedUser {
        ResolvedUser { uid, gid, additional_gids: sgids.to_vec(), home: home.map(String::from) }
    }

    #[test]
    fn resolution_table() {
        let cases: &[(&str, ResolvedUser)] = &[
            ("", ids(0, 0, &[0, 10], Some("/root"))),
            ("root", ids(0, 0, &[0, 10], Some("/root"))),
            ("0", ids(0, 0, &[0, 10], Some("/root"))),
            ("app", ids(1000, 1000, &[1000, 10, 29, 44], Some("/home/app"))),
            ("1000", ids(1000, 1000, &[1000, 10, 29, 44], Some("/home/app"))),
            ("app:staff", ids(1000, 50, &[50], Some("/home/app"))),
            ("app:29", ids(1000, 29, &[29], Some("/home/app"))),
            ("app:4242", ids(1000, 4242, &[4242], Some("/home/app"))),
            ("4242", ids(4242, 0, &[0], None)),
            ("4242:4343", ids(4242, 4343, &[4343], None)),
            ("4242:audio", ids(4242, 29, &[29], None)),
            ("nobody", ids(65534, 65534, &[65534], Some("/nonexistent"))),
            ("daemon:", ids(1, 1, &[1], Some("/usr/sbin"))),
        ];
        for (input, want) in cases {
            let got = resolve(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(&got, want, "USER {input:?}");
        }
    }

    #[test]
    fn unknown_user_is_named_in_the_error() {
        let err = resolve("ghost").expect_err("unknown");
        assert!(matches!(&err, UserError::UnknownUser { name } if name == "ghost"), "{err:?}");
        assert!(err.to_string().contains("ghost"));
        // A malformed passwd line must not make its name resolvable.
        assert!(matches!(resolve("broken"), Err(UserError::UnknownUser { .. })));
    }

    #[test]
    fn unknown_group_is_named_in_the_error() {
        let err = resolve("app:ghosts").expect_err("unknown group");
        assert!(matches!(&err, UserError::UnknownGroup { name } if name == "ghosts"), "{err:?}");
    }

    #[test]
    fn out_of_range_ids_are_rejected() {
        assert!(matches!(resolve("4294967296"), Err(UserError::IdOutOfRange { what: "user", .. })));
        assert!(matches!(resolve("2147483648"), Err(UserError::IdOutOfRange { .. })));
        assert!(matches!(resolve("1:99999999999"), Err(UserError::IdOutOfRange { what: "group", .. })));
        assert_eq!(resolve("2147483647").expect("max id").uid, 2147483647);
        // A negative number is a name, and there is no such user.
        assert!(matches!(resolve("-1"), Err(UserError::UnknownUser { .. })));
    }

    #[test]
    fn empty_databases_allow_only_numeric_and_root() {
        assert_eq!(resolve_user_from("", &[], &[]).expect("root"), ids(0, 0, &[0], None));
        assert_eq!(resolve_user_from("7:8", &[], &[]).expect("numeric"), ids(7, 8, &[8], None));
        assert!(resolve_user_from("root", &[], &[]).is_err());
    }

    #[test]
    fn reads_files_through_symlinks_inside_the_rootfs() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("data")).expect("mkdir");
        std::fs::write(root.path().join("data/passwd"), "svc:x:77:88::/srv:/bin/sh\n").expect("write");
        std::fs::write(root.path().join("data/group"), "extra:x:99:svc\n").expect("write");
        std::os::unix::fs::symlink("/data", root.path().join("etc")).expect("symlink");
        assert_eq!(resolve_user(root.path(), "svc").expect("svc"), ids(77, 88, &[88, 99], Some("/srv")));
        // No files at all: numeric works, names do not.
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(resolve_user(empty.path(), "5").expect("numeric"), ids(5, 0, &[0], None));
        assert!(matches!(resolve_user(empty.path(), "svc"), Err(UserError::UnknownUser { .. })));
    }
}
