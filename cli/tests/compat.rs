//! Regression tests for differences from buildx/BuildKit behaviour (issue 11) outside the differential suite.

use crate::support::Workspace;
use std::process::{Command, Stdio};

fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(bytes);
    archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

/// Item 3: `-o -` created a directory named `-`; buildx writes a tar of the files to stdout, and `dest=-` of any
/// archive output writes that archive to stdout.
#[test]
fn output_dash_writes_the_archive_to_stdout() {
    let ws = Workspace::new();
    let ctx =
        ws.context("files", &[("Dockerfile", "FROM scratch\nCOPY hello.txt /hello.txt\n"), ("hello.txt", "hi\n")]);
    let run = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .current_dir(ws.dir.path())
            .arg("--root")
            .arg(ws.path("store"))
            .args(["build", "-o", out, ctx.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let plain = run("-");
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    assert!(tar_names(&plain.stdout).iter().any(|n| n == "hello.txt"), "{:?}", tar_names(&plain.stdout));
    assert!(!ws.path("-").exists(), "no directory named '-'");
    let docker = run("type=docker,dest=-");
    assert!(docker.status.success(), "{}", String::from_utf8_lossy(&docker.stderr));
    assert!(tar_names(&docker.stdout).iter().any(|n| n == "manifest.json"), "{:?}", tar_names(&docker.stdout));
    let local = run("type=local,dest=-");
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    assert!(tar_names(&local.stdout).iter().any(|n| n == "hello.txt"));
    assert!(!ws.path("-").exists());
}

/// Item 4: a failing step cancels the steps running beside it; rbuild exits promptly, reports the failing step,
/// and nothing of the canceled step prints after the error.
#[test]
fn a_failing_step_cancels_its_running_siblings() {
    if !crate::support::require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "base");
    let dockerfile = "FROM base AS slow\nRUN echo started-$((1+1)); sleep 30; echo finished-$((1+1))\n\
                      FROM base AS bad\nRUN sleep 1; exit 3\n\
                      FROM base\nCOPY --from=slow /etc/passwd /a\nCOPY --from=bad /etc/passwd /b\n";
    let ctx = ws.context("siblings", &[("Dockerfile", dockerfile)]);
    let started = std::time::Instant::now();
    let run = ws.rbuild("store", &["build", ctx.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}:\n{}", run.stderr);
    assert!(run.stderr.contains("CANCELED"), "{}", run.stderr);
    assert!(run.stderr.contains("exit code: 3"), "the failing step's error is reported: {}", run.stderr);
    // The command says `$((1+1))`; only its output says `2`.
    assert!(run.stderr.contains("started-2"), "{}", run.stderr);
    assert!(!run.stderr.contains("finished-2"), "{}", run.stderr);
    let error_at = run.stderr.find("error: failed to solve").expect("error line");
    assert!(!run.stderr[error_at..].contains("CANCELED"), "the error comes last:\n{}", run.stderr);
}
