//! Tests against a real registry: Debian's `docker-registry` (the CNCF distribution registry) started per test on
//! its own loopback port and storage directory, so tests run in parallel and need no network.

use super::*;
use rbuild_test_support::{Registry, require_tools};
use rbuild_types::oci::{
    Descriptor, Index, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Platform, RootFs,
    to_canonical_json,
};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// This test's own registry (some tests read its access log), or `None` when the shared gate skipped the test.
fn own_registry() -> Option<Registry> {
    require_tools(&["docker-registry"]).then(Registry::start_own)
}

/// `path` on `registry`.
fn image(registry: &Registry, path: &str) -> ImageRef {
    ImageRef::parse(&format!("{}/{path}", registry.addr)).expect("test reference")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local addr").port()
}

/// A tiny real image: one gzip layer holding two files, its OCI config and manifest, written to `dir`.
struct TestImage {
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
    layer_bytes: Vec<u8>,
    layers: Vec<(Descriptor, PathBuf)>,
}

fn make_image(dir: &Path, platform: &Platform, marker: &str) -> TestImage {
    let hello = format!("hello {marker}\n");
    let (layer_bytes, diff_id) =
        crate::local::tests::gzip_layer(&[("hello.txt", hello.as_bytes()), ("etc/os-release", b"ID=test\n")]);

    let config = ImageConfig {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        rootfs: RootFs { kind: "layers".into(), diff_ids: vec![diff_id] },
        ..ImageConfig::default()
    };
    let config_bytes = to_canonical_json(&config);
    let layer_desc = Descriptor {
        media_type: rbuild_types::oci::MEDIA_OCI_LAYER_GZIP.into(),
        digest: Digest::of(&layer_bytes),
        size: layer_bytes.len() as u64,
        platform: None,
        annotations: None,
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: rbuild_types::oci::MEDIA_OCI_CONFIG.into(),
            digest: Digest::of(&config_bytes),
            size: config_bytes.len() as u64,
            platform: None,
            annotations: None,
        },
        layers: vec![layer_desc.clone()],
        annotations: None,
    };
    let layer_path = dir.join(format!("layer-{marker}.tar.gz"));
    std::fs::write(&layer_path, &layer_bytes).expect("write layer");
    TestImage {
        manifest_bytes: to_canonical_json(&manifest),
        config_bytes,
        layer_bytes,
        layers: vec![(layer_desc, layer_path)],
    }
}

fn amd64() -> Platform {
    Platform { architecture: "amd64".into(), os: "linux".into(), variant: None }
}

fn arm64() -> Platform {
    Platform { architecture: "arm64".into(), os: "linux".into(), variant: Some("v8".into()) }
}

#[tokio::test]
async fn push_resolve_pull_round_trip() {
    let Some(registry) = own_registry() else { return };
    let work = tempfile::tempdir().expect("temp dir");
    let img = make_image(work.path(), &amd64(), "round-trip");
    let client = RegistryClient::new(RegistryOptions::default());
    let r = image(&registry, "base/busybox:latest");
    assert_eq!(r.to_string(), format!("{}/base/busybox:latest", registry.addr));

    let pushed = client.push_image(&r, &img.manifest_bytes, &img.config_bytes, &img.layers).await.expect("push");
    assert_eq!(pushed, Digest::of(&img.manifest_bytes));

    let resolved = client.resolve(&r, &amd64()).await.expect("resolve");
    assert_eq!(resolved.digest, Digest::of(&img.manifest_bytes));
    assert_eq!(resolved.manifest_bytes, img.manifest_bytes, "manifest must be stored byte for byte");
    assert_eq!(resolved.config_bytes, img.config_bytes);
    assert_eq!(resolved.config.architecture, "amd64");
    assert_eq!(resolved.manifest.layers, vec![img.layers[0].0.clone()]);

    // Resolving by digest gives the same image.
    let by_digest = client.resolve(&r.with_digest(pushed.clone()), &amd64()).await.expect("resolve by digest");
    assert_eq!(by_digest.digest, pushed);

    let dest = work.path().join("pulled-layer");
    client.pull_blob(&r, &resolved.manifest.layers[0], &dest).await.expect("pull layer");
    assert_eq!(std::fs::read(&dest).expect("read pulled layer"), img.layer_bytes);
    let dest = work.path().join("pulled-config");
    client.pull_blob(&r, &resolved.manifest.config, &dest).await.expect("pull config");
    assert_eq!(std::fs::read(&dest).expect("read pulled config"), img.config_bytes);

    // An independent client reads the same image.
    let skopeo = Command::new("skopeo").args(["inspect", "--tls-verify=false", &format!("docker://{r}")]).output();
    match skopeo {
        Ok(out) => {
            assert!(out.status.success(), "skopeo inspect failed: {}", String::from_utf8_lossy(&out.stderr));
            let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("skopeo json");
            assert_eq!(info["Digest"], pushed.as_str(), "{info}");
            assert_eq!(info["Architecture"], "amd64", "{info}");
            assert_eq!(info["Layers"][0], img.layers[0].0.digest.as_str(), "{info}");
        }
        Err(e) => rbuild_test_support::skip(&format!("the skopeo check: skopeo did not run: {e}")),
    }
}

