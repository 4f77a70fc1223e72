//! `mqtt`: publish and subscribe from the command line, with the flags of `mosquitto_pub` and
//! `mosquitto_sub`, and load-test a broker (`mqtt bench`). Run `mqtt --help`, `mqtt pub
//! --help`, `mqtt sub --help`, `mqtt bench --help`.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use mqtt_tokio::{Client, ConnectError, Event, Options, QoS, Scheme};
use tokio::sync::mpsc;

#[path = "mqtt/broker_cli.rs"]
mod broker_cli;

const AFTER_HELP: &str = "\
Exit codes:
  0   success
  1   cannot reach the broker, connection lost, or a local error (unreadable file)
  2   bad arguments or options
  3   the broker refused a publish or a subscription
  5   the broker refused the connection (bad user name or password, not authorized, ...)
  27  `sub -W`: the timeout passed before -C messages arrived

Settings come from the defaults, then --config FILE (TOML), then MQTT_* environment variables
(MQTT_URL, MQTT_CLIENT_ID, MQTT_USERNAME, MQTT_PASSWORD, MQTT_VERSION, MQTT_KEEP_ALIVE,
MQTT_CA_FILE, MQTT_CERT_FILE, MQTT_KEY_FILE, ...), then the flags.";

/// Exit code: the broker cannot be reached, or the connection was lost.
const EXIT_UNREACHABLE: u8 = 1;
/// Exit code: bad arguments (the same as clap's).
const EXIT_USAGE: u8 = 2;
/// Exit code: a publish or subscription was refused.
const EXIT_REFUSED_REQUEST: u8 = 3;
/// Exit code: CONNACK refused the connection.
const EXIT_REFUSED: u8 = 5;
/// Exit code: `sub -W` timed out (as mosquitto_sub).
const EXIT_TIMEOUT: u8 = 27;

/// Publish and subscribe to an MQTT broker (flags as mosquitto_pub / mosquitto_sub), and
/// load-test it (`mqtt bench`).
#[derive(Parser)]
#[command(name = "mqtt", version, disable_help_flag = true, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print help.
    #[arg(long, action = ArgAction::Help, global = true)]
    help: Option<bool>,
}

#[derive(Subcommand)]
enum Command {
    /// Publish messages (like mosquitto_pub).
    #[command(disable_help_flag = true, after_help = AFTER_HELP)]
    Pub(PubArgs),
    /// Subscribe and print messages (like mosquitto_sub).
    #[command(disable_help_flag = true, after_help = AFTER_HELP)]
    Sub(SubArgs),
    /// Run the MQTT broker server (see `mqtt broker --help`).
    Broker(broker_cli::BrokerArgs),
    /// Add, replace or delete a user of a mosquitto password file.
    Passwd(broker_cli::PasswdArgs),
    /// Load-test a broker: publishers, subscribers, connections; rates, losses, latency.
    #[cfg(feature = "bench")]
    #[command(disable_help_flag = true, after_help = BENCH_AFTER_HELP)]
    Bench(BenchCmd),
}

#[cfg(feature = "bench")]
const BENCH_AFTER_HELP: &str = "\
Examples:
  mqtt bench pub -c 10 --count 10000 -q 1          10 publishers, 10 000 messages each
  mqtt bench p2p -c 100 --rate 100/s --duration 30s  100 pairs at a fixed rate: honest latency
  mqtt bench fan-out -c 1000 --rate 10 --count 100   one publisher, 1000 subscribers
  mqtt bench conn -c 10000 --rate 2000 --duration 10s
  mqtt bench sub -c 4 --count 1000 & mqtt bench pub -c 4 --count 250   two processes

Exit codes: 0 all went well; 1 a connection failed or was lost, or messages were lost at QoS 1/2;
2 bad arguments; 5 the broker refused the connection. The summary is printed in every case.";

