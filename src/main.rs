//! The `understudy` command line: run a node, check a config, and talk to a running node's
//! admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use understudy::config::Config;

/// mimalloc: fewer instructions per allocation than the system allocator, and it hands freed
/// pages back to the kernel, so a burst of transactions does not stay in the RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "understudy", version, about = "A geo-redundant SIP B2BUA pair")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (with no --config: a single-node PBX on 127.0.0.1:5060 with demo users).
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file: prints `ok`, or every error with its key, and exits 1.
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Show a running node's status.
    Status(AdminArgs),
    /// List a running node's calls.
    Calls(AdminArgs),
    /// List a running node's registrations.
    Registrations(AdminArgs),
    /// Ask a running node to hand over to its peer.
    Switchover(AdminArgs),
    /// Hand a running node's calls to its peer before it is stopped: switch over, then wait
    /// until the node is stand-by with no call and the peer acknowledged every call and
    /// registration handed to it (exit 0; 1 when that does not happen within --timeout).
    Drain {
        #[command(flatten)]
        admin: AdminArgs,
        /// Seconds to wait for the hand-over.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Ask a running node to re-read its configuration file (as SIGHUP does): users,
    /// trunks, `[calls]` and `[takeover]` take effect at once.
    Reload(AdminArgs),
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API address.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8060",
        env = "UNDERSTUDY_ADMIN"
    )]
    admin: String,
    /// Bearer token (needed when the admin API is not on loopback).
    #[arg(long, env = "UNDERSTUDY_TOKEN")]
    token: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Status(a) => admin(a, "GET", "/status"),
        Command::Calls(a) => admin(a, "GET", "/calls"),
        Command::Registrations(a) => admin(a, "GET", "/registrations"),
        Command::Switchover(a) => admin(a, "POST", "/switchover"),
        Command::Reload(a) => admin(a, "POST", "/reload"),
        Command::Drain { admin, timeout } => drain(&admin, timeout),
    }
}

/// The runtime of a CLI command that talks to the admin API.
fn client_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        })
}

/// `understudy drain`: switchover, then wait for the hand-over to complete.
fn drain(a: &AdminArgs, timeout_s: u64) -> ExitCode {
    let rt = match client_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let get = |method: &'static str, path: &'static str| {
        understudy::admin::http::request(&a.admin, method, path, a.token.as_deref(), None)
    };
    rt.block_on(async {
        let status = |body: &str| serde_json::from_str::<serde_json::Value>(body).ok();
        let Ok((200, body)) = get("GET", "/status").await else {
            eprintln!("error: no status from {}", a.admin);
            return ExitCode::FAILURE;
        };
        let field = |v: &serde_json::Value, path: &[&str]| {
            path.iter()
                .try_fold(v, |v, k| v.get(k))
                .cloned()
                .unwrap_or_default()
        };
        let calls_before = status(&body).map_or(0, |v| {
            field(&v, &["counts", "calls"]).as_u64().unwrap_or(0)
        });
        if status(&body).is_some_and(|v| field(&v, &["role"]) == "active") {
            match get("POST", "/switchover").await {
                Ok((200, _)) => {}
                Ok((code, body)) => {
                    eprintln!("switchover refused ({code}): {body}");
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
        loop {
            if let Ok((200, body)) = get("GET", "/status").await
                && let Some(v) = status(&body)
                && field(&v, &["role"]) == "standby"
                && field(&v, &["counts", "calls"]).as_u64() == Some(0)
                && field(&v, &["handoff_pending"]).as_u64() == Some(0)
            {
                println!(
                    "drained: {calls_before} calls handed to the peer; this node is stand-by and can be stopped"
                );
                return ExitCode::SUCCESS;
            }
            if std::time::Instant::now() > deadline {
                eprintln!("not drained after {timeout_s} s");
                return ExitCode::FAILURE;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
}

fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = match &config {
        Some(path) => Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => {
            let cfg = Config::builtin_default();
            println!(
                "understudy: built-in single-node PBX on {} (UDP and TCP)",
                cfg.node.sip_udp.map(|a| a.to_string()).unwrap_or_default()
            );
            println!("  domain {}; demo users:", cfg.node.domain);
            for u in &cfg.users {
                println!("    {} / {}", u.name, u.password);
            }
            println!("  admin API http://{}", cfg.admin.listen);
            cfg
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; stopping");
            let _ = stop_tx.send(true);
        });
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(forward_sighup(reload_tx));
        let reloading = understudy::node::Reloading {
            path: config,
            requests: Some(reload_rx),
        };
        // The node runs as a task on the workers, not on the thread that waits for it: the
        // task receiving a datagram then wakes it on the same worker, where waking the waiting
        // thread cost a futex or eventfd call per message.
        tokio::spawn(understudy::node::run_with(cfg, stop_rx, None, reloading))
            .await
            .context("the node task failed")?
            .map_err(anyhow::Error::from)
    })?;
    Ok(())
}

/// Each SIGHUP asks the node to reload its configuration.
async fn forward_sighup(tx: tokio::sync::mpsc::Sender<()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            if tx.send(()).await.is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn admin(a: AdminArgs, method: &str, path: &str) -> ExitCode {
    let rt = match client_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let res = rt.block_on(understudy::admin::http::request(
        &a.admin,
        method,
        path,
        a.token.as_deref(),
        None,
    ));
    match res {
        Ok((status, body)) => {
            if a.json {
                println!("{body}");
            } else {
                println!("{}", understudy::admin::render(path, &body));
            }
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("admin API answered {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