#[tokio::test]
async fn second_push_skips_existing_blobs() {
    let Some(registry) = own_registry() else { return };
    let work = tempfile::tempdir().expect("temp dir");
    let img = make_image(work.path(), &amd64(), "skip");
    let client = RegistryClient::new(RegistryOptions::default());
    let r = image(&registry, "app/skip:v1");

    let first = client.push_image_report(&r, &img.manifest_bytes, &img.config_bytes, &img.layers).await.expect("push");
    let layer = img.layers[0].0.digest.clone();
    let config = Digest::of(&img.config_bytes);
    assert_eq!(first.uploaded, vec![layer.clone(), config.clone()]);
    assert!(first.skipped.is_empty());
    let uploads_after_first = registry.upload_starts();
    assert_eq!(uploads_after_first, 2, "registry log:\n{}", registry.log());

    // Same blobs, another tag: nothing is uploaded again, the registry sees no new upload session.
    let r2 = image(&registry, "app/skip:v2");
    let second =
        client.push_image_report(&r2, &img.manifest_bytes, &img.config_bytes, &img.layers).await.expect("push");
    assert_eq!(second.digest, first.digest);
    assert!(second.uploaded.is_empty(), "{second:?}");
    assert_eq!(second.skipped, vec![layer, config]);
    assert_eq!(registry.upload_starts(), uploads_after_first);
    assert_eq!(client.resolve(&r2, &amd64()).await.expect("resolve v2").digest, first.digest);
}

#[tokio::test]
async fn push_to_unreachable_registry_names_the_host() {
    let work = tempfile::tempdir().expect("temp dir");
    let img = make_image(work.path(), &amd64(), "unreachable");
    let port = free_port(); // released: nothing listens there
    let r = ImageRef::parse(&format!("127.0.0.1:{port}/nobody/home:latest")).expect("reference");
    let client = RegistryClient::new(RegistryOptions::default());
    let started = Instant::now();
    let err = client.push_image(&r, &img.manifest_bytes, &img.config_bytes, &img.layers).await.expect_err("must fail");
    assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(5), "took {:?}", started.elapsed());
    let msg = err.to_string();
    eprintln!("unreachable registry error: {msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}/nobody/home")), "{msg}");
    assert!(msg.to_lowercase().contains("connect"), "the cause must be shown: {msg}");
    assert!(matches!(err, RegistryError::Request { status: None, .. }), "{err:?}");
}

