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

fn read_out(ws: &Workspace, dir: &str, file: &str) -> String {
    std::fs::read_to_string(ws.path(dir).join(file)).unwrap_or_else(|e| panic!("{dir}/{file}: {e}"))
}

/// Item 1 (a silent wrong result): `--no-cache-filter STAGE` re-ran the stage, but `COPY --from=STAGE` and
/// `RUN --mount=from=STAGE` stayed CACHED and the image carried the old output.
#[test]
fn no_cache_filter_stage_output_reaches_copy_from_and_mount_from() {
    if !crate::support::require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "base");
    let dockerfile = "FROM base AS gen\nRUN cat /proc/sys/kernel/random/uuid > /stamp\n\
                      FROM base\nCOPY --from=gen /stamp /copied\n\
                      RUN --mount=from=gen,source=/stamp,target=/m cat /m > /mounted\n";
    let ctx = ws.context("filter", &[("Dockerfile", dockerfile)]);
    let build = |out: &str, extra: &[&str]| {
        let mut args = vec!["build", "-o"];
        let dest = format!("type=local,dest={}", ws.path(out).display());
        args.push(&dest);
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        ws.rbuild("store", &args).success()
    };
    build("one", &[]);
    let again = build("two", &["--no-cache-filter", "gen"]);
    let (first, second) = (read_out(&ws, "one", "copied"), read_out(&ws, "two", "copied"));
    assert_ne!(first, second, "the re-run stage's new file must be copied:\n{}", again.stderr);
    assert_eq!(read_out(&ws, "two", "mounted"), second, "and mounted:\n{}", again.stderr);
    // A plain rebuild afterwards is all cached and gives the newest output.
    let third = build("three", &[]);
    assert_eq!(read_out(&ws, "three", "copied"), second);
    assert!(!third.stderr.contains("DONE"), "nothing runs:\n{}", third.stderr);
}

/// Item 1, the opposite case: a stage rebuilt to the same files must not invalidate `COPY --from` users.
#[test]
fn a_stage_rebuilt_to_the_same_files_invalidates_nothing_downstream() {
    if !crate::support::require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "base");
    let dockerfile = "FROM base AS gen\nARG V=1\nRUN echo \"build $V\" > /log && echo same > /f\n\
                      FROM base\nCOPY --from=gen /f /f\nRUN echo downstream-$((1+1)) > /d\n";
    let ctx = ws.context("same", &[("Dockerfile", dockerfile)]);
    ws.rbuild("store", &["build", ctx.to_str().unwrap()]).success();
    let second = ws.rbuild("store", &["build", "--build-arg", "V=2", ctx.to_str().unwrap()]).success();
    assert!(second.stderr.contains("RUN echo \"build 2\""), "titles show build args expanded: {}", second.stderr);
    let ran: Vec<&str> = second.stderr.lines().filter(|l| l.contains(" DONE ")).collect();
    assert_eq!(ran.len(), 1, "only the changed stage step runs:\n{}", second.stderr);
    assert!(!second.stderr.contains("downstream-2"), "{}", second.stderr);
}

/// Item 17: `--label k=v` on the command line lands in the image config, over a Dockerfile LABEL of the same key.
#[test]
fn command_line_labels_land_in_the_image_and_win_over_the_dockerfile() {
    let ws = Workspace::new();
    let ctx =
        ws.context("labels", &[("Dockerfile", "FROM scratch\nLABEL a=dockerfile b=kept\nCOPY f /f\n"), ("f", "x")]);
    let ctx = ctx.to_str().unwrap();
    ws.rbuild("store", &["build", "-t", "labelled", "--label", "a=cli", "--label", "c=new", ctx]).success();
    let inspect = ws.rbuild("store", &["inspect", "labelled"]).success();
    let doc: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    let labels = &doc["Config"]["config"]["Labels"];
    assert_eq!(labels, &serde_json::json!({"a": "cli", "b": "kept", "c": "new"}), "{}", inspect.stdout);
    let bad = ws.rbuild("store", &["build", "--label", "=x", ctx]);
    assert_eq!(bad.code, Some(1), "{}", bad.stderr);
}

/// A one-file HTTP server on loopback for `ADD <url>`: `/file.txt` with a Last-Modified date, `/moved` redirecting
/// to it, anything else 404. Serves until the test process ends.
fn serve_http(body: &'static str) -> String {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // The rest of the request head.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let response = match path.as_str() {
                "/file.txt" => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                ),
                "/moved" => {
                    "HTTP/1.1 302 Found\r\nLocation: /file.txt\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                }
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    format!("http://{addr}")
}

/// `ADD <url>` downloads in process (no `curl`): the file keeps the server's Last-Modified as its mtime and
/// mode 0600, redirects are followed, `--checksum` is verified, and an HTTP error names the status.
#[test]
fn add_url_downloads_with_its_date_and_checks_the_checksum() {
    use std::os::unix::fs::MetadataExt as _;
    let ws = Workspace::new();
    let url = serve_http("hello from http\n");
    let sum = "sha256:b9bf3e2d0d1fa24d5d4a1ae5b8d4fcd2f9d6a4b7d7bb6e3ba4e0c2f0d5c2d08f";
    let good = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"hello from http\n")));
    let dockerfile = format!("FROM scratch\nADD --checksum={good} {url}/file.txt /f.txt\nADD {url}/moved /g.txt\n");
    let ctx = ws.context("add-url", &[("Dockerfile", &dockerfile)]);
    let out = ws.path("out");
    ws.rbuild("store", &["build", "-o", &format!("type=local,dest={}", out.display()), ctx.to_str().unwrap()])
        .success();
    assert_eq!(std::fs::read_to_string(out.join("f.txt")).unwrap(), "hello from http\n");
    assert_eq!(std::fs::read_to_string(out.join("g.txt")).unwrap(), "hello from http\n");
    let meta = std::fs::metadata(out.join("f.txt")).unwrap();
    assert_eq!(meta.mtime(), 1_445_412_480, "Last-Modified is the file's mtime");
    assert_eq!(meta.mode() & 0o7777, 0o600);

    let bad = ws
        .context("add-url-bad", &[("Dockerfile", &format!("FROM scratch\nADD --checksum={sum} {url}/file.txt /f\n"))]);
    let run = ws.rbuild("store", &["build", bad.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("checksum mismatch"), "{}", run.stderr);
    let missing = ws.context("add-url-404", &[("Dockerfile", &format!("FROM scratch\nADD {url}/nothing /f\n"))]);
    let run = ws.rbuild("store", &["build", missing.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("404"), "{}", run.stderr);
}
