//! The local worker through the solver's `Worker` trait: each kind of failure arrives as a typed value the solver
//! and the builder can match on (a kind, the executor's own error by downcast), with the message the CLI shows.

use crate::support::{TestDir, busybox_rootfs, privileged, test_runtime};
use rbuild_cache::Store;
use rbuild_executor::cancel::Canceller;
use rbuild_executor::copy::CopyError;
use rbuild_executor::mounts::MountError;
use rbuild_executor::worker::{Exclusion, ExecError, LocalWorker, PathError};
use rbuild_solver::{
    CopyAction, ExecMount, ExecOp, FailureKind, FileAction, FileOp, Network, Op, Output, Worker, WorkerError,
};
use rbuild_types::error_chain as chain;
use std::sync::Arc;

macro_rules! gate {
    ($name:expr) => {
        if !privileged($name) {
            return;
        }
    };
}

/// A store with a busybox root filesystem as its one layer, a build context directory, and a worker over them.
struct Fixture {
    t: TestDir,
    worker: LocalWorker,
    rootfs: Output,
}

impl Fixture {
    fn new(name: &str, canceller: Canceller) -> Fixture {
        let t = TestDir::new(name);
        let store = Arc::new(Store::open(&t.path("store")).expect("store"));
        let base = store.tmp_dir("base").expect("tmp");
        busybox_rootfs(&base);
        let (id, _) = rbuild_image::layer::diff_id(&base, &Default::default()).expect("diff_id");
        store.commit_snapshot(&base, &id).expect("commit");
        std::fs::create_dir_all(t.path("ctx")).expect("ctx");
        std::fs::write(t.path("ctx/a.txt"), "a").expect("a.txt");
        let worker = LocalWorker::new(store, t.path("ctx"), None)
            .expect("worker")
            .with_runtime(test_runtime())
            .expect("runtime")
            .with_canceller(canceller);
        Fixture { t, worker, rootfs: Output::RootFs(vec![id]) }
    }

    fn run(&self, script: &str, mounts: Vec<ExecMount>) -> Result<Output, WorkerError> {
        let op = ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: "root".into(),
            network: Network::None,
            mounts,
            settings: vec![],
            hostname: String::new(),
            platform: None,
            insecure: false,
        };
        let mut lines = Vec::new();
        let r = self.worker.exec(&op, std::slice::from_ref(&self.rootfs), &mut |l| lines.push(l.to_string()));
        self.worker.finish();
        r
    }

    fn file(&self, actions: Vec<FileAction>) -> Result<Output, WorkerError> {
        let op = FileOp { dest: Some(0), actions };
        self.worker.file(&op, &[self.rootfs.clone(), Output::Dir(self.t.path("ctx"))])
    }
}

fn copy(sources: &[&str], dockerignore: &[&str]) -> FileAction {
    FileAction::Copy(CopyAction {
        src: 1,
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: "/app/".into(),
        chown: None,
        chmod: None,
        extract_archives: false,
        keep_owner: false,
        excludes: vec![],
        dockerignore: dockerignore.iter().map(|s| s.to_string()).collect(),
        parents: false,
    })
}

fn exec_error(e: &WorkerError) -> &ExecError {
    e.downcast_ref::<ExecError>().unwrap_or_else(|| panic!("not the executor's error: {e:?}"))
}