#[tokio::test]
async fn resolve_picks_the_platform_from_an_index() {
    let Some(registry) = own_registry() else { return };
    let work = tempfile::tempdir().expect("temp dir");
    let client = RegistryClient::new(RegistryOptions::default());
    let r = image(&registry, "multi/arch:latest");
    let mut entries = Vec::new();
    for (platform, marker) in [(amd64(), "amd64"), (arm64(), "arm64")] {
        let img = make_image(work.path(), &platform, marker);
        // Each platform image is pushed by digest only (no tag), as a multi-platform build does.
        let untagged = ImageRef { tag: None, ..r.clone() };
        let digest =
            client.push_image(&untagged, &img.manifest_bytes, &img.config_bytes, &img.layers).await.expect("push");
        entries.push(Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest,
            size: img.manifest_bytes.len() as u64,
            platform: Some(Platform { variant: None, ..platform }),
            annotations: None,
        });
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_INDEX.into()),
        manifests: entries.clone(),
        annotations: None,
    };
    let index_bytes = to_canonical_json(&index);
    let index_digest = client.push_manifest(&r, &index_bytes, MEDIA_OCI_INDEX).await.expect("push index");
    assert_eq!(index_digest, Digest::of(&index_bytes));

    // arm64/v8 matches the entry without a variant (v8 is arm64's default).
    let arm = client.resolve(&r, &arm64()).await.expect("resolve arm64");
    assert_eq!(arm.digest, entries[1].digest);
    assert_eq!(arm.config.architecture, "arm64");
    let x86 = client.resolve(&r, &amd64()).await.expect("resolve amd64");
    assert_eq!(x86.digest, entries[0].digest);

    let s390x = Platform { architecture: "s390x".into(), os: "linux".into(), variant: None };
    let err = client.resolve(&r, &s390x).await.expect_err("no s390x image");
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::NoMatchingPlatform { .. }), "{err:?}");
    assert!(msg.contains("linux/s390x") && msg.contains("linux/amd64") && msg.contains("linux/arm64"), "{msg}");
}

#[tokio::test]
async fn docker_schema2_manifests_are_accepted() {
    let Some(registry) = own_registry() else { return };
    let work = tempfile::tempdir().expect("temp dir");
    let img = make_image(work.path(), &amd64(), "docker");
    let client = RegistryClient::new(RegistryOptions::default());
    let r = image(&registry, "docker/style:1");
    let mut manifest: Manifest = serde_json::from_slice(&img.manifest_bytes).expect("manifest");
    manifest.media_type = Some(MEDIA_DOCKER_MANIFEST.into());
    manifest.config.media_type = rbuild_types::oci::MEDIA_DOCKER_CONFIG.into();
    manifest.layers[0].media_type = rbuild_types::oci::MEDIA_DOCKER_LAYER_GZIP.into();
    let manifest_bytes = to_canonical_json(&manifest);
    let layers = vec![(manifest.layers[0].clone(), img.layers[0].1.clone())];
    let digest = client.push_image(&r, &manifest_bytes, &img.config_bytes, &layers).await.expect("push");
    let resolved = client.resolve(&r, &amd64()).await.expect("resolve");
    assert_eq!(resolved.digest, digest);
    assert_eq!(resolved.manifest.media_type.as_deref(), Some(MEDIA_DOCKER_MANIFEST));
    assert_eq!(resolved.manifest_bytes, manifest_bytes);
}

#[tokio::test]
async fn pull_with_wrong_size_fails_and_removes_the_file() {
    let Some(registry) = own_registry() else { return };
    let work = tempfile::tempdir().expect("temp dir");
    let img = make_image(work.path(), &amd64(), "size");
    let client = RegistryClient::new(RegistryOptions::default());
    let r = image(&registry, "sizes/check:latest");
    client.push_image(&r, &img.manifest_bytes, &img.config_bytes, &img.layers).await.expect("push");

    let missing_repo = image(&registry, "never/pushed:latest");
    let err = client.resolve(&missing_repo, &amd64()).await.expect_err("no such image");
    eprintln!("missing image error: {err}");
    assert_eq!(err.status(), Some(404), "{err:?}");

    let dest = work.path().join("short");
    let mut desc = img.layers[0].0.clone();
    desc.size -= 1;
    let err = client.pull_blob(&r, &desc, &dest).await.expect_err("too long for its descriptor");
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err:?}");
    assert!(!dest.exists());

    let missing = Descriptor { digest: Digest::of(b"not there"), size: 9, ..desc };
    let err = client.pull_blob(&r, &missing, &dest).await.expect_err("unknown blob");
    assert_eq!(err.status(), Some(404), "{err:?}");
    assert!(err.to_string().contains(&format!("{}/sizes/check", registry.addr)), "{err}");
    assert!(!dest.exists());
}

