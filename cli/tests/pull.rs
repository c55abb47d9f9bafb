//! Pulling as Docker users expect it: `FROM busybox` through a docker.io mirror, the platform picked from a
//! multi-platform index (`--platform`), and layers fetched concurrently. Everything is served by a local
//! `docker-registry` (Docker Hub is never reachable here); the concurrency evidence comes from a proxy that counts
//! blob downloads in flight, not from timing.

use crate::registry::rbuild_env;
use crate::support::Registry;
use crate::support::{Workspace, cmd, require};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

fn inspect(ws: &Workspace, store: &str, name: &str) -> serde_json::Value {
    let out = rbuild_env(ws, store, &["inspect", name], &[], None).success();
    serde_json::from_str(&out.stdout).unwrap()
}

/// The raw manifest (or index) of `image` on `registry`, as skopeo reads it.
fn raw_manifest(registry: &str, image: &str) -> Vec<u8> {
    let out = cmd("skopeo", &["inspect", "--raw", "--tls-verify=false", &format!("docker://{registry}/{image}")]);
    out.success().stdout.into_bytes()
}

/// Sends one HTTP/1.1 request to `addr` and returns the status code and body.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

#[test]
fn from_busybox_resolves_through_the_docker_io_mirror() {
    if !require(&["docker-registry", "runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let mirror = Registry::start_own();
    ws.build_base("store", "local/busybox");
    let on_mirror = format!("{}/library/busybox:latest", mirror.addr);
    rbuild_env(&ws, "store", &["tag", "local/busybox", &on_mirror], &[], None).success();
    rbuild_env(&ws, "store", &["push", &on_mirror], &[], None).success();
    let base = inspect(&ws, "store", "local/busybox");

    // A new store has no busybox: `FROM busybox` means docker.io/library/busybox, which only the mirror has.
    let ctx = ws.context("mirrored", &[("Dockerfile", "FROM busybox\nCOPY a /a\n"), ("a", "from the mirror\n")]);
    let flags = ["--registry-mirror", &mirror.addr];
    let args = [&flags[..], &["build", "-t", "local/app", ctx.to_str().unwrap()]].concat();
    rbuild_env(&ws, "store-2", &args, &[], None).success();
    let pulled = inspect(&ws, "store-2", "docker.io/library/busybox:latest");
    assert_eq!(pulled["Id"], base["Id"], "the mirror's busybox is the base");
    let app = inspect(&ws, "store-2", "local/app");
    let diff_ids = app["Config"]["rootfs"]["diff_ids"].as_array().unwrap();
    let base_ids = base["Config"]["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), base_ids.len() + 1);
    assert_eq!(&diff_ids[..base_ids.len()], base_ids.as_slice(), "the app is built on the mirror's layers");
    let log = mirror.log();
    assert!(log.contains("\"GET /v2/library/busybox/manifests/latest"), "asked the mirror:\n{log}");

    // The same for `rbuild pull`, and the environment variable works like the flag.
    let out = rbuild_env(&ws, "store-3", &["pull", "busybox"], &[("RBUILD_REGISTRY_MIRROR", &mirror.addr)], None);
    let out = out.success();
    assert!(out.stdout.contains(base["Id"].as_str().unwrap()), "{}", out.stdout);
    assert_eq!(inspect(&ws, "store-3", "busybox")["Id"], base["Id"]);
}

#[test]
fn platform_is_picked_from_a_multi_platform_index() {
    if !require(&["docker-registry", "skopeo"]) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start_own();
    // One image per platform, each with a file naming its platform, pushed to the same repository.
    let mut entries = Vec::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let ctx =
            ws.context(&format!("part-{arch}"), &[("Dockerfile", "FROM scratch\nCOPY arch /arch\n"), ("arch", arch)]);
        let tag = format!("{}/multi/idx:{arch}", reg.addr);
        let platform = format!("linux/{arch}");
        let args = ["build", "--platform", &platform, "-t", &tag, "--push", ctx.to_str().unwrap()];
        rbuild_env(&ws, "parts", &args, &[], None).success();
        let manifest = raw_manifest(&reg.addr, &format!("multi/idx:{arch}"));
        let mut platform = serde_json::json!({ "architecture": arch, "os": "linux" });
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", hex::encode(Sha256::digest(&manifest))),
            "size": manifest.len(),
            "platform": platform,
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries,
    });
    let media = ("Content-Type", "application/vnd.oci.image.index.v1+json");
    let body = serde_json::to_vec(&index).unwrap();
    let (status, text) = http(&reg.addr, "PUT", "/v2/multi/idx/manifests/latest", &[media], &body);
    assert_eq!(status, 201, "pushing the index: {text}");
    let idx = format!("{}/multi/idx", reg.addr);

    // A build for the other platform needs no emulator when it runs nothing.
    let ctx = ws.context("on-arm", &[("Dockerfile", &format!("FROM {idx}\nCOPY a /a\n")), ("a", "a")]);
    let out_dir = ws.path("arm-rootfs");
    let dest = format!("type=local,dest={}", out_dir.display());
    let args = ["build", "--platform", "linux/arm64", "-t", "local/on-arm", "--output", &dest, ctx.to_str().unwrap()];
    rbuild_env(&ws, "build-arm", &args, &[], None).success();
    assert_eq!(std::fs::read_to_string(out_dir.join("arch")).unwrap(), "arm64", "the arm64 entry's layer");
    let built = inspect(&ws, "build-arm", "local/on-arm");
    assert_eq!(built["Config"]["architecture"], "arm64");
    assert_eq!(built["Config"]["os"], "linux");

    // `pull --platform` picks each entry; the host platform is the default.
    for (store, platform) in
        [("pull-amd64", Some("linux/amd64")), ("pull-arm64", Some("linux/arm64")), ("pull-host", None)]
    {
        let mut args = vec!["pull", idx.as_str()];
        if let Some(p) = platform {
            args.extend(["--platform", p]);
        }
        rbuild_env(&ws, store, &args, &[], None).success();
        let config = &inspect(&ws, store, &idx)["Config"];
        let want = platform
            .map_or(std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"), |p| {
                p.trim_start_matches("linux/").to_string()
            });
        assert_eq!(config["architecture"], want.as_str(), "pull into {store}");
    }
    // Regression: a store that holds the tag for amd64 must not hand that image to an arm64 build.
    let out_dir = ws.path("arm-rootfs-2");
    let dest = format!("type=local,dest={}", out_dir.display());
    let args = ["build", "--platform", "linux/arm64", "-t", "local/on-arm", "--output", &dest, ctx.to_str().unwrap()];
    rbuild_env(&ws, "pull-amd64", &args, &[], None).success();
    assert_eq!(std::fs::read_to_string(out_dir.join("arch")).unwrap(), "arm64", "the local amd64 tag was reused");
    assert_eq!(inspect(&ws, "pull-amd64", "local/on-arm")["Config"]["architecture"], "arm64");

    let missing = rbuild_env(&ws, "pull-s390x", &["pull", &idx, "--platform", "linux/s390x"], &[], None);
    assert_ne!(missing.code, Some(0));
    assert!(
        missing.stderr.contains("linux/s390x") && missing.stderr.contains("linux/arm64"),
        "names the wanted and the available platforms: {}",
        missing.stderr
    );
}

