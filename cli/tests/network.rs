//! Issue #9, hole 3: a RUN step's network. By default a step has a namespace of its own, connected outward through
//! a user-mode stack: it cannot reach services on the host's loopback, sniff the host's traffic, or connect to the
//! host's abstract unix sockets, yet reaches other machines (here: a network namespace the test makes, the only
//! non-loopback peer a test may talk to). The host's network needs `--allow network.host`.
//!
//! Each probe that must fail in a default step also runs with `RUN --network=host` (allowed), so a probe that
//! could not have succeeded anyway cannot pass the test by accident.

use crate::support::{Run, Workspace, cmd, require};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A static probe for what busybox cannot do: count packets holding a marker on an `AF_PACKET` socket, and
/// connect to an abstract unix socket.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "sniff") == 0) {
        int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
        if (s < 0) { perror("socket(AF_PACKET)"); return 2; }
        struct timeval tv = {0, 200000};
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        time_t end = time(NULL) + atoi(argv[3]);
        size_t mlen = strlen(argv[2]);
        long hits = 0, packets = 0;
        static char buf[65536];
        while (time(NULL) < end) {
            ssize_t n = recv(s, buf, sizeof buf, 0);
            if (n <= 0) continue;
            packets++;
            if (memmem(buf, (size_t)n, argv[2], mlen)) hits++;
        }
        printf("hits=%ld packets=%ld\n", hits, packets);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "abstract") == 0) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a;
        memset(&a, 0, sizeof a);
        a.sun_family = AF_UNIX;
        size_t l = strlen(argv[2]);
        memcpy(a.sun_path + 1, argv[2], l);
        if (connect(s, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + l) != 0) {
            printf("failed\n");
            return 0;
        }
        char reply[64] = {0};
        ssize_t n = read(s, reply, sizeof reply - 1);
        printf("connected %s\n", n > 0 ? reply : "");
        return 0;
    }
    return 2;
}
"#;

/// A workspace with the busybox base image in store `s` and a context holding the probe and `dockerfile`.
fn setup(dockerfile: &str) -> (Workspace, PathBuf) {
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let ctx = ws.context("net", &[("Dockerfile", dockerfile), ("probe.c", PROBE_C)]);
    cmd(
        "gcc",
        &[
            "-static",
            "-O1",
            "-o",
            ctx.join("probe").to_str().expect("utf-8"),
            ctx.join("probe.c").to_str().expect("utf-8"),
        ],
    )
    .success();
    (ws, ctx)
}

/// Builds `ctx` (with `--allow network.host`) and returns the directory its image was exported to.
fn build(ws: &Workspace, ctx: &Path) -> PathBuf {
    let out = ws.path("out");
    let dest = format!("type=local,dest={}", out.display());
    ws.rbuild("s", &["build", "--no-cache", "--allow", "network.host", "-o", &dest, ctx.to_str().expect("utf-8")])
        .success();
    out
}

fn read(out: &Path, file: &str) -> String {
    std::fs::read_to_string(out.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("rbuild-{what}-{}-{nanos:x}", std::process::id())
}

#[test]
fn default_run_cannot_reach_host_loopback_services() {
    if !require(&["runc", "busybox", "gcc", "slirp4netns"]) {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let greeting = marker("tcp");
    let reply = greeting.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let _ = writeln!(conn, "{reply}");
        }
    });
    // 127.0.0.1 is the step's own loopback; 10.0.2.2 is the stack's gateway, which must not lead to the host's.
    let probe = |net: &str, file: &str| {
        format!(
            "RUN {net} sh -c '(printf \"x\\n\" | nc -w 3 127.0.0.1 {port}; printf \"x\\n\" | nc -w 3 10.0.2.2 {port}) \
             > {file} 2>/dev/null; true'\n"
        )
    };
    let (ws, ctx) = setup(&format!("FROM base\n{}{}", probe("", "/tcp-default"), probe("--network=host", "/tcp-host")));
    let out = build(&ws, &ctx);
    assert!(read(&out, "tcp-host").contains(&greeting), "the probe works: with the host's network it connects");
    assert_eq!(read(&out, "tcp-default"), "", "a default step reached a service on the host's loopback");
}