#[tokio::test]
async fn push_rejects_a_config_that_does_not_match_the_manifest() {
    let work = tempfile::tempdir().expect("temp dir");
    let img = make_image(work.path(), &amd64(), "mismatch");
    let client = RegistryClient::new(RegistryOptions::default());
    let r = ImageRef::parse("127.0.0.1:1/x:latest").expect("reference");
    let err = client.push_image(&r, &img.manifest_bytes, b"{}", &img.layers).await.expect_err("config mismatch");
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err:?}");
}

/// Runs `items` through a [`BlobCheck`] the way a download does.
async fn check_stream(
    r: &ImageRef,
    desc: &Descriptor,
    items: Vec<Result<&'static [u8], io::Error>>,
) -> Result<(), Failure> {
    let mut stream = futures::stream::iter(items.into_iter().map(|i| i.map(bytes::Bytes::from_static)));
    let mut check = BlobCheck::new(r, "blob", desc);
    while check.next(&mut stream).await?.is_some() {}
    check.finish()
}

#[tokio::test]
async fn blob_check_bounds_the_size_and_names_a_digest_mismatch() {
    use oci_client::errors::DigestError;
    let r = ImageRef::parse("localhost/x").expect("reference");
    let desc =
        Descriptor { media_type: "x".into(), digest: Digest::of(b"hello"), size: 5, platform: None, annotations: None };
    // What oci-client's verifying stream yields last when the bytes do not hash to `expected`.
    let verdict = |expected: &Digest, actual: &Digest| {
        Err(io::Error::other(DigestError::VerificationError {
            expected: expected.to_string(),
            actual: actual.to_string(),
        }))
    };
    assert!(check_stream(&r, &desc, vec![Ok(b"hel"), Ok(b"lo")]).await.is_ok());

    let jello = Digest::of(b"jello");
    let swapped = check_stream(&r, &desc, vec![Ok(b"jello"), verdict(&desc.digest, &jello)]).await;
    let Err(Failure::Final(RegistryError::DigestMismatch { what, expected, actual, .. })) = swapped else {
        panic!("a swapped blob is a digest mismatch")
    };
    assert_eq!((expected, actual), (desc.digest.to_string(), jello.to_string()));
    assert_eq!(what, format!("blob {}", desc.digest));

    let header = Digest::of(b"what the header said");
    let by_header = check_stream(&r, &desc, vec![Ok(b"jello"), verdict(&header, &jello)]).await;
    let Err(Failure::Final(RegistryError::DigestMismatch { what, expected, .. })) = by_header else {
        panic!("a blob that does not match the digest header is a digest mismatch")
    };
    assert!(what.contains("Docker-Content-Digest") && expected == header.to_string(), "{what} {expected}");

    let short = check_stream(&r, &desc, vec![Ok(b"hell"), verdict(&desc.digest, &Digest::of(b"hell"))]).await;
    assert!(matches!(short, Err(Failure::Final(RegistryError::SizeMismatch { actual: 4, .. }))));
    let long = check_stream(&r, &desc, vec![Ok(b"hello!"), verdict(&desc.digest, &Digest::of(b"hello!"))]).await;
    assert!(matches!(long, Err(Failure::Final(RegistryError::SizeMismatch { actual: 6, .. }))));
    let broken = check_stream(&r, &desc, vec![Ok(b"he"), Err(io::Error::other("connection reset"))]).await;
    assert!(matches!(broken, Err(Failure::Oci(_))), "a broken transfer stays retryable");
}

