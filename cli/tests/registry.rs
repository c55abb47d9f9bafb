//! Registries as people run them: TLS with a private CA, htpasswd basic auth, token auth with a token server,
//! credentials from `config.json`, a flaky network. Each test starts its own `docker-registry` (and token server or
//! proxy) on free loopback ports, so they run in parallel.

use crate::support::{Registry, Run, Workspace, cmd, require};
use rbuild_test_support::RegistryConfig;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `rbuild --root <store>` with a private Docker config dir and certs.d dir (from `ws`), extra env and stdin.
pub fn rbuild_env(ws: &Workspace, store: &str, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let docker_config = ws.path("docker-config");
    let certs = ws.path("certs.d");
    std::fs::create_dir_all(&docker_config).unwrap();
    std::fs::create_dir_all(&certs).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.arg("--root").arg(ws.path(store)).args(args);
    c.env_remove("SOURCE_DATE_EPOCH").env("DOCKER_CONFIG", &docker_config).env("RBUILD_REGISTRY_CERTS_DIR", &certs);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    Run::from(child.wait_with_output().unwrap(), format!("rbuild {}", args.join(" ")))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn openssl(args: &[&str]) {
    cmd("openssl", args).success();
}

/// A test CA and a server certificate for 127.0.0.1/localhost signed by it.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_certs(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
        "-days",
        "2",
        "-subj",
        "/CN=rbuild test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("server.crt"),
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
    ]);
    Certs { ca: dir.join("ca.crt"), cert: dir.join("server.crt"), key: dir.join("server.key") }
}

