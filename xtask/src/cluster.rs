//! `cargo xtask cluster`: Orders, Payments and Stock as three processes on one NATS,
//! for trying the distributed deployment by hand.
//!
//! It starts a local NATS (`nats-server -js`, its store under `target/cluster/nats`)
//! unless one already answers on the address, builds `app`, starts `app serve --bus …
//! --sims none` (SQLite under `target/cluster/`), `app payments` and `app stock` on
//! their own ports, prefixes every log line with its role (`[orders] …`), and prints
//! how to place an order with curl. A process that dies is reported, with the command
//! that starts it again. Ctrl-C stops them all (SIGTERM, then SIGKILL after a grace),
//! and the NATS it started.
//!
//! The children run in process groups of their own, so Ctrl-C reaches this program
//! only and the shutdown goes in order: Orders, the simulators, then NATS.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// The settings, from the task's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The NATS address; a local server is started on it when nothing answers.
    pub nats: String,
    /// Orders' HTTP port.
    pub orders_port: u16,
    /// Payments' health port.
    pub payments_port: u16,
    /// Stock's health port.
    pub stock_port: u16,
    /// Orders' store (`--store` of `app serve`); `None`: SQLite under `target/cluster/`.
    pub store: Option<String>,
    /// The bus prefix (`--bus-prefix`); `None`: none.
    pub prefix: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nats: "nats://127.0.0.1:4222".to_owned(),
            orders_port: 8080,
            payments_port: 8081,
            stock_port: 8082,
            store: None,
            prefix: None,
        }
    }
}

/// The task's usage, shown on a wrong argument.
const USAGE: &str = "cargo xtask cluster [--nats nats://HOST:PORT] [--orders-port N] \
     [--payments-port N] [--stock-port N] [--store STORE] [--prefix P]";

impl Options {
    /// Parses `--flag value` pairs.
    ///
    /// # Errors
    /// An unknown flag, a missing value or a port that is not a number.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self::default();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value\nusage: {USAGE}"))?;
            let port = || {
                value
                    .parse::<u16>()
                    .with_context(|| format!("{flag}: `{value}` is not a port"))
            };
            match flag.as_str() {
                "--nats" => options.nats = value.clone(),
                "--orders-port" => options.orders_port = port()?,
                "--payments-port" => options.payments_port = port()?,
                "--stock-port" => options.stock_port = port()?,
                "--store" => options.store = Some(value.clone()),
                "--prefix" => options.prefix = Some(value.clone()),
                other => bail!("unknown argument `{other}`\nusage: {USAGE}"),
            }
        }
        Ok(options)
    }
}

/// `cargo xtask cluster [OPTIONS]`.
///
/// # Errors
/// A wrong argument, a build that fails, or a process that cannot be started.
pub fn task(root: &Path, args: &[String]) -> Result<()> {
    let options = Options::parse(args)?;
    crate::shell::run(crate::shell::cargo_command(root).args(["build", "-p", "app"]))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(run(root, &options))
}

/// The width of the widest role name, so the log lines align.
const WIDTH: usize = "payments".len() + 2;

/// `line` as printed: `[role]` padded, then the line without its line ending; bytes
/// that are not UTF-8 are shown as the replacement character.
#[must_use]
pub fn prefixed(role: &str, line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let tag = format!("[{role}]");
    format!("{tag:<WIDTH$} {}", String::from_utf8_lossy(line))
}

/// Reads `reader` to its end and hands every line, prefixed with `role`, to `out`; a
/// last line without a line ending is handed over too.
pub async fn pump<R: AsyncRead + Unpin>(role: &str, reader: R, mut out: impl FnMut(String)) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => out(prefixed(role, &line)),
            Err(error) => {
                out(prefixed(
                    role,
                    format!("(log unreadable: {error})").as_bytes(),
                ));
                return;
            }
        }
    }
}

/// One child: its role name, the command that starts it (shown when it dies), and
/// the process.
struct Running {
    role: &'static str,
    shown: String,
    child: Child,
    /// The tasks printing its output, awaited after it ends so its last lines come
    /// before the line that says it stopped.
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts `program ARGS…` as `role`, its output pumped to stdout with the prefix.
fn spawn(role: &'static str, program: &Path, args: &[String]) -> Result<Running> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start {role}: {}", program.display()))?;
    let mut pumps = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        pumps.push(tokio::spawn(async move {
            pump(role, stdout, |l| println!("{l}")).await;
        }));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.push(tokio::spawn(async move {
            pump(role, stderr, |l| println!("{l}")).await;
        }));
    }
    let shown = format!("{} {}", program.display(), args.join(" "));
    Ok(Running {
        role,
        shown,
        child,
        pumps,
    })
}