/// `mqtt bench`.
#[cfg(feature = "bench")]
#[derive(Args)]
struct BenchCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(flatten)]
    bench: mqtt_tokio::bench::BenchArgs,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

/// Connection flags shared by `pub` and `sub`.
#[derive(Args)]
struct Conn {
    /// Broker host.
    #[arg(short = 'h', long = "host", conflicts_with = "url")]
    host: Option<String>,
    /// Broker port (default 1883, 8883 with TLS).
    #[arg(short = 'p', long = "port", conflicts_with = "url")]
    port: Option<u16>,
    /// Broker URL: mqtt(s)://[user[:password]@]host[:port][/topic] (also ws://, wss://).
    #[arg(short = 'L', long = "url")]
    url: Option<String>,
    /// TOML file of client options (see the mqtt_tokio docs for the keys).
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Client identifier (default: mqtt-pub-PID / mqtt-sub-PID; bench: the prefix of its ids).
    #[arg(short = 'i', long = "id")]
    id: Option<String>,
    /// User name.
    #[arg(short = 'u', long = "username")]
    username: Option<String>,
    /// Password.
    #[arg(short = 'P', long = "pw")]
    password: Option<String>,
    /// Keep-alive in seconds.
    #[arg(short = 'k', long = "keepalive")]
    keepalive: Option<u64>,
    /// PEM file of CA certificates to trust; turns TLS on.
    #[arg(long = "cafile", value_name = "FILE")]
    cafile: Option<PathBuf>,
    /// PEM client certificate (mutual TLS); turns TLS on.
    #[arg(long = "cert", value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM client key (mutual TLS).
    #[arg(long = "key", value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Protocol version: 311 (3.1.1) or 5.
    #[arg(short = 'V', long = "protocol-version", value_name = "VERSION")]
    version: Option<String>,
    /// Print debug information to stderr.
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    /// How stderr is written: `text`, or `json` (one object per line, with the client id
    /// and broker in each; logs at info level unless RUST_LOG or -d say otherwise).
    #[arg(long = "log-format", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The format of what the tool writes to stderr.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The JSON mode, and the client id and broker every line names (set once options are known).
static JSON_LOGS: OnceLock<()> = OnceLock::new();
static IDENTITY: OnceLock<(String, String)> = OnceLock::new();

/// Tells the user something on stderr: a line of text, or an info event in JSON mode.
fn say(msg: &str) {
    tell(tracing::Level::INFO, msg);
}

/// Reports the error the tool exits with.
fn fail(msg: &str) {
    tell(tracing::Level::ERROR, msg);
}

fn tell(level: tracing::Level, msg: &str) {
    if JSON_LOGS.get().is_none() {
        eprintln!("mqtt: {msg}");
        return;
    }
    let _span = identity_span().entered();
    if level == tracing::Level::ERROR {
        tracing::error!("{msg}");
    } else {
        tracing::info!("{msg}");
    }
}

fn identity_span() -> tracing::Span {
    match IDENTITY.get() {
        Some((client_id, broker)) => {
            tracing::info_span!("mqtt", client_id = %client_id, broker = %broker)
        }
        None => tracing::info_span!("mqtt"),
    }
}

/// `mqtt pub`.
#[derive(Args)]
struct PubArgs {
    #[command(flatten)]
    conn: Conn,
    /// Serve /health, /livez, /readyz and /metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long = "health", value_name = "ADDR")]
    health: Option<SocketAddr>,
    /// Topic to publish to.
    #[arg(short = 't', long = "topic")]
    topic: Option<String>,
    /// The message.
    #[arg(short = 'm', long = "message", group = "source")]
    message: Option<String>,
    /// Send the whole file as one message.
    #[arg(short = 'f', long = "file", group = "source", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Send each line of stdin as a message (blank lines are skipped).
    #[arg(short = 'l', long = "stdin-line", group = "source")]
    lines: bool,
    /// Send the whole of stdin as one message.
    #[arg(short = 's', long = "stdin-file", group = "source")]
    stdin: bool,
    /// Send an empty (null) message.
    #[arg(short = 'n', long = "null-message", group = "source")]
    null: bool,
    /// Quality of service: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    retain: bool,
    /// Send the message this many times (not with -l).
    #[arg(long = "count", default_value_t = 1, conflicts_with = "lines")]
    count: u64,
    /// Messages per second (e.g. 100 or 100/s); unpaced when not given.
    #[arg(long = "rate", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Exit (code 1) when the connection stays lost this long (e.g. 30s, 500ms; 0: at the
    /// first loss). Without it, a lost connection is re-made with back-off and every message
    /// not yet acknowledged is kept and sent.
    #[arg(long = "give-up-after", value_name = "DURATION", value_parser = parse_duration)]
    give_up_after: Option<Duration>,
    /// Keep unsent and unacknowledged messages in DIR (synced before each is taken), so a
    /// killed `mqtt pub` started again with the same -i resends them. Needs -i.
    #[arg(long = "store", value_name = "DIR", requires = "id")]
    store: Option<PathBuf>,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

/// `mqtt sub`.
#[derive(Args)]
struct SubArgs {
    #[command(flatten)]
    conn: Conn,
    /// Serve /health, /livez, /readyz and /metrics on this address (e.g. 127.0.0.1:9100).
    #[arg(long = "health", value_name = "ADDR")]
    health: Option<SocketAddr>,
    /// Topic filter to subscribe to (repeat for more).
    #[arg(short = 't', long = "topic")]
    topics: Vec<String>,
    /// Quality of service of the subscriptions: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Print `topic payload` instead of the payload alone.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', value_name = "COUNT")]
    count: Option<u64>,
    /// Keep the session (clean start off): messages published while away arrive on the next
    /// run. Needs -i.
    #[arg(short = 'c', long = "disable-clean-session", requires = "id")]
    persistent: bool,
    /// Session expiry in seconds with -c (MQTT 5; default: never).
    #[arg(short = 'x', long = "session-expiry", requires = "persistent")]
    session_expiry: Option<u32>,
    /// Exit (code 27) after this many seconds.
    #[arg(short = 'W', value_name = "SECS")]
    timeout: Option<u64>,
    /// Keep received QoS 2 ids in DIR, and acknowledge each message only after it is
    /// printed: with -c, a killed `mqtt sub` started again prints every message at least
    /// once and a QoS 2 message twice only if it was being printed at the kill (-d says so).
    #[arg(long = "store", value_name = "DIR", requires = "persistent")]
    store: Option<PathBuf>,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
}

/// An error to print, with its exit code.
struct Fail(u8, String);

impl Fail {
    fn usage(msg: impl Into<String>) -> Fail {
        Fail(EXIT_USAGE, msg.into())
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate (messages per second, e.g. 100 or 100/s)"
        )),
    }
}

