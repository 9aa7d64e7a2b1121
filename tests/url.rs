//! Topics and servers opened by URL: the same program on every transport by changing one
//! string, the conformance kit through `UrlTransport` against each real broker, and the
//! errors a wrong URL gets.

use std::time::Duration;

use msgio::testing::{Capabilities, UrlTransport};
use msgio::url::{Url, UrlMux, UrlOpener};
use msgio::{
    BoxServer, BoxTopic, Context, Error, Message, ReceiverFunc, Server, ServerConfig, Topic,
};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn redis_url() -> String {
    env("REDIS_URL", "redis://127.0.0.1:6379")
}

fn nats_url() -> String {
    env("NATS_URL", "nats://127.0.0.1:4222")
}

fn amqp_url() -> String {
    env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// Whether the broker behind `url` answers (skipping, or failing under
/// MSGIO_REQUIRE_BROKERS=1, when it does not).
async fn answers(broker: &str, url: &str) -> bool {
    let hostport = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .map(|rest| rest.rsplit_once('@').map_or(rest, |(_, host)| host))
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(rest))
        .unwrap_or_default()
        .to_owned();
    match tokio::net::TcpStream::connect(&hostport).await {
        Ok(_) => true,
        Err(e) => {
            msgio::testing::skip_or_fail(broker, url, &e);
            false
        }
    }
}

/// The program under test: knows nothing but a URL. Publishes three messages with
/// attributes, serves them, and returns what it got, in order of arrival.
async fn program(url: &str) -> Result<Vec<(String, String)>, Error> {
    let server = msgio::open_server(url, ServerConfig::new().concurrency(1)).await?;
    let topic = msgio::open_topic(url).await?;
    for n in 1..=3 {
        let mut msg = Message::new(format!("body {n}"));
        msg.attributes.set("Order-Id", n.to_string());
        topic.publish(&Context::background(), msg).await?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let serving = server.clone();
    let task = tokio::spawn(async move {
        serving
            .serve(ReceiverFunc::new(move |_: Context, mut m: Message| {
                let tx = tx.clone();
                async move {
                    let body = m.body.read_to_bytes(1024).await?;
                    let id = m.attributes.get("order-id").unwrap_or_default().to_owned();
                    tx.send((id, String::from_utf8_lossy(&body).into_owned()))
                        .ok();
                    Ok(())
                }
            }))
            .await
    });
    let mut got = Vec::new();
    while got.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(m)) => got.push(m),
            _ => break,
        }
    }
    server.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;
    got.sort();
    Ok(got)
}

fn expected() -> Vec<(String, String)> {
    (1..=3)
        .map(|n| (n.to_string(), format!("body {n}")))
        .collect()
}

/// Every capability the built-in transports have (no broker restart here).
fn everything() -> Capabilities {
    Capabilities::new()
        .ordering()
        .delay()
        .dead_letter()
        .persistence()
        .consumer_groups()
}

fn name() -> String {
    format!("url{}", msgio::testing::unique_suffix())
}

#[tokio::test]
async fn the_same_program_runs_on_mem_by_changing_the_url() {
    let url = format!("mem://{}", name());
    assert_eq!(program(&url).await.unwrap(), expected());
}

#[tokio::test]
async fn the_same_program_runs_on_redis_by_changing_the_url() {
    let base = redis_url();
    if !answers("Redis", &base).await {
        return;
    }
    let url = format!("{base}/{}?group=app&block=200ms", name());
    assert_eq!(program(&url).await.unwrap(), expected());
}