#[test]
fn default_run_sniffs_no_host_traffic() {
    if !require(&["runc", "busybox", "gcc", "slirp4netns"]) {
        return;
    }
    let secret = marker("sniff");
    // Loopback traffic carrying the marker, all through the build (as a concurrent push's credentials would be).
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = receiver.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, payload) = (stop.clone(), format!("Authorization: Basic {secret}"));
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            while !stop.load(Ordering::Relaxed) {
                let _ = socket.send_to(payload.as_bytes(), to);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let (ws, ctx) = setup(&format!(
        "FROM base\nCOPY probe /probe\nRUN /probe sniff {secret} 2 > /sniff-default\n\
         RUN --network=host /probe sniff {secret} 2 > /sniff-host\n"
    ));
    let out = build(&ws, &ctx);
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");
    drop(receiver);
    let hits = |file: &str| -> u64 {
        let text = read(&out, file);
        let hits = text.split_whitespace().find_map(|w| w.strip_prefix("hits="));
        hits.and_then(|h| h.parse().ok()).unwrap_or_else(|| panic!("{file}: {text:?}"))
    };
    assert!(hits("sniff-host") > 0, "the sniffer works: in the host's namespace it sees the marker");
    assert_eq!(hits("sniff-default"), 0, "a default step captured the host's loopback traffic");
}

#[test]
fn default_run_cannot_reach_host_abstract_sockets() {
    if !require(&["runc", "busybox", "gcc", "slirp4netns"]) {
        return;
    }
    let name = marker("abstract");
    let listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).expect("name")).expect("bind");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let _ = conn.write_all(b"host");
        }
    });
    let (ws, ctx) = setup(&format!(
        "FROM base\nCOPY probe /probe\nRUN /probe abstract {name} > /abstract-default\n\
         RUN --network=host /probe abstract {name} > /abstract-host\n"
    ));
    let out = build(&ws, &ctx);
    assert_eq!(read(&out, "abstract-host").trim(), "connected host", "the probe works in the host's namespace");
    assert_eq!(read(&out, "abstract-default").trim(), "failed", "a default step reached a host abstract socket");
}

/// A network namespace joined to the host by a veth pair, with a web server on its side; all removed on drop,
/// also when the test fails.
struct TestNet {
    ns: String,
    host_if: String,
    server: Option<Child>,
    /// The server's address.
    addr: String,
}

impl TestNet {
    fn start(docroot: &Path) -> TestNet {
        let tag = std::process::id() % 10_000;
        let octet = std::process::id() % 250 + 1;
        let mut net = TestNet {
            ns: format!("rbuild-nt-{tag}"),
            host_if: format!("rbnt{tag}h"),
            server: None,
            addr: format!("10.213.{octet}.2"),
        };
        let peer = format!("rbnt{tag}p");
        let (host_ip, ns_ip) = (format!("10.213.{octet}.1/24"), format!("{}/24", net.addr));
        for args in [
            vec!["netns", "add", &net.ns],
            vec!["link", "add", &net.host_if, "type", "veth", "peer", "name", &peer],
            vec!["link", "set", &peer, "netns", &net.ns],
            vec!["addr", "add", &host_ip, "dev", &net.host_if],
            vec!["link", "set", &net.host_if, "up"],
            vec!["-n", &net.ns, "addr", "add", &ns_ip, "dev", &peer],
            vec!["-n", &net.ns, "link", "set", &peer, "up"],
            vec!["-n", &net.ns, "link", "set", "lo", "up"],
        ] {
            cmd("ip", &args).success();
        }
        let bind = format!("{}:8080", net.addr);
        let server = Command::new("ip")
            .args(["netns", "exec", &net.ns, "busybox", "httpd", "-f", "-p", &bind, "-h"])
            .arg(docroot)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting busybox httpd");
        net.server = Some(server);
        // Ready when it accepts (from the host: the veth route is ours).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&bind).is_err() {
            assert!(std::time::Instant::now() < deadline, "httpd did not start on {bind}");
            std::thread::sleep(Duration::from_millis(50));
        }
        net
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            let _ = server.kill();
            let _ = server.wait();
        }
        // Deleting the namespace deletes the peer, and with it the host's end; delete that too in case.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).stderr(Stdio::null()).status();
    }
}

