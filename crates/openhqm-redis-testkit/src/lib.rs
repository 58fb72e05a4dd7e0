//! A private `redis-server` for tests: each test that needs Redis starts its
//! own on a free 127.0.0.1 port, in a temporary directory, and the server is
//! killed when the handle is dropped.
//!
//! Owning the server (rather than sharing one from the environment) keeps
//! tests independent and lets a test kill Redis and bring it back: empty by
//! default, or with everything it acknowledged ([`RedisOptions::persistent`]).
//! If `redis-server` is not on `PATH` the test fails, saying how to get it:
//! a skipped test would hide a missing backend, so there is no skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` owned by the test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    options: RedisOptions,
}

/// How the server runs; the default is [`RedisServer::start`]'s.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// Keep the data across [`RedisServer::kill`] and
    /// [`RedisServer::start_again`]: an append-only file fsynced before each
    /// write is answered (`appendfsync always`), so even SIGKILL loses
    /// nothing Redis acknowledged. Without it a restart comes back empty.
    pub persistent: bool,
    /// `--maxclients`: a connection beyond it is refused ("max number of
    /// clients reached"). Redis's own default is 10,000.
    pub max_clients: Option<u32>,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn redis_server_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "redis-server is not on PATH: run scripts/test.sh (it installs redis-server), \
             or `apt-get install -y redis-server`"
        )
    })
}

/// Sends PING and expects PONG.
fn ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl RedisServer {
    /// Starts a server without persistence on a free port and waits until
    /// it answers PING.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not come up within 10 s.
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// [`RedisServer::start`] with `options`.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not come up within 10 s.
    #[must_use]
    pub fn start_with(options: RedisOptions) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir for redis"),
            options,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let appendonly: &[&str] = if self.options.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let max_clients = self
            .options
            .max_clients
            .map(|n| ["--maxclients".to_owned(), n.to_string()]);
        let child = Command::new(redis_server_binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--daemonize", "no"])
            .args(appendonly)
            .args(max_clients.iter().flatten())
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops (`-STOP`) or resumes (`-CONT`) the server: a stalled server
    /// keeps its connections but answers nothing.
    ///
    /// # Panics
    /// If `kill` cannot be run.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} failed");
        }
    }

    /// Kills the server with SIGKILL: no save, so its data is gone unless
    /// it is [`RedisOptions::persistent`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and with the same options: empty,
    /// or, if persistent, with all it had acknowledged (the `--dir` is kept).
    pub fn start_again(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