#[test]
fn platform_matching_rules() {
    let p = |os: &str, arch: &str, variant: Option<&str>| Platform {
        os: os.into(),
        architecture: arch.into(),
        variant: variant.map(String::from),
    };
    assert!(platform_matches(&p("linux", "amd64", None), &p("linux", "amd64", None)));
    assert!(!platform_matches(&p("linux", "amd64", None), &p("windows", "amd64", None)));
    assert!(!platform_matches(&p("linux", "amd64", None), &p("linux", "arm64", None)));
    assert!(platform_matches(&p("linux", "arm", None), &p("linux", "arm", Some("v6"))), "no variant asked: any");
    assert!(platform_matches(&p("linux", "arm", Some("v7")), &p("linux", "arm", Some("v7"))));
    assert!(!platform_matches(&p("linux", "arm", Some("v7")), &p("linux", "arm", Some("v6"))));
    assert!(platform_matches(&p("linux", "arm64", Some("v8")), &p("linux", "arm64", None)), "v8 is arm64's default");
    assert!(!platform_matches(&p("linux", "arm", Some("v6")), &p("linux", "arm", None)), "v7 is arm's default");

    let r = ImageRef::parse("localhost/x").expect("reference");
    let entry = |platform: Platform, byte: &[u8]| Descriptor {
        media_type: MEDIA_OCI_MANIFEST.into(),
        digest: Digest::of(byte),
        size: 1,
        platform: Some(platform),
        annotations: None,
    };
    let entries = vec![
        entry(p("linux", "arm", Some("v6")), b"a"),
        entry(p("linux", "arm", Some("v7")), b"b"),
        entry(p("unknown", "unknown", None), b"c"),
    ];
    assert_eq!(select_platform(&r, &entries, &p("linux", "arm", Some("v7"))).expect("v7").digest, Digest::of(b"b"));
    let err = select_platform(&r, &entries, &p("linux", "amd64", None)).expect_err("none");
    assert!(err.to_string().contains("linux/arm/v6, linux/arm/v7, unknown/unknown"), "{err}");
}

#[test]
fn documents_are_told_apart_by_media_type_or_shape() {
    let r = ImageRef::parse("localhost/x").expect("reference");
    let d = Digest::of(b"x");
    let manifest_no_type =
        format!(r#"{{"schemaVersion":2,"config":{{"mediaType":"a","digest":"{d}","size":1}},"layers":[]}}"#);
    assert!(matches!(parse_document(&r, "m", manifest_no_type.as_bytes()), Ok(Document::Manifest(_))));
    let index_no_type = format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"a","digest":"{d}","size":1}}]}}"#);
    assert!(matches!(parse_document(&r, "m", index_no_type.as_bytes()), Ok(Document::Index(_))));
    let list = format!(r#"{{"schemaVersion":2,"mediaType":"{MEDIA_DOCKER_LIST}","manifests":[]}}"#);
    assert!(matches!(parse_document(&r, "m", list.as_bytes()), Ok(Document::Index(_))));

    let schema1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
    let err = parse_document(&r, "m", schema1).err().expect("schema 1 is refused");
    assert!(err.to_string().contains("schemaVersion 1"), "{err}");
    let other = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.artifact.manifest.v1+json"}"#;
    assert!(matches!(parse_document(&r, "m", other), Err(RegistryError::UnsupportedMediaType { .. })));
    assert!(matches!(parse_document(&r, "m", b"not json"), Err(RegistryError::BadDocument { .. })));
}

#[test]
fn plain_http_only_for_loopback_and_the_insecure_list() {
    let client = RegistryClient::new(RegistryOptions {
        insecure_registries: vec!["reg.lan:5000".into(), "other.lan".into()],
        ..Default::default()
    });
    for plain in
        ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "reg.lan:5000", "other.lan:443"]
    {
        assert!(client.is_plain_http(plain), "{plain}");
    }
    for tls in ["docker.io", "reg.lan", "reg.lan:5001", "ghcr.io", "10.0.0.1:5000", "localhost.example.com"] {
        assert!(!client.is_plain_http(tls), "{tls}");
    }
}

#[test]
fn credentials_are_found_under_config_json_names() {
    let creds = |u: &str| Credentials { username: u.into(), password: "secret".into() };
    let client = RegistryClient::new(RegistryOptions {
        insecure_registries: Vec::new(),
        credentials: BTreeMap::from([
            ("https://index.docker.io/v1/".to_string(), creds("hub")),
            ("ghcr.io".to_string(), creds("gh")),
            ("https://quay.io".to_string(), creds("quay")),
        ]),
        ..Default::default()
    });
    let user = |r: &str| client.credentials_for(r).expect("no helper involved").map(|c| c.username);
    assert_eq!(user("docker.io").as_deref(), Some("hub"));
    assert_eq!(user("ghcr.io").as_deref(), Some("gh"));
    assert_eq!(user("quay.io").as_deref(), Some("quay"));
    assert!(user("localhost:5000").is_none());
    assert!(!format!("{:?}", creds("u")).contains("secret"));
}