/// A duration: `30s`, `500ms`, `2m`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (n, unit) = match t.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: the unit is ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// The store file of client `id` in `dir`.
fn store_file(dir: &std::path::Path, id: &str) -> PathBuf {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.redb"))
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or(QoS::AtMostOnce)
}

/// Splits mosquitto's URL form `scheme://authority/topic` into the broker URL and the topic.
fn split_url(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let is_ws = matches!(scheme.to_ascii_lowercase().as_str(), "ws" | "wss");
    match rest.find('/') {
        Some(i) if !is_ws => {
            let topic = &rest[i + 1..];
            let base = format!("{scheme}://{}", &rest[..i]);
            (base, (!topic.is_empty()).then(|| topic.to_string()))
        }
        _ => (url.to_string(), None),
    }
}

/// Options from the defaults, the config file, the environment and the flags; the topic the
/// URL named, if any.
fn options(conn: &Conn, role: &str) -> Result<(Options, Option<String>), Fail> {
    let mut o = mqtt_tokio::load_options_unvalidated(conn.config.as_deref())
        .map_err(|e| Fail::usage(e.0))?;
    let mut url_topic = None;
    if let Some(url) = &conn.url {
        let (base, topic) = split_url(url);
        o.broker = base
            .parse()
            .map_err(|e: mqtt_tokio::OptionsError| Fail::usage(e.0))?;
        url_topic = topic;
    }
    let tls_files = conn.cafile.is_some() || conn.cert.is_some();
    if tls_files && o.broker.scheme == Scheme::Tcp {
        o.broker.scheme = Scheme::Tls;
        if conn.port.is_none() && o.broker.port == Scheme::Tcp.default_port() {
            o.broker.port = Scheme::Tls.default_port();
        }
    }
    if let Some(h) = &conn.host {
        o.broker.host = h.clone();
    }
    if let Some(p) = conn.port {
        o.broker.port = p;
    }
    if let Some(id) = &conn.id {
        o.client_id = id.clone();
    }
    if o.client_id.is_empty() {
        o.client_id = format!("mqtt-{role}-{}", std::process::id());
    }
    if let Some(u) = &conn.username {
        o.username = Some(u.clone());
    }
    if let Some(p) = &conn.password {
        o.password = Some(p.clone());
    }
    if let Some(k) = conn.keepalive {
        o.keep_alive = Duration::from_secs(k);
    }
    if let Some(f) = &conn.cafile {
        o.tls.ca_file = Some(f.clone());
    }
    if let (Some(c), Some(k)) = (&conn.cert, &conn.key) {
        o.tls.cert_file = Some(c.clone());
        o.tls.key_file = Some(k.clone());
    }
    if let Some(v) = &conn.version {
        let v = v.trim_start_matches("mqttv");
        o.version =
            mqtt_client::options::parse_version(v).map_err(|e| Fail::usage(format!("-V: {e}")))?;
    }
    let _ = IDENTITY.set((o.client_id.clone(), o.broker.to_string()));
    // A command-line tool reports a failed first connection instead of retrying for long.
    o.backoff_min = o.backoff_min.min(Duration::from_millis(500));
    o.backoff_max = o.backoff_max.min(Duration::from_secs(5)).max(o.backoff_min);
    Ok((o, url_topic))
}

