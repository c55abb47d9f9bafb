//! Multi-platform builds (issue 15): `--platform linux/amd64,linux/arm64` builds one image per platform, runs
//! foreign RUN steps under QEMU, shares `FROM --platform=$BUILDPLATFORM` stages, and sends an OCI index to the
//! registry, an OCI layout and per-platform directories. Read back with skopeo and umoci; the arm64 programs run
//! through Debian's qemu-user-static.

use crate::support::{Registry, Workspace, cmd, require, skip, testdata, unique};
use std::path::{Path, PathBuf};

/// Debian's arm64 `busybox-static`, unpacked by scripts/install-deps.sh (`apt-get download busybox-static:arm64`;
/// it cannot be installed beside the amd64 package).
const BUSYBOX_ARM64: &str = "/usr/local/lib/rbuild-test/arm64/busybox";
const QEMU_AARCH64: &str = "/usr/bin/qemu-aarch64-static";

/// The tools these tests need, on an amd64 machine; false (skipped, or failed in CI) when something is missing.
fn ready() -> bool {
    if !require(&["runc", "busybox", "skopeo", "umoci", "docker-registry"]) {
        return false;
    }
    if std::env::consts::ARCH != "x86_64" {
        skip("the multi-platform tests build arm64 images on an amd64 machine");
        return false;
    }
    for (path, what) in [(BUSYBOX_ARM64, "busybox-static:arm64"), (QEMU_AARCH64, "qemu-user-static")] {
        if !Path::new(path).is_file() {
            skip(&format!("needs {path} ({what}; see scripts/install-deps.sh)"));
            return false;
        }
    }
    true
}

/// A context that builds the busybox base image for amd64 and arm64 from Debian's two static busyboxes.
fn base_context(ws: &Workspace) -> PathBuf {
    let ctx = ws.context_from("busybox-base");
    std::fs::remove_file(ctx.join("busybox")).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox-amd64")).unwrap();
    std::fs::copy(BUSYBOX_ARM64, ctx.join("busybox-arm64")).unwrap();
    let dockerfile = std::fs::read_to_string(testdata("busybox-base/Dockerfile")).unwrap();
    let dockerfile = dockerfile
        .replace("FROM scratch\n", "FROM scratch\nARG TARGETARCH\n")
        .replace("COPY busybox /bin/busybox", "COPY busybox-$TARGETARCH /bin/busybox");
    assert!(dockerfile.contains("busybox-$TARGETARCH"), "{dockerfile}");
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}

/// The cross-compilation pattern: a stage on the build platform, run once, and a final stage per target.
fn app_context(ws: &Workspace, base: &str) -> PathBuf {
    let dockerfile = format!(
        "FROM --platform=$BUILDPLATFORM {base} AS build\n\
         RUN echo \"built on $(uname -m)\" > /out\n\
         FROM {base}\n\
         ARG TARGETPLATFORM TARGETARCH\n\
         COPY --from=build /out /out\n\
         RUN uname -m > /arch && echo \"$TARGETPLATFORM $TARGETARCH\" > /target\n"
    );
    ws.context("app", &[("Dockerfile", &dockerfile)])
}

/// The platforms of an index's images (attestation manifests left out).
fn index_platforms(raw: &str) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(doc["mediaType"], "application/vnd.oci.image.index.v1+json", "{raw}");
    doc["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["annotations"]["vnd.docker.reference.type"] != "attestation-manifest")
        .map(|m| {
            assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{raw}");
            format!("{}/{}", m["platform"]["os"].as_str().unwrap(), m["platform"]["architecture"].as_str().unwrap())
        })
        .collect()
}

/// Copies one platform's image out of the registry with skopeo and unpacks it with umoci; returns its rootfs.
fn unpack_platform(ws: &Workspace, image: &str, arch: &str) -> PathBuf {
    let layout = ws.path(&unique(&format!("layout-{arch}")));
    let src = format!("docker://{image}");
    let dest = format!("oci:{}:x", layout.display());
    cmd("skopeo", &["copy", "-q", "--src-tls-verify=false", "--override-arch", arch, &src, &dest]).success();
    let config = cmd("skopeo", &["inspect", "--config", &format!("oci:{}:x", layout.display())]).success().stdout;
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["architecture"], arch, "{config}");
    assert_eq!(config["os"], "linux", "{config}");
    let bundle = ws.path(&unique(&format!("bundle-{arch}")));
    cmd("umoci", &["unpack", "--image", &format!("{}:x", layout.display()), bundle.to_str().unwrap()]).success();
    bundle.join("rootfs")
}

