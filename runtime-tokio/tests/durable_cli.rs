//! `mqtt pub` rides out lost connections and, with `--store`, a SIGKILL; against a private
//! mosquitto (`tests::mosquitto`) through the cutting proxy (`tests::proxy`).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt_tokio::{Client, Message, Options, QoS};
use tests::mosquitto::Broker;
use tests::proxy::Proxy;

const BIN: &str = env!("CARGO_BIN_EXE_mqtt");

fn pub_lines(url: &str, topic: &str, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args(["pub", "-L", url, "-t", topic, "-q", "1", "-l"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mqtt pub")
}

/// Waits for the child, killing it after `limit`.
fn finish(mut child: Child, limit: Duration) -> std::process::Output {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "mqtt pub ran over {limit:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A subscriber (straight to the broker) collecting payloads on `topic`.
async fn collect(broker: &Broker, topic: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let client = Client::spawn(
        Options::new(&broker.url())
            .unwrap()
            .client_id(format!("collect-{topic}")),
    )
    .unwrap();
    let g = got.clone();
    client
        .route(topic, move |m: Message| {
            let g = g.clone();
            async move {
                g.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&m.payload).into_owned())
            }
        })
        .unwrap();
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    (client, got)
}

async fn wait_for(got: &Mutex<Vec<String>>, distinct: usize) -> BTreeSet<String> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let set: BTreeSet<String> = got.lock().unwrap().iter().cloned().collect();
        if set.len() >= distinct || Instant::now() > end {
            return set;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start() -> Option<(Broker, Proxy)> {
    let broker = Broker::builder().start_or_skip()?;
    let proxy = Proxy::start(broker.addr());
    Some((broker, proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_lines_ride_out_cut_connections() {
    let Some((broker, proxy)) = tokio::task::block_in_place(start) else {
        return;
    };
    let (sub, got) = collect(&broker, "cli/lines").await;
    let mut child = pub_lines(&proxy.url(), "cli/lines", &["-i", "cli-lines"]);
    let mut stdin = child.stdin.take().unwrap();
    tokio::task::block_in_place(|| {
        for i in 0..2_000 {
            writeln!(stdin, "line-{i:04}").unwrap();
            if i % 50 == 49 {
                stdin.flush().unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            // Three cuts while lines flow (each one a connection of its own after the first).
            if matches!(i, 500 | 1_100 | 1_600) {
                stdin.flush().unwrap();
                let before = proxy.connections();
                proxy.cut_all();
                // The next cut hits the new connection: wait for it.
                let end = Instant::now() + Duration::from_secs(10);
                while proxy.connections() == before && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    });
    drop(stdin);
    let out = tokio::task::block_in_place(|| finish(child, Duration::from_secs(30)));
    assert!(
        out.status.success(),
        "mqtt pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        proxy.cut_connections() >= 3,
        "the connections were cut: {}",
        proxy.cut_connections()
    );
    let set = wait_for(&got, 2_000).await;
    let want: BTreeSet<String> = (0..2_000).map(|i| format!("line-{i:04}")).collect();
    assert_eq!(
        set.len(),
        2_000,
        "missing: {:?}",
        want.difference(&set).take(10).collect::<Vec<_>>()
    );
    assert_eq!(set, want);
    sub.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn give_up_after_zero_keeps_the_old_exit_at_the_first_cut() {
    let Some((_broker, proxy)) = tokio::task::block_in_place(start) else {
        return;
    };
    let mut child = pub_lines(&proxy.url(), "cli/giveup", &["--give-up-after", "0"]);
    let mut stdin = child.stdin.take().unwrap();
    let out = tokio::task::block_in_place(|| {
        writeln!(stdin, "one").unwrap();
        stdin.flush().unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while proxy.open_connections() == 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        proxy.cut_all();
        finish(child, Duration::from_secs(10))
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection lost"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_store_survives_a_sigkill() {
    let Some((broker, proxy)) = tokio::task::block_in_place(start) else {
        return;
    };
    let (sub, got) = collect(&broker, "cli/store").await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap().to_owned();
    let args = ["-i", "cli-store", "--store", store.as_str()];
    // The broker is out of reach (the link is stalled): nothing can be acknowledged.
    proxy.stall(true);
    let mut child = pub_lines(&proxy.url(), "cli/store", &args);
    let mut stdin = child.stdin.take().unwrap();
    tokio::task::block_in_place(|| {
        // The first connection must be up before the stall matters: let it connect.
        proxy.stall(false);
        let end = Instant::now() + Duration::from_secs(10);
        while proxy.open_connections() == 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        proxy.stall(true);
        for i in 0..300 {
            writeln!(stdin, "stored-{i:03}").unwrap();
        }
        stdin.flush().unwrap();
        // Time to take and store every line.
        std::thread::sleep(Duration::from_millis(1_500));
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        proxy.cut_all();
        proxy.stall(false);
    });
    let before: BTreeSet<String> = got.lock().unwrap().iter().cloned().collect();
    assert!(
        before.len() < 300,
        "the stall held messages back ({} arrived)",
        before.len()
    );
    // Started again with the same id and store and nothing new to send: it resends them.
    let mut again = pub_lines(&proxy.url(), "cli/store", &args);
    drop(again.stdin.take());
    let out = tokio::task::block_in_place(|| finish(again, Duration::from_secs(30)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let set = wait_for(&got, 300).await;
    let want: BTreeSet<String> = (0..300).map(|i| format!("stored-{i:03}")).collect();
    assert_eq!(set, want, "every line taken before the kill arrives");
    sub.disconnect().await;
}

/// Runs `mqtt sub -c --store` until it has printed `count` messages; gives the lines. The
/// publisher `start` is called once the subscription is made.
fn sub_store(url: &str, dir: &str, count: usize, start: impl FnOnce()) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .args([
            "sub", "-L", url, "-t", "cli/sub", "-q", "2", "-c", "-i", "cli-sub",
        ])
        .args(["--store", dir, "-C", &count.to_string(), "-d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mqtt sub");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        if line.expect("stderr").contains("subscribed to") {
            break;
        }
    }
    start();
    let out = finish(child, Duration::from_secs(20));
    assert!(out.status.success(), "mqtt sub failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_store_acknowledges_only_what_it_printed() {
    let Some(broker) = tokio::task::block_in_place(|| Broker::builder().start_or_skip()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap().to_owned();
    let publisher = Client::spawn(
        Options::new(&broker.url())
            .unwrap()
            .client_id("cli-sub-pub"),
    )
    .unwrap();
    let p = publisher.clone();
    let handle = tokio::runtime::Handle::current();
    // The first run prints 4 of the 10 messages and exits: the 6 it did not print were not
    // acknowledged, so the broker sends them to the second run (with -C 6).
    let first = tokio::task::block_in_place(|| {
        sub_store(&broker.url(), &store, 4, || {
            handle.block_on(async {
                for i in 0..10 {
                    p.publish("cli/sub", format!("m{i}"), QoS::ExactlyOnce, false)
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
            })
        })
    });
    let second = tokio::task::block_in_place(|| sub_store(&broker.url(), &store, 6, || {}));
    let mut all: Vec<String> = first.iter().chain(&second).cloned().collect();
    all.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(
        all, want,
        "every message printed exactly once over the two runs: {first:?} then {second:?}"
    );
    publisher.disconnect().await;
}
