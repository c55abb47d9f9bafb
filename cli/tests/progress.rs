//! Issue 12's progress modes through real builds: `--progress rawjson` (and `BUILDKIT_PROGRESS`) written in
//! BuildKit's `SolveStatus` shape with one vertex per step, `-q` printing exactly the image ID, plain output as
//! before, and the tty view drawn into a real pseudo-terminal (tmux) and captured while a step runs.

use crate::support::{Run, Workspace, require};
use base64::Engine as _;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `rbuild --root <ws>/s build` with `args` and extra environment.
fn build(ws: &Workspace, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.arg("--root").arg(ws.path("s")).arg("build").args(args);
    c.env_remove("SOURCE_DATE_EPOCH").env_remove("BUILDKIT_PROGRESS").stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    Run::from(c.output().expect("running rbuild"), format!("rbuild build {}", args.join(" ")))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const STEPS: &str = "FROM base\nARG WHO=nobody\nRUN echo hello $WHO\nCOPY a.txt /a.txt\n";

/// Every stderr line of a rawjson build as JSON, and the vertexes by digest merged in order (later fields win).
fn rawjson(run: &Run) -> (Vec<Value>, BTreeMap<String, serde_json::Map<String, Value>>) {
    let lines: Vec<Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{}", run.stderr)))
        .collect();
    let mut vertexes: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for line in &lines {
        let obj = line.as_object().expect("a SolveStatus is an object");
        for key in obj.keys() {
            assert!(["vertexes", "statuses", "logs", "warnings"].contains(&key.as_str()), "unknown field {key}");
        }
        for v in obj.get("vertexes").and_then(Value::as_array).into_iter().flatten() {
            let digest = v["digest"].as_str().expect("a vertex has a digest").to_string();
            assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
            vertexes.entry(digest).or_default().extend(v.as_object().expect("object").clone());
        }
    }
    (lines, vertexes)
}

#[test]
fn rawjson_lines_parse_and_their_vertexes_are_the_steps() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let ctx = ws.context("app", &[("Dockerfile", STEPS), ("a.txt", "a")]);
    let args = ["--progress", "rawjson", "--build-arg", "WHO=world", "-t", "app", path(&ctx)];
    let run = build(&ws, &args, &[]).success();
    let (lines, vertexes) = rawjson(&run);

    // The steps' vertexes, named as the plain output names them (build args expanded), each started and completed.
    let steps: Vec<&serde_json::Map<String, Value>> =
        vertexes.values().filter(|v| v["name"].as_str().is_some_and(|n| n.starts_with("[stage-0]"))).collect();
    let mut names: Vec<&str> = steps.iter().map(|v| v["name"].as_str().expect("name")).collect();
    names.sort();
    assert_eq!(names, ["[stage-0] COPY a.txt /a.txt", "[stage-0] RUN echo hello world"], "{}", run.stderr);
    for v in &steps {
        for time in ["started", "completed"] {
            let t = v[time].as_str().unwrap_or_else(|| panic!("{time} missing: {v:?}"));
            chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("{time} {t:?}: {e}"));
        }
        assert!(v.get("cached").is_none() && v.get("error").is_none(), "{v:?}");
    }
    let digest_of =
        |name: &str| vertexes.iter().find(|(_, v)| v["name"] == name).map(|(d, _)| d.clone()).expect("vertex by name");
    let run_digest = digest_of("[stage-0] RUN echo hello world");
    let copy = &vertexes[&digest_of("[stage-0] COPY a.txt /a.txt")];
    assert_eq!(copy["inputs"], serde_json::json!([run_digest]), "COPY runs on the RUN's result");

    // The RUN's output, base64 as Go encodes []byte, on its vertex.
    let logs: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| l.get("logs").and_then(Value::as_array))
        .flatten()
        .map(|l| {
            let data =
                base64::engine::general_purpose::STANDARD.decode(l["data"].as_str().expect("data")).expect("b64");
            (l["vertex"].as_str().expect("vertex").to_string(), String::from_utf8(data).expect("utf-8"))
        })
        .collect();
    assert_eq!(logs, [(run_digest, "hello world\n".to_string())]);

    // "naming to" is a status of the export vertex, as in BuildKit.
    let statuses: Vec<&Value> =
        lines.iter().filter_map(|l| l.get("statuses").and_then(Value::as_array)).flatten().collect();
    assert!(statuses.iter().any(|s| s["id"] == "naming to docker.io/library/app:latest"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "progress is on stderr only: {}", run.stdout);

    // BUILDKIT_PROGRESS picks the mode too; a cached step says so.
    let again = build(&ws, &["-t", "app", path(&ctx), "--build-arg", "WHO=world"], &[("BUILDKIT_PROGRESS", "rawjson")])
        .success();
    let (_, vertexes) = rawjson(&again);
    let cached: Vec<&str> = vertexes
        .values()
        .filter(|v| v.get("cached") == Some(&Value::Bool(true)))
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(cached.len(), 2, "both steps cached: {}", again.stderr);
}