/// Acceptance of issue 15: a 2-platform base pushed as an index, then an app with a `$BUILDPLATFORM` stage built
/// for both platforms and pushed: two manifests naming their platforms, `/arch` from an emulated RUN, the build
/// stage run once; the arm64 busybox of the pushed image runs through QEMU; a base without a requested platform
/// is an error naming the platforms it has.
#[test]
fn two_platform_build_pushes_an_index_and_runs_foreign_steps_under_qemu() {
    if !ready() {
        return;
    }
    // With no fix-binary handler for aarch64 registered, every arm64 RUN here ran under the injected emulator.
    let handler = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists();
    eprintln!("binfmt_misc handler for aarch64 registered: {handler} (false: the emulator was injected)");
    let ws = Workspace::new();
    let reg = Registry::start();
    let base = format!("{}/{}:1", reg.addr, unique("mp-base"));
    let ctx = base_context(&ws);
    let built = ws
        .rbuild(
            "store",
            &["build", "--platform", "linux/amd64,linux/arm64", "-t", &base, "--push", ctx.to_str().unwrap()],
        )
        .success();
    let raw = cmd("skopeo", &["inspect", "--tls-verify=false", "--raw", &format!("docker://{base}")]).success().stdout;
    assert_eq!(index_platforms(&raw), ["linux/amd64", "linux/arm64"], "{}", built.stderr);

    // A fresh store: the base comes from the registry, resolved per platform from its index.
    let app = format!("{}/{}:1", reg.addr, unique("mp-app"));
    let ctx = app_context(&ws, &base);
    let built = ws
        .rbuild(
            "app-store",
            &[
                "build",
                "--platform",
                "linux/amd64,linux/arm64",
                "--provenance=mode=max",
                "--build-arg",
                "GITHUB_TOKEN=hunter2",
                "--build-arg",
                "VERSION=1.2",
                "-t",
                &app,
                "--push",
                ctx.to_str().unwrap(),
            ],
        )
        .success();
    let progress = &built.stderr;
    let build_stage: Vec<&str> =
        progress.lines().filter(|l| l.contains("RUN echo \"built on") && !l.contains("DONE")).collect();
    assert_eq!(build_stage.len(), 1, "the $BUILDPLATFORM stage runs once:\n{progress}");
    assert!(build_stage[0].contains("[build]"), "shown without a platform, as shared:\n{progress}");
    assert!(progress.contains("[linux/arm64 stage-1] RUN uname -m"), "{progress}");
    assert!(progress.contains("[linux/amd64 stage-1] RUN uname -m"), "{progress}");

    let raw = cmd("skopeo", &["inspect", "--tls-verify=false", "--raw", &format!("docker://{app}")]).success().stdout;
    assert_eq!(index_platforms(&raw), ["linux/amd64", "linux/arm64"]);
    check_provenance(&reg, &app, &raw, &base);
    for (arch, uname, target) in [("amd64", "x86_64", "linux/amd64 amd64"), ("arm64", "aarch64", "linux/arm64 arm64")] {
        let rootfs = unpack_platform(&ws, &app, arch);
        let read = |f: &str| std::fs::read_to_string(rootfs.join(f)).unwrap_or_else(|e| panic!("{arch} /{f}: {e}"));
        assert_eq!(read("arch"), format!("{uname}\n"), "{arch}");
        assert_eq!(read("target"), format!("{target}\n"), "{arch}");
        assert_eq!(read("out"), "built on x86_64\n", "{arch}: the build stage ran on the build platform");
    }
    // The pushed tag runs on an arm64 machine: podman picks the arm64 manifest and runs it through QEMU.
    let ran = podman_with_aarch64_handler(&ws, &["run", "--platform", "linux/arm64", &app, "uname", "-m"]).success();
    assert_eq!(ran.stdout, "aarch64\n", "{}", ran.stderr);
    let ran = podman_with_aarch64_handler(&ws, &["run", "--platform", "linux/arm64", &app, "cat", "/arch"]).success();
    assert_eq!(ran.stdout, "aarch64\n", "{}", ran.stderr);

    // Both platforms of the base are kept under its tag: building again needs no registry round trip.
    let again =
        ws.rbuild("app-store", &["build", "--platform", "linux/amd64,linux/arm64", ctx.to_str().unwrap()]).success();
    assert!(!again.stderr.contains("pulling"), "{}", again.stderr);

    // A platform the base does not have: an error naming the ones it has.
    let missing = ws.rbuild("s390x-store", &["build", "--platform", "linux/amd64,linux/s390x", ctx.to_str().unwrap()]);
    assert_ne!(missing.code, Some(0));
    assert!(
        missing.stderr.contains("linux/s390x") && missing.stderr.contains("linux/amd64, linux/arm64"),
        "the error names what the base has:\n{}",
        missing.stderr
    );

    // The store keeps the index: `rbuild images` lists it, `rbuild push` pushes every platform again.
    let images = ws.rbuild("app-store", &["images"]).success().stdout;
    assert!(images.contains(&app), "{images}");
    let copy = format!("{}/{}:2", reg.addr, unique("mp-copy"));
    ws.rbuild("app-store", &["tag", &app, &copy]).success();
    ws.rbuild("app-store", &["push", &copy]).success();
    let raw = cmd("skopeo", &["inspect", "--tls-verify=false", "--raw", &format!("docker://{copy}")]).success().stdout;
    assert_eq!(index_platforms(&raw), ["linux/amd64", "linux/arm64"]);
}

