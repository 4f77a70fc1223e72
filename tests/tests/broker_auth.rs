//! The broker's password file and ACL file answers (`mqtt_session::broker`) against mosquitto
//! 2.0: entries written by `mosquitto_passwd` verify, a file we write logs in to mosquitto, and
//! our ACL decisions are the ones mosquitto makes for the same file.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mqtt_session::broker::acl::{Access, AclFile};
use mqtt_session::broker::password::{
    DEFAULT_ITERATIONS, PasswordFile, SALT_LEN, hash_entry, with_entry,
};
use tests::mosquitto::{Broker, find_program};
use tests::peers::{Pub, Sub, tools_or_skip};

/// Users and passwords that mosquitto and we must agree on: non-ASCII, spaces, a `:` and `$`,
/// and a long password.
fn users() -> Vec<(&'static str, String)> {
    vec![
        ("alice", "secret".to_owned()),
        ("bob", "pässwörd ü".to_owned()),
        ("carol", "with space:and$dollar".to_owned()),
        ("jürgen", "x".repeat(300)),
    ]
}

/// `mosquitto_passwd`, or `None` (test skipped; a failure under CI=true) when it is missing.
fn mosquitto_passwd() -> Option<std::path::PathBuf> {
    let found = find_program("mosquitto_passwd");
    if found.is_none() {
        tests::skip_or_fail("mosquitto_passwd is not installed (it is in the mosquitto package)");
    }
    found
}

fn run_passwd(passwd: &Path, args: &[&str]) {
    let out = Command::new(passwd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run mosquitto_passwd");
    assert!(
        out.status.success(),
        "mosquitto_passwd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mosquitto_passwd_entries_verify() {
    let Some(passwd) = mosquitto_passwd() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let file_arg = file.to_str().unwrap();
    let users = users();
    // The default ($7$, PBKDF2), then the explicit names of both hashes.
    for (i, (user, pass)) in users.iter().enumerate() {
        let mut args = match i {
            0 => vec!["-b", "-c"],
            1 => vec!["-H", "sha512", "-b"],
            2 => vec!["-H", "sha512-pbkdf2", "-b"],
            _ => vec!["-b"],
        };
        args.extend([file_arg, user, pass]);
        run_passwd(&passwd, &args);
    }
    let text = fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches("$7$101$").count(), 3, "{text}");
    assert_eq!(text.matches(":$6$").count(), 1, "{text}");

    let parsed = PasswordFile::parse(&text).unwrap();
    assert_eq!(parsed.len(), users.len());
    for (user, pass) in &users {
        assert!(parsed.verify(user, pass.as_bytes()), "{user}");
        assert!(!parsed.verify(user, b"secret!"), "{user}");
        assert!(!parsed.verify(user, &pass.as_bytes()[1..]), "{user}");
    }
    assert!(!parsed.verify("mallory", b"secret"));
}

/// A password file written with [`hash_entry`] and [`with_entry`] (as `mqtt passwd` would),
/// salts derived from the user names. The first user's password was "old" before.
fn our_password_file(users: &[(&str, String)]) -> String {
    let mut text = String::from("# written by mqtt_session::broker::password\n");
    text = with_entry(
        &text,
        &hash_entry(users[0].0, b"old", &[7; SALT_LEN], 101).unwrap(),
    );
    for (i, (user, pass)) in users.iter().enumerate() {
        let mut salt = [0u8; SALT_LEN];
        for (s, b) in salt.iter_mut().zip(user.bytes().cycle()) {
            *s = b ^ i as u8;
        }
        // One entry with more iterations than mosquitto_passwd uses: the count is read back.
        let iterations = if i == 1 { 1000 } else { DEFAULT_ITERATIONS };
        text = with_entry(
            &text,
            &hash_entry(user, pass.as_bytes(), &salt, iterations).unwrap(),
        );
    }
    assert_eq!(text.lines().count(), users.len() + 1, "{text}");
    text
}

/// A mosquitto with `password_file` (and `acl_file`) set to our files, anonymous access on.
fn broker_with(dir: &Path, passwords: &str, acl: Option<&str>) -> Option<Broker> {
    if !tools_or_skip() {
        return None;
    }
    let pw = dir.join("passwd");
    fs::write(&pw, passwords).unwrap();
    let mut builder = Broker::builder()
        .config(&format!("password_file {}", pw.display()))
        .config("sys_interval 1");
    if let Some(acl) = acl {
        let path = dir.join("acl");
        fs::write(&path, acl).unwrap();
        builder = builder.config(&format!("acl_file {}", path.display()));
    }
    builder.start_or_skip()
}

#[test]
fn mosquitto_accepts_our_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let users = users();
    let text = our_password_file(&users);
    assert!(
        PasswordFile::parse(&text)
            .unwrap()
            .verify("bob", users[1].1.as_bytes())
    );
    let Some(broker) = broker_with(dir.path(), &text, None) else {
        return;
    };
    for (user, pass) in &users {
        let ok = Pub::new(&broker, "login/ok", "x").auth(user, pass).run();
        assert!(ok.success(), "{user}: {ok:?}\n{}", broker.log());
        let wrong = Pub::new(&broker, "login/wrong", "x")
            .auth(user, &format!("{pass}!"))
            .run();
        // CONNACK return code 5: not authorized.
        assert_eq!(wrong.code(), Some(5), "{user}: {wrong:?}\n{}", broker.log());
    }
    let replaced = Pub::new(&broker, "login/old", "x")
        .auth(users[0].0, "old")
        .run();
    assert_eq!(replaced.code(), Some(5), "{replaced:?}");
    let unknown = Pub::new(&broker, "login/unknown", "x")
        .auth("mallory", "secret")
        .run();
    assert_eq!(unknown.code(), Some(5), "{unknown:?}");
}

