//! The `msgio` command, run as a user runs it (the built binary, spawned), against mem and
//! every broker on this machine: publish and read back, dead letters listed and replayed
//! byte for byte, health, bench, and errors as one line with a non-zero exit.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use msgio::{Context, Error, Message, ReceiverFunc, Server, ServerConfig, keys};

fn msgio(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msgio"))
        .args(args)
        .env_remove("MSGIO_PASSWORD")
        .stdin(Stdio::null())
        .output()
        .expect("the msgio binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = msgio(args);
    assert!(
        out.status.success(),
        "msgio {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn name() -> String {
    format!("cli{}", msgio::testing::unique_suffix())
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Each broker's URL for the destination `name`, when the broker answers (skipping, or
/// failing under MSGIO_REQUIRE_BROKERS=1, when it does not).
async fn url(broker: &str, name: &str) -> Option<String> {
    let (url, probe) = match broker {
        "redis" => {
            let base = env("REDIS_URL", "redis://127.0.0.1:6379");
            (format!("{base}/{name}"), base)
        }
        "nats" => {
            let base = env("NATS_URL", "nats://127.0.0.1:4222");
            (format!("{base}/{name}"), base)
        }
        "amqp" => {
            let base = env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
            (format!("{base}?queue={name}"), base)
        }
        "postgres" => {
            let base = env("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
            (format!("{base}?queue={name}&poll_interval=100ms"), base)
        }
        "kafka" => {
            let base = format!("kafka://{}", env("KAFKA_BROKERS", "127.0.0.1:9092"));
            (format!("{base}/{name}?session_timeout=6s"), base)
        }
        other => panic!("{other}"),
    };
    let hostport = probe
        .split_once("://")
        .map(|(_, rest)| rest.rsplit_once('@').map_or(rest, |(_, h)| h))
        .and_then(|rest| rest.split(['/', '?', ',']).next())
        .unwrap_or_default()
        .to_owned();
    match tokio::net::TcpStream::connect(&hostport).await {
        Ok(_) => Some(url),
        Err(e) => {
            msgio::testing::skip_or_fail(broker, &probe, &e);
            None
        }
    }
}

/// What `sub --json` printed, one object a line.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Publishes three messages with attributes and reads them back as JSON.
async fn pub_and_sub(broker: &str) {
    let dest = name();
    let Some(url) = url(broker, &dest).await else {
        return;
    };
    ok(&[
        "pub",
        &url,
        "order {{seq}}",
        "-H",
        "Type:order",
        "-H",
        "X-Multi:a",
        "-H",
        "X-Multi:b",
        "--count",
        "3",
    ]);
    let out = ok(&["sub", &url, "--count", "3", "--json"]);
    let mut got = json_lines(&out);
    got.sort_by_key(|m| m["body"].as_str().unwrap_or_default().to_owned());
    let bodies: Vec<_> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["order 1", "order 2", "order 3"], "{broker}");
    for m in &got {
        assert_eq!(
            m["attributes"]["Type"],
            serde_json::json!(["order"]),
            "{broker}: {m}"
        );
        assert_eq!(
            m["attributes"]["X-Multi"],
            serde_json::json!(["a", "b"]),
            "{broker}: {m}"
        );
        assert_eq!(m["attempt"], 1, "{broker}");
    }
    // They were acked: nothing is left to read.
    let out = ok(&["sub", &url, "--idle", "2s", "--raw"]);
    assert_eq!(out, "", "{broker}: read again after being acked");
    // Another consumer group reads them all again (where the broker keeps a log).
    if matches!(broker, "redis" | "kafka") {
        let out = ok(&["sub", &url, "--group", "another", "--count", "3", "--raw"]);
        let mut lines: Vec<_> = out.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["order 1", "order 2", "order 3"], "{broker}");
    }
    ok(&["health", &url]);
}

/// Dead letters made by a real server, listed with their reason, then replayed to a
/// destination of their own: restored byte for byte, and gone from the dead letters. With
/// `filtered`, one of the two is replayed and the other stays; a Kafka topic is a log,
/// where only a prefix can be removed, so there both are replayed.
async fn dlq_replay(broker: &str, filtered: bool) {
    let (source, dead, back) = (name(), name(), name());
    let (Some(source_url), Some(dead_url), Some(back_url)) = (
        url(broker, &source).await,
        url(broker, &dead).await,
        url(broker, &back).await,
    ) else {
        return;
    };
    let ctx = Context::background();
    let topic = msgio::open_topic(&source_url).await.unwrap();
    for n in 1..=2 {
        let mut msg = Message::new(format!("poison {n}").into_bytes());
        msg.attributes.set("Order-Id", n.to_string());
        msg.attributes.add("X-Multi", "1");
        msg.attributes.add("X-Multi", "2");
        msgio::Topic::publish(&topic, &ctx, msg).await.unwrap();
    }
    let dead_topic = msgio::open_topic(&dead_url).await.unwrap();
    let server = msgio::open_server(
        &source_url,
        ServerConfig::new().max_attempts(1).dead_letter(dead_topic),
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let serving = server.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(ReceiverFunc::new(move |_: Context, _: Message| {
                let tx = tx.clone();
                async move {
                    tx.send(()).ok();
                    Err(Error::reject("cannot be parsed"))
                }
            }))
            .await
    });
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("the server got the messages");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    let _ = task.await;

    let listed = json_lines(&ok(&["dlq", "list", &dead_url, "--json", "--count", "2"]));
    assert_eq!(listed.len(), 2, "{broker}");
    for letter in &listed {
        let reason = &letter["attributes"][keys::DEAD_LETTER_REASON];
        assert!(
            reason.to_string().contains("cannot be parsed"),
            "{broker}: {letter}"
        );
    }
    let dry = ok(&[
        "dlq",
        "replay",
        &dead_url,
        "--to",
        &back_url,
        "--dry-run",
        "--count",
        "2",
    ]);
    assert_eq!(dry.matches("would replay").count(), 2, "{broker}: {dry}");
    let mut replay = vec![
        "dlq", "replay", &dead_url, "--to", &back_url, "--count", "2",
    ];
    if filtered {
        replay.extend(["--filter", "Order-Id=2"]);
    }
    let replayed = ok(&replay);
    let expected = if filtered { 1 } else { 2 };
    assert_eq!(
        replayed.matches("replayed").count(),
        expected,
        "{broker}: {replayed}"
    );
    let count = expected.to_string();
    let mut back = json_lines(&ok(&["sub", &back_url, "--count", &count, "--json"]));
    back.sort_by_key(|m| m["body"].as_str().unwrap_or_default().to_owned());
    let m = back.last().unwrap();
    assert_eq!(m["body"], "poison 2", "{broker}");
    assert_eq!(
        m["attributes"]["Order-Id"],
        serde_json::json!(["2"]),
        "{broker}: {m}"
    );
    assert_eq!(
        m["attributes"]["X-Multi"],
        serde_json::json!(["1", "2"]),
        "{broker}: {m}"
    );
    assert!(
        m["attributes"][keys::MESSAGE_ID].is_array(),
        "{broker}: the original id: {m}"
    );
    for gone in [keys::DEAD_LETTER_REASON, keys::ATTEMPTS, keys::SOURCE] {
        assert!(
            m["attributes"][gone].is_null(),
            "{broker}: {gone} left: {m}"
        );
    }
    // What was replayed is gone from the dead letters; the other is still there.
    let left = json_lines(&ok(&["dlq", "list", &dead_url, "--json", "--count", "2"]));
    if filtered {
        assert_eq!(left.len(), 1, "{broker}: {left:?}");
        assert_eq!(left[0]["body"], "poison 1", "{broker}");
    } else {
        assert!(left.is_empty(), "{broker}: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pub_sub_and_dlq() {
    pub_and_sub("redis").await;
    dlq_replay("redis", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_pub_sub_and_dlq() {
    pub_and_sub("nats").await;
    dlq_replay("nats", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_pub_sub_and_dlq() {
    pub_and_sub("amqp").await;
    dlq_replay("amqp", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pub_sub_and_dlq() {
    pub_and_sub("postgres").await;
    dlq_replay("postgres", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_pub_sub_and_dlq() {
    pub_and_sub("kafka").await;
    dlq_replay("kafka", false).await;
}

#[test]
fn bench_on_mem_prints_its_figures() {
    let out = ok(&[
        "bench",
        "mem://cli-bench",
        "-n",
        "2000",
        "-c",
        "8",
        "-p",
        "4",
    ]);
    assert!(out.contains("msgs/s") && out.contains("p99"), "{out}");
}

#[tokio::test]
async fn bench_on_a_broker_prints_its_figures() {
    let Some(url) = url("redis", &name()).await else {
        return;
    };
    let out = ok(&["bench", &url, "-n", "500", "--size", "64"]);
    assert!(out.contains("end to end") && out.contains("p99.9"), "{out}");
    let out = ok(&["bench", &url, "-n", "500", "--publish-only"]);
    assert!(
        out.contains("publish latency") && !out.contains("p50 0.000"),
        "{out}"
    );
}

#[test]
fn pub_reads_stdin_one_message_per_line() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_msgio"))
        .args(["pub", "mem://cli-lines", "--lines"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\n\nthree\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("published 3 message(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn health_fails_when_the_broker_is_down_and_never_shows_the_password() {
    assert!(ok(&["health", "mem://up"]).starts_with("ok"));
    let out = Command::new(env!("CARGO_BIN_EXE_msgio"))
        .args(["health", "redis://app@127.0.0.1:1/x", "--timeout", "5s"])
        .env("MSGIO_PASSWORD", "s3cret-pw")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("msgio: "), "{stderr}");
}

#[test]
fn errors_are_one_line_and_a_non_zero_exit() {
    let out = msgio(&["pub", "carrier-pigeon://x/y", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("carrier-pigeon"), "{stderr}");
    let out = msgio(&["pub", "mem://x", "hi", "-H", "no-colon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key:value"));
    // A command line that cannot be read: clap's usage error, exit 2.
    assert_eq!(msgio(&["pub"]).status.code(), Some(2));
    assert_eq!(
        msgio(&["sub", "mem://x", "--group", "g"]).status.code(),
        Some(1)
    );
}