/// Blob downloads in flight through a proxy: each GET of one of `held` blobs waits until `target` of them are in
/// flight together (or a deadline passes, so that a sequential client only gets slow, not stuck), and the highest
/// number seen is recorded.
struct CountingProxy {
    addr: String,
    state: Arc<(Mutex<Flight>, Condvar)>,
}

#[derive(Default)]
struct Flight {
    now: usize,
    max: usize,
}

impl CountingProxy {
    fn start(upstream: String, held: BTreeSet<String>, target: usize) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state: Arc<(Mutex<Flight>, Condvar)> = Arc::default();
        let shared = state.clone();
        let held = Arc::new(held);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, state, held) = (upstream.clone(), shared.clone(), held.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, &upstream, &state, &held, target);
                });
            }
        });
        CountingProxy { addr, state }
    }

    fn max_in_flight(&self) -> usize {
        self.state.0.lock().unwrap().max
    }
}

/// Relays one request (the proxy asks for `Connection: close` both ways, so there is one per connection).
fn relay(
    mut client: TcpStream,
    upstream: &str,
    state: &(Mutex<Flight>, Condvar),
    held: &BTreeSet<String>,
    target: usize,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or("").to_string();
    let headers: String = text
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let blob = request_line.starts_with("GET ") && held.iter().any(|d| request_line.contains(d.as_str()));
    if blob {
        let (lock, cv) = state;
        let mut f = lock.lock().unwrap();
        f.now += 1;
        f.max = f.max.max(f.now);
        cv.notify_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while f.max < target && Instant::now() < deadline {
            f = cv.wait_timeout(f, Duration::from_millis(100)).unwrap().0;
        }
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(format!("{request_line}\r\n{headers}Connection: close\r\n\r\n").as_bytes())?;
    let copied = std::io::copy(&mut up, &mut client);
    if blob {
        state.0.lock().unwrap().now -= 1;
    }
    let _ = client.shutdown(Shutdown::Both);
    copied.map(drop)
}

#[test]
fn layers_are_downloaded_concurrently() {
    if !require(&["docker-registry", "skopeo"]) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start_own();
    let files: Vec<(String, String)> =
        (0..4).map(|i| (format!("f{i}"), format!("layer {i}\n").repeat(20_000))).collect();
    let mut dockerfile = "FROM scratch\n".to_string();
    for (name, _) in &files {
        dockerfile.push_str(&format!("COPY {name} /{name}\n"));
    }
    let mut ctx_files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (n.as_str(), c.as_str())).collect();
    ctx_files.push(("Dockerfile", &dockerfile));
    let ctx = ws.context("layers", &ctx_files);
    let tag = format!("{}/many/layers:1", reg.addr);
    rbuild_env(&ws, "store", &["build", "-t", &tag, "--push", ctx.to_str().unwrap()], &[], None).success();
    let manifest: serde_json::Value = serde_json::from_slice(&raw_manifest(&reg.addr, "many/layers:1")).unwrap();
    let layers: BTreeSet<String> =
        manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    assert_eq!(layers.len(), 4);

    // Held until two are in flight: a client that fetched one layer after another would see at most one.
    let proxy = CountingProxy::start(reg.addr.clone(), layers, 2);
    let via_proxy = format!("{}/many/layers:1", proxy.addr);
    rbuild_env(&ws, "store-2", &["pull", &via_proxy], &[], None).success();
    assert!(proxy.max_in_flight() >= 2, "layer downloads overlapped: at most {} at once", proxy.max_in_flight());
    let pulled = inspect(&ws, "store-2", &via_proxy);
    assert_eq!(pulled["Id"], inspect(&ws, "store", &tag)["Id"]);
}

