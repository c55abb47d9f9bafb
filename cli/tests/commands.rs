//! Issue 12, "The other commands": `version`, `images -q/--format/--filter`, `rmi -f` and by ID or ID prefix,
//! `inspect --format`, `history`, `login -p`, `prune -f`, `completion`, `--help`, and what a non-root `build`
//! says. Every test reads back the effect: the store's listing after a removal, the config a template printed,
//! the credentials file a login wrote, the space a prune freed.

use crate::sources::rbuild_stdin;
use crate::support::{Registry, Run, Workspace, cmd, require};

/// Builds `FROM scratch` + a file + `LABEL team=<team>` as `name`; returns the image ID.
fn build(ws: &Workspace, name: &str, team: &str) -> String {
    let df = format!("FROM scratch\nCOPY f /f\nLABEL team={team}\n");
    let ctx = ws.context(name, &[("Dockerfile", &df), ("f", &format!("{name}\n"))]);
    let iid = ws.path(&format!("{name}.iid"));
    ws.rbuild("s", &["build", "-t", name, "--iidfile", iid.to_str().unwrap(), ctx.to_str().unwrap()]).success();
    std::fs::read_to_string(iid).expect("iidfile")
}

fn lines(run: &Run) -> Vec<String> {
    run.stdout.lines().map(str::to_string).collect()
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let head = cmd("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short=12", "HEAD"]);
    let Some(head) = (head.code == Some(0)).then(|| head.stdout.trim().to_string()) else {
        crate::support::skip("not a git checkout");
        return;
    };
    let ws = Workspace::new();
    let v = ws.rbuild("s", &["version"]).success();
    assert!(v.stdout.contains(&format!("commit:   {head}")), "{}", v.stdout);
    let v = ws.rbuild("s", &["--version"]).success();
    assert_eq!(v.stdout.trim(), format!("rbuild {} (commit {head})", env!("CARGO_PKG_VERSION")));
}

#[test]
fn images_quiet_format_and_filter() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    let a = build(&ws, "app-a", "a");
    let b = build(&ws, "tool-b", "b");
    ws.rbuild("s", &["tag", "app-a", "registry.example:5000/team/app-a:2"]).success();
    let short = |id: &str| id.trim_start_matches("sha256:")[..12].to_string();

    // -q: each image once, short IDs.
    let mut ids = lines(&ws.rbuild("s", &["images", "-q"]).success());
    ids.sort();
    let mut want = vec![short(&a), short(&b)];
    want.sort();
    assert_eq!(ids, want);

    let run = ws.rbuild("s", &["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]).success();
    let mut rows = lines(&run);
    rows.sort();
    assert_eq!(
        rows,
        [
            format!("app-a:latest {}", short(&a)),
            format!("registry.example:5000/team/app-a:2 {}", short(&a)),
            format!("tool-b:latest {}", short(&b)),
        ]
    );
    let run = ws.rbuild("s", &["images", "--format", "table {{.Repository}}\\t{{.ID}}"]).success();
    assert_eq!(lines(&run)[0], "REPOSITORY\tID");
    let run = ws.rbuild("s", &["images", "--format", "json"]).success();
    for line in lines(&run) {
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
        assert!(v["ID"].is_string() && v["Repository"].is_string(), "{line}");
    }

    let only = |filters: &[&str]| {
        let mut args = vec!["images", "--format", "{{.Repository}}:{{.Tag}}"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        lines(&ws.rbuild("s", &args).success())
    };
    assert_eq!(only(&["label=team=b"]), ["tool-b:latest"]);
    assert_eq!(only(&["label=team", "reference=app-*"]), ["app-a:latest"]);
    assert_eq!(only(&["reference=*/*/app-a:2"]), ["registry.example:5000/team/app-a:2"]);
    assert!(only(&["dangling=true"]).is_empty());
    let bad = ws.rbuild("s", &["images", "--filter", "colour=red"]);
    assert!(bad.stderr.contains("unknown filter"), "{}", bad.stderr);
}

#[test]
fn rmi_by_id_prefix_needs_force_for_an_image_with_several_names() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    let a = build(&ws, "app", "a");
    ws.rbuild("s", &["tag", "app", "app:2"]).success();
    let b = build(&ws, "single", "b");
    let prefix = &a.trim_start_matches("sha256:")[..8];

    let refused = ws.rbuild("s", &["rmi", prefix]);
    assert_eq!(refused.code, Some(1));
    assert!(refused.stderr.contains("pass -f to remove them all"), "{}", refused.stderr);
    assert_eq!(lines(&ws.rbuild("s", &["images", "-q"]).success()).len(), 2, "nothing was removed");

    let forced = ws.rbuild("s", &["rmi", "-f", prefix]).success();
    assert_eq!(forced.stdout.matches("Untagged:").count(), 2, "{}", forced.stdout);
    // A full ID with the sha256: prefix, of an image with one name.
    ws.rbuild("s", &["rmi", &b]).success();
    assert!(ws.rbuild("s", &["images", "-q"]).success().stdout.is_empty());
    let missing = ws.rbuild("s", &["rmi", "-f", "app"]);
    assert!(missing.stderr.contains("no image named app"), "{}", missing.stderr);
}

#[test]
fn inspect_format_evaluates_dockers_fields() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    let id = build(&ws, "app", "a");
    let prefix = &id.trim_start_matches("sha256:")[..10];
    let platform = ws.rbuild("s", &["version"]).success();
    let fmt = r#"{{.Id}}|{{index .Config.Labels "team"}}|{{json .RepoTags}}|{{.Os}}/{{.Architecture}}|{{len .RootFS.Layers}}|{{.Size}}"#;
    let run = ws.rbuild("s", &["inspect", "--format", fmt, prefix]).success();
    let host = platform.stdout.lines().find_map(|l| l.strip_prefix(" platform: ")).expect("platform").to_string();
    assert_eq!(run.stdout.trim(), format!("{id}|a|[\"app:latest\"]|{host}|1|4"));
    let run = ws.rbuild("s", &["inspect", "-f", "{{json .Config.Labels}}", "app"]).success();
    assert_eq!(run.stdout.trim(), r#"{"team":"a"}"#);
    let bad = ws.rbuild("s", &["inspect", "-f", "{{range .RepoTags}}{{.}}{{end}}", "app"]);
    assert_eq!(bad.code, Some(1));
    assert!(bad.stderr.contains("not supported in --format"), "{}", bad.stderr);
}

#[test]
fn history_lists_the_steps_newest_first() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    build(&ws, "older", "x");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    build(&ws, "app", "a");
    let run = ws.rbuild("s", &["history", "app"]).success();
    let rows = lines(&run);
    assert!(rows[0].starts_with("LAYER"), "{}", run.stdout);
    assert!(rows[1].contains("LABEL team=a") && rows[1].starts_with("<missing>"), "{}", run.stdout);
    assert!(rows[2].contains("COPY f /f") && rows[2].contains("4B"), "{}", run.stdout);
    // Without IMAGE: the newest image.
    let newest = ws.rbuild("s", &["history"]).success();
    assert!(newest.stdout.contains("LABEL team=a"), "{}", newest.stdout);
    let quiet = ws.rbuild("s", &["history", "-q", "older"]).success();
    assert_eq!(lines(&quiet).len(), 2);
}