/// A registry of the test's own with extra config (TLS, auth).
pub fn registry_with(tls: Option<&Certs>, auth_yaml: &str) -> Registry {
    let tls = tls.map(|c| (c.cert.as_path(), c.key.as_path()));
    Registry::start_with(&RegistryConfig { tls, auth_yaml })
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn write_config_json(ws: &Workspace, registry: &str, user: &str, password: &str) {
    let auth = base64(format!("{user}:{password}").as_bytes());
    let dir = ws.path("docker-config");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), format!(r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#)).unwrap();
}

fn install_ca(ws: &Workspace, registry: &str, ca: &Path) {
    let dir = ws.path("certs.d").join(registry);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(ca, dir.join("ca.crt")).unwrap();
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() { T[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

fn base64url(data: &[u8]) -> String {
    base64(data).trim_end_matches('=').replace('+', "-").replace('/', "_")
}

fn pushed_digest(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.split_once('@').map(|(_, d)| d.trim().to_string())).expect("push prints NAME@DIGEST")
}

#[test]
fn tls_basic_auth_with_config_json_certs_d_login_and_clear_failures() {
    if !require(&["docker-registry", "openssl", "htpasswd", "skopeo", "runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let certs = make_certs(&ws.path("pki"));
    let htpasswd = ws.path("htpasswd");
    let out = cmd("htpasswd", &["-Bbn", "alice", "s3cret"]).success();
    std::fs::write(&htpasswd, out.stdout).unwrap();
    let reg = registry_with(
        Some(&certs),
        &format!("auth:\n  htpasswd:\n    realm: rbuild-test\n    path: {}\n", htpasswd.display()),
    );
    let base = format!("{}/team/base:1", reg.addr);
    install_ca(&ws, &reg.addr, &certs.ca);

    // No credentials: refused, and the message says which registry and what to do.
    let ctx = ws.context_from("busybox-base");
    let anon = rbuild_env(&ws, "store", &["build", "-t", &base, "--push", ctx.to_str().unwrap()], &[], None);
    assert_ne!(anon.code, Some(0));
    assert!(anon.stderr.contains(&reg.addr) && anon.stderr.contains("rbuild login"), "{}", anon.stderr);

    // A wrong password from config.json: refused, naming the registry.
    write_config_json(&ws, &reg.addr, "alice", "wrong");
    let wrong = rbuild_env(&ws, "store", &["push", &base], &[], None);
    assert_ne!(wrong.code, Some(0));
    assert!(
        wrong.stderr.contains(&format!("the registry {} refused the credentials", reg.addr)),
        "a clear message naming the registry:\n{}",
        wrong.stderr
    );
    // `rbuild login` checks before it writes: a wrong password leaves config.json alone.
    let bad_login =
        rbuild_env(&ws, "store", &["login", "-u", "alice", "--password-stdin", &reg.addr], &[], Some("nope\n"));
    assert_ne!(bad_login.code, Some(0), "{}", bad_login.stderr);
    assert!(bad_login.stderr.contains(&reg.addr), "{}", bad_login.stderr);

    // The right password from config.json, over TLS with the certs.d CA: push works and prints the digest.
    write_config_json(&ws, &reg.addr, "alice", "s3cret");
    let pushed = rbuild_env(&ws, "store", &["push", &base], &[], None).success();
    let digest = pushed_digest(&pushed.stdout);

    // Login writes Docker's format; logout removes it.
    std::fs::remove_file(ws.path("docker-config/config.json")).unwrap();
    rbuild_env(&ws, "store", &["login", "-u", "alice", "--password-stdin", &reg.addr], &[], Some("s3cret\n")).success();
    let config: serde_json::Value =
        serde_json::from_str(&read(&ws.path("docker-config/config.json"))).expect("config.json is JSON");
    assert_eq!(config["auths"][&reg.addr]["auth"], base64(b"alice:s3cret"), "{config}");

    // An independent client reads the image with the same CA and credentials.
    let raw = cmd(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--cert-dir",
            ws.path("certs.d").join(&reg.addr).to_str().unwrap(),
            "--creds",
            "alice:s3cret",
            &format!("docker://{base}"),
        ],
    )
    .success();
    let sha = format!("sha256:{}", sha256_hex(raw.stdout.as_bytes()));
    assert_eq!(sha, digest, "skopeo sees the manifest rbuild pushed");

    // A fresh store pulls it back (credentials from the login).
    let pulled = rbuild_env(&ws, "store-2", &["pull", &base], &[], None).success();
    assert!(pulled.stdout.contains(&base), "{}", pulled.stdout);

    rbuild_env(&ws, "store", &["logout", &reg.addr], &[], None).success();
    let config: serde_json::Value = serde_json::from_str(&read(&ws.path("docker-config/config.json"))).unwrap();
    assert!(config["auths"].get(&reg.addr).is_none(), "{config}");

    // Without the CA the registry's certificate is not trusted.
    std::fs::remove_file(ws.path("certs.d").join(&reg.addr).join("ca.crt")).unwrap();
    let untrusted = rbuild_env(&ws, "store-3", &["pull", &base], &[], None);
    assert_ne!(untrusted.code, Some(0));
    assert!(untrusted.stderr.contains("certificate") && untrusted.stderr.contains(&reg.addr), "{}", untrusted.stderr);
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x");
    std::fs::write(&f, data).unwrap();
    let out = cmd("sha256sum", &[f.to_str().unwrap()]).success();
    out.stdout.split_whitespace().next().unwrap().to_string()
}

#[test]
fn unreachable_registries_fail_fast_naming_the_host() {
    if !require(&["openssl"]) {
        return;
    }
    let ws = Workspace::new();
    // Nothing listens: refused at once.
    let closed = format!("127.0.0.1:{}", free_port());
    let start = Instant::now();
    let run = rbuild_env(&ws, "store", &["pull", &format!("{closed}/x/y:1")], &[], None);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains(&closed), "{}", run.stderr);
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());

    // Something accepts but never answers the TLS handshake: the connect timeout ends it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = listener.local_addr().unwrap().to_string();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let certs = make_certs(&ws.path("pki"));
    install_ca(&ws, &silent, &certs.ca);
    let start = Instant::now();
    let run = rbuild_env(&ws, "store", &["pull", &format!("{silent}/x/y:1")], &[], None);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains(&silent), "{}", run.stderr);
    assert!(start.elapsed() < Duration::from_secs(30), "a stalled registry must time out, took {:?}", start.elapsed());
}

/// A token server: grants whatever scopes are asked for to `user:password`, signing RS256 JWTs with `openssl`,
/// and records every request's scopes.
struct TokenServer {
    realm: String,
    scopes: Arc<Mutex<Vec<Vec<String>>>>,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

impl TokenServer {
    fn start(dir: &Path, user: &'static str, password: &'static str) -> (TokenServer, PathBuf) {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-days",
            "2",
            "-subj",
            "/CN=rbuild test token signer",
        ]);
        let der = cmd(
            "openssl",
            &[
                "x509",
                "-in",
                cert.to_str().unwrap(),
                "-outform",
                "DER",
                "-out",
                dir.join("token.der").to_str().unwrap(),
            ],
        );
        der.success();
        let x5c = base64(&std::fs::read(dir.join("token.der")).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let log = scopes.clone();
        let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let counter = AtomicUsize::new(0);
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut authorization = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("authorization")
                    {
                        authorization = v.trim().to_string();
                    }
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let mut wanted = Vec::new();
                let mut service = String::new();
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    match k {
                        "scope" => wanted.push(percent_decode(v)),
                        "service" => service = percent_decode(v),
                        _ => {}
                    }
                }
                log.lock().unwrap().push(wanted.clone());
                let mut stream = stream;
                if authorization != expected {
                    let _ = stream
                        .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                let access: Vec<serde_json::Value> = wanted
                    .iter()
                    .filter_map(|s| {
                        let mut parts = s.splitn(3, ':');
                        let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                    })
                    .collect();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
                let claims = serde_json::json!({
                    "iss": "rbuild-test", "sub": user, "aud": service, "exp": now + 600, "nbf": now - 60,
                    "iat": now - 60, "jti": format!("t{n}"), "access": access,
                });
                let signing_input = format!(
                    "{}.{}",
                    base64url(header.to_string().as_bytes()),
                    base64url(claims.to_string().as_bytes())
                );
                let input_file = dir.join(format!("jwt-{n}.in"));
                std::fs::write(&input_file, &signing_input).unwrap();
                let sig = Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign"])
                    .arg(dir.join("token.key"))
                    .arg(&input_file)
                    .output()
                    .unwrap();
                let token = format!("{signing_input}.{}", base64url(&sig.stdout));
                let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 600}).to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (TokenServer { realm, scopes }, cert)
    }
}