/// Outputs of a multi-platform build: an OCI archive naming an index, one directory per platform, a docker
/// archive refused.
#[test]
fn multi_platform_outputs_and_missing_platforms() {
    if !ready() {
        return;
    }
    let ws = Workspace::new();
    let ctx = base_context(&ws);
    ws.rbuild("store", &["build", "--platform", "linux/amd64,linux/arm64", "-t", "mp-base", ctx.to_str().unwrap()])
        .success();
    // Base images come from the local store's multi-platform tag, one per platform.
    // `/how`: whether the step ran under the injected emulator (it is bound at BuildKit's path) or the kernel's.
    let dockerfile = "FROM mp-base\nRUN uname -m > /arch && \
                      if test -e /dev/.buildkit_qemu_emulator; then echo injected; else echo kernel; fi > /how\n";
    let ctx = ws.context("app", &[("Dockerfile", dockerfile)]);
    let (oci, local, tar) = (ws.path("out.tar"), ws.path("out-dir"), ws.path("files.tar"));
    let built = ws
        .rbuild(
            "store",
            &[
                "build",
                "--platform",
                "linux/amd64,linux/arm64",
                "-o",
                &format!("type=oci,dest={},name=mp-app:1", oci.display()),
                "-o",
                &format!("type=local,dest={}", local.display()),
                "-o",
                &format!("type=tar,dest={}", tar.display()),
                ctx.to_str().unwrap(),
            ],
        )
        .success();
    assert!(!built.stderr.contains("pulling"), "{}", built.stderr);
    let raw = cmd("skopeo", &["inspect", "--raw", &format!("oci-archive:{}:1", oci.display())]).success().stdout;
    assert_eq!(index_platforms(&raw), ["linux/amd64", "linux/arm64"]);
    assert_eq!(std::fs::read_to_string(local.join("linux_amd64/arch")).unwrap(), "x86_64\n");
    assert_eq!(std::fs::read_to_string(local.join("linux_arm64/arch")).unwrap(), "aarch64\n");
    assert_eq!(std::fs::read_to_string(local.join("linux_amd64/how")).unwrap(), "kernel\n");
    let listing = cmd("tar", &["-tf", tar.to_str().unwrap()]).success().stdout;
    for want in ["linux_amd64/arch", "linux_arm64/arch", "linux_arm64/bin/busybox"] {
        assert!(listing.lines().any(|l| l.trim_start_matches("./") == want), "{want} in:\n{listing}");
    }
    // With no binfmt_misc handler for aarch64, the emulator was injected; with a fix-binary one, the kernel ran it.
    let handler = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_default();
    let fix_binary =
        handler.starts_with("enabled") && handler.lines().any(|l| l.starts_with("flags:") && l.contains('F'));
    let how = if fix_binary { "kernel\n" } else { "injected\n" };
    assert_eq!(std::fs::read_to_string(local.join("linux_arm64/how")).unwrap(), how, "handler: {handler:?}");
    // Whether the kernel has any aarch64 handler, mounted here or not (a private mount of the machine's instance).
    let registered = "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null; \
                      test -e /proc/sys/fs/binfmt_misc/qemu-aarch64";
    let kernel_runs_aarch64 = cmd("unshare", &["--mount", "sh", "-c", registered]).code == Some(0);
    if !kernel_runs_aarch64 {
        // The injected emulator runs the step's first process only: a program it starts that the kernel cannot run
        // fails, and the failure says why.
        let child =
            ws.context("child", &[("Dockerfile", "FROM mp-base\nRUN cp /bin/busybox /bin/bb2 && /bin/bb2 true\n")]);
        let failed = ws.rbuild("store", &["build", "--platform", "linux/arm64", child.to_str().unwrap()]);
        assert_eq!(failed.code, Some(1), "{}", failed.stderr);
        assert!(failed.stderr.contains("Exec format error"), "{}", failed.stderr);
        assert!(failed.stderr.contains("runs only the step's first process"), "{}", failed.stderr);
        assert!(failed.stderr.contains("binfmt_misc handler for aarch64"), "{}", failed.stderr);
    }

    // --sbom: each platform's SPDX document lists the packages of the image's dpkg status file.
    let status = "Package: hello\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.10-3\n\n\
                  Package: removed\nStatus: deinstall ok config-files\nVersion: 1\n";
    let ctx_sbom =
        ws.context("sbom", &[("Dockerfile", "FROM mp-base\nCOPY status /var/lib/dpkg/status\n"), ("status", status)]);
    let layout = ws.path("sbom-layout");
    let out = format!("type=oci,dest={},tar=false", layout.display());
    let platforms = "linux/amd64,linux/arm64";
    let iidfile = ws.path("iid");
    let iid = iidfile.to_str().unwrap();
    ws.rbuild(
        "store",
        &[
            "build",
            "--platform",
            platforms,
            "--sbom",
            "-o",
            &out,
            "--iidfile",
            iid,
            // Where buildx 0.29 puts each type (checked with `docker buildx build -o type=oci` of BuildKit 0.25).
            "--annotation",
            "index,manifest:a=1",
            "--annotation",
            "index-descriptor:b=2",
            "--annotation",
            "manifest-descriptor[linux/arm64]:c=3",
            "--annotation",
            "d=4",
            ctx_sbom.to_str().unwrap(),
        ],
    )
    .success();
    let blob = |digest: &str| {
        let path = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&path).unwrap()).unwrap()
    };
    let top: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let index_digest = top["manifests"][0]["digest"].as_str().unwrap();
    // --iidfile names the index, as buildx's does for several platforms.
    assert_eq!(std::fs::read_to_string(&iidfile).unwrap(), index_digest);
    let index = blob(index_digest);
    assert_eq!(top["manifests"][0]["annotations"]["b"], "2", "{top}");
    assert_eq!(index["annotations"], serde_json::json!({"a": "1"}), "{index}");
    for m in index["manifests"].as_array().unwrap().iter().filter(|m| m["platform"]["os"] == "linux") {
        let on_descriptor = if m["platform"]["architecture"] == "arm64" {
            serde_json::json!({"c": "3"})
        } else {
            serde_json::Value::Null
        };
        assert_eq!(m["annotations"], on_descriptor, "{index}");
        let manifest = blob(m["digest"].as_str().unwrap());
        assert_eq!(manifest["annotations"], serde_json::json!({"a": "1", "d": "4"}), "{manifest}");
    }
    let attestations: Vec<&serde_json::Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["annotations"]["vnd.docker.reference.type"] == "attestation-manifest")
        .collect();
    assert_eq!(attestations.len(), 2, "{index}");
    for a in attestations {
        let manifest = blob(a["digest"].as_str().unwrap());
        let layers = manifest["layers"].as_array().unwrap();
        let spdx = layers.iter().find(|l| l["annotations"]["in-toto.io/predicate-type"] == "https://spdx.dev/Document");
        let statement = blob(spdx.unwrap_or_else(|| panic!("{manifest}"))["digest"].as_str().unwrap());
        let packages = statement["predicate"]["packages"].as_array().unwrap();
        let names: Vec<&str> = packages.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["hello"], "{statement}");
        assert_eq!(packages[0]["versionInfo"], "2.10-3");
        assert_eq!(statement["predicate"]["spdxVersion"], "SPDX-2.3");
    }

    let docker = ws.path("docker.tar");
    let refused = ws.rbuild(
        "store",
        &[
            "build",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=docker,dest={}", docker.display()),
            ctx.to_str().unwrap(),
        ],
    );
    assert_ne!(refused.code, Some(0));
    assert!(refused.stderr.contains("type=docker cannot hold a multi-platform image"), "{}", refused.stderr);
    assert!(!docker.exists(), "nothing is written");
}