#[test]
fn a_non_zero_exit_is_one_typed_value_with_the_output_tail() {
    gate!("a_non_zero_exit_is_one_typed_value_with_the_output_tail");
    let f = Fixture::new("exit", Canceller::new());
    let err = f.run("echo about to fail; exit 3", vec![]).expect_err("exit 3");
    assert_eq!(err.kind(), FailureKind::Exit);
    match &err {
        WorkerError::ExitCode { command, code, tail } => {
            assert_eq!((command.as_str(), *code), ("/bin/sh -c echo about to fail; exit 3", 3));
            assert_eq!(tail, &["about to fail".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        chain(&err),
        "process \"/bin/sh -c echo about to fail; exit 3\" did not complete successfully: exit code: 3"
    );
}

#[test]
fn a_missing_required_secret_is_a_mount_failure() {
    gate!("a_missing_required_secret_is_a_mount_failure");
    let f = Fixture::new("secret", Canceller::new());
    let secret = ExecMount::Secret {
        id: "tok".into(),
        target: Some("/run/secrets/tok".into()),
        env: None,
        required: true,
        mode: 0o400,
        uid: 0,
        gid: 0,
    };
    let err = f.run("true", vec![secret]).expect_err("required secret");
    assert_eq!(err.kind(), FailureKind::Mount);
    assert!(matches!(exec_error(&err), ExecError::Mounts(MountError::MissingSecret { id }) if id == "tok"), "{err:?}");
    assert_eq!(chain(&err), "preparing the step's mounts: secret \"tok\" is required but was not given");
}

#[test]
fn copy_failures_say_which_source_and_why() {
    gate!("copy_failures_say_which_source_and_why");
    let f = Fixture::new("copy", Canceller::new());
    f.file(vec![copy(&["a.txt"], &[])]).expect("a plain copy works");

    let err = f.file(vec![copy(&["a.txt"], &["*.txt"])]).expect_err("ignored");
    assert_eq!(err.kind(), FailureKind::Context);
    assert!(
        matches!(exec_error(&err), ExecError::Excluded { by: Exclusion::Dockerignore, name, .. } if name == "a.txt"),
        "{err:?}"
    );
    assert_eq!(chain(&err), "copying a.txt to /app/: source \"a.txt\" not found: it was excluded by .dockerignore");

    let err = f.file(vec![copy(&["missing.txt"], &[])]).expect_err("missing");
    assert_eq!(err.kind(), FailureKind::Context);
    assert!(matches!(exec_error(&err), ExecError::Copy { source: CopyError::Select(_), .. }), "{err:?}");
    assert!(chain(&err).starts_with("copying missing.txt to /app/: "), "{}", chain(&err));
}

#[test]
fn file_actions_that_cannot_be_done_are_files_failures() {
    gate!("file_actions_that_cannot_be_done_are_files_failures");
    let f = Fixture::new("mkdir", Canceller::new());
    let mkdir = |path: &str| FileAction::Mkdir { path: path.into(), mode: 0o755, owner: None };
    let err = f.file(vec![mkdir("/bin/busybox/sub")]).expect_err("through a file");
    assert_eq!(err.kind(), FailureKind::Files);
    assert!(matches!(exec_error(&err), ExecError::Mkdir { source: PathError::NotADirectory { .. }, .. }), "{err:?}");
    assert_eq!(chain(&err), "creating /bin/busybox/sub: busybox exists and is not a directory");

    let owned = FileAction::Mkdir { path: "/w".into(), mode: 0o755, owner: Some("nosuchuser".into()) };
    let err = f.file(vec![owned]).expect_err("unknown owner");
    assert_eq!(err.kind(), FailureKind::Files);
    assert!(matches!(exec_error(&err), ExecError::WorkdirOwner { spec, .. } if spec == "nosuchuser"), "{err:?}");
    assert!(chain(&err).starts_with("WORKDIR /w: USER nosuchuser: "), "{}", chain(&err));
}

#[test]
fn a_cancelled_build_stops_steps_as_canceled() {
    gate!("a_cancelled_build_stops_steps_as_canceled");
    let canceller = Canceller::new();
    let f = Fixture::new("cancel", canceller.clone());
    canceller.cancel(std::time::Duration::from_secs(1));
    let err = f.run("true", vec![]).expect_err("cancelled");
    assert_eq!(err.kind(), FailureKind::Canceled);
    assert!(matches!(exec_error(&err), ExecError::Cancelled(_)), "{err:?}");
    assert_eq!(chain(&err), "stopping: the build was cancelled");
}

#[test]
fn an_unknown_named_context_is_a_source_failure() {
    // No container runs: no privileges needed.
    let t = TestDir::new("named");
    let store = Arc::new(Store::open(&t.path("store")).expect("store"));
    let worker = LocalWorker::new(store, t.path("ctx"), None).expect("worker");
    let err = worker.source(&Op::Context { name: "assets".into() }).expect_err("not given");
    assert_eq!(err.kind(), FailureKind::Source);
    assert!(matches!(exec_error(&err), ExecError::UnknownContext { name } if name == "assets"), "{err:?}");
    assert_eq!(chain(&err), "loading the build context \"assets\": no --build-context of that name was given");
}