#[test]
fn token_auth_push_mounts_across_repositories() {
    if !require(&["docker-registry", "openssl", "runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path("token")).unwrap();
    let (tokens, cert) = TokenServer::start(&ws.path("token"), "bob", "hunter2");
    let reg = registry_with(
        None,
        &format!(
            "auth:\n  token:\n    realm: {}\n    service: rbuild-registry\n    issuer: rbuild-test\n    rootcertbundle: {}\n",
            tokens.realm,
            cert.display()
        ),
    );
    write_config_json(&ws, &reg.addr, "bob", "hunter2");
    let src = format!("{}/team/base:1", reg.addr);
    let dst = format!("{}/other/copy:1", reg.addr);
    let ctx = ws.context_from("busybox-base");
    let first = rbuild_env(&ws, "store", &["build", "-t", &src, "--push", ctx.to_str().unwrap()], &[], None).success();
    let digest = pushed_digest(&first.stdout);
    assert!(
        tokens.scopes.lock().unwrap().iter().any(|s| s.contains(&"repository:team/base:pull,push".to_string())),
        "the push token asks for pull and push: {:?}",
        tokens.scopes.lock().unwrap()
    );

    // The same image into another repository: its blobs are mounted, not uploaded.
    rbuild_env(&ws, "store", &["tag", &src, &dst], &[], None).success();
    let second = rbuild_env(&ws, "store", &["push", &dst], &[], None).success();
    assert_eq!(pushed_digest(&second.stdout), digest);
    assert!(second.stderr.contains("0 uploaded"), "{}", second.stderr);
    let scopes = tokens.scopes.lock().unwrap().clone();
    assert!(
        scopes.iter().any(|s| s.contains(&"repository:other/copy:pull,push".to_string())
            && s.contains(&"repository:team/base:pull".to_string())),
        "one token for both repositories: {scopes:?}"
    );
    let log = reg.log();
    let mounts: Vec<&str> =
        log.lines().filter(|l| l.contains("\"POST /v2/other/copy/blobs/uploads/?") && l.contains("mount=")).collect();
    assert!(!mounts.is_empty() && mounts.iter().all(|l| l.contains("\" 201 ")), "mounts answered 201 Created:\n{log}");
    assert!(
        !log.lines().any(|l| l.contains("\"PATCH /v2/other/copy/") || l.contains("\"PUT /v2/other/copy/blobs/")),
        "nothing was uploaded to the second repository:\n{log}"
    );
}

/// An HTTP proxy in front of a registry that fails the first `PUT ...?digest=` of each blob with a 500 and cuts
/// the first large upload (a `PATCH`, or a `PUT` that carries the blob) mid-body. One request per connection.
struct FaultProxy {
    addr: String,
    failed_puts: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
}

fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    Some((text, head))
}

impl FaultProxy {
    fn start(upstream: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let failed_puts = Arc::new(AtomicUsize::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<BTreeMap<String, ()>>> = Arc::default();
        let (f, c) = (failed_puts.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, seen, f, c) = (upstream.clone(), seen.clone(), f.clone(), c.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(client, &upstream, &seen, &f, &c);
                });
            }
        });
        FaultProxy { addr, failed_puts, cuts }
    }
}

