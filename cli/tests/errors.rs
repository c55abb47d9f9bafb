//! Golden snapshots of what `rbuild build` prints for malformed Dockerfiles, and of `rbuild debug dump-ast`.
//!
//! Each `testdata/errors/<case>/` holds a `Dockerfile`, optionally `args` (extra build arguments, one per line),
//! and `expected`: the exact stderr. `RBUILD_BLESS=1 cargo test -p rbuild --test tests errors` rewrites the
//! `expected` files from the current output; review the diff before committing it.

use crate::support::{Workspace, testdata};
use std::path::Path;

fn bless() -> bool {
    std::env::var("RBUILD_BLESS").is_ok_and(|v| v == "1")
}

fn case_dirs(area: &str) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(testdata(area))
        .unwrap_or_else(|e| panic!("testdata/{area}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Compares `got` with `dir/expected` (or writes it when blessing); returns a failure description.
fn compare(dir: &Path, got: &str) -> Option<String> {
    let expected_path = dir.join("expected");
    if bless() {
        std::fs::write(&expected_path, got).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    (expected != got)
        .then(|| format!("--- {}\n--- expected\n{expected}--- got\n{got}", dir.file_name().unwrap().to_string_lossy()))
}

#[test]
fn error_output_matches_golden_snapshots() {
    let ws = Workspace::new();
    let mut failures = Vec::new();
    let dirs = case_dirs("errors");
    assert!(dirs.len() >= 15, "at least 15 error cases, found {}", dirs.len());
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ctx = ws.context(&name, &[("a.txt", "a\n")]);
        std::fs::copy(dir.join("Dockerfile"), ctx.join("Dockerfile")).unwrap();
        let extra = std::fs::read_to_string(dir.join("args")).unwrap_or_default();
        let mut args: Vec<&str> = vec!["build"];
        args.extend(extra.lines().filter(|l| !l.is_empty()));
        let ctx_str = ctx.to_str().unwrap();
        args.push(ctx_str);
        let run = ws.rbuild("store", &args);
        if run.code != Some(1) {
            failures.push(format!("--- {name}: expected exit code 1, got {:?}\n{}", run.code, run.stderr));
            continue;
        }
        if run.stderr.contains("panicked") {
            failures.push(format!("--- {name}: panicked\n{}", run.stderr));
        }
        failures.extend(compare(dir, &run.stderr));
    }
    println!("error snapshots: {} passed, {} failed", dirs.len() - failures.len(), failures.len());
    assert!(failures.is_empty(), "{}\n(refresh with RBUILD_BLESS=1 after checking)", failures.join("\n"));
}

/// `rbuild debug dump-ast` prints BuildKit's dump byte for byte: every case of BuildKit's parser test files
/// (`shared/conformance/parser-testfiles`, or `$RBUILD_CONFORMANCE`), through the real binary.
#[test]
fn dump_ast_prints_buildkits_format() {
    let dir = match std::env::var_os("RBUILD_CONFORMANCE") {
        Some(d) => std::path::PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"),
    };
    let cases = dir.join("parser-testfiles");
    if !cases.is_dir() {
        return crate::support::skip(&format!("conformance data not found at {}", cases.display()));
    }
    let ws = Workspace::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&cases).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    let mut failures = Vec::new();
    for case in &dirs {
        let run = ws.rbuild("store", &["debug", "dump-ast", case.join("Dockerfile").to_str().unwrap()]).success();
        let expected = std::fs::read_to_string(case.join("result")).unwrap();
        if run.stdout != expected {
            failures.push(format!(
                "--- {}
{}
--- got
{}",
                case.display(),
                expected,
                run.stdout
            ));
        }
    }
    println!("dump-ast: {} passed, {} failed", dirs.len() - failures.len(), failures.len());
    assert!(dirs.len() >= 30 && failures.is_empty(), "{}", failures.join("\n"));
    // A file that does not parse: the error with its line, exit code 1.
    let bad = ws.path("bad.Dockerfile");
    std::fs::write(&bad, "FROM scratch\nRUN <<EOF\necho\n").unwrap();
    let run = ws.rbuild("store", &["debug", "dump-ast", bad.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains(":2:"), "points at line 2: {}", run.stderr);
}

/// Issue 9 items 6, 7 and 12 through the real binary: hostile Dockerfiles end with exit code 1 and a message that
/// names the line, never a stack overflow (exit 134), a hang or unbounded memory.
#[test]
fn hostile_dockerfiles_fail_with_their_line_not_a_crash() {
    let ws = Workspace::new();
    let nest = |n: usize| format!("{}x{}", "${X:-".repeat(n), "}".repeat(n));
    let mut chain = String::from("FROM scratch AS s0\n");
    for i in 0..1_000 {
        chain.push_str(&format!("FROM s{i} AS s{}\n", i + 1));
    }
    chain.push_str("EXPOSE not-a-port\n");
    let mut doubling = String::from("FROM scratch\nARG A0=xxxxxxxxxxxxxxxx\n");
    for i in 0..30 {
        doubling.push_str(&format!("ARG A{}=${{A{i}}}${{A{i}}}\n", i + 1));
    }
    let cases: Vec<(&str, String, Vec<&str>, &str, &str)> = vec![
        (
            "nested-expansion",
            format!("FROM scratch\nENV A={}\n", nest(3_000)),
            vec![],
            "nested more than 64 levels deep",
            "Dockerfile:2:",
        ),
        ("stage-chain", chain, vec![], "invalid port", "Dockerfile:1002:"),
        (
            "nested-onbuild",
            format!("FROM scratch\n{}RUN x\n", "ONBUILD ".repeat(8_000)),
            vec![],
            "ONBUILD is nested more than 8 levels deep",
            "line 2",
        ),
        ("doubling-args", doubling, vec![], "larger than 1048576 bytes", "Dockerfile:19:"),
        (
            "bad-platform",
            "FROM --platform=foo scratch\n".into(),
            vec![],
            "failed to parse platform foo",
            "Dockerfile:1:",
        ),
        (
            "platform-list",
            "FROM scratch\n".into(),
            vec!["--platform", "linux/amd64,linux/foo/bar/baz"],
            "invalid --platform \"linux/foo/bar/baz\"",
            "",
        ),
        ("dev-zero", "FROM scratch\n".into(), vec!["-f", "/dev/zero"], "larger than the limit of 10 MiB", "/dev/zero"),
    ];
    let mut failures = Vec::new();
    for (name, dockerfile, flags, message, place) in cases {
        let ctx = ws.context(name, &[("Dockerfile", &dockerfile)]);
        let mut args = vec!["build"];
        args.extend(flags);
        args.push(ctx.to_str().unwrap());
        let run = ws.rbuild("store", &args);
        let tail: String = run.stderr.chars().rev().take(2_000).collect::<Vec<_>>().into_iter().rev().collect();
        if run.code != Some(1) || !run.stderr.contains(message) || !run.stderr.contains(place) {
            failures.push(format!("--- {name}: exit {:?}, want 1 with {message:?} at {place:?}\n{tail}", run.code));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Issue 11 item 17: without -f, `dockerfile` is used when `Dockerfile` does not exist, as docker build does.
#[test]
fn lowercase_dockerfile_is_the_default_fallback() {
    let ws = Workspace::new();
    let ctx = ws.context("lower", &[("dockerfile", "FROM scratch\nEXPOSE not-a-port\n")]);
    let run = ws.rbuild("store", &["build", ctx.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("invalid port") && run.stderr.contains("dockerfile:2:"), "{}", run.stderr);
}