/// A registry that sends other bytes than a layer's digest names (of the right length): `rbuild pull` fails naming
/// the image, the layer, the digest it expected and the one it got, and the store keeps nothing of that layer.
#[test]
fn a_layer_the_registry_lies_about_is_named_and_nothing_of_it_is_kept() {
    use rbuild_test_support::{FakeRegistry, Route};
    let sha = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let real = b"the layer the manifest names".repeat(100);
    let sent = b"what the registry sends inst".repeat(100);
    let layer = sha(&real);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer}"]}},"config":{{}}}}"#
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{}}}]}}"#,
        sha(&config),
        config.len(),
        real.len()
    );
    let registry = FakeRegistry::start(vec![
        Route::new("/manifests/1", "application/vnd.oci.image.manifest.v1+json", manifest.into_bytes()),
        Route::new(sha(&config), "application/octet-stream", config.clone()),
        Route::new(layer.clone(), "application/octet-stream", sent.clone()),
    ]);
    let ws = Workspace::new();
    let image = format!("{}/liar/layer:1", registry.addr);
    let out = rbuild_env(&ws, "store", &["pull", "--platform", "linux/amd64", &image], &[], None);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    // The image as pinned by its manifest digest: `<registry>/liar/layer@sha256:...`.
    let repository = format!("{}/liar/layer@", registry.addr);
    for part in [&repository, &layer, &sha(&sent)] {
        assert!(out.stderr.contains(part.as_str()), "names {part}: {}", out.stderr);
    }
    let hex = layer.trim_start_matches("sha256:");
    let store = ws.path("store");
    assert!(!store.join("blobs/sha256").join(hex).exists(), "no blob of the lying layer");
    assert!(!store.join("snapshots").join(hex).exists(), "no snapshot of it");
}
