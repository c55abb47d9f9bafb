//! Pulling into a store from registries that tell the truth, lie, or break a transfer midway: what enters the
//! store, and what is left of a pull that failed.

use super::*;
use crate::registry::RegistryOptions;
use rbuild_test_support::{FakeRegistry, Route};
use rbuild_types::oci::{MEDIA_OCI_LAYER_GZIP, RootFs};
use std::io::Write;

/// A gzip layer holding `files` (regular, mode 0644, mtime 0): its blob and its diff_id.
pub(crate) fn gzip_layer(files: &[(&str, &[u8])]) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append_data(&mut header, name, *data).expect("tar entry");
    }
    let tar_bytes = tar.into_inner().expect("tar finish");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).expect("gzip");
    (gz.finish().expect("gzip finish"), Digest::of(&tar_bytes))
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        platform: None,
        annotations: None,
    }
}

/// Routes for an image tagged `1` whose manifest lists `layers` (descriptors) and whose config lists `diff_ids`;
/// the caller adds the routes of the blobs themselves.
fn image_routes(layers: Vec<Descriptor>, diff_ids: Vec<Digest>) -> Vec<Route> {
    let platform = Platform::host();
    let config = ImageConfig {
        architecture: platform.architecture,
        os: platform.os,
        variant: platform.variant,
        rootfs: RootFs { kind: "layers".into(), diff_ids },
        ..ImageConfig::default()
    };
    let config_bytes = to_canonical_json(&config);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: descriptor(MEDIA_OCI_CONFIG, &config_bytes),
        layers,
        annotations: None,
    };
    vec![
        Route::new("/manifests/1", MEDIA_OCI_MANIFEST, to_canonical_json(&manifest)),
        Route::new(Digest::of(&config_bytes).to_string(), MEDIA_OCI_CONFIG, config_bytes),
    ]
}

fn blob_route(digest: &Digest, body: Vec<u8>) -> Route {
    Route::new(digest.to_string(), "application/octet-stream", body)
}

async fn pull_from(registry: &FakeRegistry, store: &Store) -> Result<Pulled, ImageError> {
    let client = RegistryClient::new(RegistryOptions::default());
    let r = ImageRef::parse(&format!("{}/fake/image:1", registry.addr)).expect("reference");
    pull(&client, store, &r, &Platform::host()).await
}