fn proxy_one(
    mut client: TcpStream,
    upstream: &str,
    seen: &Mutex<BTreeMap<String, ()>>,
    failed_puts: &AtomicUsize,
    cuts: &AtomicUsize,
) -> std::io::Result<()> {
    let Some((text, _)) = read_head(&mut client) else { return Ok(()) };
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_string();
    let method = request_line.split(' ').next().unwrap_or("").to_string();
    let uri = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let mut length = 0usize;
    let mut headers = String::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse().unwrap_or(0);
        }
        if k.eq_ignore_ascii_case("connection") {
            continue;
        }
        headers.push_str(l);
        headers.push_str("\r\n");
    }
    let mut body = vec![0u8; length];
    let commit = method == "PUT" && uri.contains("digest=");
    if commit {
        let digest = uri.split("digest=").nth(1).unwrap_or("").split('&').next().unwrap_or("").to_string();
        if seen.lock().unwrap().insert(digest, ()).is_none() {
            client.read_exact(&mut body)?;
            failed_puts.fetch_add(1, Ordering::SeqCst);
            client
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            return Ok(());
        }
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(format!("{request_line}\r\n{headers}Connection: close\r\n\r\n").as_bytes())?;
    if (method == "PATCH" || commit)
        && length >= 256 * 1024
        && cuts.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    {
        let half = length / 2;
        client.read_exact(&mut body[..half])?;
        up.write_all(&body[..half])?;
        let _ = up.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    client.read_exact(&mut body)?;
    up.write_all(&body)?;
    std::io::copy(&mut up, &mut client)?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

#[test]
fn push_through_a_faulty_proxy_completes_and_reads_back_identical() {
    if !require(&["docker-registry", "skopeo", "runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start_own();
    let proxy = FaultProxy::start(reg.addr.clone());
    ws.build_base("store", "local/busybox");
    // An incompressible 2 MiB file, so its layer's upload is a large request that the proxy can cut.
    let ctx = ws.context("big", &[("Dockerfile", "FROM local/busybox\nCOPY blob /blob\n")]);
    let mut data = vec![0u8; 2 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(ctx.join("blob"), &data).unwrap();
    let via_proxy = format!("{}/faulty/app:1", proxy.addr);
    let pushed =
        rbuild_env(&ws, "store", &["build", "-t", &via_proxy, "--push", ctx.to_str().unwrap()], &[], None).success();
    let digest = pushed_digest(&pushed.stdout);
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "one connection was cut mid-upload");
    assert!(proxy.failed_puts.load(Ordering::SeqCst) >= 3, "every blob's first commit failed once");

    // Straight from the registry: same manifest, and every blob verifies (skopeo checks digests as it copies).
    let direct = format!("docker://{}/faulty/app:1", reg.addr);
    let raw = cmd("skopeo", &["inspect", "--raw", "--tls-verify=false", &direct]).success();
    assert_eq!(format!("sha256:{}", sha256_hex(raw.stdout.as_bytes())), digest);
    let layout = ws.path("layout");
    cmd("skopeo", &["copy", "--src-tls-verify=false", &direct, &format!("oci:{}:app", layout.display())]).success();
    let pulled = rbuild_env(&ws, "store-2", &["pull", &format!("{}/faulty/app:1", reg.addr)], &[], None).success();
    let built = rbuild_env(&ws, "store", &["inspect", &via_proxy], &[], None).success();
    let id: serde_json::Value = serde_json::from_str(&built.stdout).unwrap();
    assert!(pulled.stdout.contains(id["Id"].as_str().unwrap()), "same image config: {}", pulled.stdout);
}
