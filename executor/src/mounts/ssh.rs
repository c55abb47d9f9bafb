//! SSH mounts: a socket in the container whose connections are forwarded to the host's agent.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::{MountError, io_err};

/// A listening socket forwarding each connection to an SSH agent; stops accepting when dropped.
#[derive(Debug)]
pub(super) struct SshProxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SshProxy {
    pub(super) fn start(agent: PathBuf, socket: &Path, mode: u32, uid: u32, gid: u32) -> Result<SshProxy, MountError> {
        let listener = UnixListener::bind(socket).map_err(io_err("listen on", socket))?;
        std::os::unix::fs::chown(socket, Some(uid), Some(gid)).map_err(io_err("chown", socket))?;
        fs::set_permissions(socket, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", socket))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rbuild-ssh-proxy".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    match conn {
                        Ok(conn) => forward(conn, &agent),
                        Err(err) => tracing::debug!(error = %err, "ssh proxy accept"),
                    }
                }
            })
            .map_err(io_err("start a thread for", socket))?;
        Ok(SshProxy { socket: socket.to_path_buf(), stop, thread: Some(thread) })
    }
}

impl Drop for SshProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Pipes `client` to a new connection to `agent`, both ways, on threads of their own.
fn forward(client: UnixStream, agent: &Path) {
    let upstream = match UnixStream::connect(agent) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(agent = %agent.display(), error = %err, "cannot reach the SSH agent");
            return;
        }
    };
    let pipe = |mut from: UnixStream, mut to: UnixStream| {
        move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        }
    };
    match (client.try_clone(), upstream.try_clone()) {
        (Ok(client2), Ok(upstream2)) => {
            let _ = std::thread::Builder::new().name("rbuild-ssh-up".into()).spawn(pipe(client, upstream));
            let _ = std::thread::Builder::new().name("rbuild-ssh-down".into()).spawn(pipe(upstream2, client2));
        }
        (Err(err), _) | (_, Err(err)) => tracing::warn!(error = %err, "ssh proxy"),
    }
}