#[test]
fn default_run_reaches_other_hosts_through_its_own_namespace() {
    if !require(&["runc", "busybox", "gcc", "slirp4netns", "ip"]) {
        return;
    }
    let docroot = tempfile::tempdir().expect("tempdir");
    let body = marker("outbound");
    std::fs::write(docroot.path().join("hello"), &body).expect("write");
    let net = TestNet::start(docroot.path());
    // busybox's static wget crashes on some hosts: HTTP by hand.
    let (ws, ctx) = setup(&format!(
        "FROM base\nRUN sh -c 'printf \"GET /hello HTTP/1.0\\r\\n\\r\\n\" | nc -w 5 {} 8080 > /fetched; \
         ip -o -4 addr show | awk \"{{print \\$2, \\$4}}\" > /addrs; cp /etc/resolv.conf /resolv'\n",
        net.addr
    ));
    let out = build(&ws, &ctx);
    let fetched = read(&out, "fetched");
    assert!(fetched.starts_with("HTTP/1.") && fetched.contains(&body), "fetched: {fetched:?}");
    // Its own namespace: loopback and the stack's interface, not the host's; DNS through the stack's forwarder.
    assert_eq!(read(&out, "addrs"), "lo 127.0.0.1/8\ntap0 10.0.2.100/24\n");
    assert!(read(&out, "resolv").starts_with("nameserver 10.0.2.3\n"), "{}", read(&out, "resolv"));
    drop(net);
}

