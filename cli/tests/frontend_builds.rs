//! Builds (not just parses) of the frontend features of issue #3, pushed and read back with skopeo and umoci:
//! heredoc RUN and COPY, `${v:-w}`/`${v#p}` in COPY and WORKDIR, ARG scoping across stages, `--target` skipping a
//! failing stage, ONBUILD in a parent and its child, SHELL changing later RUNs, HEALTHCHECK and STOPSIGNAL.

use crate::support::{Registry, Workspace, cmd, require, unique};
use serde_json::{Value, json};

const PARENT: &str = "\
FROM local/busybox
ONBUILD RUN echo triggered > /trigger
ONBUILD ENV FROM_TRIGGER=yes
";

const CHILD: &str = r#"ARG V=global

FROM local/busybox AS one
ARG V
RUN echo "one:$V" > /one

FROM local/parent AS final
ARG V=stage
ARG DIR
ARG FILE=prefix-data.txt
RUN <<EOF
echo heredoc-line-1 > /heredoc
echo heredoc-line-2 >> /heredoc
EOF
COPY <<EOF /etc/greeting
hello $V
EOF
WORKDIR /work/${DIR:-default}
COPY ${FILE#prefix-} ./
COPY --from=one /one /one
RUN echo "two:$V" > /two
SHELL ["/bin/busybox", "env", "VIA_SHELL=yes", "/bin/sh", "-c"]
RUN echo "shell:$VIA_SHELL" > /shell
HEALTHCHECK --interval=5s --timeout=3s --retries=2 CMD wget -q -O- http://localhost:8080/ || exit 1
STOPSIGNAL SIGUSR1

FROM local/busybox AS broken
RUN echo this stage is broken && exit 1
"#;

/// Pushes nothing; copies `name` from the registry to an OCI layout and unpacks it with umoci.
fn unpack(ws: &Workspace, name: &str, tag: &str) -> std::path::PathBuf {
    let layout = ws.path(&format!("layout-{tag}"));
    cmd(
        "skopeo",
        &["copy", "--src-tls-verify=false", &format!("docker://{name}"), &format!("oci:{}:x", layout.display())],
    )
    .success();
    let bundle = ws.path(&format!("bundle-{tag}"));
    cmd("umoci", &["unpack", "--image", &format!("{}:x", layout.display()), bundle.to_str().unwrap()]).success();
    bundle.join("rootfs")
}

#[test]
fn frontend_features_build_and_land_in_the_image() {
    if !require(&["runc", "docker-registry", "skopeo", "umoci", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start();
    ws.build_base("store", "local/busybox");
    let parent = ws.context("parent", &[("Dockerfile", PARENT)]);
    ws.rbuild("store", &["build", "-t", "local/parent", parent.to_str().unwrap()]).success();
    let parent_cfg = ws.rbuild("store", &["inspect", "local/parent"]).success();
    let parent_cfg: Value = serde_json::from_str(&parent_cfg.stdout).unwrap();
    assert_eq!(
        parent_cfg["Config"]["config"]["OnBuild"],
        json!(["RUN echo triggered > /trigger", "ENV FROM_TRIGGER=yes"])
    );

    let ctx = ws.context("child", &[("Dockerfile", CHILD), ("data.txt", "data\n")]);
    // The last stage fails: building the default target fails, --target final skips it.
    let all = ws.rbuild("store", &["build", ctx.to_str().unwrap()]);
    assert_ne!(all.code, Some(0), "the broken stage is the default target");
    let name = format!("{}/{}/frontend:1", reg.addr, unique("fe"));
    let built =
        ws.rbuild("store", &["build", "--target", "final", "-t", &name, "--push", ctx.to_str().unwrap()]).success();
    assert!(!built.stderr.contains("this stage is broken"), "an unused stage must not run:\n{}", built.stderr);

    let cfg: Value = serde_json::from_str(
        &cmd("skopeo", &["inspect", "--config", "--raw", "--tls-verify=false", &format!("docker://{name}")])
            .success()
            .stdout,
    )
    .unwrap();
    let c = &cfg["config"];
    assert_eq!(c["StopSignal"], "SIGUSR1");
    assert_eq!(
        c["Healthcheck"],
        json!({"Test": ["CMD-SHELL", "wget -q -O- http://localhost:8080/ || exit 1"], "Interval": 5_000_000_000i64, "Timeout": 3_000_000_000i64, "Retries": 2})
    );
    assert_eq!(c["Shell"], json!(["/bin/busybox", "env", "VIA_SHELL=yes", "/bin/sh", "-c"]));
    assert_eq!(c["WorkingDir"], "/work/default");
    assert!(c.get("OnBuild").is_none_or(|v| v.is_null()), "ONBUILD triggers are not inherited further: {c}");
    let env: Vec<&str> = c["Env"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(env.contains(&"FROM_TRIGGER=yes"), "the ENV trigger ran: {env:?}");

    let root = unpack(&ws, &name, "1");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("/{p}: {e}"));
    assert_eq!(read("trigger"), "triggered\n", "the RUN trigger ran right after FROM");
    assert_eq!(read("heredoc"), "heredoc-line-1\nheredoc-line-2\n");
    assert_eq!(read("etc/greeting"), "hello stage\n", "COPY heredoc, expanded with the stage's ARG");
    assert_eq!(read("work/default/data.txt"), "data\n", "${{DIR:-default}} and ${{FILE#prefix-}}");
    assert_eq!(read("one"), "one:global\n", "a stage's bare ARG takes the global default");
    assert_eq!(read("two"), "two:stage\n", "the stage default wins in its own stage");
    assert_eq!(read("shell"), "shell:yes\n", "SHELL changed how the later RUN ran");

    // --build-arg overrides both scopes.
    let name2 = format!("{}/{}/frontend:2", reg.addr, unique("fe"));
    ws.rbuild(
        "store",
        &["build", "--target", "final", "--build-arg", "V=cli", "-t", &name2, "--push", ctx.to_str().unwrap()],
    )
    .success();
    let root2 = unpack(&ws, &name2, "2");
    assert_eq!(std::fs::read_to_string(root2.join("one")).unwrap(), "one:cli\n");
    assert_eq!(std::fs::read_to_string(root2.join("two")).unwrap(), "two:cli\n");
}

#[test]
fn copy_of_an_ignored_path_says_dockerignore_excluded_it() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    let ctx = ws.context(
        "ignored",
        &[
            ("Dockerfile", "FROM scratch\nCOPY secret.txt /\n"),
            (".dockerignore", "secret.txt\n"),
            ("secret.txt", "x\n"),
        ],
    );
    let run = ws.rbuild("store", &["build", ctx.to_str().unwrap()]);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("excluded by .dockerignore"), "{}", run.stderr);
    assert!(run.stderr.contains("secret.txt"), "{}", run.stderr);
}