/// The ACL file both brokers decide on; `admin` publishes and observes everything.
const ACL: &str = "\
topic read public/#
topic write anon/in

user alice
topic readwrite home/alice/#
topic deny home/alice/secret
topic read $SYS/broker/clients/#
topic write clients/c9/locked

user bob
topic write home/+/door
topic home/bob/#

user admin
topic readwrite #

pattern readwrite clients/%c/#
pattern read users/%u/inbox
pattern deny clients/%c/locked
";

/// (client id, user, topic, expected decision)
type Case = (&'static str, Option<&'static str>, &'static str, bool);

#[rustfmt::skip]
const WRITES: &[Case] = &[
    ("w1", None, "anon/in", true),
    ("w2", None, "public/x", false),
    ("w3", Some("alice"), "home/alice/kitchen", true),
    ("w4", Some("alice"), "home/alice/secret", false),
    ("w5", Some("alice"), "home/bob/door", false),
    ("w6", Some("bob"), "home/alice/door", true),
    ("w7", Some("bob"), "home/bob/x", true),
    ("w8", Some("carol"), "clients/w8/t", true),
    ("w9", Some("carol"), "clients/w1/t", false),
    ("w10", Some("carol"), "clients/w10/locked", false),
    // The user's own grant is tried before the pattern deny.
    ("c9", Some("alice"), "clients/c9/locked", true),
    // A wildcard as client id would make `clients/%c/#` match all: the patterns refuse it.
    ("+", Some("carol"), "clients/x/t", false),
    ("w12", Some("carol"), "users/carol/inbox", false),
];

#[rustfmt::skip]
const READS: &[Case] = &[
    ("r1", None, "public/news", true),
    ("r2", None, "anon/in", false),
    ("r3", Some("alice"), "public/news", false),
    ("r4", Some("alice"), "home/alice/kitchen", true),
    ("r5", Some("alice"), "home/alice/secret", false),
    ("r6", Some("carol"), "users/carol/inbox", true),
    ("r7", Some("bob"), "users/carol/inbox", false),
    ("r8", Some("bob"), "home/alice/door", false),
    ("r9", None, "clients/r9/x", true),
    ("r10", Some("alice"), "$SYS/broker/clients/connected", true),
    ("r11", Some("alice"), "$SYS/broker/uptime", false),
    ("r12", None, "$SYS/broker/uptime", false),
];

fn password_of(user: &str) -> String {
    format!("pw-{user}")
}

#[test]
fn acl_decisions_match_mosquitto() {
    let acl = AclFile::parse(ACL).unwrap();
    for &(id, user, topic, want) in WRITES {
        assert_eq!(
            acl.check(id, user, topic, Access::Write),
            want,
            "write {id} {user:?} {topic}"
        );
    }
    for &(id, user, topic, want) in READS {
        assert_eq!(
            acl.check(id, user, topic, Access::Read),
            want,
            "read {id} {user:?} {topic}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let users: Vec<(&str, String)> = ["alice", "bob", "carol", "admin"]
        .into_iter()
        .map(|u| (u, password_of(u)))
        .collect();
    let Some(broker) = broker_with(dir.path(), &our_password_file(&users), Some(ACL)) else {
        return;
    };
    let with = |sub: Sub, id: &str, user: Option<&str>| {
        let sub = sub.client_id(id);
        match user {
            Some(u) => sub.auth(u, &password_of(u)),
            None => sub,
        }
    };

    // Writes: what reaches the admin's `#` subscription was allowed.
    let observer = Sub::new(&broker, "#")
        .auth("admin", &password_of("admin"))
        .qos(1)
        .timeout_secs(20)
        .spawn();
    for &(id, user, topic, _) in WRITES {
        let mut publish = Pub::new(&broker, topic, id).client_id(id).qos(1);
        if let Some(u) = user {
            publish = publish.auth(u, &password_of(u));
        }
        // At 3.1.1 a refused publish is acknowledged and dropped, so this succeeds either way.
        let out = publish.run();
        assert!(out.success(), "{id}: {out:?}\n{}", broker.log());
    }
    Pub::new(&broker, "end", "end")
        .auth("admin", &password_of("admin"))
        .qos(1)
        .run_ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !observer.received().iter().any(|m| m.topic == "end") {
        assert!(Instant::now() < deadline, "no end marker\n{}", broker.log());
        thread::sleep(Duration::from_millis(10));
    }
    let seen = observer.kill();
    for &(id, user, topic, _) in WRITES {
        let delivered = seen.iter().any(|m| m.text() == id);
        let ours = acl.check(id, user, topic, Access::Write);
        assert_eq!(
            delivered, ours,
            "write {id} {user:?} {topic}: mosquitto vs ours"
        );
    }

    // Reads: every subscription is granted by mosquitto 2.0; what arrives was readable.
    let subs: Vec<_> = READS
        .iter()
        .map(|&(id, user, topic, _)| {
            with(Sub::new(&broker, topic), id, user)
                .count(1)
                .timeout_secs(3)
                .spawn()
        })
        .collect();
    for &(_, _, topic, _) in READS {
        if !topic.starts_with('$') {
            Pub::new(&broker, topic, "r")
                .auth("admin", &password_of("admin"))
                .run_ok();
        }
    }
    for (&(id, user, topic, _), sub) in READS.iter().zip(subs) {
        let delivered = !sub.wait().is_empty();
        let ours = acl.check(id, user, topic, Access::Read);
        assert_eq!(
            delivered,
            ours,
            "read {id} {user:?} {topic}: mosquitto vs ours\n{}",
            broker.log()
        );
    }
}