fn init_logging(conn: &Conn) {
    let json = conn.log_format == LogFormat::Json;
    let filter = if conn.debug {
        tracing_subscriber::EnvFilter::new("debug")
    } else if let Ok(f) = tracing_subscriber::EnvFilter::try_from_default_env() {
        f
    } else if json {
        tracing_subscriber::EnvFilter::new("info")
    } else {
        return;
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = JSON_LOGS.set(());
        let _ = builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Starts the client and waits for the broker's answer to the first CONNECT.
async fn connect(
    options: Options,
    health: Option<SocketAddr>,
) -> Result<(Client, mpsc::UnboundedReceiver<Event>), Fail> {
    let wait = options.connect_timeout + options.response_timeout + Duration::from_secs(1);
    let (client, mut driver) = Client::new(options).map_err(|e| Fail::usage(e.to_string()))?;
    let events = driver.events();
    tokio::spawn(driver.run());
    if let Some(addr) = health {
        // Listening before the first CONNECT is answered, so a probe sees the attempt fail.
        let bound = client
            .serve_health(addr)
            .await
            .map_err(|e| Fail(EXIT_UNREACHABLE, format!("--health {addr}: {e}")))?;
        say(&format!("health endpoint on http://{bound}/health"));
    }
    match client.wait_connected(wait).await {
        Ok(()) => Ok((client, events)),
        Err(e @ ConnectError::Refused(_)) => Err(Fail(EXIT_REFUSED, e.to_string())),
        Err(e @ ConnectError::Unreachable(_)) => Err(Fail(EXIT_UNREACHABLE, e.to_string())),
        Err(ConnectError::Timeout) => Err(Fail(
            EXIT_UNREACHABLE,
            format!("cannot reach the broker: no answer within {wait:?}"),
        )),
        Err(e) => Err(Fail(EXIT_UNREACHABLE, format!("cannot connect: {e}"))),
    }
}

/// Where `pub` takes its messages from.
enum Source {
    /// One payload, sent `count` times.
    Fixed(Vec<u8>),
    /// Lines of stdin.
    Lines(mpsc::Receiver<Vec<u8>>),
}

/// Reads stdin lines on a thread (stdin is blocking), skipping blank ones.
fn stdin_lines() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(1024);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match input.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while matches!(line.last(), Some(b'\n' | b'\r')) {
                        line.pop();
                    }
                    if !line.is_empty() && tx.blocking_send(line.clone()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

async fn run_pub(args: PubArgs) -> Result<(), Fail> {
    init_logging(&args.conn);
    let (mut options, url_topic) = options(&args.conn, "pub")?;
    if let Some(dir) = &args.store {
        // Resending with the same packet ids needs the broker to keep the session.
        let file = store_file(dir, &options.client_id);
        options = options
            .persistent_session(Duration::from_secs(u64::from(u32::MAX)))
            .store(file);
    }
    let topic = args
        .topic
        .clone()
        .or(url_topic)
        .ok_or_else(|| Fail::usage("a topic is needed: -t TOPIC (or -L URL/TOPIC)"))?;
    mqtt_proto::TopicName::new(&topic).map_err(|e| Fail::usage(format!("topic {topic:?}: {e}")))?;
    let mut source = if let Some(m) = &args.message {
        Source::Fixed(m.clone().into_bytes())
    } else if let Some(f) = &args.file {
        let data = std::fs::read(f).map_err(|e| {
            Fail(
                EXIT_UNREACHABLE,
                format!("cannot read {}: {e}", f.display()),
            )
        })?;
        Source::Fixed(data)
    } else if args.null {
        Source::Fixed(Vec::new())
    } else if args.stdin {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)
            .map_err(|e| Fail(EXIT_UNREACHABLE, format!("cannot read stdin: {e}")))?;
        Source::Fixed(data)
    } else if args.lines {
        Source::Lines(stdin_lines())
    } else {
        return Err(Fail::usage(
            "say what to publish: -m MESSAGE, -f FILE, -l, -s or -n",
        ));
    };
    let debug = args.conn.debug;
    let (client, mut events) = connect(options, args.health).await?;
    if debug {
        say(&format!("connected to {}", client.options().broker));
    }
    // Deliveries are awaited in order on their own task, so publishing never waits for acks
    // beyond the queue's and the inflight window's limits.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<mqtt_tokio::Delivery>();
    let acks = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, None);
        while let Some(d) = done_rx.recv().await {
            match d.await {
                Ok(_) => ok += 1,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        (ok, failed)
    });
    let qos = qos(args.qos);
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    let publishing = async {
        loop {
            let payload = match &mut source {
                Source::Fixed(p) if sent < args.count => p.clone(),
                Source::Fixed(_) => break,
                Source::Lines(rx) => match rx.recv().await {
                    Some(line) => line,
                    None => break,
                },
            };
            if let Some(rate) = args.rate {
                let at = start + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(at).await;
            }
            let delivery = client
                .publish(&topic, &payload, qos, args.retain)
                .await
                .map_err(|e| Fail(EXIT_REFUSED_REQUEST, format!("cannot publish: {e}")))?;
            sent += 1;
            let _ = done_tx.send(delivery);
        }
        drop(done_tx);
        acks.await
            .map_err(|e| Fail(EXIT_UNREACHABLE, format!("internal error: {e}")))
    };
    // A lost connection is re-made by the client, which keeps what is not acknowledged;
    // only --give-up-after ends the run when it stays lost.
    let give_up = args.give_up_after;
    let lost = async {
        let mut down: Option<(tokio::time::Instant, String)> = None;
        loop {
            let limit = match (&down, give_up) {
                (Some((since, _)), Some(g)) => Some(*since + g),
                _ => None,
            };
            let ev = match limit {
                Some(at) => match tokio::time::timeout_at(at, events.recv()).await {
                    Ok(ev) => ev,
                    Err(_) => return down.map(|d| d.1).unwrap_or_default(),
                },
                None => events.recv().await,
            };
            match ev {
                Some(Event::Disconnected(e)) => {
                    if give_up == Some(Duration::ZERO) {
                        return e.to_string();
                    }
                    if debug {
                        say(&format!("connection lost ({e}); reconnecting"));
                    }
                    down.get_or_insert((tokio::time::Instant::now(), e.to_string()));
                }
                Some(Event::Connected { .. }) => down = None,
                Some(_) => {}
                None => return "the client stopped".to_string(),
            }
        }
    };
    let (ok, failed) = tokio::select! {
        r = publishing => r?,
        e = lost => return Err(Fail(EXIT_UNREACHABLE, format!("connection lost: {e}"))),
    };
    client.shutdown(Duration::from_secs(5)).await;
    if debug {
        say(&format!("{ok} message(s) delivered"));
    }
    match failed {
        Some(e) => Err(Fail(
            EXIT_REFUSED_REQUEST,
            format!("a message was not delivered: {e}"),
        )),
        None => Ok(()),
    }
}

async fn run_sub(args: SubArgs) -> Result<(), Fail> {
    init_logging(&args.conn);
    let (mut options, url_topic) = options(&args.conn, "sub")?;
    let mut filters = args.topics.clone();
    filters.extend(url_topic);
    if filters.is_empty() {
        return Err(Fail::usage(
            "a topic filter is needed: -t FILTER (or -L URL/FILTER)",
        ));
    }
    if args.persistent {
        let expiry = args.session_expiry.unwrap_or(u32::MAX);
        options = options.persistent_session(Duration::from_secs(u64::from(expiry)));
    }
    if let Some(dir) = &args.store {
        // Printed, then acknowledged: a kill between the two prints it again on restart.
        let file = store_file(dir, &options.client_id);
        options = options.store(file).ack_mode(mqtt_tokio::AckMode::Manual);
    }
    let manual = args.store.is_some();
    let debug = args.conn.debug;
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let work = async {
        let (client, mut events) = connect(options, args.health).await?;
        if debug {
            say(&format!("connected to {}", client.options().broker));
        }
        let q = qos(args.qos);
        let wanted: Vec<(&str, QoS)> = filters.iter().map(|f| (f.as_str(), q)).collect();
        let sub = client.subscribe_many(&wanted);
        // Messages of a resumed session may come before the SUBACK: keep them.
        let mut early = Vec::new();
        tokio::pin!(sub);
        let codes = loop {
            tokio::select! {
                codes = &mut sub => break codes,
                ev = events.recv() => match ev {
                    Some(Event::Message(m)) => early.push(m),
                    Some(_) => {}
                    None => return Err(Fail(EXIT_UNREACHABLE, "the client stopped".into())),
                },
            }
        };
        let codes = codes.map_err(|e| match e {
            mqtt_tokio::ClientError::Invalid(e) => Fail::usage(e),
            e => Fail(EXIT_REFUSED_REQUEST, format!("cannot subscribe: {e}")),
        })?;
        for (filter, code) in filters.iter().zip(&codes) {
            if code.is_error() {
                return Err(Fail(
                    EXIT_REFUSED_REQUEST,
                    format!("subscription to {filter:?} refused: {code}"),
                ));
            }
            if debug {
                say(&format!("subscribed to {filter} ({code})"));
            }
        }
        let mut seen = 0u64;
        let stdout = std::io::stdout();
        let print = |m: &mqtt_tokio::Message| -> Result<(), Fail> {
            let mut out = stdout.lock();
            let r = if args.verbose {
                out.write_all(m.topic.as_bytes())
                    .and_then(|_| out.write_all(b" "))
            } else {
                Ok(())
            };
            r.and_then(|_| out.write_all(&m.payload))
                .and_then(|_| out.write_all(b"\n"))
                .and_then(|_| out.flush())
                .map_err(|e| Fail(EXIT_UNREACHABLE, format!("cannot write to stdout: {e}")))
        };
        let done = |seen: u64| args.count.is_some_and(|c| seen >= c);
        for m in early {
            if done(seen) {
                break;
            }
            print(&m)?;
            if manual {
                client.ack(&m);
            }
            seen += 1;
        }
        while !done(seen) {
            match events.recv().await {
                Some(Event::Message(m)) => {
                    if m.redelivered && debug {
                        say(&format!("redelivered (may be printed twice): {}", m.topic));
                    }
                    print(&m)?;
                    if manual {
                        client.ack(&m);
                    }
                    seen += 1;
                }
                Some(Event::Disconnected(e)) if debug => {
                    say(&format!("connection lost ({e}); reconnecting"));
                }
                Some(_) => {}
                None => return Err(Fail(EXIT_UNREACHABLE, "the client stopped".into())),
            }
        }
        client.disconnect().await;
        Ok(())
    };
    match deadline {
        Some(at) => match tokio::time::timeout_at(at, work).await {
            Ok(r) => r,
            Err(_) => Err(Fail(
                EXIT_TIMEOUT,
                format!("timed out after {} s", args.timeout.unwrap_or_default()),
            )),
        },
        None => work.await,
    }
}

/// Runs `mqtt bench` on a runtime of its own and prints the summary.
#[cfg(feature = "bench")]
fn run_bench(cmd: BenchCmd) -> Result<(), Fail> {
    init_logging(&cmd.conn);
    let (options, url_topic) = options(&cmd.conn, "bench")?;
    options.validate().map_err(|e| Fail::usage(e.0))?;
    let mut args = cmd.bench;
    // As for pub and sub, -L URL/TOPIC names the topic when -t does not.
    args.topic = args.topic.or(url_topic);
    let summary = mqtt_tokio::bench::run(options, &args).map_err(|e| Fail::usage(e.0))?;
    let json = serde_json::to_string_pretty(&summary)
        .map_err(|e| Fail(EXIT_UNREACHABLE, format!("cannot render the result: {e}")))?;
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{json}\n")).map_err(|e| {
            Fail(
                EXIT_UNREACHABLE,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    }
    let text = if args.json {
        format!("{json}\n")
    } else {
        summary.to_string()
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    if summary.ok {
        return Ok(());
    }
    let refused = summary
        .errors
        .iter()
        .any(|e| e.contains("connection refused"));
    let code = if refused {
        EXIT_REFUSED
    } else {
        EXIT_UNREACHABLE
    };
    let first = summary.errors.first().cloned().unwrap_or_default();
    Err(Fail(code, format!("bench: {first}")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Broker(args) => return broker_cli::run_broker(args),
        Command::Passwd(args) => return broker_cli::run_passwd(args),
        other => other,
    };
    #[cfg(feature = "bench")]
    if let Command::Bench(cmd) = command {
        return match run_bench(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(Fail(code, msg)) => {
                fail(&msg);
                ExitCode::from(code)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mqtt: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Pub(args) => run_pub(args).await,
            Command::Sub(args) => run_sub(args).await,
            Command::Broker(_) | Command::Passwd(_) => Ok(()),
            #[cfg(feature = "bench")]
            Command::Bench(_) => Err(Fail::usage("bench runs on its own runtime")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            fail(&msg);
            ExitCode::from(code)
        }
    }
}