#[test]
fn host_network_needs_the_network_host_entitlement() {
    if !require(&["runc", "busybox"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let ctx = ws.context("host", &[("Dockerfile", "FROM base\nRUN true\nRUN --network=host echo hi > /hi\n")]);
    let ctx_s = ctx.to_str().expect("utf-8");
    let refused = |run: Run, what: &str| {
        assert_eq!(run.code, Some(1), "{what}: {}", run.stderr);
        assert!(run.stderr.contains("--allow network.host"), "{what}: {}", run.stderr);
    };
    let step = ws.rbuild("s", &["build", ctx_s]);
    assert!(step.stderr.contains("RUN --network=host needs the network.host entitlement"), "{}", step.stderr);
    assert!(step.stderr.contains("Dockerfile:3"), "names the step: {}", step.stderr);
    refused(step, "RUN --network=host");
    let plain = ws.context("plain", &[("Dockerfile", "FROM base\nRUN true\n")]);
    refused(ws.rbuild("s", &["build", "--network", "host", plain.to_str().expect("utf-8")]), "--network host");
    let bad = ws.rbuild("s", &["build", "--allow", "network.hots", plain.to_str().expect("utf-8")]);
    assert!(bad.code == Some(1) && bad.stderr.contains("unknown entitlement \"network.hots\""), "{}", bad.stderr);
    // Allowed, both ways (a comma list, and the flag).
    ws.rbuild("s", &["build", "--allow", "security.insecure,network.host", ctx_s]).success();
    ws.rbuild("s", &["build", "--network", "host", "--allow", "network.host", plain.to_str().expect("utf-8")])
        .success();
    // --network none reaches the steps that did not choose.
    let none = ws.context("none", &[("Dockerfile", "FROM base\nRUN ip -o link show | wc -l > /links\n")]);
    let out = ws.path("none-out");
    let dest = format!("type=local,dest={}", out.display());
    ws.rbuild("s", &["build", "--network", "none", "-o", &dest, none.to_str().expect("utf-8")]).success();
    assert_eq!(read(&out, "links").trim(), "1", "only lo");
}

/// Pids of the slirp4netns processes whose command line mentions `needle`.
fn slirps_for(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            // A zombie has an empty command line: it is gone, only not yet reaped.
            comm.trim() == "slirp4netns" && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

#[test]
fn killed_build_leaves_no_network_stack_behind() {
    if !require(&["runc", "busybox", "slirp4netns"]) {
        return;
    }
    let ws = Workspace::new();
    ws.build_base("s", "base");
    let store = ws.path("s");
    let store_s = store.to_str().expect("utf-8").to_string();
    let ctx = ws.context("sleep", &[("Dockerfile", "FROM base\nRUN sh -c 'echo started; sleep 300'\n")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(&store)
        .args(["build", ctx.to_str().expect("utf-8")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rbuild");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.ends_with(" started")) {
        match lines.next() {
            Some(Ok(line)) => seen.push(line),
            _ => {
                let _ = child.kill();
                panic!("the step never started:\n{}", seen.join("\n"));
            }
        }
    }
    let stacks = slirps_for(&store_s);
    assert_eq!(stacks.len(), 1, "one stack for the build: {stacks:?}");
    child.kill().expect("SIGKILL rbuild");
    child.wait().expect("wait");

    // The stack notices its parent's death by itself (--exit-fd).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !slirps_for(&store_s).is_empty() {
        assert!(std::time::Instant::now() < deadline, "slirp4netns outlived the killed rbuild");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The killed build's container is not this test's subject (issue #9 item 8): remove it by hand.
    let runc_root = store.join("runc");
    let listed = cmd("runc", &["--root", runc_root.to_str().expect("utf-8"), "list", "-q"]);
    for id in listed.stdout.lines() {
        cmd("runc", &["--root", runc_root.to_str().expect("utf-8"), "delete", "-f", id]);
    }
    let netns_mounts = || {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        mounts.lines().filter(|l| l.contains(&store_s) && l.contains("/netns")).map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(netns_mounts().len(), 1, "the killed build's namespace file is still bound");

    // The next rbuild collects it.
    let next = ws.context("next", &[("Dockerfile", "FROM base\nRUN true\n")]);
    ws.rbuild("s", &["build", next.to_str().expect("utf-8")]).success();
    assert_eq!(netns_mounts(), Vec::<String>::new(), "the next start detached the leftover namespace");
    assert_eq!(slirps_for(&store_s), Vec::<u32>::new());
}

/// A Debian bookworm root (`mmdebstrap --variant=apt`) as a tar, made once per machine and kept under /var/cache:
/// a real distribution's package manager to reach the network with.
fn debian_root_tar() -> PathBuf {
    let dir = Path::new("/var/cache/rbuild-tests");
    std::fs::create_dir_all(dir).unwrap();
    let tar = dir.join("debian-bookworm-apt.tar");
    // One maker at a time (tests run in parallel, CI runs may overlap); the tar appears whole, by rename.
    let lock = std::fs::File::create(dir.join("debian.lock")).unwrap();
    lock.lock().unwrap();
    if !tar.exists() {
        let partial = dir.join("debian-bookworm-apt.tar.partial");
        let _ = std::fs::remove_file(&partial);
        let made =
            cmd("mmdebstrap", &["--quiet", "--variant=apt", "--format=tar", "bookworm", partial.to_str().unwrap()]);
        assert_eq!(made.code, Some(0), "mmdebstrap failed:\n{}", made.stderr);
        std::fs::rename(&partial, &tar).unwrap();
    }
    tar
}

/// Issue 9, hole 3: with a private network by default, a debian-based RUN still reaches the outside world:
/// `apt-get update` fetches the package lists (through the user-mode stack and its DNS forwarder).
#[test]
fn a_debian_based_run_can_apt_get_update() {
    if !require(&["runc", "mmdebstrap"]) {
        return;
    }
    let tar = debian_root_tar();
    let ws = Workspace::new();
    let dockerfile =
        "FROM scratch\nADD debian.tar /\nRUN apt-get update && ls /var/lib/apt/lists/ | grep -q bookworm\n";
    let ctx = ws.context("debian", &[("Dockerfile", dockerfile)]);
    std::fs::copy(&tar, ctx.join("debian.tar")).unwrap();
    let run = ws.rbuild("store", &["build", ctx.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "apt-get update failed in a default RUN:\n{}", run.stderr);
    assert!(run.stderr.contains("bookworm"), "{}", run.stderr);
}