#[test]
fn login_with_p_warns_as_docker_does_and_saves_the_credentials() {
    if !require(&["docker-registry"]) {
        return;
    }
    let ws = Workspace::new();
    let reg = Registry::start();
    let config = ws.path("docker-config");
    let env = [("DOCKER_CONFIG", config.to_str().unwrap())];
    let run = rbuild_stdin(&ws, "s", &["login", "-u", "alice", "-p", "pw", &reg.addr], b"", &env);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("WARNING! Using --password via the CLI is insecure. Use --password-stdin."),
        "{}",
        run.stderr
    );
    let saved = std::fs::read_to_string(config.join("config.json")).expect("config.json");
    assert!(saved.contains(&reg.addr), "{saved}");
    let both = rbuild_stdin(&ws, "s", &["login", "-u", "a", "-p", "x", "--password-stdin", &reg.addr], b"y\n", &env);
    assert_eq!(both.code, Some(2), "conflicting flags: {}", both.stderr);
}

#[test]
fn prune_f_collects_an_untagged_images_cache() {
    if !require(&[]) {
        return;
    }
    let ws = Workspace::new();
    build(&ws, "app", "a");
    let kept = ws.rbuild("s", &["prune", "-f"]).success();
    assert!(kept.stdout.contains("removed 0 cache entries"), "a tagged image's cache stays: {}", kept.stdout);
    ws.rbuild("s", &["rmi", "app"]).success();
    let freed = ws.rbuild("s", &["prune", "--force"]).success();
    assert!(!freed.stdout.contains("removed 0 cache entries"), "{}", freed.stdout);
    assert!(!freed.stdout.contains("reclaimed space: 0B"), "{}", freed.stdout);
}

#[test]
fn completion_scripts_load_in_their_shells() {
    let ws = Workspace::new();
    let bash = ws.rbuild("s", &["completion", "bash"]).success();
    let script = ws.path("rbuild.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let loaded = cmd("bash", &["-c", &format!("source {} && complete -p rbuild", script.display())]).success();
    assert!(loaded.stdout.contains("_rbuild"), "{}", loaded.stdout);
    assert!(bash.stdout.contains("--build-arg") && bash.stdout.contains("--annotation"), "flags are completed");
    assert!(ws.rbuild("s", &["completion", "zsh"]).success().stdout.starts_with("#compdef rbuild"));
    assert!(ws.rbuild("s", &["completion", "fish"]).success().stdout.contains("complete -c rbuild"));
    assert_eq!(ws.rbuild("s", &["completion", "tcsh"]).code, Some(2));
}

#[test]
fn help_is_enough_to_start_without_the_readme() {
    let ws = Workspace::new();
    let top = ws.rbuild("s", &["--help"]).success();
    for word in [
        "Examples:",
        "rbuild build -t",
        "--push",
        "RBUILD_ROOT",
        "images",
        "history",
        "completion",
        "run rbuild as root",
    ] {
        assert!(top.stdout.contains(word), "--help lacks {word:?}:\n{}", top.stdout);
    }
    let build = ws.rbuild("s", &["build", "--help"]).success();
    for word in ["Git URL", "--annotation", "--load", "--secret", "--build-arg", "--output", "--provenance"] {
        assert!(build.stdout.contains(word), "build --help lacks {word:?}");
    }
}
