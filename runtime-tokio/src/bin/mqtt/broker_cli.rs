//! `mqtt broker` (run the broker server) and `mqtt passwd` (write password file entries).

use std::io::IsTerminal;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use mqtt_session::broker::password::{DEFAULT_ITERATIONS, SALT_LEN, hash_entry, with_entry};
use mqtt_tokio::broker::{Broker, BrokerConfig, Durability};

/// Log line format.
#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Flags of `mqtt broker`; each overrides the same key of `--config`.
#[derive(Args)]
pub struct BrokerArgs {
    /// TOML configuration file (keys as the long flags, with `_`; TLS keys under `[tls]`).
    #[arg(short = 'c', long)]
    config: Option<PathBuf>,
    /// Listener URL, repeatable: mqtt://0.0.0.0:1883, mqtts://..., ws://...:8080/mqtt, wss://...
    #[arg(short = 'l', long = "listen")]
    listen: Vec<String>,
    /// Accept clients without a user name (default true).
    #[arg(long)]
    allow_anonymous: Option<bool>,
    /// mosquitto 2.0 password file.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// mosquitto ACL file.
    #[arg(long)]
    acl_file: Option<PathBuf>,
    /// Highest keep-alive in seconds (0: any), announced as Server Keep Alive at 5.0.
    #[arg(long)]
    max_keep_alive: Option<u16>,
    /// Largest packet accepted, in bytes.
    #[arg(long)]
    max_packet_size: Option<u32>,
    /// Open connections at once (0: no limit).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Seconds for the TLS / WebSocket handshake and CONNECT.
    #[arg(long)]
    connect_timeout: Option<u64>,
    /// QoS 1/2 publishes a client may have unacknowledged towards the broker.
    #[arg(long)]
    receive_maximum: Option<u16>,
    /// QoS 1/2 messages sent to a client unacknowledged at most.
    #[arg(long)]
    max_inflight: Option<u16>,
    /// Messages one session may hold.
    #[arg(long)]
    max_queued_messages: Option<usize>,
    /// Bytes one session may hold.
    #[arg(long)]
    max_queued_bytes: Option<usize>,
    /// Bytes all sessions together may hold.
    #[arg(long)]
    max_queued_bytes_total: Option<usize>,
    /// Milliseconds a publisher is held while a connected subscriber of its messages is
    /// more than half full (default 1000; 0: drop at the limits instead).
    #[arg(long)]
    backpressure_ms: Option<u32>,
    /// PUBLISH packets one connection may send per second, in bursts of a second's worth
    /// (default 0: no limit); past it the connection is read more slowly.
    #[arg(long)]
    max_publish_rate: Option<u32>,
    /// Highest topic alias accepted from clients (0: none).
    #[arg(long)]
    topic_alias_maximum: Option<u16>,
    /// Sibling cores the connections are split over by client id (default 1).
    #[arg(long)]
    shards: Option<u16>,
    /// Topic aliases used towards an MQTT 5 client, at most (within its own maximum;
    /// default 0: none).
    #[arg(long)]
    outgoing_topic_aliases: Option<u16>,
    /// Whether clients may publish retained messages (default true).
    #[arg(long)]
    retain_available: Option<bool>,
    /// Whether subscriptions may use + and # (default true).
    #[arg(long)]
    wildcard_subscription_available: Option<bool>,
    /// Whether $share/ subscriptions are allowed (default true).
    #[arg(long)]
    shared_subscription_available: Option<bool>,
    /// Address of the HTTP endpoint (/health, /livez, /readyz, /metrics).
    #[arg(long)]
    http_listen: Option<String>,
    /// Seconds between $SYS/broker/... updates (0: none).
    #[arg(long)]
    sys_interval: Option<u64>,
    /// TLS certificate chain (PEM) of the mqtts:// and wss:// listeners.
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// CA that client certificates are checked against.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Refuse TLS clients without a valid certificate.
    #[arg(long)]
    require_certificate: bool,
    /// Use the client certificate's common name as the user name.
    #[arg(long)]
    use_identity_as_username: bool,
    /// The highest QoS accepted and granted (0, 1 or 2; announced as Maximum QoS at 5.0).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    maximum_qos: Option<u8>,
    /// Response Information for MQTT 5 clients that ask for it.
    #[arg(long)]
    response_information: Option<String>,
    /// Directory of the durable store: sessions, queues and retained messages survive a
    /// restart (default durability: ack).
    #[arg(long)]
    persistence_dir: Option<PathBuf>,
    /// ack: PUBACK / PUBREC once on disk (fsync, shared by concurrent messages); relaxed:
    /// written in the background, at most --relaxed-delay-ms behind.
    #[arg(long, value_enum)]
    durability: Option<Durability>,
    /// With --durability relaxed: how far behind the disk may be, in milliseconds.
    #[arg(long)]
    relaxed_delay_ms: Option<u64>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

impl BrokerArgs {
    fn config(self) -> Result<BrokerConfig, String> {
        let mut c = match &self.config {
            Some(path) => BrokerConfig::from_file(path).map_err(|e| e.to_string())?,
            None => BrokerConfig::default(),
        };
        if !self.listen.is_empty() {
            c.listen = self.listen;
        }
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = v; })* };
        }
        set!(
            allow_anonymous,
            max_keep_alive,
            max_packet_size,
            max_connections,
            connect_timeout,
            receive_maximum,
            max_inflight,
            max_queued_messages,
            max_queued_bytes,
            max_queued_bytes_total,
            backpressure_ms,
            max_publish_rate,
            topic_alias_maximum,
            outgoing_topic_aliases,
            sys_interval,
            retain_available,
            wildcard_subscription_available,
            shared_subscription_available,
            relaxed_delay_ms,
            maximum_qos,
            shards
        );
        c.response_information = self.response_information.or(c.response_information);
        c.persistence_dir = self.persistence_dir.or(c.persistence_dir);
        c.durability = self.durability.or(c.durability);
        c.password_file = self.password_file.or(c.password_file);
        c.acl_file = self.acl_file.or(c.acl_file);
        c.http_listen = self.http_listen.or(c.http_listen);
        c.tls.cert_file = self.cert_file.or(c.tls.cert_file);
        c.tls.key_file = self.key_file.or(c.tls.key_file);
        c.tls.client_ca_file = self.client_ca_file.or(c.tls.client_ca_file);
        c.tls.require_certificate |= self.require_certificate;
        c.tls.use_identity_as_username |= self.use_identity_as_username;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs the broker until SIGTERM or Ctrl-C, then stops it gracefully (exit 0).
