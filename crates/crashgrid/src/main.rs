//! The `crashgrid` command line.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use crashgrid::clock::SystemWallClock;
use crashgrid::config::ServeArgs;
use crashgrid::server::{serve, shutdown_signal};
use symbolicate::{CacheConfig, CrashEvent, SymCaches, SymbolStore, Symbolicator};

/// glibc's allocator spends a third of a loaded node's CPU in `malloc_consolidate` and chunk
/// unlinking (many threads, many short-lived strings); mimalloc does not (`benches/node.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "crashgrid",
    version,
    about = "Crash-report processing cluster for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: HTTP API, live statistics, dashboard.
    Serve {
        /// TOML file with the same keys as the flags (snake_case); flags and CRASHGRID_*
        /// variables win over it.
        #[arg(long, env = "CRASHGRID_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: Box<ServeArgs>,
    },
    /// Run a local demo: a node on a temporary data directory with generated debug files and
    /// demo traffic; prints the dashboard URL. Ctrl-C stops everything.
    Up {
        /// Port of the dashboard (falls back to a free port when taken).
        #[arg(long, default_value_t = crashgrid::config::DEFAULT_HTTP_PORT)]
        port: u16,
        /// Demo crashes per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Node processes (file lease, static discovery); 1 runs a single node in-process.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Print a node's view of the cluster (members, leader, epoch, lease, transitions).
    Status {
        /// Base URL of any node, e.g. http://127.0.0.1:8080
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
    },
    /// Symbolicate one crash event file and print it.
    Symbolicate {
        /// The event (JSON, see docs/event-format.md).
        event: PathBuf,
        /// Symbol store directory.
        #[arg(long)]
        store: PathBuf,
        /// SymCache directory [default: <store>/.symcache]
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Print JSON (one line: large events print several times faster than indented)
        /// instead of text.
        #[arg(long)]
        json: bool,
        /// With --json: indent the JSON for reading.
        #[arg(long, requires = "json")]
        pretty: bool,
    },
    /// Manage the symbol store.
    Symbols {
        #[command(subcommand)]
        command: SymbolsCommand,
    },
    /// Send realistic crash traffic to a node.
    Loadgen {
        /// Base URL of a node, e.g. http://127.0.0.1:8080 (with --nats: where the debug files
        /// are uploaded first, if given)
        #[arg(long, required_unless_present = "nats")]
        url: Option<String>,
        /// Events per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Events per request.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Parallel requests.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Random seed (same seed, same traffic).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Upload the demo debug files first (`--upload false` to skip).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        upload: bool,
        /// Compress request bodies with gzip (`--gzip false` to send plain JSON).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        gzip: bool,
        /// Publish to NATS JetStream at this URL (e.g. nats://127.0.0.1:4222) instead of
        /// POSTing; `--batch` events per message.
        #[arg(long)]
        nats: Option<String>,
        /// Subject published to (with --nats).
        #[arg(long, default_value = "crashes.loadgen")]
        nats_subject: String,
        /// Stream that must store the messages (with --nats).
        #[arg(long, default_value = "CRASHES")]
        nats_stream: String,
        /// Publishes awaiting their ack at once (with --nats).
        #[arg(long, default_value_t = 256)]
        nats_in_flight: usize,
    },
}

