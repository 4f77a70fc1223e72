//! kill -9 loops: a publisher with a synced store (`durable_pub`) is killed at random moments
//! while it publishes to a persistent subscriber, and started again with the same store and
//! client id each time. Every message whose `publish()` returned arrives at least once, and
//! the QoS 2 ones exactly once. Then the same for a subscriber acking after its handler:
//! every message handled at least once, every QoS 2 message exactly once by a handler that
//! looks up the messages the client marks as redelivered. Each loop runs against mosquitto
//! and against our broker.

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mqtt_tokio::{Client, Message, Options, QoS};
use tests::mosquitto::Broker;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Messages in all: 5 000 at QoS 1 and 2 000 at QoS 2 (`i % 7 < 2`), interleaved.
const TOTAL: u32 = 7_000;
const KILLS: usize = 10;

/// A small xorshift generator: the kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    /// Seeded from the clock; the seed is printed, to replay a failing run.
    fn from_clock() -> Rng {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("kill seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One run of the publisher from `from`; killed after `kill_after` unless `None`. Returns the
/// indices it printed as published and whether it finished.
async fn run(url: &str, store: &str, from: u32, kill_after: Option<Duration>) -> (Vec<u32>, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_durable_pub"))
        .args([
            url,
            "kill-pub",
            store,
            &from.to_string(),
            &TOTAL.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start durable_pub");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = tokio::time::Instant::now() + kill_after.unwrap_or(Duration::from_secs(90));
    let mut printed = Vec::new();
    let mut done = false;
    let mut take = |line: String| {
        if let Some(i) = line.strip_prefix("ok ") {
            printed.push(i.parse().expect("an index"));
        } else if line.starts_with("done") {
            done = true;
        }
    };
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => take(line),
            Ok(_) => break,
            Err(_) => {
                assert!(kill_after.is_some(), "the last run did not finish in time");
                break;
            }
        }
    }
    // SIGKILL: no shutdown, no flush.
    let _ = child.start_kill();
    let status = child.wait().await.expect("wait");
    if kill_after.is_none() {
        assert!(status.success(), "the last run failed: {status}");
    }
    // What it printed before it died and the pipe still holds counts too: taking only what
    // was read by the deadline made the next run publish again a message already returned.
    while let Ok(Some(line)) = lines.next_line().await {
        take(line);
    }
    (printed, done)
}

/// Our broker in this process, holding everything for an offline subscriber.
async fn our_broker() -> mqtt_tokio::broker::Broker {
    let mut cfg = mqtt_tokio::broker::BrokerConfig::new("mqtt://127.0.0.1:0");
    cfg.max_queued_messages = 1_000_000;
    cfg.max_queued_bytes = 1 << 30;
    mqtt_tokio::broker::Broker::start(cfg)
        .await
        .expect("start our broker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_ten_times_loses_nothing_and_duplicates_no_qos2() {
    let Some(broker) = tokio::task::block_in_place(|| Broker::builder().start_or_skip()) else {
        return;
    };
    publisher_killed(&broker.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_ten_times_loses_nothing_through_our_broker() {
    let broker = our_broker().await;
    publisher_killed(&broker.urls()[0]).await;
    broker.stop().await;
}

async fn publisher_killed(url: &str) {
    let url = url.to_owned();
    let mut rng = Rng::from_clock();

    let counts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let sub = Client::spawn(
        Options::new(&url)
            .unwrap()
            .client_id("kill-sub")
            .persistent_session(Duration::from_secs(3600)),
    )
    .unwrap();
    let c = counts.clone();
    sub.route_with("durable/kill", QoS::ExactlyOnce, move |m: Message| {
        let c = c.clone();
        async move {
            let i: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            *c.lock().unwrap().entry(i).or_default() += 1;
        }
    })
    .unwrap();
    sub.subscribe("durable/kill", QoS::ExactlyOnce)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("pub.redb");
    let store = store.to_str().unwrap();
    let started = Instant::now();
    let (mut from, mut kills) = (0, 0);
    // The message after the last printed one of a killed run may have been published (its
    // publish() returned) without being printed; the next run publishes it again.
    let mut boundary = BTreeSet::new();
    let mut published = BTreeSet::new();
    while kills < KILLS {
        let after = Duration::from_millis(150 + rng.below(500));
        let (printed, done) = run(&url, store, from, Some(after)).await;
        published.extend(printed.iter().copied());
        if done {
            break;
        }
        kills += 1;
        from = printed.last().map_or(from, |l| l + 1);
        boundary.insert(from);
    }
    assert_eq!(
        kills, KILLS,
        "the publisher finished before it was killed {KILLS} times"
    );
    let (printed, done) = run(&url, store, from, None).await;
    published.extend(printed);
    assert!(done);
    assert_eq!(
        published.len() as u32,
        TOTAL,
        "every message was published once returned"
    );

    let wait = Instant::now() + Duration::from_secs(30);
    while counts.lock().unwrap().len() < TOTAL as usize && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = counts.lock().unwrap().clone();
    let missing: Vec<u32> = (0..TOTAL).filter(|i| !counts.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} messages lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let qos2 = (0..TOTAL).filter(|i| i % 7 < 2);
    assert_eq!(qos2.clone().count(), 2_000);
    let twice: Vec<(u32, u32)> = qos2
        .map(|i| (i, counts[&i]))
        .filter(|&(i, n)| n > 1 + u32::from(boundary.contains(&i)))
        .collect();
    assert!(
        twice.is_empty(),
        "QoS 2 messages delivered more than once: {twice:?}"
    );
    let dups: u32 = (0..TOTAL)
        .filter(|i| i % 7 >= 2)
        .map(|i| counts[&i] - 1)
        .sum();
    let republished = boundary
        .iter()
        .filter(|i| *i % 7 < 2 && counts[i] == 2)
        .count();
    eprintln!(
        "{KILLS} kills in {:?}; QoS 1 duplicates {dups}; QoS 2 published twice by the test at a \
         kill boundary {republished}; boundaries {boundary:?}",
        started.elapsed()
    );
    sub.disconnect().await;
}

/// One run of the subscriber, killed after `kill_after`, or once `seen` (if given) holds all
/// `TOTAL` messages with what this run handles added; gives how many redelivered messages it
/// skipped (its output file is the record of what it handled).
async fn run_sub(
    url: &str,
    store: &str,
    output: &str,
    kill_after: Duration,
    subscribed: Option<tokio::sync::oneshot::Sender<()>>,
    mut seen: Option<BTreeSet<u32>>,
) -> usize {
    let mut child = Command::new(env!("CARGO_BIN_EXE_durable_sub"))
        .args([url, "kill-sub2", store, output])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start durable_sub");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = tokio::time::Instant::now() + kill_after;
    let mut skipped = 0;
    let mut subscribed = subscribed;
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        if line == "subscribed" {
            if let Some(tx) = subscribed.take() {
                let _ = tx.send(());
            }
        } else if let Some(rest) = line.strip_prefix("got ") {
            let i = rest.split(' ').next().and_then(|i| i.parse().ok());
            if let (Some(seen), Some(i)) = (seen.as_mut(), i) {
                seen.insert(i);
                if seen.len() == TOTAL as usize {
                    break;
                }
            }
        } else if line.starts_with("skipped ") {
            skipped += 1;
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    skipped
}

/// The subscriber's output: per run (each begins with `start`), the (index, QoS) it handled.
fn handled_by_run(output: &str) -> Vec<Vec<(u32, u8)>> {
    let mut runs: Vec<Vec<(u32, u8)>> = Vec::new();
    for line in std::fs::read_to_string(output).unwrap_or_default().lines() {
        if line == "start" {
            runs.push(Vec::new());
        } else if let Some(rest) = line.strip_prefix("got ") {
            let (i, qos) = rest.split_once(' ').expect("index and qos");
            let run = runs.last_mut().expect("a run starts with `start`");
            run.push((i.parse().expect("index"), qos.parse().expect("qos")));
        } else {
            panic!("unexpected output line {line:?}");
        }
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_acking_after_handlers_killed_ten_times_handles_everything() {
    let Some(broker) = tokio::task::block_in_place(|| {
        Broker::builder()
            // Everything published while the subscriber is down waits for it.
            .config("max_queued_messages 0")
            .start_or_skip()
    }) else {
        return;
    };
    subscriber_killed(&broker.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_killed_ten_times_handles_everything_through_our_broker() {
    let broker = our_broker().await;
    subscriber_killed(&broker.urls()[0]).await;
    broker.stop().await;
}

/// A subscriber acking after its handler, killed at random: every message handled at least
/// once, and every QoS 2 message exactly once by a handler that looks up the ones the client
/// marks as redelivered (and only those).
async fn subscriber_killed(url: &str) {
    let url = url.to_owned();
    let mut rng = Rng::from_clock();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("sub.redb");
    let store = store.to_str().unwrap().to_owned();
    let output = dir.path().join("handled.txt");
    let output = output.to_str().unwrap().to_owned();

    // The first run subscribes; then the publisher starts.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let first = {
        let (url, store, output) = (url.clone(), store.clone(), output.clone());
        let after = Duration::from_millis(800 + rng.below(500));
        tokio::spawn(async move { run_sub(&url, &store, &output, after, Some(tx), None).await })
    };
    rx.await.expect("the subscriber subscribed");
    let publisher = Client::spawn(Options::new(&url).unwrap().client_id("kill-pub2")).unwrap();
    let p = publisher.clone();
    let publishing = tokio::spawn(async move {
        let mut deliveries = Vec::new();
        for i in 0..TOTAL {
            let qos = if i % 7 < 2 {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            deliveries.push(
                p.publish("durable/sub", i.to_string(), qos, false)
                    .await
                    .unwrap(),
            );
        }
        for d in deliveries {
            d.await.unwrap();
        }
    });
    let mut skipped = first.await.unwrap();
    for _ in 1..KILLS {
        let after = Duration::from_millis(150 + rng.below(500));
        skipped += run_sub(&url, &store, &output, after, None, None).await;
    }
    publishing.await.unwrap();
    // The last run goes on until every message was handled (or the time is up).
    let seen: BTreeSet<u32> = handled_by_run(&output)
        .iter()
        .flatten()
        .map(|m| m.0)
        .collect();
    let limit = Duration::from_secs(if seen.len() == TOTAL as usize { 1 } else { 40 });
    skipped += run_sub(&url, &store, &output, limit, None, Some(seen)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let runs = handled_by_run(&output);
    assert_eq!(runs.len(), KILLS + 1, "every run wrote its start");
    let mut by_message: HashMap<u32, Vec<usize>> = HashMap::new();
    for (run, handled) in runs.iter().enumerate() {
        for (i, qos) in handled {
            assert_eq!(
                *qos,
                if i % 7 < 2 { 2 } else { 1 },
                "message {i} came at its QoS"
            );
            by_message.entry(*i).or_default().push(run);
        }
    }
    let missing: Vec<u32> = (0..TOTAL).filter(|i| !by_message.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} messages never handled, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // The handler skips a redelivered message it finds in its output, so a QoS 2 message
    // handled twice is one the client delivered again without marking it.
    for i in (0..TOTAL).filter(|i| i % 7 < 2) {
        let runs_of = &by_message[&i];
        assert_eq!(
            runs_of.len(),
            1,
            "QoS 2 message {i} handled in runs {runs_of:?}"
        );
    }
    let handled: usize = runs.iter().map(Vec::len).sum();
    eprintln!(
        "{} runs ({KILLS} killed), {handled} handlings of {TOTAL} messages ({} QoS 1 again), \
         {skipped} redelivered QoS 2 found handled already",
        runs.len(),
        handled - TOTAL as usize,
    );
    publisher.disconnect().await;
}