#[test]
fn rawjson_marks_the_failed_step_with_its_error() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let ctx = ws.context("bad", &[("Dockerfile", "FROM base\nRUN echo about to fail; exit 3\n")]);
    let run = build(&ws, &["--progress=rawjson", "--build-arg", "UNUSED=1", path(&ctx)], &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    // The unused build arg is a warning, its text base64 as Go writes []byte.
    let first: Value = serde_json::from_str(run.stderr.lines().next().expect("a line")).expect("json");
    let short = first["warnings"][0]["short"].as_str().unwrap_or_else(|| panic!("a warning first: {first}"));
    let short =
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(short).expect("b64")).expect("utf-8");
    assert!(short.contains("[UNUSED] were not consumed"), "{short}");
    // The error report follows the JSON lines; the JSON lines themselves are intact.
    let json =
        Run { stderr: run.stderr.lines().take_while(|l| l.starts_with('{')).collect::<Vec<_>>().join("\n"), ..run };
    let (_, vertexes) = rawjson(&json);
    let failed: Vec<&str> = vertexes.values().filter_map(|v| v.get("error")?.as_str()).collect();
    assert_eq!(failed.len(), 1, "{}", json.stderr);
    assert!(failed[0].contains("exit code: 3"), "{}", failed[0]);
}

#[test]
fn quiet_prints_exactly_the_image_id() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let ctx = ws.context("app", &[("Dockerfile", STEPS), ("a.txt", "a")]);
    let run = build(&ws, &["-q", "-t", "app", path(&ctx)], &[]).success();
    let inspect: Value = serde_json::from_str(&ws.rbuild("s", &["inspect", "app"]).success().stdout).expect("json");
    let id = inspect["Id"].as_str().expect("Id");
    assert_eq!(run.stdout, format!("{id}\n"));
    assert_eq!(run.stderr, "", "nothing but errors on stderr");
    // -q wins over --progress; `--progress quiet` is the same as -q (as in buildx 0.29).
    for args in [&["--quiet", "--progress", "plain"][..], &["--progress", "quiet"], &[]] {
        let env: &[(&str, &str)] = if args.is_empty() { &[("BUILDKIT_PROGRESS", "quiet")] } else { &[] };
        let run = build(&ws, &[args, &["-t", "app", path(&ctx)]].concat(), env).success();
        assert_eq!((run.stdout.as_str(), run.stderr.as_str()), (format!("{id}\n").as_str(), ""), "{args:?}");
    }

    // A failure still says what failed.
    let bad = ws.context("bad", &[("Dockerfile", "FROM base\nRUN echo the-step-output; exit 3\n")]);
    let run = build(&ws, &["-q", path(&bad)], &[]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("exit code: 3") && run.stderr.contains("the-step-output"), "{}", run.stderr);
}

#[test]
fn plain_is_buildkits_format_and_the_default_off_a_terminal() {
    if !require(&["runc"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let ctx = ws.context("app", &[("Dockerfile", STEPS), ("a.txt", "a")]);
    for (args, env) in [
        (vec![], vec![]),
        (vec!["--progress", "plain"], vec![]),
        (vec![], vec![("BUILDKIT_PROGRESS", "plain")]),
        (vec!["--progress", "auto"], vec![("BUILDKIT_PROGRESS", "rawjson")]),
    ] {
        let mut all = args.clone();
        all.extend(["--no-cache", "-t", "app", path(&ctx)]);
        let run = build(&ws, &all, &env).success();
        let lines: Vec<&str> = run.stderr.lines().collect();
        let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
        let start = at("#1 [stage-0] RUN echo hello nobody").unwrap_or_else(|| panic!("{args:?}:\n{}", run.stderr));
        // `#1 0.179 hello nobody`: the step's output with the time since the build started.
        let timed = |l: &&str| l.split(' ').nth(1).is_some_and(|t| t.parse::<f64>().is_ok());
        let out = lines.iter().position(|l| l.starts_with("#1 ") && timed(l) && l.ends_with(" hello nobody"));
        let out = out.expect("the step's output");
        let done = at("#1 DONE ").expect("done");
        assert!(start < out && out < done, "{}", run.stderr);
        for want in
            ["#2 [stage-0] COPY a.txt /a.txt", "#2 DONE ", "writing image sha256:", "naming to docker.io/library/app"]
        {
            assert!(at(want).is_some(), "{want:?} in\n{}", run.stderr);
        }
        assert_eq!(run.stdout, "");
    }
    let run = build(&ws, &["--progress", "fancy", path(&ctx)], &[]);
    assert_eq!(run.code, Some(2), "a usage error: {}", run.stderr);
    let run = build(&ws, &[path(&ctx)], &[("BUILDKIT_PROGRESS", "fancy")]);
    assert!(run.code == Some(1) && run.stderr.contains("BUILDKIT_PROGRESS=\"fancy\""), "{}", run.stderr);
}

/// A tmux session running a command in a pseudo-terminal of a fixed size, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(ws: &Workspace, command: &str, width: u16, height: u16) -> Tmux {
        // A private server socket: nothing is shared with other tests or a user's tmux.
        let socket = path(&ws.path("tmux.sock")).to_string();
        let (w, h) = (width.to_string(), height.to_string());
        let args = ["-S", &socket, "new-session", "-d", "-x", &w, "-y", &h, command];
        let status = Command::new("tmux").args(args).status().expect("tmux");
        assert!(status.success(), "tmux new-session failed");
        Tmux { socket }
    }

    fn capture(&self) -> String {
        let out = Command::new("tmux").args(["-S", &self.socket, "capture-pane", "-p"]).output().expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn resize(&self, width: u16, height: u16) {
        let (w, h) = (width.to_string(), height.to_string());
        let _ = Command::new("tmux").args(["-S", &self.socket, "resize-window", "-x", &w, "-y", &h]).status();
    }

    /// Captures until `done` holds for a capture, or panics with the last one after `limit`.
    fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.capture();
            if done(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} within {limit:?}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-S", &self.socket, "kill-server"]).status();
    }
}

