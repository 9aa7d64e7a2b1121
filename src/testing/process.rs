//! A broker process of a test's own: on a free loopback port, with a scratch directory,
//! restartable, killed when dropped.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{BoxFuture, Error};

type Args = dyn Fn(u16, &Path) -> Vec<OsString> + Send + Sync;

/// A server program a test starts itself (a `redis-server`, a `nats-server`) on a free
/// loopback port with a scratch directory, to restart it mid-test. Dropping it kills the
/// process and removes the directory.
///
/// ```no_run
/// use msgio::testing::ServerProcess;
///
/// let mut redis = ServerProcess::start("redis-server", |port, dir| {
///     vec![
///         "--port".into(), port.to_string().into(),
///         "--bind".into(), "127.0.0.1".into(),
///         "--dir".into(), dir.into(),
///     ]
/// })?;
/// let url = format!("redis://127.0.0.1:{}", redis.port());
/// redis.restart()?; // SIGKILL, then the same command again
/// # let _ = url;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct ServerProcess {
    program: String,
    args: Box<Args>,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerProcess")
            .field("program", &self.program)
            .field("port", &self.port)
            .field("dir", &self.dir)
            .finish()
    }
}

impl ServerProcess {
    /// Starts `program` with the arguments `args` gives for a free loopback port and a new
    /// scratch directory, and waits (up to 5 s) until the port accepts connections.
    ///
    /// # Errors
    ///
    /// When the program cannot be started or does not listen in time.
    pub fn start(
        program: &str,
        args: impl Fn(u16, &Path) -> Vec<OsString> + Send + Sync + 'static,
    ) -> std::io::Result<ServerProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("msgio-{}-{}", port, super::unique_suffix()));
        std::fs::create_dir_all(&dir)?;
        let mut process = ServerProcess {
            program: program.to_owned(),
            args: Box::new(args),
            port,
            dir,
            child: None,
        };
        process.spawn()?;
        Ok(process)
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new(&self.program)
            .args((self.args)(self.port, &self.dir))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(std::io::Error::other(format!(
            "{} did not listen on 127.0.0.1:{} within 5 s",
            self.program, self.port
        )))
    }

    /// Kills the process (SIGKILL: nothing is flushed that was not already written) and
    /// starts it again on the same port and directory.
    ///
    /// # Errors
    ///
    /// As [`start`](ServerProcess::start).
    pub fn restart(&mut self) -> std::io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        self.spawn()
    }

    /// A restart command for [`Capabilities::restart`](super::Capabilities::restart),
    /// owning the process.
    pub fn into_restart(
        self,
    ) -> impl Fn() -> BoxFuture<'static, Result<(), Error>> + Send + Sync + 'static {
        let shared = Arc::new(Mutex::new(self));
        move || {
            let shared = shared.clone();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    shared.lock().unwrap_or_else(|p| p.into_inner()).restart()
                })
                .await
                .map_err(Error::other)?
                .map_err(Error::other)
            })
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
