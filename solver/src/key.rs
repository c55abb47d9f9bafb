//! Cache keys: the identity of an op's result.
//!
//! A key is the sha256 of one canonical JSON document: the op's definition with output-irrelevant fields removed,
//! the keys of its inputs, and the content digests of files it reads by content. serde_json writes struct fields in
//! declaration order and every collection here is a `Vec` in a meaningful order, so the encoding contains no
//! HashMap order, timestamp or host path. The golden test at the bottom pins exact digests: if it fails, the
//! encoding changed and every user's cache would be invalidated — bump [`KEY_VERSION`] on purpose instead.

use crate::graph::{ExecOp, Op};
use rbuild_types::Digest;
use serde::Serialize;

/// Bumped whenever the meaning of a key changes, so old cache entries are never confused with new ones. Version 2:
/// a step's inputs are named by their definition keys (portable), no longer by the layers they produced.
pub const KEY_VERSION: u32 = 2;

/// Variables that change how a step reaches the network, not what it produces (BuildKit's proxy build args), in
/// (UPPER, lower) pairs: a RUN sees both spellings of each.
pub const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// True for `KEY=value` entries whose key is a proxy variable.
pub fn is_proxy_env(entry: &str) -> bool {
    let name = entry.split_once('=').map_or(entry, |(k, _)| k);
    PROXY_VARS.contains(&name)
}

#[derive(Serialize)]
struct KeyDoc<'a> {
    v: u32,
    op: &'a Op,
    inputs: &'a [Digest],
    content: &'a [Digest],
}

/// The cache key of `op` given its inputs' keys and the content digests of what it selects from them.
pub fn cache_key(op: &Op, input_keys: &[Digest], content: &[Digest]) -> Digest {
    let stripped;
    let op = match op {
        Op::Exec(exec) if exec.env.iter().any(|e| is_proxy_env(e)) => {
            stripped = Op::Exec(ExecOp {
                env: exec.env.iter().filter(|e| !is_proxy_env(e)).cloned().collect(),
                ..exec.clone()
            });
            &stripped
        }
        other => other,
    };
    let doc = KeyDoc { v: KEY_VERSION, op, inputs: input_keys, content };
    // Serialising these plain data types cannot fail.
    Digest::of(&serde_json::to_vec(&doc).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{CopyAction, FileAction, FileOp, Network};

    fn exec(env: &[&str]) -> Op {
        Op::Exec(ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
            env: env.iter().map(|s| s.to_string()).collect(),
            cwd: "/src".into(),
            user: "app".into(),
            network: Network::Host,
            mounts: Vec::new(),
            settings: Vec::new(),
            hostname: String::new(),
            platform: None,
            insecure: false,
        })
    }

    /// Pins the encoding. If this fails, the key encoding changed: that invalidates every cache in the field, so
    /// only update these values together with a KEY_VERSION bump.
    #[test]
    fn golden_cache_keys() {
        let base: Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000001".parse().unwrap();
        let content = Digest::of(b"content");
        let cases: Vec<(&str, Digest)> = vec![
            ("scratch", cache_key(&Op::Scratch, &[], &[])),
            (
                "image",
                cache_key(
                    &Op::Image { reference: "127.0.0.1:5000/base/busybox:latest".into(), digest: base.clone() },
                    &[],
                    &[],
                ),
            ),
            ("context", cache_key(&Op::Context { name: "context".into() }, &[], &[])),
            ("exec", cache_key(&exec(&["PATH=/bin", "A=1"]), std::slice::from_ref(&base), &[])),
            (
                "copy",
                cache_key(
                    &Op::File(FileOp {
                        dest: Some(0),
                        actions: vec![FileAction::Copy(CopyAction {
                            src: 1,
                            sources: vec!["app/".into()],
                            dest: "/app/".into(),
                            chown: Some("app:app".into()),
                            chmod: Some(0o755),
                            extract_archives: false,
                            keep_owner: false,
                            excludes: vec!["*.md".into()],
                            dockerignore: Vec::new(),
                            parents: false,
                        })],
                    }),
                    &[base.clone(), base.clone()],
                    &[content],
                ),
            ),
            (
                "mkdir",
                cache_key(
                    &Op::File(FileOp {
                        dest: Some(0),
                        actions: vec![FileAction::Mkdir { path: "/app".into(), mode: 0o755, owner: None }],
                    }),
                    &[base],
                    &[],
                ),
            ),
        ];
        let got: Vec<String> = cases.iter().map(|(n, d)| format!("{n} {d}")).collect();
        let want = [
            "scratch sha256:18702be5b7f78405d69f3b3fa0c73ea9f23008e99fc573f6bcc03e2b728ffcab",
            "image sha256:9be5353b32adeadaa96bb7819991e4d3ebf25cd054cf778da3ac52e64afe0ae9",
            "context sha256:6de10342f0c937cb0d1e5094250d157e5aea4c45f10999bb2dadaca497296cb7",
            "exec sha256:3b126e59b87045f10b4bf3d5961c0004cfe7772bbb02be935fab003f44e66c02",
            "copy sha256:d1aa4dd07d2e53ef34d962185c1a59a6731f2ee10247063441ed9c84d02d8276",
            "mkdir sha256:035b9fcb2f942a4f9c919e98df59867770af9bdd1954c25e981bf7edbaab23a8",
        ];
        assert_eq!(got, want, "cache key encoding changed");
    }

    /// `RUN --security=insecure` is in the key (a privileged step can produce what a sandboxed one cannot); the
    /// sandboxed default stays out of the encoding, so the golden `exec` key above is unchanged.
    #[test]
    fn insecure_mode_changes_the_key() {
        let Op::Exec(mut op) = exec(&["PATH=/bin", "A=1"]) else { return };
        op.insecure = true;
        let base: Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000001".parse().unwrap();
        let key = cache_key(&Op::Exec(op), std::slice::from_ref(&base), &[]);
        assert_eq!(key.to_string(), "sha256:6ea67e36a483e077b1fe25008ec2544c6c6f52cd06fe5fa5532c656db2ae9542");
    }

    #[test]
    fn proxy_variables_do_not_change_the_key() {
        let k = |env: &[&str]| cache_key(&exec(env), &[], &[]);
        assert_eq!(k(&["A=1"]), k(&["A=1", "HTTP_PROXY=http://proxy:3128", "no_proxy=x"]));
        assert_ne!(k(&["A=1"]), k(&["A=2"]));
    }

    #[test]
    fn inputs_and_content_change_the_key() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let op = exec(&[]);
        assert_ne!(cache_key(&op, std::slice::from_ref(&a), &[]), cache_key(&op, std::slice::from_ref(&b), &[]));
        assert_ne!(cache_key(&op, &[], std::slice::from_ref(&a)), cache_key(&op, &[], std::slice::from_ref(&b)));
    }
}
