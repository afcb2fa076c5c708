//! Helpers for tests (feature `testing`): a private nats-server with its own store
//! folder on a free port, which a test may kill with SIGKILL and start again, and
//! cleanup of the streams a test created.

use std::{
    io,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures_util::TryStreamExt;

/// The environment variable naming the NATS server tests use.
pub const URL_VAR: &str = "ORDERS_TEST_NATS_URL";

/// The shared test server's URL from [`URL_VAR`]. When it is not set: `None` with the
/// reason printed (a skip), or a panic when `CI` is set (a missing service fails CI).
#[must_use]
pub fn test_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: {URL_VAR} is not set and CI is: NATS is required"
            );
            eprintln!("{test}: skipped, {URL_VAR} is not set (e.g. nats://127.0.0.1:4222)");
            None
        }
    }
}

/// Whether the nats-server binary runs here. When it does not: false with the reason
/// printed (a skip), or a panic when `CI` is set.
#[must_use]
pub fn server_available(test: &str) -> bool {
    let binary = server_binary();
    if Command::new(&binary).arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {} cannot be run and CI is set",
        binary.display()
    );
    eprintln!("{test}: skipped, {} cannot be run", binary.display());
    false
}

/// The nats-server binary: `ORDERS_NATS_SERVER`, else Debian's `/usr/sbin/nats-server`,
/// else `nats-server` on the `PATH`.
#[must_use]
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ORDERS_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("nats-server")
    }
}

/// A private nats-server with JetStream, its own store folder and a free port; killed
/// when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    jetstream: bool,
    port: u16,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    ///
    /// # Errors
    /// The I/O error when the binary cannot be started or does not answer within 10 s.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(true).await
    }

    /// Starts a server without JetStream (for the error a bus gives on it).
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn start_without_jetstream() -> io::Result<Self> {
        Self::start_with(false).await
    }

    async fn start_with(jetstream: bool) -> io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self {
            child: None,
            jetstream,
            port,
            store: tempfile::tempdir()?,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// The URL clients connect to.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let mut command = Command::new(server_binary());
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.store.path());
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(io::Error::other(format!("nats-server exited: {status}")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nats-server did not accept connections within 10 s",
                ));
            }
            // Polling a port: nothing to be notified by.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server with SIGKILL (no flush, no goodbye) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store folder.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deletes every stream on the server at `url` whose name begins with `prefix`
/// (with a bus's subject prefix `p`, its streams all begin with `p_`). Returns how many.
///
/// # Errors
/// A description of what failed.
pub async fn delete_streams(url: &str, prefix: &str) -> Result<usize, String> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .map_err(|e| format!("list streams: {e}"))?;
    let mut deleted = 0;
    for name in names.iter().filter(|n| n.starts_with(prefix)) {
        js.delete_stream(name)
            .await
            .map_err(|e| format!("delete stream {name}: {e}"))?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Sees dead letters as they are written, without polling: a plain NATS subscription to
/// the dead-letter subjects of one prefix (the stream stores them; this hears them).
pub struct DeadLetterWatch {
    subscriber: async_nats::Subscriber,
    _client: async_nats::Client,
}

impl DeadLetterWatch {
    /// Starts hearing the dead letters of bus prefix `prefix` (`None`: no prefix) on the
    /// server at `url`. Start it before the message that will fail is published.
    ///
    /// # Errors
    /// A description of what failed.
    pub async fn start(url: &str, prefix: Option<&str>) -> Result<Self, String> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        let subject = crate::names::Names::new(prefix.map(str::to_owned)).dead_letter_subjects();
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("subscribe {subject}: {e}"))?;
        // Round trip: the server has the subscription before anything is published.
        client
            .flush()
            .await
            .map_err(|e| format!("flush {url}: {e}"))?;
        Ok(Self {
            subscriber,
            _client: client,
        })
    }

    /// Waits up to `timeout` for the next dead letter; returns its group, `None` if none
    /// came in time.
    pub async fn next(&mut self, timeout: Duration) -> Option<String> {
        use futures_util::StreamExt as _;
        let message = tokio::time::timeout(timeout, self.subscriber.next())
            .await
            .ok()??;
        let group = message
            .headers
            .as_ref()
            .and_then(|h| h.get(crate::GROUP_HEADER))
            .map(|v| v.as_str().to_owned());
        Some(group.unwrap_or_default())
    }
}