#[tokio::test]
async fn large_layers_stream_in_one_request() {
    let Some(registry) = own_registry() else { return };
    let work = tempfile::tempdir().expect("temp dir");
    let img = make_image(work.path(), &amd64(), "big");
    // A 9 MiB incompressible "layer" (the registry does not look inside blobs), read in 1 MiB pieces.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let big: Vec<u8> = (0..9 * 1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let big_path = work.path().join("big.bin");
    std::fs::write(&big_path, &big).expect("write big layer");
    let big_desc = Descriptor {
        media_type: rbuild_types::oci::MEDIA_OCI_LAYER_GZIP.into(),
        digest: Digest::of(&big),
        size: big.len() as u64,
        platform: None,
        annotations: None,
    };
    let mut manifest: Manifest = serde_json::from_slice(&img.manifest_bytes).expect("manifest");
    manifest.layers.push(big_desc.clone());
    let manifest_bytes = to_canonical_json(&manifest);
    let mut layers = img.layers.clone();
    layers.push((big_desc.clone(), big_path));
    let client = RegistryClient::new(RegistryOptions::default());
    let r = image(&registry, "big/layer:latest");
    client.push_image(&r, &manifest_bytes, &img.config_bytes, &layers).await.expect("push");

    let log = registry.log();
    // Each blob goes up as one streaming PUT that carries the digest; no PATCH waits for an answer per piece.
    assert!(!log.contains("\"PATCH /v2/big/layer/"), "no chunked upload requests:\n{log}");
    let puts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"PUT /v2/big/layer/blobs/uploads/") && l.contains(big_desc.digest.hex()))
        .collect();
    assert_eq!(puts.len(), 1, "one PUT of the big blob:\n{log}");
    assert!(puts[0].contains("\" 201 "), "{}", puts[0]);

    let dest = work.path().join("big.pulled");
    client.pull_blob(&r, &big_desc, &dest).await.expect("pull big layer");
    assert!(std::fs::read(&dest).expect("read pulled") == big, "pulled bytes differ");
}

/// Regression (adversarial review, item 9): a registry that trickles a byte at a time never tripped the idle
/// timeout and held a build without bound. The deadline ends it with a message that says what happened.
#[tokio::test]
async fn a_trickling_registry_hits_the_deadline_with_a_clear_error() {
    let addr = rbuild_test_support::trickling_registry(Duration::from_millis(200));
    let client = RegistryClient::new(RegistryOptions {
        timeouts: Timeouts { idle: Duration::from_secs(5), request: Duration::from_secs(2), min_rate: 1024 * 1024 },
        ..Default::default()
    });
    let r = ImageRef::parse(&format!("{addr}/slow/image:1")).expect("reference");
    let started = Instant::now();
    let err = client.resolve(&r, &Platform::host()).await.expect_err("a trickle must not succeed");
    let took = started.elapsed();
    assert!(matches!(err, RegistryError::Deadline { .. }), "{err}");
    assert!(err.to_string().contains("did not finish within 2s"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// A registry that stops sending altogether trips the idle timeout (then the deadline, whichever is first).
#[tokio::test]
async fn a_stalled_registry_fails_within_the_idle_timeout() {
    let addr = rbuild_test_support::trickling_registry(Duration::from_secs(3600));
    let client = RegistryClient::new(RegistryOptions {
        timeouts: Timeouts { idle: Duration::from_millis(500), request: Duration::from_secs(30), min_rate: 1024 },
        ..Default::default()
    });
    let r = ImageRef::parse(&format!("{addr}/stalled/image:1")).expect("reference");
    let started = Instant::now();
    let err = client.resolve(&r, &Platform::host()).await.expect_err("a stall must not succeed");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}: {err}", started.elapsed());
}
