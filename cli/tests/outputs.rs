//! Every output format, judged by the tools that read it: docker load/run, skopeo, umoci; zstd; save/load; and
//! reproducible builds with SOURCE_DATE_EPOCH.

use crate::registry::rbuild_env;
use crate::support::{Registry, Workspace, cmd, docker, require, unique};
use rbuild_test_support::Reference;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const APP: &str = "FROM local/busybox\nRUN mkdir -p /srv/data && echo rbuild-output-test > /srv/data/msg && \
                   ln -s msg /srv/data/link && chmod 640 /srv/data/msg && chown 12:34 /srv/data/msg && rm /etc/motd\n\
                   CMD [\"cat\", \"/srv/data/msg\"]\n";

/// Path → (kind, mode, uid, gid, content or link target) of every entry under `root`.
fn tree(root: &Path) -> BTreeMap<String, (char, u32, u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for entry in walk(root) {
        let rel = entry.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let m = std::fs::symlink_metadata(&entry).unwrap();
        let (kind, content) = if m.is_dir() {
            ('d', Vec::new())
        } else if m.file_type().is_symlink() {
            ('l', std::fs::read_link(&entry).unwrap().to_string_lossy().as_bytes().to_vec())
        } else if m.is_file() {
            ('f', std::fs::read(&entry).unwrap())
        } else {
            ('o', Vec::new())
        };
        out.insert(rel, (kind, m.permissions().mode() & 0o7777, m.uid(), m.gid(), content));
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Held by tests while they load images into the one reference dockerd: concurrent loads into it were seen to
/// leave an image without its layers' files ("cat": executable file not found) now and then.
pub static DOCKER_LOADS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn every_output_is_read_by_docker_skopeo_and_umoci() {
    if !require(&["runc", "busybox", "skopeo", "umoci"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "local/busybox");
    let ctx = ws.context("app", &[("Dockerfile", APP)]);
    let name = format!("rbuild-test/{}:1", unique("outputs"));
    let (oci, dock, local, fstar, meta) =
        (ws.path("oci.tar"), ws.path("docker.tar"), ws.path("rootfs"), ws.path("fs.tar"), ws.path("meta.json"));
    let o = |s: String| s;
    rbuild_env(
        &ws,
        "store",
        &[
            "build",
            "-t",
            &name,
            "--output",
            &o(format!("type=oci,dest={}", oci.display())),
            "--output",
            &o(format!("type=docker,dest={}", dock.display())),
            "--output",
            &o(format!("type=local,dest={}", local.display())),
            "--output",
            &o(format!("type=tar,dest={}", fstar.display())),
            "--output",
            &o(format!("type=oci,dest={},tar=false", ws.path("oci-dir").display())),
            "--metadata-file",
            meta.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
        &[],
        None,
    )
    .success();

    // The metadata file names the manifest in the OCI archive and the config.
    let meta = json_file(&meta);
    let index = json_file(&ws.path("oci-dir/index.json"));
    assert_eq!(meta["containerimage.digest"], index["manifests"][0]["digest"], "{meta} {index}");
    let inspect: serde_json::Value =
        serde_json::from_str(&rbuild_env(&ws, "store", &["inspect", &name], &[], None).success().stdout).unwrap();
    assert_eq!(meta["containerimage.config.digest"], inspect["Id"]);

    // skopeo accepts the OCI archive; umoci unpacks it to the same tree as type=local.
    let layout = ws.path("layout");
    cmd("skopeo", &["copy", &format!("oci-archive:{}", oci.display()), &format!("oci:{}:app", layout.display())])
        .success();
    let bundle = ws.path("bundle");
    cmd("umoci", &["unpack", "--image", &format!("{}:app", layout.display()), bundle.to_str().unwrap()]).success();
    let (from_umoci, from_local) = (tree(&bundle.join("rootfs")), tree(&local));
    assert_eq!(from_umoci.keys().collect::<Vec<_>>(), from_local.keys().collect::<Vec<_>>());
    assert_eq!(from_umoci, from_local, "umoci's tree equals type=local");
    let msg = &from_local["srv/data/msg"];
    assert_eq!((msg.1, msg.2, msg.3, msg.4.as_slice()), (0o640, 12, 34, &b"rbuild-output-test\n"[..]));
    assert!(!from_local.contains_key("etc/motd"), "the whiteout applies");

    // type=tar is the same filesystem as one tar.
    let listed = cmd("tar", &["-tvf", fstar.to_str().unwrap()]).success().stdout;
    assert!(listed.lines().any(|l| l.contains("12/34") && l.ends_with("srv/data/msg")), "{listed}");
    assert!(listed.lines().any(|l| l.ends_with("srv/data/link -> msg")), "{listed}");

    // `docker load` accepts type=docker and the image runs.
    if let Some(env) = Reference::Docker26.require() {
        let _one_at_a_time = DOCKER_LOADS.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = docker(&env, &["load", "-i", dock.to_str().unwrap()]).success();
        assert!(loaded.stdout.contains(&name), "{}", loaded.stdout);
        let ran = docker(&env, &["run", "--rm", "--network", "host", &name]);
        let _ = docker(&env, &["rmi", "-f", &name]);
        assert_eq!(ran.success().stdout.trim(), "rbuild-output-test");
    }
}

#[test]
fn zstd_output_and_push_read_with_skopeo_umoci_and_podman() {
    if !require(&["runc", "busybox", "skopeo", "umoci", "docker-registry", "zstd", "podman"]) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start();
    ws.build_base("store", "local/busybox");
    let ctx = ws.context("app", &[("Dockerfile", APP)]);
    let name = format!("{}/{}:zstd", reg.addr, unique("zstd"));
    let oci = ws.path("z.tar");
    let run = rbuild_env(
        &ws,
        "store",
        &[
            "build",
            "-t",
            &name,
            "--push",
            "--compression",
            "zstd",
            "--output",
            &format!("type=oci,dest={},compression=zstd,compression-level=9", oci.display()),
            ctx.to_str().unwrap(),
        ],
        &[],
        None,
    )
    .success();
    assert!(run.stdout.contains(&name), "the pushed digest is printed: {}", run.stdout);
    for source in [format!("oci-archive:{}", oci.display()), format!("docker://{name}")] {
        let raw = cmd("skopeo", &["inspect", "--raw", "--tls-verify=false", &source]).success();
        let manifest: serde_json::Value = serde_json::from_str(&raw.stdout).unwrap();
        for layer in manifest["layers"].as_array().unwrap() {
            assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd", "{source}: {manifest}");
        }
        // skopeo reads (decompresses, digest-checks) the zstd layers; umoci 0.4 cannot read zstd itself, so skopeo
        // hands it gzip, and umoci checks the result against the config's diff_ids as it unpacks.
        let layout = ws.path(&unique("layout"));
        cmd(
            "skopeo",
            &[
                "copy",
                "--src-tls-verify=false",
                "--dest-compress-format",
                "gzip",
                &source,
                &format!("oci:{}:z", layout.display()),
            ],
        )
        .success();
        let bundle = ws.path(&unique("bundle"));
        cmd("umoci", &["unpack", "--image", &format!("{}:z", layout.display()), bundle.to_str().unwrap()]).success();
        assert_eq!(std::fs::read_to_string(bundle.join("rootfs/srv/data/msg")).unwrap(), "rbuild-output-test\n");
    }
    // podman unpacks the zstd layers itself (no transcoding): its exported container filesystem has the files.
    // Its storage lives in this test's directory, so nothing is left on the machine.
    let (proot, prun) = (ws.path("podman-root"), ws.path("podman-run"));
    let podman = |args: &[&str]| {
        let mut all = vec!["--root", proot.to_str().unwrap(), "--runroot", prun.to_str().unwrap(), "--log-level=error"];
        all.extend_from_slice(args);
        cmd("podman", &all)
    };
    let container = podman(&["create", "--tls-verify=false", &name]).success().stdout.trim().to_string();
    let exported = ws.path("podman-export.tar");
    podman(&["export", "-o", exported.to_str().unwrap(), &container]).success();
    let listing = cmd("tar", &["-tf", exported.to_str().unwrap()]).success().stdout;
    assert!(listing.lines().any(|l| l == "srv/data/msg") && listing.lines().any(|l| l == "bin/busybox"), "{listing}");
    podman(&["rm", "-f", &container]).success();
    let _ = podman(&["rmi", "-a", "-f"]);

    // The zstd CLI decompresses each layer of the archive to exactly its diff_id.
    let dir = ws.path("z-dir");
    std::fs::create_dir_all(&dir).unwrap();
    cmd("tar", &["-xf", oci.to_str().unwrap(), "-C", dir.to_str().unwrap()]).success();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let blob = |d: &serde_json::Value| dir.join("blobs/sha256").join(d.as_str().unwrap().trim_start_matches("sha256:"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&index["manifests"][0]["digest"])).unwrap()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&manifest["config"]["digest"])).unwrap()).unwrap();
    for (layer, diff_id) in
        manifest["layers"].as_array().unwrap().iter().zip(config["rootfs"]["diff_ids"].as_array().unwrap())
    {
        let path = blob(&layer["digest"]);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | sha256sum", path.display()))
            .output()
            .unwrap();
        let sum = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string();
        assert_eq!(format!("sha256:{sum}"), diff_id.as_str().unwrap());
    }
    // A fresh store pulls the zstd image and builds on it.
    rbuild_env(&ws, "store-2", &["pull", &name], &[], None).success();
    let next = ws.context("next", &[("Dockerfile", &format!("FROM {name}\nRUN cat /srv/data/msg > /copy\n"))]);
    rbuild_env(&ws, "store-2", &["build", next.to_str().unwrap()], &[], None).success();
}

#[test]
fn save_and_load_round_trip_between_stores() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("store", "local/busybox");
    let ctx = ws.context("app", &[("Dockerfile", APP)]);
    rbuild_env(&ws, "store", &["build", "-t", "local/app:1", ctx.to_str().unwrap()], &[], None).success();
    let archive = ws.path("saved.tar");
    for format in ["docker", "oci"] {
        rbuild_env(
            &ws,
            "store",
            &["save", "--format", format, "-o", archive.to_str().unwrap(), "local/app:1"],
            &[],
            None,
        )
        .success();
        let store = format!("store-{format}");
        let loaded = rbuild_env(&ws, &store, &["load", "-i", archive.to_str().unwrap()], &[], None).success();
        assert!(loaded.stdout.contains("docker.io/local/app:1"), "{format}: {}", loaded.stdout);
        let id = |store: &str| {
            let out = rbuild_env(&ws, store, &["inspect", "local/app:1"], &[], None).success().stdout;
            serde_json::from_str::<serde_json::Value>(&out).unwrap()["Id"].clone()
        };
        assert_eq!(id(&store), id("store"), "{format}: the same image");
        let next = ws.context(&unique("next"), &[("Dockerfile", "FROM local/app:1\nRUN cat /srv/data/msg\n")]);
        rbuild_env(&ws, &store, &["build", next.to_str().unwrap()], &[], None).success();
    }
}

