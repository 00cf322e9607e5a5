//! `shmq-bridge`: carries a shmq pipeline, channel or service across hosts over NATS.

use clap::{Args, Parser, Subcommand};
use shmq_bridge::{pipeline, pubsub, service, BridgeError, Common};
use std::path::PathBuf;
use std::time::Duration;

/// Carries a shmq pipeline, channel or service across hosts over NATS.
///
/// Run one bridge per direction on each host: `pipeline-out` on the host whose pipeline is
/// read, `pipeline-in` on the host whose pipeline is fed, and so on. Stops cleanly on SIGINT
/// or SIGTERM. Logs go to stderr (filter with SHMQ_BRIDGE_LOG, e.g. `debug`).
#[derive(Parser, Debug)]
#[command(name = "shmq-bridge", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct CommonArgs {
    /// NATS server URL (several: comma-separated).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Print counter lines (`stats <command> name=value …`) to stdout periodically and at exit.
    #[arg(long)]
    stats: bool,
    /// Seconds between counter lines (and progress logs).
    #[arg(long, default_value_t = 5.0)]
    stats_interval: f64,
}

#[derive(Args, Debug, Clone)]
struct StreamArgs {
    /// JetStream stream name (created as a work-queue stream if missing).
    #[arg(long)]
    stream: String,
    /// Subject of the stream's messages [default: shmq.pipeline.<stream>].
    #[arg(long)]
    subject: Option<String>,
    /// Seconds within which JetStream drops a re-published message id (the longest a killed
    /// pipeline-out may stay down without causing duplicates).
    #[arg(long, default_value_t = 120)]
    duplicate_window: u64,
}

#[derive(Args, Debug, Clone)]
struct PubSubArgs {
    /// The local channel file.
    file: PathBuf,
    /// Subject prefix the channel's topics are carried under.
    #[arg(long)]
    subject_prefix: String,
    /// Carry only topics starting with this prefix (repeatable; default every topic).
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// This side's origin id [default: <hostname>:<canonical channel path>].
    #[arg(long)]
    origin: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct ServiceArgs {
    /// The local service file.
    file: PathBuf,
    /// NATS subject of the requests.
    #[arg(long)]
    subject: String,
    /// Requests in flight at once (service-out: local clients it attaches).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds a request may take before it is answered "no reply".
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// service-out: NATS queue group shared by the bridges serving the subject.
    #[arg(long, default_value = "shmq-bridge")]
    queue_group: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume a local pipeline and publish each message to a JetStream work-queue stream;
    /// a local message is acknowledged only after JetStream acknowledged it.
    PipelineOut {
        /// The local pipeline file.
        file: PathBuf,
        #[command(flatten)]
        stream: StreamArgs,
        /// Messages in flight (published, not yet acknowledged by JetStream).
        #[arg(long, default_value_t = 256)]
        window: usize,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Pull from a JetStream stream as a durable consumer and send into a local pipeline;
    /// JetStream is acknowledged only after the local send committed.
    PipelineIn {
        /// The local pipeline file.
        file: PathBuf,
        #[command(flatten)]
        stream: StreamArgs,
        /// Durable consumer name (bridges sharing it share the messages).
        #[arg(long, default_value = "shmq-bridge")]
        consumer: String,
        /// Messages per fetch.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Seconds JetStream waits for an acknowledgement before delivering a message again.
        #[arg(long, default_value_t = 10.0)]
        ack_wait: f64,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Republish a local channel's (matching) topics as NATS subjects.
    PubsubOut {
        #[command(flatten)]
        args: PubSubArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Subscribe to NATS subjects under a prefix and publish them on a local channel.
    PubsubIn {
        #[command(flatten)]
        args: PubSubArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Serve NATS requests by forwarding them to a local service as its client.
    ServiceOut {
        #[command(flatten)]
        args: ServiceArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Serve a local service by forwarding its requests to NATS responders.
    ServiceIn {
        #[command(flatten)]
        args: ServiceArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// A positive number of seconds given as `option`.
fn seconds(value: f64, option: &str) -> Result<Duration, BridgeError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            BridgeError::Config(format!("{option} must be a positive number of seconds"))
        })
}

impl CommonArgs {
    fn common(&self) -> Result<Common, BridgeError> {
        let interval = seconds(self.stats_interval, "--stats-interval")?;
        Ok(Common {
            nats: self.nats.clone(),
            stats: self.stats,
            stats_interval: interval,
        })
    }
}

impl StreamArgs {
    fn spec(&self) -> pipeline::StreamSpec {
        pipeline::StreamSpec {
            name: self.stream.clone(),
            subject: self.subject.clone(),
            duplicate_window: Duration::from_secs(self.duplicate_window),
        }
    }
}

impl PubSubArgs {
    fn config(&self) -> pubsub::Config {
        pubsub::Config {
            file: self.file.clone(),
            subject_prefix: self.subject_prefix.clone(),
            topics: self.topics.iter().map(|t| t.as_bytes().to_vec()).collect(),
            origin: self.origin.clone(),
        }
    }
}

impl ServiceArgs {
    fn config(&self) -> Result<service::Config, BridgeError> {
        let timeout = seconds(self.timeout, "--timeout")?;
        Ok(service::Config {
            file: self.file.clone(),
            subject: self.subject.clone(),
            concurrency: self.concurrency,
            timeout,
            queue_group: self.queue_group.clone(),
        })
    }
}

fn run(command: Command) -> Result<(), BridgeError> {
    match command {
        Command::PipelineOut {
            file,
            stream,
            window,
            common,
        } => {
            let common = common.common()?;
            let config = pipeline::OutConfig {
                file,
                stream: stream.spec(),
                window,
            };
            shmq_bridge::run(&common, |rt, stop| {
                pipeline::run_out(rt, stop, &common, &config)
            })
        }
        Command::PipelineIn {
            file,
            stream,
            consumer,
            batch,
            ack_wait,
            common,
        } => {
            let common = common.common()?;
            let config = pipeline::InConfig {
                file,
                stream: stream.spec(),
                consumer,
                batch,
                ack_wait: seconds(ack_wait, "--ack-wait")?,
            };
            shmq_bridge::run(&common, |rt, stop| {
                pipeline::run_in(rt, stop, &common, &config)
            })
        }
        Command::PubsubOut { args, common } => {
            let (common, config) = (common.common()?, args.config());
            shmq_bridge::run(&common, |rt, stop| {
                pubsub::run_out(rt, stop, &common, &config)
            })
        }
        Command::PubsubIn { args, common } => {
            let (common, config) = (common.common()?, args.config());
            shmq_bridge::run(&common, |rt, stop| {
                pubsub::run_in(rt, stop, &common, &config)
            })
        }
        Command::ServiceOut { args, common } => {
            let (common, config) = (common.common()?, args.config()?);
            shmq_bridge::run(&common, |rt, stop| {
                service::run_out(rt, stop, &common, &config)
            })
        }
        Command::ServiceIn { args, common } => {
            let (common, config) = (common.common()?, args.config()?);
            shmq_bridge::run(&common, |rt, stop| {
                service::run_in(rt, stop, &common, &config)
            })
        }
    }
}

fn main() {
    // A panic must not unwind: unwinding would drop (and so acknowledge) local messages the
    // bridge holds but has not passed on. Exiting at once leaves them to be delivered again.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("shmq-bridge: internal error: {info}");
        std::process::exit(101);
    }));
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHMQ_BRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli.command) {
        eprintln!("shmq-bridge: {e}");
        std::process::exit(1);
    }
}