/// Every file left in the store's temporary directory.
fn leftovers(store: &Store) -> Vec<String> {
    let entries = fs::read_dir(store.own_tmp()).expect("read the store's tmp");
    entries.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

#[tokio::test]
async fn a_layer_whose_blob_is_not_what_its_digest_says_leaves_no_blob_and_no_snapshot() {
    let (good, good_id) = gzip_layer(&[("good", b"good layer")]);
    let (real, real_id) = gzip_layer(&[("lie", b"the layer the manifest names")]);
    // Same length as the real blob, so only the digest tells them apart: a layer of other files.
    let (mut fake, _) = gzip_layer(&[("lie", b"what the registry sends instead")]);
    fake.resize(real.len(), 0);
    let (good_desc, real_desc) = (descriptor(MEDIA_OCI_LAYER_GZIP, &good), descriptor(MEDIA_OCI_LAYER_GZIP, &real));
    let mut routes = image_routes(vec![good_desc.clone(), real_desc.clone()], vec![good_id.clone(), real_id.clone()]);
    routes.extend([blob_route(&good_desc.digest, good), blob_route(&real_desc.digest, fake.clone())]);
    let registry = FakeRegistry::start(routes);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");

    let err = pull_from(&registry, &store).await.expect_err("the registry lies about a layer");
    let ImageError::Registry(RegistryError::DigestMismatch { what, expected, actual, .. }) = &err else {
        panic!("a digest mismatch, not {err:?}")
    };
    assert!(what.contains(real_desc.digest.as_str()), "names the layer: {err}");
    assert_eq!((expected, actual), (&real_desc.digest.to_string(), &Digest::of(&fake).to_string()));
    assert!(!store.has_blob(&real_desc.digest), "no blob for the lying layer");
    assert!(!store.has_snapshot(&real_id), "no snapshot for the lying layer");
    assert!(leftovers(&store).is_empty(), "temporary files left: {:?}", leftovers(&store));
    assert!(store.tag(&format!("{}/fake/image:1", registry.addr)).expect("tags").is_none());
}

#[tokio::test]
async fn a_blob_whose_diff_id_is_not_the_configs_leaves_no_snapshot() {
    let (blob, diff_id) = gzip_layer(&[("a", b"content")]);
    let claimed = Digest::of(b"some other tar");
    let desc = descriptor(MEDIA_OCI_LAYER_GZIP, &blob);
    let mut routes = image_routes(vec![desc.clone()], vec![claimed.clone()]);
    routes.push(blob_route(&desc.digest, blob));
    let registry = FakeRegistry::start(routes);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");

    let err = pull_from(&registry, &store).await.expect_err("the config names another diff_id");
    let chain = error_chain(&err);
    assert!(
        chain.contains(desc.digest.as_str()) && chain.contains(claimed.as_str()) && chain.contains(diff_id.as_str()),
        "names the layer, the claimed and the actual diff_id: {chain}"
    );
    assert!(!store.has_snapshot(&claimed) && !store.has_snapshot(&diff_id), "no snapshot");
    assert!(!store.has_blob(&desc.digest), "no blob");
    assert!(leftovers(&store).is_empty(), "temporary files left: {:?}", leftovers(&store));
}

#[tokio::test]
async fn a_layer_listed_twice_is_downloaded_once_and_unpacked() {
    let (base, base_id) = gzip_layer(&[("etc/base", b"base")]);
    let (twice, twice_id) = gzip_layer(&[("twice", b"listed twice")]);
    let (base_desc, twice_desc) = (descriptor(MEDIA_OCI_LAYER_GZIP, &base), descriptor(MEDIA_OCI_LAYER_GZIP, &twice));
    let layers = vec![twice_desc.clone(), base_desc.clone(), twice_desc.clone()];
    let mut routes = image_routes(layers, vec![twice_id.clone(), base_id.clone(), twice_id.clone()]);
    routes.extend([blob_route(&base_desc.digest, base), blob_route(&twice_desc.digest, twice)]);
    let registry = FakeRegistry::start(routes);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");

    let pulled = pull_from(&registry, &store).await.expect("pull");
    assert_eq!(pulled.config.rootfs.diff_ids, vec![twice_id.clone(), base_id.clone(), twice_id.clone()]);
    let twice_gets = registry.gets().iter().filter(|p| p.ends_with(twice_desc.digest.as_str())).count();
    assert_eq!(twice_gets, 1, "downloaded once: {:?}", registry.gets());
    assert_eq!(fs::read(store.snapshot_path(&twice_id).join("twice")).expect("unpacked"), b"listed twice");
    assert_eq!(fs::read(store.snapshot_path(&base_id).join("etc/base")).expect("unpacked"), b"base");
    assert!(store.has_blob(&twice_desc.digest) && store.has_blob(&base_desc.digest));
    assert_eq!(store.layer_blobs(&twice_id)[0].digest, twice_desc.digest);
    assert!(leftovers(&store).is_empty(), "temporary files left: {:?}", leftovers(&store));
}

#[tokio::test]
async fn a_transfer_broken_midway_is_retried_and_unpacked_from_the_start() {
    // Big enough that half of it holds whole tar entries, which the first attempt unpacks before the cut.
    let first: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let (blob, diff_id) = gzip_layer(&[("first", &first), ("second", b"after the cut")]);
    let desc = descriptor(MEDIA_OCI_LAYER_GZIP, &blob);
    let mut routes = image_routes(vec![desc.clone()], vec![diff_id.clone()]);
    routes.push(Route { cut_first: 2, ..blob_route(&desc.digest, blob) });
    let registry = FakeRegistry::start(routes);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");

    pull_from(&registry, &store).await.expect("pull after two broken transfers");
    let blob_gets = registry.gets().iter().filter(|p| p.ends_with(desc.digest.as_str())).count();
    assert_eq!(blob_gets, 3, "two broken transfers and a whole one: {:?}", registry.gets());
    let snapshot = store.snapshot_path(&diff_id);
    assert_eq!(fs::read(snapshot.join("first")).expect("unpacked"), first);
    assert_eq!(fs::read(snapshot.join("second")).expect("unpacked"), b"after the cut");
    assert_eq!(fs::read_dir(&snapshot).expect("snapshot").count(), 2);
    assert!(store.has_blob(&desc.digest));
    assert!(leftovers(&store).is_empty(), "temporary files left: {:?}", leftovers(&store));
}
