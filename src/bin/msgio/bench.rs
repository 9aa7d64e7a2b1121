//! `msgio bench`: publish N messages of a size with concurrent publishers to a running
//! server; print msgs/s and the publish-to-receive latency percentiles.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use msgio::{Context, Error, Message, ReceiverFunc, Server, ServerConfig, Topic};

use crate::Target;

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    target: Target,
    /// How many messages.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    messages: u64,
    /// The body's size in bytes (at least 16: a run id and a timestamp).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// The server's concurrency.
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// Concurrent publishers.
    #[arg(long, short = 'p', default_value_t = 16)]
    publishers: u64,
    /// Only publish (no server runs); the latency is then each publish's, until the
    /// broker took the message.
    #[arg(long)]
    publish_only: bool,
}

pub(crate) async fn run(args: BenchArgs) -> Result<(), Error> {
    if args.messages == 0 || args.publishers == 0 || args.concurrency == 0 {
        return Err(Error::other(
            "--messages, --publishers and --concurrency must be at least 1",
        ));
    }
    let size = args.size.max(16);
    let run_id: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let base = Instant::now();
    let n = args.messages;

    let received = Arc::new(AtomicU64::new(0));
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(Error::other)?,
    ));
    let done = Arc::new(tokio::sync::Notify::new());
    let receiver = {
        let (received, histogram, done) = (received.clone(), histogram.clone(), done.clone());
        ReceiverFunc::new(move |_: Context, mut msg: Message| {
            let (received, histogram, done) = (received.clone(), histogram.clone(), done.clone());
            async move {
                let body = msg.body.read_to_bytes(usize::MAX).await?;
                // Another run's message (or anything else) is acked and not counted.
                let ours = body.len() >= 16 && body[..8] == run_id.to_le_bytes();
                if ours {
                    let mut sent = [0u8; 8];
                    sent.copy_from_slice(&body[8..16]);
                    let sent = Duration::from_nanos(u64::from_le_bytes(sent));
                    let micros = base.elapsed().saturating_sub(sent).as_micros();
                    let _ = histogram.lock().unwrap_or_else(|p| p.into_inner()).record(
                        u64::try_from(micros)
                            .unwrap_or(u64::MAX)
                            .clamp(1, 60_000_000),
                    );
                    if received.fetch_add(1, Ordering::SeqCst) + 1 == n {
                        done.notify_one();
                    }
                }
                Ok(())
            }
        })
    };
    let publish_only = args.publish_only;
    let server = if publish_only {
        None
    } else {
        Some(
            args.target
                .server(ServerConfig::new().concurrency(args.concurrency))
                .await?,
        )
    };
    let topic = Arc::new(args.target.topic().await?);
    let task = server
        .clone()
        .map(|serving| tokio::spawn(async move { serving.serve(receiver).await }));

    let progress = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{msg:9} [{bar:40}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message("publish");
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for _ in 0..args.publishers {
        let (topic, next, progress, histogram) = (
            topic.clone(),
            next.clone(),
            progress.clone(),
            histogram.clone(),
        );
        publishers.push(tokio::spawn(async move {
            let ctx = Context::background();
            let mut body = vec![b'x'; size];
            body[..8].copy_from_slice(&run_id.to_le_bytes());
            loop {
                let seq = next.fetch_add(1, Ordering::SeqCst);
                if seq >= n {
                    return Ok::<(), Error>(());
                }
                let sent = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
                body[8..16].copy_from_slice(&sent.to_le_bytes());
                let mut msg = Message::new(body.clone());
                msg.attributes
                    .set("Content-Type", "application/octet-stream");
                msg.attributes.set("X-Seq", seq.to_string());
                let publishing = Instant::now();
                topic.publish(&ctx, msg).await?;
                if publish_only {
                    let micros = publishing.elapsed().as_micros();
                    let _ = histogram.lock().unwrap_or_else(|p| p.into_inner()).record(
                        u64::try_from(micros)
                            .unwrap_or(u64::MAX)
                            .clamp(1, 60_000_000),
                    );
                }
                progress.inc(1);
            }
        }));
    }
    for p in publishers {
        p.await.map_err(Error::other)??;
    }
    let published_in = started.elapsed();
    if publish_only {
        progress.finish_and_clear();
        let h = histogram.lock().unwrap_or_else(|p| p.into_inner());
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{} : {n} messages of {size} bytes, {} publishers, publish only",
            args.target.shown(),
            args.publishers
        );
        println!(
            "  publish   {:>10.0} msgs/s ({:.2} s)",
            n as f64 / published_in.as_secs_f64(),
            published_in.as_secs_f64()
        );
        println!(
            "  publish latency   p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0
        );
        return Ok(());
    }
    let (Some(server), Some(task)) = (server, task) else {
        return Ok(());
    };
    progress.set_message("receive");
    progress.set_position(received.load(Ordering::SeqCst));
    let waiting = async {
        loop {
            tokio::select! {
                () = done.notified() => return,
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    let got = received.load(Ordering::SeqCst);
                    progress.set_position(got);
                    if got >= n {
                        return;
                    }
                }
            }
        }
    };
    let timed_out = tokio::time::timeout(Duration::from_secs(120), waiting)
        .await
        .is_err();
    let total = started.elapsed();
    progress.finish_and_clear();
    server.shutdown(Duration::from_secs(5)).await?;
    let _ = task.await;
    let got = received.load(Ordering::SeqCst);
    if timed_out {
        return Err(Error::other(format!(
            "only {got} of {n} messages arrived within 120 s of the last publish"
        )));
    }
    let h = histogram.lock().unwrap_or_else(|p| p.into_inner());
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{} : {n} messages of {size} bytes, {} publishers, server concurrency {}",
        args.target.shown(),
        args.publishers,
        args.concurrency
    );
    println!(
        "  publish   {:>10.0} msgs/s ({:.2} s)",
        n as f64 / published_in.as_secs_f64(),
        published_in.as_secs_f64()
    );
    println!(
        "  end to end{:>10.0} msgs/s ({:.2} s)",
        n as f64 / total.as_secs_f64(),
        total.as_secs_f64()
    );
    println!(
        "  latency   p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    Ok(())
}
