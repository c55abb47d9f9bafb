//! A local registry: Debian's `docker-registry` (the CNCF distribution registry) on its own loopback port and
//! storage directory, so tests run in parallel and need no network; or the one named by `RBUILD_TEST_REGISTRY`
//! (started by `scripts/test-registry.sh`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a registry from [`Registry::start_with`] has beyond the defaults.
#[derive(Debug, Default, Clone, Copy)]
pub struct Config<'a> {
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<(&'a Path, &'a Path)>,
    /// Top-level YAML (an `auth:` section).
    pub auth_yaml: &'a str,
}

/// A running registry, killed when dropped (unless it is the shared one from `RBUILD_TEST_REGISTRY`).
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Option<Child>,
    log: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Registry {
    /// The registry `RBUILD_TEST_REGISTRY` names, else one of this test's own. Gate the test on `docker-registry`
    /// first ([`crate::require`]): this panics when no registry can be started.
    pub fn start() -> Registry {
        if let Ok(addr) = std::env::var("RBUILD_TEST_REGISTRY")
            && !addr.is_empty()
        {
            return Registry { addr, child: None, log: None, _dir: None };
        }
        Registry::start_own()
    }

    /// A registry of this test's own, whose access log [`Registry::upload_starts`] reads. The port is picked by
    /// binding to port 0 and released before the registry binds it; if another process wins that race the
    /// registry exits and another port is tried.
    pub fn start_own() -> Registry {
        Registry::start_with(&Config::default())
    }

    /// A registry of this test's own, configured beyond the defaults (TLS, auth).
    pub fn start_with(extra: &Config) -> Registry {
        let binary = crate::which("docker-registry").or_else(|| crate::which("registry"));
        let binary = binary.expect("docker-registry is not installed (apt-get install docker-registry)");
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            let tls = extra.tls.map_or(String::new(), |(cert, key)| {
                format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display())
            });
            let config_text = format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tls}{}",
                dir.path().join("storage").display(),
                extra.auth_yaml,
            );
            std::fs::write(&config, config_text).expect("write registry config");
            let log = dir.path().join("registry.log");
            let out = std::fs::File::create(&log).expect("create log");
            let err = out.try_clone().expect("clone log handle");
            let mut child = Command::new(&binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn docker-registry");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                // A plain registry must answer as one (not another process that took the port); one behind TLS
                // or auth only has to listen.
                let plain = extra.tls.is_none() && extra.auth_yaml.is_empty();
                if if plain { v2_answers(&addr) } else { TcpStream::connect(&addr).is_ok() } {
                    return Registry { addr, child: Some(child), log: Some(log), _dir: Some(dir) };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            eprintln!("registry on {addr} did not start; last log lines (newest first):\n{}", tail.join("\n"));
        }
        panic!("could not start docker-registry");
    }

    /// The registry's log so far (its access log among it). Only for a registry from [`Registry::start_own`].
    pub fn log(&self) -> String {
        let log = self.log.as_ref().expect("the log of a registry from start_own");
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// How many blob uploads the registry has seen started (`POST .../blobs/uploads/`), from its access log. Only
    /// for a registry from [`Registry::start_own`].
    pub fn upload_starts(&self) -> usize {
        self.log().lines().filter(|l| l.contains("\"POST /v2/") && l.contains("/blobs/uploads/")).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether the registry at `addr` answers `GET /v2/` with 200.
fn v2_answers(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200")
}

/// A fake registry on loopback that answers `/v2/` and then sends every other response one byte at a time, `gap`
/// apart (a stalled or trickling registry, for deadline tests); its address.
pub fn trickling_registry(gap: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local address").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten().take(50) {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                if head.starts_with(b"GET /v2/ ") {
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                    return;
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 100000\r\n\r\n",
                );
                // Until the client gives up (the write fails).
                for _ in 0..2000 {
                    if conn.write_all(b" ").is_err() {
                        return;
                    }
                    std::thread::sleep(gap);
                }
            });
        }
    });
    addr
}

/// A fake registry on loopback that serves fixed bytes, so a test can make it lie: a blob that does not hash to
/// the digest it is served under, a manifest that lists one layer twice, a transfer cut short. Requests are
/// `GET`/`HEAD` of `/v2/` (200) or of a path ending in one of the routes' suffixes (a tag or a digest); anything
/// else is a 404. Every response has the full `Content-Length`.
pub struct FakeRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    gets: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// One thing a [`FakeRegistry`] serves.
pub struct Route {
    /// The end of the request path: `/manifests/1`, or a digest (`sha256:...`).
    pub suffix: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The first this many `GET`s send half the body and close the connection (a broken transfer).
    pub cut_first: usize,
}

impl Route {
    pub fn new(suffix: impl Into<String>, content_type: &'static str, body: Vec<u8>) -> Route {
        Route { suffix: suffix.into(), content_type, body, cut_first: 0 }
    }
}

impl FakeRegistry {
    pub fn start(routes: Vec<Route>) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local address").to_string();
        let gets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = gets.clone();
        let routes = std::sync::Arc::new(std::sync::Mutex::new(routes));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten().take(500) {
                let (routes, log) = (routes.clone(), log.clone());
                std::thread::spawn(move || serve_fixed(conn, &routes, &log));
            }
        });
        FakeRegistry { addr, gets }
    }

    /// The paths of the `GET`s served so far, in order.
    pub fn gets(&self) -> Vec<String> {
        self.gets.lock().unwrap().clone()
    }
}

fn serve_fixed(mut conn: TcpStream, routes: &std::sync::Mutex<Vec<Route>>, log: &std::sync::Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default().to_string());
    let get = method == "GET";
    if get {
        log.lock().unwrap().push(path.clone());
    }
    let (status, ctype, body, cut) = if path == "/v2/" {
        ("200 OK", "application/json", b"{}".to_vec(), false)
    } else {
        let mut routes = routes.lock().unwrap();
        match routes.iter_mut().find(|r| path.ends_with(&r.suffix)) {
            Some(route) => {
                let cut = get && route.cut_first > 0;
                if cut {
                    route.cut_first -= 1;
                }
                ("200 OK", route.content_type, route.body.clone(), cut)
            }
            None => (
                "404 Not Found",
                "application/json",
                br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}"#.to_vec(),
                false,
            ),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    if get {
        let sent = if cut { &body[..body.len() / 2] } else { &body[..] };
        let _ = conn.write_all(sent);
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}