/// Each platform's manifest has an attestation manifest, stored as BuildKit stores it, whose in-toto layer is a
/// SLSA v1 provenance naming the base by digest, the non-secret build args (mode=max) and never the secret one.
fn check_provenance(reg: &Registry, image: &str, raw: &str, base: &str) {
    let doc: serde_json::Value = serde_json::from_str(raw).unwrap();
    let manifests = doc["manifests"].as_array().unwrap();
    let images: Vec<&str> =
        manifests.iter().filter(|m| m["platform"]["os"] == "linux").map(|m| m["digest"].as_str().unwrap()).collect();
    let attestations: Vec<&serde_json::Value> =
        manifests.iter().filter(|m| m["annotations"]["vnd.docker.reference.type"] == "attestation-manifest").collect();
    assert_eq!(attestations.len(), 2, "{raw}");
    let repo = image.split_once('/').unwrap().1.rsplit_once(':').unwrap().0;
    for (a, subject) in attestations.iter().zip(&images) {
        assert_eq!(a["annotations"]["vnd.docker.reference.digest"], *subject, "{raw}");
        assert_eq!(a["platform"]["os"], "unknown");
        let at = format!("docker://{}/{repo}@{}", reg.addr, a["digest"].as_str().unwrap());
        let manifest = cmd("skopeo", &["inspect", "--tls-verify=false", "--raw", &at]).success().stdout;
        let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], "application/vnd.in-toto+json", "{manifest}");
        assert_eq!(layer["annotations"]["in-toto.io/predicate-type"], "https://slsa.dev/provenance/v1");
        let url = format!("http://{}/v2/{repo}/blobs/{}", reg.addr, layer["digest"].as_str().unwrap());
        let statement = cmd("curl", &["-sfL", &url]).success().stdout;
        assert!(!statement.contains("hunter2") && !statement.contains("GITHUB_TOKEN"), "{statement}");
        let statement: serde_json::Value = serde_json::from_str(&statement).unwrap();
        assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
        assert_eq!(statement["subject"][0]["digest"]["sha256"], subject.trim_start_matches("sha256:"));
        let definition = &statement["predicate"]["buildDefinition"];
        assert_eq!(definition["externalParameters"]["request"]["args"]["build-arg:VERSION"], "1.2", "{statement}");
        let deps = definition["resolvedDependencies"].as_array().unwrap();
        let want = format!("pkg:docker/{base}?platform=");
        assert!(deps.iter().any(|d| d["uri"].as_str().unwrap().starts_with(&want)), "{statement}");
    }
}