/// Whether something accepts connections at `host:port` now.
fn answers(address: &str) -> bool {
    crate::services::answers(address).is_ok()
}

/// Waits (up to `within`) until `address` accepts connections.
async fn await_port(address: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if answers(address) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Sends SIGTERM to `running` (SIGKILL after the grace) and waits for it.
async fn stop(running: &mut Running, grace: Duration) {
    if let Ok(Some(_)) = running.child.try_wait() {
        return;
    }
    if let Some(pid) = running.child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let status = match tokio::time::timeout(grace, running.child.wait()).await {
        Ok(Ok(status)) => format!("stopped ({status})"),
        _ => {
            let _ = running.child.kill().await;
            format!("killed after {grace:?}")
        }
    };
    for pump in running.pumps.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(1), pump).await;
    }
    println!("[xtask] {} {status}", running.role);
}

/// Fails when a port the cluster needs is taken (another Orders, an earlier run).
fn check_free(ports: &[(&str, u16)]) -> Result<()> {
    for (role, port) in ports {
        if let Err(error) = std::net::TcpListener::bind(("127.0.0.1", *port)) {
            bail!(
                "{role} cannot listen on 127.0.0.1:{port} ({error}): stop what uses it or \
                 choose another port (--{role}-port N)"
            );
        }
    }
    Ok(())
}

/// The nats-server binary, as the tests find it.
fn nats_server() -> PathBuf {
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

async fn run(root: &Path, options: &Options) -> Result<()> {
    let target = super::target_dir(root);
    let folder = target.join("cluster");
    std::fs::create_dir_all(&folder).with_context(|| format!("create {}", folder.display()))?;
    let app = target
        .join("debug")
        .join(format!("app{}", std::env::consts::EXE_SUFFIX));
    let nats_address = crate::services::host_port(&options.nats)
        .with_context(|| format!("--nats {}: no host:port", options.nats))?;

    check_free(&[
        ("orders", options.orders_port),
        ("payments", options.payments_port),
        ("stock", options.stock_port),
    ])?;

    // NATS: the one that answers, or one of our own.
    let mut nats = None;
    if answers(&nats_address) {
        println!("[xtask] NATS answers on {nats_address}: using it");
    } else {
        let (host, port) = nats_address
            .rsplit_once(':')
            .with_context(|| format!("no port in {nats_address}"))?;
        let store = folder.join("nats");
        let args = [
            "-js".to_owned(),
            "-sd".to_owned(),
            store.display().to_string(),
            "-a".to_owned(),
            host.to_owned(),
            "-p".to_owned(),
            port.to_owned(),
        ];
        println!(
            "[xtask] no NATS on {nats_address}: starting nats-server -js (store {})",
            store.display()
        );
        let server = spawn("nats", &nats_server(), &args)?;
        nats = Some(server);
        if !await_port(&nats_address, Duration::from_secs(10)).await {
            bail!("nats-server did not accept connections on {nats_address} within 10 s");
        }
    }

    let store = options
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", folder.join("orders.db").display()));
    let mut bus = vec!["--bus".to_owned(), options.nats.clone()];
    if let Some(prefix) = &options.prefix {
        bus.extend(["--bus-prefix".to_owned(), prefix.clone()]);
    }
    let listen = |port: u16| vec!["--listen".to_owned(), format!("127.0.0.1:{port}")];
    let orders_args = [
        vec![
            "serve".to_owned(),
            "--sims".to_owned(),
            "none".to_owned(),
            "--store".to_owned(),
            store.clone(),
        ],
        bus.clone(),
        listen(options.orders_port),
    ]
    .concat();
    let payments_args = [
        vec!["payments".to_owned()],
        bus.clone(),
        listen(options.payments_port),
    ]
    .concat();
    let stock_args = [
        vec!["stock".to_owned()],
        bus.clone(),
        listen(options.stock_port),
    ]
    .concat();
    let mut children = vec![
        spawn("orders", &app, &orders_args)?,
        spawn("payments", &app, &payments_args)?,
        spawn("stock", &app, &stock_args)?,
    ];

    let orders = format!("127.0.0.1:{}", options.orders_port);
    if await_port(&orders, Duration::from_secs(30)).await {
        println!("{}", how_to_order(&orders));
    } else {
        println!("[xtask] Orders does not answer on {orders} yet; see its log above");
    }

    // Runs until Ctrl-C; reports every child that ends on its own.
    // One Ctrl-C future for the whole run: a signal between two turns is not lost.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut reported = vec![false; children.len()];
    let mut nats_reported = false;
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = ticks.tick() => {
                for (index, running) in children.iter_mut().enumerate() {
                    if !reported[index] && let Ok(Some(status)) = running.child.try_wait() {
                        reported[index] = true;
                        println!(
                            "[xtask] {} exited ({status}); the others keep running. Start it again with:\n[xtask]   {}",
                            running.role, running.shown
                        );
                    }
                }
                if let Some(server) = nats.as_mut()
                    && !nats_reported
                    && let Ok(Some(status)) = server.child.try_wait()
                {
                    nats_reported = true;
                    println!(
                        "[xtask] nats-server exited ({status}); the processes reconnect once it is back:\n[xtask]   {}",
                        server.shown
                    );
                }
            }
        }
    }
    println!(
        "\n[xtask] Ctrl-C: stopping Orders, Payments, Stock{}",
        if nats.is_some() { " and NATS" } else { "" }
    );
    let grace = Duration::from_secs(10);
    for running in &mut children {
        stop(running, grace).await;
    }
    if let Some(server) = nats.as_mut() {
        stop(server, grace).await;
    }
    Ok(())
}