#[tokio::test]
async fn the_same_program_runs_on_nats_by_changing_the_url() {
    let base = nats_url();
    if !answers("NATS", &base).await {
        return;
    }
    let stream = name();
    let url = format!("{base}/{stream}.orders?durable=app");
    assert_eq!(program(&url).await.unwrap(), expected());
    let nats = msgio::nats::Nats::connect(&base).await.unwrap();
    nats.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn the_same_program_runs_on_rabbitmq_by_changing_the_url() {
    let base = amqp_url();
    if !answers("RabbitMQ", &base).await {
        return;
    }
    let queue = name();
    let url = format!("{base}?queue={queue}");
    assert_eq!(program(&url).await.unwrap(), expected());
    let amqp = msgio::amqp::Amqp::connect(&base).await.unwrap();
    amqp.delete_queue(&queue).await.unwrap();
}

#[tokio::test]
async fn a_mem_url_names_one_queue_for_the_whole_process() {
    let url = format!("mem://{}?capacity=5", name());
    let topic = msgio::open_topic(&url).await.unwrap();
    topic
        .publish(&Context::background(), Message::new("kept"))
        .await
        .unwrap();
    // Opened again without the capacity: the same queue.
    let bare = url.split('?').next().unwrap();
    msgio::open_topic(bare).await.unwrap();
    // Another capacity for the same queue is refused, by name.
    let e = msgio::open_topic(&format!("{bare}?capacity=6"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            Error::InvalidConfig {
                field: "capacity",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn mem_passes_the_conformance_kit_opened_by_url() {
    let caps = everything();
    msgio::testing::run(UrlTransport::new("mem://{name}"), caps)
        .await
        .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passes_the_conformance_kit_opened_by_url() {
    let base = redis_url();
    if !answers("Redis", &base).await {
        return;
    }
    let raw_url = base.clone();
    let transport = UrlTransport::new(format!("{base}/{{name}}?group=kit&block=200ms"))
        .remove_with(move |url| {
            let raw_url = raw_url.clone();
            async move {
                let stream = Url::parse(&url)?.path().to_owned();
                let client = redis::Client::open(raw_url).map_err(Error::other)?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(Error::other)?;
                redis::cmd("DEL")
                    .arg(&stream)
                    .arg(format!("{stream}:delayed"))
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(Error::other)
            }
        });
    let caps = everything();
    msgio::testing::run(transport, caps).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_passes_the_conformance_kit_opened_by_url() {
    let base = nats_url();
    if !answers("NATS", &base).await {
        return;
    }
    let nats = msgio::nats::Nats::connect(&base).await.unwrap();
    let transport = UrlTransport::new(format!("{base}/{{name}}.kit?durable=kit&ack_wait=5s"))
        .remove_with(move |url| {
            let nats = nats.clone();
            async move {
                let url = Url::parse(&url)?;
                let stream = url.path().split('.').next().unwrap_or_default().to_owned();
                nats.delete_stream(&stream).await
            }
        });
    // The server's max_payload is 1 MiB by default.
    let caps = everything().max_body(512 << 10);
    msgio::testing::run(transport, caps).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_passes_the_conformance_kit_opened_by_url() {
    let base = amqp_url();
    if !answers("RabbitMQ", &base).await {
        return;
    }
    let amqp = msgio::amqp::Amqp::connect(&base).await.unwrap();
    let transport = UrlTransport::new(format!("{base}?queue={{name}}")).remove_with(move |url| {
        let amqp = amqp.clone();
        async move {
            let url = Url::parse(&url)?;
            let queue = url.query().take("queue")?.unwrap_or_default().to_owned();
            amqp.delete_queue(&queue).await
        }
    });
    let caps = everything();
    msgio::testing::run(transport, caps).await.assert_passed();
}

fn config_error(e: &Error) -> (&'static str, &str) {
    match e {
        Error::InvalidConfig { field, reason } => (field, reason),
        other => panic!("not a configuration error: {other}"),
    }
}

#[tokio::test]
async fn the_same_program_runs_on_postgres_by_changing_the_url() {
    let base = env("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
    if !answers("PostgreSQL", &base).await {
        return;
    }
    let queue = name();
    let url = format!("{base}?queue={queue}&poll_interval=100ms");
    // The program acks what it reads: the queue is left empty.
    assert_eq!(program(&url).await.unwrap(), expected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_program_runs_on_kafka_by_changing_the_url() {
    let brokers = env("KAFKA_BROKERS", "127.0.0.1:9092");
    if !answers("Kafka", &format!("kafka://{brokers}/x")).await {
        return;
    }
    // A topic of its own, created by the URL; a short session so that the group forms
    // quickly on tansu.
    let url = format!("kafka://{brokers}/{}?session_timeout=6s", name());
    assert_eq!(program(&url).await.unwrap(), expected());
}

#[tokio::test]
async fn an_unknown_scheme_is_named_with_the_schemes_known() {
    let e = msgio::open_topic("carrier-pigeon://127.0.0.1:9092/orders")
        .await
        .unwrap_err();
    let (field, reason) = config_error(&e);
    assert_eq!(field, "url");
    assert!(reason.contains("carrier-pigeon://"), "{reason}");
    assert!(reason.contains("mem"), "{reason}");
    let e = msgio::open_server("not a url", ServerConfig::new())
        .await
        .unwrap_err();
    assert_eq!(config_error(&e).0, "url");
}

#[tokio::test]
async fn a_misspelt_or_bad_parameter_is_named_and_no_credential_shows() {
    // Refused before connecting: no broker needed, and the password never shows.
    let secret = "pa55w0rd-SECRET";
    let cases = [
        (
            format!("redis://app:{secret}@127.0.0.1:6379/orders?grup=billing"),
            "url",
            "grup",
        ),
        (
            format!("redis://app:{secret}@127.0.0.1:6379/orders?block=soon"),
            "block",
            "soon",
        ),
        (
            format!("redis://app:{secret}@127.0.0.1:6379/orders?db=-1"),
            "db",
            "-1",
        ),
        (
            format!("redis://app:{secret}@127.0.0.1:6379"),
            "url",
            "stream",
        ),
        (
            format!("redis://app:{secret}@127.0.0.1:6379/o?group=a&group=b"),
            "group",
            "more than once",
        ),
        (
            format!("nats://app:{secret}@127.0.0.1:4222/orders.new?retention=forever"),
            "retention",
            "forever",
        ),
        (
            format!("nats://app:{secret}@127.0.0.1:4222/orders.new?durable=a.b"),
            "durable",
            "a.b",
        ),
        (
            format!("nats://app:{secret}@127.0.0.1:4222/"),
            "url",
            "subject",
        ),
        (
            format!("amqp://app:{secret}@127.0.0.1:5672/%2f?queue=q&bind=nocolon"),
            "bind",
            "nocolon",
        ),
        (
            format!("amqp://app:{secret}@127.0.0.1:5672/%2f?durable=maybe&queue=q"),
            "durable",
            "maybe",
        ),
        (
            format!("amqp://app:{secret}@127.0.0.1:5672/%2f?quorum=true"),
            "queue",
            "queue=",
        ),
        ("mem://q?capacity=0".to_owned(), "capacity", "0"),
        ("mem://q/path".to_owned(), "url", "no path"),
    ];
    for (url, want_field, want_text) in cases {
        for e in [
            msgio::open_topic(&url).await.unwrap_err(),
            msgio::open_server(&url, ServerConfig::new())
                .await
                .unwrap_err(),
        ] {
            let (field, reason) = config_error(&e);
            assert_eq!(field, want_field, "{url}: {e}");
            assert!(reason.contains(want_text), "{url}: {e}");
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}

#[tokio::test]
async fn a_server_url_without_its_queue_is_refused() {
    let e = msgio::open_server(
        "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=x",
        ServerConfig::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(config_error(&e).0, "queue", "{e}");
}

#[tokio::test]
async fn a_failed_connection_by_url_shows_no_credential() {
    // Port 1 on loopback: nothing listens.
    let secret = "hunter2-SECRET";
    for url in [
        format!("redis://app:{secret}@127.0.0.1:1/orders"),
        format!("amqp://app:{secret}@127.0.0.1:1/%2f?queue=q"),
        format!("nats://app:{secret}@127.0.0.1:1/orders.new"),
        format!("kafka://app:{secret}@127.0.0.1:1/orders"),
    ] {
        let e = tokio::time::timeout(Duration::from_secs(60), msgio::open_topic(&url))
            .await
            .expect("connecting to a closed port gave up")
            .unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(secret), "{shown}");
    }
}

/// A transport of the test's own, registered under a scheme.
struct Loop;

impl UrlOpener for Loop {
    type Topic = BoxTopic;
    type Server = BoxServer;

    async fn open_topic(&self, url: &Url) -> Result<BoxTopic, Error> {
        // Routes to the in-memory transport, renamed.
        url.query().finish()?;
        msgio::open_topic(&format!("mem://loop-{}", url.host())).await
    }

    async fn open_server(&self, url: &Url, config: ServerConfig) -> Result<BoxServer, Error> {
        url.query().finish()?;
        msgio::open_server(&format!("mem://loop-{}", url.host()), config).await
    }
}

#[tokio::test]
async fn a_transport_of_ones_own_is_registered_and_opened_like_the_others() {
    msgio::url::register("loop", Loop).unwrap();
    let e = msgio::url::register("LOOP", Loop).unwrap_err();
    assert_eq!(config_error(&e).0, "scheme");
    let e = msgio::url::register("not a scheme", Loop).unwrap_err();
    assert_eq!(config_error(&e).0, "scheme");
    let url = format!("loop://{}", name());
    assert_eq!(program(&url).await.unwrap(), expected());

    // A mux of one's own knows only what it was given.
    let mut mux = UrlMux::new();
    mux.register("loop", Loop).unwrap();
    assert_eq!(mux.schemes().collect::<Vec<_>>(), ["loop"]);
    assert!(mux.open_topic("mem://x").await.is_err());
    mux.open_topic("loop://x").await.unwrap();
    let all = UrlMux::with_transports();
    assert!(all.schemes().any(|s| s == "mem"), "{all:?}");
}
