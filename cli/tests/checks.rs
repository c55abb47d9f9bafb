//! Build checks against the reference: `rbuild build --call check,format=json` and BuildKit 0.25's
//! `docker buildx build --call check,format=json` (dockerd 28.5, started by
//! `shared/tools/buildkit-newest-up.sh`) must report the same rules, messages and lines, for a Dockerfile that
//! triggers each rule and one that triggers none. Also `--call outline` and `--call targets`, compared as text.
//!
//! Everything is `FROM scratch` or a stage, so that neither side needs an image: the base-image rule
//! (InvalidBaseImagePlatform) has its own test, with an index pushed to the test registry. BuildKit 0.25 has CopyIgnoredFile as an
//! experimental rule, so that case enables it with `# check=experimental=CopyIgnoredFile` (rbuild accepts and
//! ignores the option: the rule is on by default, as in newer BuildKit).

use crate::support::{Workspace, docker};
use rbuild_test_support::Reference;
use serde_json::Value;

/// (rule, line, message) of every warning in a `--call check,format=json` result, sorted; and whether it had a
/// build error.
fn findings(stdout: &str) -> (Vec<(String, u64, String)>, bool) {
    let start = stdout.find('{').unwrap_or_else(|| panic!("no JSON in {stdout}"));
    let v: Value = serde_json::from_str(stdout[start..].trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let mut out: Vec<(String, u64, String)> = v["warnings"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| {
                    (
                        w["ruleName"].as_str().unwrap_or_default().to_string(),
                        w["location"]["ranges"][0]["start"]["line"].as_u64().unwrap_or(0),
                        w["detail"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    (out, v.get("buildError").is_some_and(|e| !e.is_null()))
}

/// (name, Dockerfile); "bad" cases trigger rules, "good" ones nothing. `.dockerignore` is `*.secret` and `build/`.
const CASES: &[(&str, &str)] = &[
    ("casing-bad", "FROM scratch as Builder\nrun echo\nCOPY a /a\nCOPY b /b\n"),
    ("casing-good", "from scratch as builder\nrun echo\ncopy a /a\n"),
    ("empty-continuation-bad", "FROM scratch\nRUN echo a \\\n\n  b\n"),
    ("stage-names-bad", "FROM scratch AS a\nFROM scratch AS a\nFROM scratch AS context\n"),
    ("stage-names-good", "FROM scratch AS a\nFROM a AS b\n"),
    ("cmd-bad", "FROM scratch\nCMD echo hi\nCMD [\"b\"]\nENTRYPOINT run.sh\nHEALTHCHECK NONE\nHEALTHCHECK NONE\n"),
    ("cmd-good", "FROM scratch\nSHELL [\"/bin/sh\", \"-c\"]\nCMD echo hi\nENTRYPOINT [\"a\"]\n"),
    ("maintainer-legacy-bad", "FROM scratch\nMAINTAINER me\nENV A 1\nLABEL b 2\n"),
    ("from-args-bad", "ARG VERSION=1\nARG IMAGE\nFROM scratch AS a\nFROM a$VERSON\nFROM $IMAGE\n"),
    ("from-args-good", "ARG BASE=scratch\nFROM $BASE AS a\nFROM --platform=$BUILDPLATFORM a\n"),
    ("workdir-bad", "FROM scratch\nWORKDIR app\nWORKDIR more\n"),
    ("workdir-good", "FROM scratch AS a\nWORKDIR /app\nFROM a\nWORKDIR sub\n"),
    (
        "undefined-var-bad",
        "FROM scratch\nENV PATH=$PTH:/x\nCOPY $SRC /dst\nENV A=${UNSET:-x} B=${UNSET2:+y}\nUSER $WHO\n",
    ),
    ("undefined-var-good", "FROM scratch\nARG SRC\nENV PATH=$PATH:/x\nCOPY $SRC /dst\nRUN echo $NOT_CHECKED\n"),
    ("platform-bad", "FROM --platform=$TARGETPLATFORM scratch AS a\nFROM --platform=linux/amd64 scratch AS build\n"),
    ("platform-good", "FROM --platform=$BUILDPLATFORM scratch AS a\nFROM --platform=linux/amd64 scratch AS b-amd64\n"),
    ("secrets-bad", "FROM scratch\nARG GITHUB_TOKEN\nENV DB_PASSWORD=x api_key=y\n"),
    ("secrets-good", "FROM scratch\nARG PUBLIC_KEY\nENV KEYBOARD=x\n"),
    (
        "copy-ignored-bad",
        "# check=experimental=CopyIgnoredFile\nFROM scratch\nCOPY app.secret /\nADD build/out /\nCOPY . /\n",
    ),
    ("copy-ignored-good", "# check=experimental=CopyIgnoredFile\nFROM scratch\nCOPY app.txt /\n"),
    ("expose-bad", "FROM scratch\nEXPOSE 80/TCP 127.0.0.1:80:80 8080:80/UDP\n"),
    ("expose-good", "FROM scratch\nEXPOSE 80 53/udp\n"),
    ("skip-all", "# check=skip=all\nFROM scratch AS Bad\nMAINTAINER me\n"),
    ("skip-some", "# check=skip=StageNameCasing,FromAsCasing\nFROM scratch as Bad\nMAINTAINER me\n"),
];

#[test]
fn check_findings_match_buildkit_0_25() {
    let Some(env) = Reference::Newest.require() else { return };
    let ws = Workspace::new();
    let mut disagreements = Vec::new();
    let mut compared = 0;
    for (name, dockerfile) in CASES {
        let ctx = ws.context(
            name,
            &[
                ("Dockerfile", dockerfile),
                (".dockerignore", "*.secret\nbuild/\n"),
                ("app.txt", "x"),
                ("a", ""),
                ("b", ""),
            ],
        );
        let ctx = ctx.to_str().unwrap();
        let ours = ws.rbuild("store", &["build", "--call", "check,format=json", ctx]);
        let theirs = docker(&env, &["buildx", "build", "--call", "check,format=json", ctx]);
        let (o, theirs_json) = (findings(&ours.stdout), findings(&theirs.stdout));
        assert_eq!(ours.code == Some(0), o.0.is_empty() && !o.1, "{name}: exit code {:?}\n{}", ours.code, ours.stderr);
        if name.ends_with("-good") || *name == "skip-all" {
            assert!(o.0.is_empty(), "{name}: {:?}", o.0);
        } else {
            assert!(!o.0.is_empty(), "{name}: no findings");
        }
        if o != theirs_json {
            disagreements.push(format!("{name}:\n  rbuild:   {o:?}\n  BuildKit: {theirs_json:?}"));
        }
        compared += 1;
    }
    assert!(disagreements.is_empty(), "{} of {compared} differ:\n{}", disagreements.len(), disagreements.join("\n"));
}

#[test]
fn outline_and_targets_print_as_buildx_does() {
    let Some(env) = Reference::Newest.require() else { return };
    let ws = Workspace::new();
    let dockerfile = "ARG GO_VERSION=1.22\n# VERSION the version to stamp\nARG VERSION=dev\n# base is the base stage\n\
                      FROM scratch AS base\nARG UNUSED_HERE\n# build compiles\nFROM base AS build\nARG VERSION\n\
                      ARG MODE=release\nRUN --mount=type=secret,id=npm,required=true --mount=type=ssh echo $VERSION\n\
                      FROM build\nRUN --mount=type=secret,id=aws echo\n";
    let ctx = ws.context("outline", &[("Dockerfile", dockerfile)]);
    let ctx = ctx.to_str().unwrap();
    for call in ["outline", "targets"] {
        for extra in [&[][..], &["--target", "build"][..], &["--build-arg", "VERSION=1.2"][..]] {
            let mut args = vec!["build", "--call", call];
            args.extend_from_slice(extra);
            args.push(ctx);
            let ours = ws.rbuild("store", &args).success();
            let theirs = docker(&env, &[&["buildx"][..], &args].concat());
            assert_eq!(theirs.code, Some(0), "{}", theirs.stderr);
            assert_eq!(ours.stdout, theirs.stdout, "--call {call} {extra:?}");
            // JSON: the same document, but for buildx's copy of the Dockerfile (`sources`).
            args[2] = if call == "outline" { "outline,format=json" } else { "targets,format=json" };
            let ours = ws.rbuild("store", &args).success();
            let theirs = docker(&env, &[&["buildx"][..], &args].concat());
            let mut theirs: Value =
                serde_json::from_str(&theirs.stdout).unwrap_or_else(|e| panic!("{e}: {}", theirs.stdout));
            theirs.as_object_mut().unwrap().remove("sources");
            let ours: Value = serde_json::from_str(&ours.stdout).unwrap();
            assert_eq!(ours, theirs, "--call {call},format=json {extra:?}");
        }
    }
}

#[test]
fn call_check_exits_non_zero_on_findings_and_a_build_prints_them_with_their_lines() {
    let ws = Workspace::new();
    let ctx = ws.context("warn", &[("Dockerfile", "FROM scratch AS Base\nCOPY f /f\n"), ("f", "x")]);
    let ctx = ctx.to_str().unwrap();
    let check = ws.rbuild("store", &["build", "--check", ctx]);
    assert_eq!(check.code, Some(1), "{}", check.stdout);
    assert!(check.stdout.starts_with("Check complete, 1 warning has been found!\n"), "{}", check.stdout);
    assert!(check.stdout.contains("WARNING: StageNameCasing - Stage names should be lowercase\n"), "{}", check.stdout);
    assert!(check.stdout.contains("   1 | >>> FROM scratch AS Base\n"), "{}", check.stdout);
    // A build warns, with the same lines, and still builds.
    let build = ws.rbuild("store", &["build", "-t", "warned", ctx]).success();
    assert!(build.stderr.contains("1 warning found:"), "{}", build.stderr);
    assert!(build.stderr.contains("Stage name 'Base' should be lowercase\nDockerfile:1\n"), "{}", build.stderr);
    assert!(!build.stderr.contains("https://"), "no links: {}", build.stderr);
    // error=true fails the build, skip=all silences it, and so does the build argument / environment variable.
    let clean = ws.context("clean", &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x")]);
    let ok = ws.rbuild("store", &["build", "--check", clean.to_str().unwrap()]).success();
    assert_eq!(ok.stdout, "Check complete, no warnings found.\n");
    let strict = ws.rbuild("store", &["build", "--build-arg", "BUILDKIT_DOCKERFILE_CHECK=error=true", ctx]);
    assert_eq!(strict.code, Some(1), "{}", strict.stderr);
    assert!(strict.stderr.contains("lint violation found for rules: StageNameCasing"), "{}", strict.stderr);
    assert!(
        strict.stderr.contains("StageNameCasing: Stage name 'Base' should be lowercase (line 1)"),
        "{}",
        strict.stderr
    );
    let quiet = ws.rbuild("store", &["build", "--build-arg", "BUILDKIT_DOCKERFILE_CHECK=skip=all", "--check", ctx]);
    assert_eq!(quiet.code, Some(0), "{}", quiet.stdout);
    assert!(!quiet.stderr.contains("not consumed"), "the check argument is not an unused build arg: {}", quiet.stderr);
    let bad = ws.rbuild("store", &["build", "--call", "nonsense", ctx]);
    assert_eq!(bad.code, Some(1), "{}", bad.stderr);
    assert!(bad.stderr.contains("unknown --call function \"nonsense\""), "{}", bad.stderr);
}

/// InvalidBaseImagePlatform, the one rule that needs a base image: an index entry labelled linux/arm64 whose image
/// is amd64 (its config says so). For `FROM --platform=linux/arm64` both builders resolve that entry, and both must
/// report the same findings.
#[test]
fn invalid_base_image_platform_matches_buildkit_0_25() {
    let Some(env) = Reference::Newest.require() else { return };
    if !crate::support::require(&["skopeo", "curl", "busybox"]) {
        return;
    }
    let reg = crate::support::Registry::start();
    let ws = Workspace::new();
    let repo = crate::support::unique("ibp");
    let amd64 = format!("{}/{repo}:amd64", reg.addr);
    let base = ws.context_from("busybox-base");
    ws.rbuild("store", &["build", "-t", &amd64, "--push", base.to_str().unwrap()]).success();
    let raw = crate::support::cmd("skopeo", &["inspect", "--raw", "--tls-verify=false", &format!("docker://{amd64}")])
        .success()
        .stdout;
    let manifest: Value = serde_json::from_str(&raw).expect("a manifest");
    let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(raw.as_bytes())));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": manifest["mediaType"],
            "digest": digest,
            "size": raw.len(),
            "platform": {"os": "linux", "architecture": "arm64"},
        }],
    });
    let url = format!("http://{}/v2/{repo}/manifests/mixed", reg.addr);
    let content_type = "Content-Type: application/vnd.oci.image.index.v1+json";
    let body = index.to_string();
    crate::support::cmd("curl", &["-sSf", "-X", "PUT", "-H", content_type, "--data-binary", &body, &url]).success();

    let dockerfile = format!("FROM --platform=linux/arm64 {}/{repo}:mixed\n", reg.addr);
    let ctx = ws.context("ibp", &[("Dockerfile", &dockerfile)]);
    let ctx = ctx.to_str().unwrap();
    let ours = findings(&ws.rbuild("store", &["build", "--call", "check,format=json", ctx]).stdout);
    let theirs = findings(&docker(&env, &["buildx", "build", "--call", "check,format=json", ctx]).stdout);
    assert!(ours.0.iter().any(|(rule, line, _)| rule == "InvalidBaseImagePlatform" && *line == 1), "{ours:?}");
    assert_eq!(ours, theirs, "rbuild, then BuildKit");
}