/// The curl commands that place an order on Orders at `address` and follow it.
#[must_use]
pub fn how_to_order(address: &str) -> String {
    format!(
        r#"[xtask] Orders on http://{address}, Payments and Stock on the bus. Place an order:

  curl -si -X POST http://{address}/orders -H 'content-type: application/json' \
    -H 'Idempotency-Key: try-1' \
    -d '{{"customerId":"c-1","currency":"EUR","items":[{{"productId":"sku-1","quantity":2,"price":19.99}}],"shippingAddress":{{"street":"Main St 1","city":"Berlin","postalCode":"10115","country":"DE"}}}}'

then follow it (answers as soon as it changes) and see its messages:

  curl -s 'http://{address}/orders/ORDER_ID?afterVersion=1&waitMs=5000'
  curl -s http://{address}/orders/ORDER_ID/messages

Ctrl-C stops everything."#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_prefixed_with_its_role_without_its_line_ending() {
        assert_eq!(prefixed("orders", b"listening\n"), "[orders]   listening");
        assert_eq!(prefixed("payments", b"ready\r\n"), "[payments] ready");
        assert_eq!(prefixed("stock", b"no newline"), "[stock]    no newline");
        assert_eq!(prefixed("nats", b"caf\xe9\n"), "[nats]     caf\u{fffd}");
    }

    #[tokio::test]
    async fn output_is_split_into_lines_including_a_last_one_without_a_line_ending() {
        let output: &[u8] = b"first\nsecond\r\n\nlast";
        let mut lines = Vec::new();
        pump("orders", output, |l| lines.push(l)).await;
        assert_eq!(
            lines,
            [
                "[orders]   first",
                "[orders]   second",
                "[orders]   ",
                "[orders]   last"
            ]
        );
    }

    #[test]
    fn options_default_to_the_local_ports_and_parse_flags() {
        assert_eq!(Options::parse(&[]).unwrap(), Options::default());
        let args: Vec<String> = [
            "--orders-port",
            "9090",
            "--nats",
            "nats://h:4223",
            "--prefix",
            "demo",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let options = Options::parse(&args).unwrap();
        assert_eq!(options.orders_port, 9090);
        assert_eq!(options.nats, "nats://h:4223");
        assert_eq!(options.prefix.as_deref(), Some("demo"));
        assert!(Options::parse(&["--orders-port".to_owned()]).is_err());
        assert!(Options::parse(&["--orders-port".to_owned(), "x".to_owned()]).is_err());
        assert!(Options::parse(&["--what".to_owned(), "1".to_owned()]).is_err());
    }

    #[test]
    fn the_curl_hint_names_the_orders_address() {
        let hint = how_to_order("127.0.0.1:8080");
        assert!(hint.contains("curl -si -X POST http://127.0.0.1:8080/orders"));
        assert!(hint.contains("\"customerId\":\"c-1\""));
    }
}
