use super::*;

#[test]
fn pump_lines_splits_keeps_tail_and_handles_partial_lines() {
    let mut input = String::new();
    for i in 0..30 {
        input.push_str(&format!("line {i}\r\n"));
    }
    input.push_str("no newline at end");
    let mut seen = Vec::new();
    let tail = pump_lines(io::Cursor::new(input.into_bytes()), &mut |l| seen.push(l.to_string())).expect("pump");
    assert_eq!(seen.len(), 31);
    assert_eq!(seen[0], "line 0");
    assert_eq!(tail.len(), TAIL_LINES);
    assert_eq!(tail[0], "line 11");
    assert_eq!(tail[TAIL_LINES - 1], "no newline at end");
}

#[test]
fn pump_lines_cuts_endless_lines() {
    let input = vec![b'x'; MAX_LINE * 2 + 10];
    let mut lengths = Vec::new();
    pump_lines(io::Cursor::new(input), &mut |l| lengths.push(l.len())).expect("pump");
    assert_eq!(lengths, [MAX_LINE, MAX_LINE, 10]);
}

#[test]
fn pump_lines_replaces_invalid_utf8() {
    let mut seen = Vec::new();
    pump_lines(io::Cursor::new(b"a\xffb\n".to_vec()), &mut |l| seen.push(l.to_string())).expect("pump");
    assert_eq!(seen, ["a\u{fffd}b"]);
}

#[test]
fn runc_log_errors_picks_error_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("runc.log");
    std::fs::write(
        &log,
        "{\"level\":\"warning\",\"msg\":\"meh\"}\nnot json\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found\"}\n",
    )
    .expect("write");
    assert_eq!(runc_log_errors(&log), ["exec: \"nope\": not found"]);
    assert!(runc_log_errors(&dir.path().join("missing")).is_empty());
}

#[test]
fn hosts_file_names_the_host() {
    assert_eq!(hosts_file("box", &[]), "127.0.0.1\tlocalhost\tbox\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    assert_eq!(hosts_file("", &[]), "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
}

#[test]
fn oom_hint_only_for_sigkill_under_a_memory_limit() {
    let limited = ContainerOptions { memory: Some(64 << 20), ..ContainerOptions::default() };
    assert_eq!(
        oom_hint(137, &limited).as_deref(),
        Some("rbuild: killed (SIGKILL) under --memory 64 MiB: most likely out of memory")
    );
    assert_eq!(oom_hint(1, &limited), None);
    assert_eq!(oom_hint(137, &ContainerOptions::default()), None);
}

#[test]
fn hosts_file_ends_with_added_hosts_in_order() {
    let extra = [
        options::HostEntry { host: "db".into(), ip: std::net::IpAddr::from([10, 1, 2, 3]) },
        options::HostEntry { host: "v6".into(), ip: "fd00::2".parse().expect("ip") },
    ];
    assert_eq!(
        hosts_file("box", &extra),
        "127.0.0.1\tlocalhost\tbox\n::1\tlocalhost ip6-localhost ip6-loopback\n10.1.2.3\tdb\nfd00::2\tv6\n"
    );
}

#[test]
fn with_nameserver_replaces_only_nameservers() {
    let host = b"# generated\nnameserver 127.0.0.53\n  nameserver\t10.255.255.53\nsearch corp.example\noptions ndots:2";
    let got = with_nameserver(host, std::net::IpAddr::from([10, 0, 2, 3]));
    assert_eq!(
        String::from_utf8_lossy(&got),
        "nameserver 10.0.2.3\n# generated\nsearch corp.example\noptions ndots:2\n"
    );
    assert_eq!(with_nameserver(b"", std::net::IpAddr::from([10, 0, 2, 3])), b"nameserver 10.0.2.3\n");
}

#[test]
fn ensure_cwd_creates_missing_dirs_owned_by_the_user() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("srv")).expect("mkdir");
    // Only root may give files away; anyone may "chown" to themselves.
    let (uid, gid) = if nix::unistd::geteuid().is_root() {
        (4321, 8765)
    } else {
        (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
    };
    let user = ResolvedUser { uid, gid, ..ResolvedUser::default() };
    ensure_cwd(root.path(), "/srv/app/data", &user).expect("cwd");
    use std::os::unix::fs::MetadataExt;
    for dir in ["srv/app", "srv/app/data"] {
        let meta = std::fs::metadata(root.path().join(dir)).expect("created");
        assert_eq!(meta.mode() & 0o7777, 0o755, "{dir}");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{dir}");
    }
    if uid == 4321 {
        let existing = std::fs::metadata(root.path().join("srv")).expect("srv");
        assert_ne!(existing.uid(), 4321, "existing parents keep their owner");
    }
}

#[test]
fn new_fails_clearly_without_runc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::with_runc(PathBuf::from("/nonexistent/runc"), dir.path().join("state"), dir.path().join("b"))
        .expect("dirs");
    let spec = RunSpec {
        rootfs: dir.path().join("rootfs"),
        args: vec!["true".into()],
        env: vec![],
        cwd: "/".into(),
        user: ResolvedUser::default(),
        hostname: String::new(),
        network: NetworkMode::Host,
        mounts: vec![],
        tmpfs: vec![],
        bundle_dir: None,
        options: ContainerOptions::default(),
        privileged: false,
    };
    std::fs::create_dir_all(&spec.rootfs).expect("mkdir");
    let err = rt.run(&spec, &mut |_| {}).expect_err("no runc");
    assert!(matches!(err, RuntimeError::Spawn { .. }), "{err:?}");
    // The bundle directory is cleaned up even though runc never started.
    assert_eq!(std::fs::read_dir(dir.path().join("b")).expect("bundle parent").count(), 0);
}
