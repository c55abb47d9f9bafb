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