#[test]
fn source_date_epoch_gives_identical_digests_from_empty_stores() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let base_ctx = ws.context_from("busybox-base");
    let app = ws.context(
        "app",
        &[("Dockerfile", "FROM local/busybox\nRUN echo built > /built-at && mkdir /out && echo x > /out/f && touch /out\nCOPY Dockerfile /src/\n")],
    );
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
    let mut digests = Vec::new();
    for store in ["store-a", "store-b"] {
        rbuild_env(&ws, store, &["build", "-t", "local/busybox", base_ctx.to_str().unwrap()], &epoch, None).success();
        let meta = ws.path(&format!("{store}.json"));
        rbuild_env(
            &ws,
            store,
            &["build", "-t", "local/app", "--metadata-file", meta.to_str().unwrap(), app.to_str().unwrap()],
            &epoch,
            None,
        )
        .success();
        digests.push(json_file(&meta));
        // The files are made at different times in the two builds; only the clamp makes the digests equal.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(digests[0]["containerimage.config.digest"], digests[1]["containerimage.config.digest"]);
    assert_eq!(digests[0]["containerimage.digest"], digests[1]["containerimage.digest"], "{digests:?}");
    let config: serde_json::Value =
        serde_json::from_str(&rbuild_env(&ws, "store-a", &["inspect", "local/app"], &[], None).success().stdout)
            .unwrap();
    assert_eq!(config["Config"]["created"], "2023-11-14T22:13:20Z", "created is clamped: {config}");
}