/// `podman <args>` (`run` gets the options below) in a user namespace of its own whose own `binfmt_misc` instance
/// (Linux 6.7+: a sandboxed mount) has a fix-binary handler for aarch64 from qemu-user-static, so that podman's
/// arm64 containers run without the machine's handlers being needed or changed. What podman needs on a root
/// machine with hybrid cgroups and without `CAP_SYS_RESOURCE`: no cgroups (crun refuses hybrid mode, so the
/// cgroup2 mount is hidden), no network, and rlimits no higher than the hard ones. Its storage is the workspace's.
fn podman_with_aarch64_handler(ws: &Workspace, args: &[&str]) -> crate::support::Run {
    // /usr/lib/binfmt.d/qemu-aarch64.conf names Debian's wrapper with flags OPF; the static emulator with F alone
    // (opened now, so it runs inside the container's root) is what a container needs.
    let conf = std::fs::read_to_string("/usr/lib/binfmt.d/qemu-aarch64.conf").unwrap();
    let mut fields: Vec<&str> = conf.trim().split(':').collect();
    assert_eq!(fields.len(), 8, "{conf}");
    fields[6] = QEMU_AARCH64;
    fields[7] = "F";
    let register = fields.join(":");
    let (root, runroot) = (ws.path("podman-root"), ws.path("podman-run"));
    let script = r#"set -e
until grep -q . /proc/self/gid_map; do sleep 0.02; done
if mountpoint -q /sys/fs/cgroup/unified; then mount -t tmpfs none /sys/fs/cgroup/unified; fi
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
printf '%s' "$1" > /proc/sys/fs/binfmt_misc/register
shift
exec "$@""#;
    let mut all = vec!["podman", "--root", root.to_str().unwrap(), "--runroot", runroot.to_str().unwrap()];
    all.extend(["--storage-driver", "vfs"]);
    all.push(args[0]);
    if args[0] == "run" {
        all.extend(["--rm", "--tls-verify=false", "--cgroups=disabled", "--network", "none"]);
        all.extend(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
    }
    all.extend(&args[1..]);
    let child = std::process::Command::new("unshare")
        .args(["--user", "--mount", "--propagation", "private", "bash", "-c", script, "bash", &register])
        .args(&all)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once unshare is in its namespace (before, the maps are the machine's): root's IDs, 65536 of them: the map of a user namespace (a full one would make crun take it for the
    // machine's and create device nodes, which a user namespace may not).
    let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ns(child.id().to_string()) == ns("self".into()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{}/{map}", child.id()), "0 0 65536\n").unwrap();
    }
    crate::support::Run::from(child.wait_with_output().unwrap(), all.join(" "))
}