pub fn run_broker(args: BrokerArgs) -> ExitCode {
    init_logs(args.log_format);
    let threads = args.threads;
    let cfg = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mqtt broker: {e}");
            return ExitCode::from(2);
        }
    };
    raise_file_limit(cfg.max_connections);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mqtt broker: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let broker = match Broker::start(cfg).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("mqtt broker: {e}");
                return ExitCode::from(1);
            }
        };
        for url in broker.urls() {
            println!("listening on {url}");
        }
        if let Some(a) = broker.http_addr() {
            println!("http on http://{a}");
        }
        let _ = std::io::stdout().flush();
        wait_for_signal().await;
        tracing::info!("stopping");
        broker.stop().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Flags of `mqtt passwd`.
#[derive(Args)]
pub struct PasswdArgs {
    /// The password file (created when missing).
    file: PathBuf,
    /// The user whose entry is added or replaced.
    user: String,
    /// The password (batch mode, as mosquitto_passwd -b); otherwise read from standard input.
    #[arg(short = 'b', long = "password")]
    password: Option<String>,
    /// Remove the user instead.
    #[arg(short = 'D', long = "delete")]
    delete: bool,
}

/// Adds, replaces or deletes one user's entry of a mosquitto password file.
/// Raises the open-files limit towards what `max_connections` needs (to the hard limit when
/// it is 0, unlimited), since every connection is a file descriptor.
fn raise_file_limit(max_connections: usize) {
    // Listeners, the store, logs and accept bursts need some beyond the connections.
    let wanted = match max_connections {
        0 => u64::MAX,
        n => (n as u64).saturating_add(1024),
    };
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

pub fn run_passwd(args: PasswdArgs) -> ExitCode {
    match passwd(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mqtt passwd: {e}");
            ExitCode::from(1)
        }
    }
}

fn passwd(args: PasswdArgs) -> Result<(), String> {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", args.file.display())),
    };
    let out = if args.delete {
        let mut out = String::new();
        let mut found = false;
        for line in text.lines() {
            if line
                .split_once(':')
                .is_some_and(|(u, _)| u.trim() == args.user)
            {
                found = true;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if !found {
            return Err(format!("user {} not in {}", args.user, args.file.display()));
        }
        out
    } else {
        let password = match args.password {
            Some(p) => p,
            // At a terminal the password is read without echo; piped, as a line.
            None if std::io::stdin().is_terminal() => rpassword::prompt_password("Password: ")
                .map_err(|e| format!("reading the password: {e}"))?,
            None => {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| format!("reading the password: {e}"))?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            }
        };
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
        let entry = hash_entry(&args.user, password.as_bytes(), &salt, DEFAULT_ITERATIONS)
            .map_err(|e| format!("{e:?}"))?;
        with_entry(&text, &entry)
    };
    std::fs::write(&args.file, out).map_err(|e| format!("{}: {e}", args.file.display()))
}