/// `[+] Building 1.2s (0/3)`: the header, with the numbers.
fn header(screen: &str) -> Option<(f64, u32, u32)> {
    let line = screen.lines().find(|l| l.starts_with("[+] Building "))?;
    let rest = line.strip_prefix("[+] Building ")?;
    let (secs, rest) = rest.split_once("s (")?;
    let (done, rest) = rest.split_once('/')?;
    let total = rest.split(')').next()?;
    Some((secs.parse().ok()?, done.parse().ok()?, total.parse().ok()?))
}

/// The timer at the end of the step line containing `text`.
fn step_timer(screen: &str, text: &str) -> Option<f64> {
    let line = screen.lines().find(|l| l.starts_with(" => ") && !l.starts_with(" => => ") && l.contains(text))?;
    line.split_whitespace().last()?.strip_suffix('s')?.parse().ok()
}

#[test]
fn tty_view_in_a_pseudo_terminal_shows_header_timers_and_output() {
    if !require(&["runc", "tmux"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    // Two stages in parallel: one prints a line every 0.3 s, one is silent for seconds; then a step after both.
    let dockerfile = "FROM base AS talker\nARG N=20\n\
        RUN for i in $(seq 1 $N); do printf 'line %s \\033[2J\\033[31mgr\\303\\266\\303\\237e\\033[0m\\n' $i; sleep 0.3; done\n\
        FROM base AS quiet\nRUN sleep 3\n\
        FROM base\nCOPY --from=talker /etc/passwd /a\nCOPY --from=quiet /etc/passwd /b\n";
    let ctx = ws.context("app", &[("Dockerfile", dockerfile)]);
    let log = ws.path("tty.out");
    let command = format!(
        "LC_ALL=C {} --root {} build -t app {} 2>&1; echo EXIT=$? > {}; sleep 60",
        env!("CARGO_BIN_EXE_rbuild"),
        path(&ws.path("s")),
        path(&ctx),
        path(&log),
    );
    let tmux = Tmux::start(&ws, &command, 100, 30);

    // Mid-build: the header, both running steps with their timers, the talker's last lines under it.
    let mid = tmux.wait_for(Duration::from_secs(60), "running steps with output", |s| {
        s.lines().filter(|l| l.starts_with(" => => # line ")).count() >= 3 && step_timer(s, "RUN sleep 3").is_some()
    });
    println!("mid-build capture:\n{mid}");
    let (secs, done, total) = header(&mid).unwrap_or_else(|| panic!("no header:\n{mid}"));
    assert_eq!((done, total), (0, 4), "{mid}");
    assert!(secs > 0.0, "{mid}");
    let tail: Vec<&str> = mid.lines().filter(|l| l.starts_with(" => => # ")).collect();
    assert!(tail.len() <= 6, "at most six lines of a step's output: {tail:?}");
    // No escape sequence reached the terminal (tmux would have cleared the screen), and LC_ALL=C drew ASCII only.
    assert!(tail.iter().all(|l| l.ends_with(" gr??e")), "{tail:?}");
    assert!(mid.is_ascii(), "{mid}");
    // The silent step is alive: its timer moves.
    let before = step_timer(&mid, "RUN sleep 3").expect("timer");
    let later = tmux.wait_for(Duration::from_secs(10), "a later timer", |s| {
        step_timer(s, "RUN sleep 3").is_some_and(|t| t >= before + 0.5)
    });
    assert!(header(&later).is_some(), "{later}");

    // A narrower terminal: every line still fits, nothing is left over from the wider drawing.
    tmux.resize(60, 30);
    let narrow = tmux.wait_for(Duration::from_secs(10), "a redraw at 60 columns", |s| {
        s.lines().any(|l| l.starts_with(" => ") && l.trim_end().len() > 40 && l.trim_end().len() <= 60)
    });
    assert!(narrow.lines().all(|l| l.trim_end().chars().count() <= 60), "{narrow}");
    assert_eq!(narrow.lines().filter(|l| l.starts_with("[+] Building ")).count(), 1, "one header:\n{narrow}");

    // The end: the plain summary in place of the view.
    tmux.wait_for(Duration::from_secs(60), "the end", |_| log.exists());
    let end = tmux.capture();
    assert_eq!(std::fs::read_to_string(&log).expect("exit").trim(), "EXIT=0", "{end}");
    assert!(end.contains("(4/4) FINISHED"), "{end}");
    for want in ["[talker] RUN for i in", "[quiet] RUN sleep 3", "] COPY --from=quiet /etc/passwd /b", "naming to"] {
        assert!(end.contains(want), "{want:?} in\n{end}");
    }
    assert!(!end.contains(" => => # "), "the live view is gone:\n{end}");
}

#[test]
fn a_pulled_base_image_is_a_line_of_its_own_in_tty_and_rawjson() {
    if !require(&["runc", "tmux", "docker-registry"]) {
        return;
    }
    let ws = Workspace::new();
    let registry = crate::support::Registry::start();
    ws.build_base("s", "base");
    let image = format!("{}/{}:1", registry.addr, crate::support::unique("progress-base"));
    ws.rbuild("s", &["tag", "base", &image]).success();
    ws.rbuild("s", &["push", &image]).success();
    let ctx = ws.context("app", &[("Dockerfile", &format!("FROM {image}\nRUN echo ran\n"))]);

    // rawjson: the pull is a completed vertex before the step's.
    let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.arg("--root").arg(ws.path("fresh-json")).args(["build", "--progress", "rawjson", path(&ctx)]);
    let run = Run::from(c.stdin(Stdio::null()).output().expect("rbuild"), "rbuild build".into()).success();
    let (_, vertexes) = rawjson(&run);
    let pull =
        vertexes.values().find(|v| v["name"].as_str().is_some_and(|n| n.starts_with(&format!("pulling {image} for "))));
    let pull = pull.unwrap_or_else(|| panic!("no pull vertex:\n{}", run.stderr));
    assert!(pull.contains_key("started") && pull.contains_key("completed"), "{pull:?}");

    // tty: the pull is in the summary, with its time, above the steps.
    let log = ws.path("tty.out");
    let command = format!(
        "{} --root {} build {} 2>&1; echo EXIT=$? > {}; sleep 60",
        env!("CARGO_BIN_EXE_rbuild"),
        path(&ws.path("fresh-tty")),
        path(&ctx),
        path(&log),
    );
    let tmux = Tmux::start(&ws, &command, 120, 30);
    tmux.wait_for(Duration::from_secs(60), "the end", |_| log.exists());
    let end = tmux.capture();
    assert_eq!(std::fs::read_to_string(&log).expect("exit").trim(), "EXIT=0", "{end}");
    let lines: Vec<&str> = end.lines().collect();
    let pulled = lines.iter().position(|l| l.starts_with(&format!("#0 pulling {image} ")) && l.ends_with('s'));
    let step = lines.iter().position(|l| l.starts_with("#1 [stage-0] RUN echo ran"));
    assert!(pulled.is_some() && step.is_some() && pulled < step, "{end}");
}

#[test]
fn auto_is_plain_on_a_terminal_that_says_term_dumb() {
    if !require(&["runc", "tmux"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let ctx = ws.context("app", &[("Dockerfile", "FROM base\nRUN echo from-the-step\n")]);
    let log = ws.path("tty.out");
    let command = format!(
        "TERM=dumb {} --root {} build {} 2>&1; echo EXIT=$? > {}; sleep 60",
        env!("CARGO_BIN_EXE_rbuild"),
        path(&ws.path("s")),
        path(&ctx),
        path(&log),
    );
    let tmux = Tmux::start(&ws, &command, 100, 30);
    tmux.wait_for(Duration::from_secs(60), "the end", |_| log.exists());
    let end = tmux.capture();
    assert!(end.contains("#1 [stage-0] RUN echo from-the-step\n#1 "), "plain lines:\n{end}");
    assert!(end.lines().any(|l| l.starts_with("#1 ") && l.ends_with(" from-the-step")), "{end}");
    assert!(!end.contains("[+] Building"), "no live view:\n{end}");
}