#[derive(Subcommand)]
enum SymbolsCommand {
    /// Import debug files into a store (reads their ids, refuses what it cannot parse).
    Add {
        /// Debug files (ELF, Mach-O, dSYM, PE, PDB, Breakpad .sym).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Symbol store directory.
        #[arg(long)]
        store: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRASHGRID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Symbolicate {
            event,
            store,
            cache_dir,
            json,
            pretty,
        } => symbolicate_file(&event, store, cache_dir, json, pretty),
        Command::Symbols {
            command: SymbolsCommand::Add { files, store },
        } => symbols_add(&files, store),
        Command::Serve { config, args } => {
            let args = match config {
                Some(path) => args.or(ServeArgs::from_toml_file(&path)?),
                None => *args,
            };
            let settings = args.resolve().context("invalid configuration")?;
            runtime()?.block_on(async move {
                let listener = crashgrid::http::bind(settings.listen)
                    .with_context(|| format!("binding {}", settings.listen))?;
                serve(
                    settings,
                    listener,
                    Arc::new(SystemWallClock),
                    shutdown_signal(),
                    |_| {},
                )
                .await
            })
        }
        Command::Up {
            port,
            rate,
            duration,
            nodes,
        } => runtime()?.block_on(crashgrid::up::run(
            port,
            rate,
            duration.map(Duration::from_secs),
            nodes,
        )),
        Command::Status { url } => {
            let text = runtime()?.block_on(crashgrid::status::fetch(&url))?;
            print!("{text}");
            Ok(())
        }
        Command::Loadgen {
            url,
            rate,
            duration,
            batch,
            concurrency,
            seed,
            upload,
            gzip,
            nats,
            nats_subject,
            nats_stream,
            nats_in_flight,
        } => {
            if let Some(nats) = nats {
                let cfg = crashgrid::loadgen_nats::NatsLoadgenConfig {
                    url: nats,
                    subject: nats_subject,
                    stream: nats_stream,
                    rate,
                    duration: Duration::from_secs(duration),
                    batch,
                    in_flight: nats_in_flight,
                    seed,
                };
                let report = runtime()?.block_on(async move {
                    if let (Some(url), true) = (url, upload) {
                        let (ok, failed) =
                            crashgrid::loadgen::upload_debug_files(&url, seed, concurrency).await?;
                        eprintln!("loadgen: uploaded {ok} debug files to {url} ({failed} failed)");
                    }
                    crashgrid::loadgen_nats::run(cfg, shutdown_signal()).await
                })?;
                println!("{report}");
                return Ok(());
            }
            let url = url.context("--url is required without --nats")?;
            let cfg = crashgrid::loadgen::LoadgenConfig {
                url,
                rate,
                duration: Duration::from_secs(duration),
                batch,
                concurrency,
                seed,
                upload,
                gzip,
            };
            let report = runtime()?.block_on(crashgrid::loadgen::run(cfg, shutdown_signal()))?;
            println!("{report}");
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn symbols_add(files: &[PathBuf], store: PathBuf) -> anyhow::Result<()> {
    let store =
        SymbolStore::open(&store).with_context(|| format!("opening store {}", store.display()))?;
    let mut refused = 0;
    for file in files {
        match store.add_file(file) {
            Ok(stored) => {
                for s in stored {
                    println!(
                        "added {} (code id {}) {} {} {}{} -> {}",
                        s.object.debug_id,
                        s.object.code_id.as_deref().unwrap_or("none"),
                        s.object.format,
                        s.object.arch,
                        s.object.kind,
                        if s.object.has_debug_info {
                            " (debug info)"
                        } else {
                            " (symbols only)"
                        },
                        s.path
                    );
                }
            }
            Err(e) => {
                refused += 1;
                eprintln!("refused {e}");
            }
        }
    }
    if refused > 0 {
        bail!("{refused} of {} files refused", files.len());
    }
    Ok(())
}

fn symbolicate_file(
    event: &PathBuf,
    store: PathBuf,
    cache_dir: Option<PathBuf>,
    json: bool,
    pretty: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read(event).with_context(|| format!("reading {}", event.display()))?;
    let event = CrashEvent::from_json(&text)?;
    // Reading a store that is not there is a mistake (a typo, a missing mount), not an
    // empty store: opening would create it and every frame would be `missing_symbol`.
    anyhow::ensure!(
        store.is_dir(),
        "the symbol store {} does not exist (create it with `crashgrid symbols add`)",
        store.display()
    );
    let cache_dir = cache_dir.unwrap_or_else(|| store.join(".symcache"));
    let store =
        SymbolStore::open(&store).with_context(|| format!("opening store {}", store.display()))?;
    let symbolicator =
        Symbolicator::new(Arc::new(SymCaches::new(store, CacheConfig::new(cache_dir))));
    let crash = symbolicator.symbolicate(&event);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if pretty {
        serde_json::to_writer_pretty(&mut out, &crash)?;
        writeln!(out)?;
    } else if json {
        serde_json::to_writer(&mut out, &crash)?;
        writeln!(out)?;
    } else {
        out.write_all(crash.to_text().as_bytes())?;
    }
    out.flush().context("writing the output")?;
    Ok(())
}
