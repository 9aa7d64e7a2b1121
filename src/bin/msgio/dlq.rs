//! `msgio dlq`: the dead letters of a destination, with their reason and attempts; and
//! replaying them, byte for byte, to where they belong.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Args, Subcommand};
use msgio::{Attributes, Context, Error, Message, Topic, keys};

use crate::print::{self, Format};
use crate::subscribe::{self, Disposition, Until};
use crate::{Target, parse_duration};

#[derive(Subcommand, Debug)]
pub(crate) enum DlqCommand {
    /// Print the dead letters, leaving them in place.
    List(ListArgs),
    /// Print the dead letter with this id (its own, or the original message's).
    Show(ShowArgs),
    /// Publish the dead letters to --to as they were, then remove them from the
    /// dead-letter destination.
    Replay(ReplayArgs),
}

#[derive(Args, Debug)]
pub(crate) struct Reading {
    #[command(flatten)]
    target: Target,
    /// Read at most this many.
    #[arg(long)]
    count: Option<u64>,
    /// Stop once none arrived for this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    idle: Duration,
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    reading: Reading,
    /// One JSON object per dead letter.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    reading: Reading,
    /// The id to look for.
    id: String,
    /// As a JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    reading: Reading,
    /// Where to publish them (the destination they came from, usually).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Only dead letters with this attribute value (`key=value`; the reason is the
    /// attribute X-Msgio-Dead-Letter-Reason); repeatable, all must match.
    #[arg(long, value_name = "KEY=VALUE")]
    filter: Vec<String>,
    /// Say what would be replayed; replay and remove nothing.
    #[arg(long)]
    dry_run: bool,
}

pub(crate) async fn run(command: DlqCommand) -> Result<(), Error> {
    match command {
        DlqCommand::List(args) => list(args).await,
        DlqCommand::Show(args) => show(args).await,
        DlqCommand::Replay(args) => replay(args).await,
    }
}

impl Reading {
    fn until(&self) -> Until {
        Until {
            count: self.count,
            idle: Some(self.idle),
        }
    }
}

/// The format `--json` asks for.
fn format(json: bool) -> Format {
    if json { Format::Json } else { Format::Human }
}

async fn list(args: ListArgs) -> Result<(), Error> {
    let format = format(args.json);
    let r = &args.reading;
    let server = r.target.server(subscribe::config(true, r.count)).await?;
    let n = subscribe::read(server, r.until(), move |n, ctx, mut msg| async move {
        let body = msg.body.read_to_bytes(usize::MAX).await?;
        print::print(format, n, &ctx, &msg.attributes, &body);
        Ok(Disposition::Leave)
    })
    .await?;
    eprintln!("{n} dead letter(s) in {}, left in place", r.target.shown());
    Ok(())
}

async fn show(args: ShowArgs) -> Result<(), Error> {
    let format = format(args.json);
    let r = &args.reading;
    let server = r.target.server(subscribe::config(true, r.count)).await?;
    let id = Arc::new(args.id.clone());
    let found = Arc::new(AtomicU64::new(0));
    let seen = found.clone();
    subscribe::read(server, r.until(), move |_, ctx, mut msg| {
        let (id, found) = (id.clone(), seen.clone());
        async move {
            let own = ctx.message_id().map(ToString::to_string);
            let original = msg.attributes.get(keys::MESSAGE_ID).map(str::to_owned);
            if own.as_deref() == Some(id.as_str()) || original.as_deref() == Some(id.as_str()) {
                let n = found.fetch_add(1, Ordering::SeqCst) + 1;
                let body = msg.body.read_to_bytes(usize::MAX).await?;
                print::print(format, n, &ctx, &msg.attributes, &body);
            }
            Ok(Disposition::Leave)
        }
    })
    .await?;
    if found.load(Ordering::SeqCst) == 0 {
        return Err(Error::other(format!(
            "no dead letter with id {:?} in {}",
            args.id,
            r.target.shown()
        )));
    }
    Ok(())
}

/// Whether `attributes` match every `key=value` filter.
fn matches(filters: &[(String, String)], attributes: &Attributes) -> bool {
    filters
        .iter()
        .all(|(k, v)| attributes.get_all(k).any(|have| have == v))
}

async fn replay(args: ReplayArgs) -> Result<(), Error> {
    let filters: Vec<(String, String)> = args
        .filter
        .iter()
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .ok_or_else(|| Error::other(format!("--filter {f:?}: a filter is key=value")))
        })
        .collect::<Result<_, _>>()?;
    let r = &args.reading;
    let to = Target {
        url: args.to.clone(),
        password_file: r.target.password_file.clone(),
    };
    let topic = Arc::new(to.topic().await?);
    // Dead letters left in place (not matching, failed) are held to the end, so the
    // reading is concurrent: they may go back in another order than they were read.
    let server = r.target.server(subscribe::config(true, r.count)).await?;
    let (replayed, skipped, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let counts = (replayed.clone(), skipped.clone(), failed.clone());
    let filters = Arc::new(filters);
    let dry_run = args.dry_run;
    let to_shown = Arc::new(to.shown());
    subscribe::read(server, r.until(), move |_, ctx, mut msg| {
        let (topic, filters, to_shown) = (topic.clone(), filters.clone(), to_shown.clone());
        let (replayed, skipped, failed) = counts.clone();
        async move {
            let id = msg
                .attributes
                .get(keys::MESSAGE_ID)
                .map(str::to_owned)
                .or_else(|| ctx.message_id().map(ToString::to_string))
                .unwrap_or_else(|| "-".to_owned());
            if !matches(&filters, &msg.attributes) {
                skipped.fetch_add(1, Ordering::SeqCst);
                return Ok(Disposition::Leave);
            }
            let attributes = match keys::original_attributes(&msg.attributes) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("msgio: dead letter {id}: {e}; left in place");
                    failed.fetch_add(1, Ordering::SeqCst);
                    return Ok(Disposition::Leave);
                }
            };
            let body = msg.body.read_to_bytes(usize::MAX).await?;
            if dry_run {
                println!("would replay {id} ({} bytes) to {to_shown}", body.len());
                replayed.fetch_add(1, Ordering::SeqCst);
                return Ok(Disposition::Leave);
            }
            // Acked on the dead-letter destination only once the republish is confirmed.
            match topic
                .publish(
                    &Context::background(),
                    Message::from_parts(attributes, body),
                )
                .await
            {
                Ok(()) => {
                    println!("replayed {id} to {to_shown}");
                    replayed.fetch_add(1, Ordering::SeqCst);
                    Ok(Disposition::Ack)
                }
                Err(e) => {
                    eprintln!("msgio: replaying {id} failed: {e}; left in place");
                    failed.fetch_add(1, Ordering::SeqCst);
                    Ok(Disposition::Leave)
                }
            }
        }
    })
    .await?;
    let (replayed, skipped, failed) = (
        replayed.load(Ordering::SeqCst),
        skipped.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
    );
    eprintln!(
        "{} {replayed} dead letter(s) from {} to {}; {skipped} did not match the filter; {failed} failed",
        if dry_run { "would replay" } else { "replayed" },
        r.target.shown(),
        to.shown()
    );
    if failed > 0 {
        return Err(Error::other(format!(
            "{failed} dead letter(s) could not be replayed"
        )));
    }
    Ok(())
}
