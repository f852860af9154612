//! `graft server init|run`: thin over graft-server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

/// The fleet's server.
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Create a server's data directory: its database, the publisher's key pair, a CA and the
    /// server's certificate, and a first admin token (DIR/admin.token, mode 0600).
    ///
    /// Move DIR/publisher.key to the publisher's machine: the server needs only the public
    /// key, so a compromised server cannot sign a level hosts would load.
    Init {
        /// The data directory to create.
        #[arg(long)]
        data: PathBuf,
        /// Print what was made as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the fleet API (OpenAPI at /v1/openapi.json) until Ctrl-C or SIGTERM.
    ///
    /// Storage is SQLite in DIR unless --database names a PostgreSQL database, which any
    /// number of server replicas can share. Schema migrations run at start.
    #[command(
        after_help = "Examples:\n  graft server run --data /var/lib/graft-server --listen 127.0.0.1:8443\n  graft server run --data d --listen 127.0.0.1:8080 --insecure-http --database postgres://graft@127.0.0.1/graft"
    )]
    Run {
        /// The data directory made by `graft server init`.
        #[arg(long)]
        data: PathBuf,
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// postgres://USER[:PASSWORD]@HOST[:PORT]/DB (default: SQLite in the data directory).
        #[arg(long, env = "GRAFT_DATABASE", hide_env_values = true)]
        database: Option<String>,
        /// Plain HTTP instead of TLS: only on a loopback address (tests, the lab bridge).
        #[arg(long)]
        insecure_http: bool,
        /// Listen on an address other than loopback (TLS only).
        #[arg(long)]
        allow_remote: bool,
        /// Check-in answers are served from memory; this is how stale, at most, they may be
        /// against another replica's writes (this replica's own are seen at once). 0: the
        /// database's generation is read at every check-in.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        checkin_cache_ms: u64,
        /// How often running rollouts move on: hard gates checked, hosts moved, baked waves
        /// judged. Every replica drives; a rollout's row is changed under a compare-and-set.
        #[arg(long, value_name = "MS", default_value_t = 5000)]
        rollout_tick_ms: u64,
        /// A host's check-in time is written once it is this far past the written one, not at
        /// every check-in (the fleet's most frequent event; a million hosts checking in every
        /// minute would rewrite 17,000 rows a second). The lost-host gate allows for it: a
        /// host counts as lost between a rollout's lost-after and lost-after plus this after
        /// its last check-in.
        #[arg(long, value_name = "MS", default_value_t = graft_server::DEFAULT_LAST_SEEN_RESOLUTION.as_millis() as u64)]
        last_seen_resolution_ms: u64,
        /// Most hosts per side (treated, control) whose health a rollout's gates read and
        /// the server asks to report at every check-in; everyone else reports only changes.
        #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(5..=1_000_000))]
        gate_hosts: u64,
    },
}

/// Runs a server command.
pub fn run(command: &ServerCommand) -> anyhow::Result<ExitCode> {
    match command {
        ServerCommand::Init { data, json } => {
            let made = graft_server::init(data)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "data": made.data,
                        "publisher_key_id": made.publisher_key_id,
                        "publisher_public_key": made.publisher_public_key,
                        "publisher_private_key": made.publisher_private_key,
                        "admin_token": made.admin_token,
                        "ca": made.ca,
                    }))?
                );
            } else {
                println!("graft server: created {}", made.data.display());
                println!(
                    "  publisher key {} (private half: {}; move it to the publisher's machine)",
                    made.publisher_key_id,
                    made.publisher_private_key.display()
                );
                println!("  admin token in {}", made.admin_token.display());
                println!("  CA for hosts and operators: {}", made.ca.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        ServerCommand::Run {
            data,
            listen,
            database,
            insecure_http,
            allow_remote,
            checkin_cache_ms,
            rollout_tick_ms,
            last_seen_resolution_ms,
            gate_hosts,
        } => {
            let mut config = graft_server::ServerConfig::new(data.clone(), *listen);
            config.database = database.clone();
            config.insecure_http = *insecure_http;
            config.allow_remote = *allow_remote;
            config.checkin_cache = std::time::Duration::from_millis(*checkin_cache_ms);
            config.rollout_tick = std::time::Duration::from_millis((*rollout_tick_ms).max(50));
            config.last_seen_resolution =
                std::time::Duration::from_millis(*last_seen_resolution_ms);
            config.gates.hosts_per_side = *gate_hosts;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let running = graft_server::start(config).await?;
                eprintln!(
                    "graft server: listening on {}://{} ({})",
                    if *insecure_http { "http" } else { "https" },
                    running.addr(),
                    running.database()
                );
                graft_server::shutdown_signal().await;
                eprintln!("graft server: stopping");
                running.shutdown().await?;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
