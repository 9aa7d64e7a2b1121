//! A durable spool-directory transport, written only against msgio's public API (its
//! `transport` and `url` modules): the proof that a transport outside the crate gets
//! everything the built-in ones have. `tests/custom_transport.rs` runs the conformance kit
//! on it.
//!
//! # Layout
//!
//! One file per message under a root directory:
//!
//! - `tmp/`: a message being published, written whole and synced before it is renamed into
//!   `ready/` (a rename within one file system is atomic, so a reader never sees half a
//!   message, and a crash mid-write leaves only a file in `tmp/`);
//! - `ready/<due>-<seq>-<pid>-<random>`: waiting, named so that sorting the names gives
//!   the order to deliver in (due time in milliseconds since the epoch, then a sequence);
//! - `claimed/<name>`: taken by a server, by renaming it out of `ready/`: of several
//!   servers (threads or processes) on one directory, the one whose rename succeeds has it;
//! - `dead/<name>`: rejected with no dead-letter topic set.
//!
//! A file is the magic `MSGIOSP1`, the attempt number, the attributes (each key and value
//! length-prefixed, in order) and the body. Ack removes the claimed file; a retry writes
//! the next attempt number into it and renames it back into `ready/` under its due time; a
//! delay is the due time in the name. A claimed file whose lease (60 s by default) passed
//! is taken back by any server: what a crashed process held is delivered again (with the
//! same attempt number: a crash is not a failed attempt).

use std::fmt;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use msgio::transport::{
    Delivery, Engine, Outgoing, Sender, SenderTopic, Settle, Settlement, Source,
};
use msgio::url::{Url, UrlOpener};
use msgio::{Attributes, Context, Error, ServerConfig};

const MAGIC: &[u8; 8] = b"MSGIOSP1";
/// How often an idle server looks for new files.
const POLL: Duration = Duration::from_millis(20);
/// How often a server looks for claimed files whose lease passed.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);

/// A spool directory: makes topics and servers on it.
#[derive(Clone, Debug)]
pub struct Spool {
    root: PathBuf,
    lease: Duration,
}

/// A topic writing to a spool directory.
pub type SpoolTopic = SenderTopic<SpoolSender>;

/// A server taking from a spool directory: the delivery engine over a [`SpoolSource`].
pub type SpoolServer = Engine<SpoolSource>;

impl Spool {
    /// Opens the spool at `root`, creating its directories when missing.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when a directory cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Spool, Error> {
        let root = root.into();
        for dir in ["tmp", "ready", "claimed", "dead"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Spool {
            root,
            lease: Duration::from_secs(60),
        })
    }

    /// How long a server may hold a message before another takes it back (default 60 s).
    pub fn lease(mut self, lease: Duration) -> Spool {
        self.lease = lease;
        self
    }

    /// A topic writing to this spool.
    pub fn topic(&self) -> SpoolTopic {
        SenderTopic::new(SpoolSender {
            root: self.root.clone(),
        })
    }

    /// A server taking from this spool.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a `config` out of range.
    pub fn server(&self, config: ServerConfig) -> Result<SpoolServer, Error> {
        let source = SpoolSource {
            name: self.root.display().to_string(),
            root: self.root.clone(),
            lease: self.lease,
            next_reclaim: Mutex::new(Instant::now()),
        };
        Engine::new(source, config)
    }

    /// How many messages wait or are claimed (not the dead ones).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when a directory cannot be read.
    pub fn len(&self) -> Result<usize, Error> {
        Ok(std::fs::read_dir(self.root.join("ready"))?.count()
            + std::fs::read_dir(self.root.join("claimed"))?.count())
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Writes whole messages into a spool: the [`Sender`] of a [`SpoolTopic`].
#[derive(Debug)]
pub struct SpoolSender {
    root: PathBuf,
}

impl Sender for SpoolSender {
    async fn send(&self, ctx: &Context, message: Outgoing) -> Result<(), Error> {
        let contents = encode(1, &message.attributes, &message.body)?;
        let name = file_name(now_ms().saturating_add(millis(message.delay.unwrap_or_default())));
        let root = self.root.clone();
        let write = blocking(move || {
            let tmp = root.join("tmp").join(&name);
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&contents)?;
            file.sync_all()?;
            std::fs::rename(&tmp, root.join("ready").join(&name))?;
            // The rename itself is durable once the directory is synced.
            std::fs::File::open(root.join("ready"))?.sync_all()
        });
        ctx.unless_cancelled(write).await
    }
}

/// The engine [`Source`] of a [`SpoolServer`].
pub struct SpoolSource {
    name: String,
    root: PathBuf,
    lease: Duration,
    next_reclaim: Mutex<Instant>,
}

impl fmt::Debug for SpoolSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolSource")
            .field("root", &self.root)
            .finish()
    }
}

/// Settles a delivery of a [`SpoolSource`]: the claimed file's name.
#[derive(Debug)]
pub struct SpoolToken {
    name: String,
    attempt: u32,
}

impl Source for SpoolSource {
    type Token = SpoolToken;

    fn name(&self) -> &str {
        &self.name
    }

    async fn fetch(&self, max: usize, out: &mut Vec<Delivery<SpoolToken>>) -> Result<(), Error> {
        let reclaim = {
            let mut next = self.next_reclaim.lock().unwrap_or_else(|e| e.into_inner());
            let due = Instant::now() >= *next;
            if due {
                *next = Instant::now() + RECLAIM_EVERY;
            }
            due
        };
        let (root, lease) = (self.root.clone(), self.lease);
        let (taken, next_due) = blocking(move || {
            if reclaim {
                take_back_expired(&root, lease)?;
            }
            claim(&root, max)
        })
        .await?;
        if taken.is_empty() {
            // Nothing due: wait a little (or until the next delayed one), then let the
            // engine ask again.
            let wait = next_due.map_or(POLL, |due| {
                Duration::from_millis(due.saturating_sub(now_ms())).min(POLL)
            });
            tokio::time::sleep(wait).await;
            return Ok(());
        }
        for (name, contents) in taken {
            out.push(delivery(name, contents));
        }
        Ok(())
    }

    async fn settle(&self, batch: &mut Vec<Settlement<SpoolToken>>) -> Result<(), Error> {
        let root = self.root.clone();
        let settlements = std::mem::take(batch);
        let failed = blocking(move || {
            let mut failed = Vec::new();
            for settlement in settlements {
                if let Err(e) = settle_one(&root, &settlement.token, &settlement.action) {
                    failed.push((settlement, e));
                }
            }
            Ok(failed)
        })
        .await?;
        // What failed stays in the batch, for the engine to retry.
        let mut first_error = None;
        for (settlement, e) in failed {
            first_error.get_or_insert(e);
            batch.push(settlement);
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(Error::from(e)),
        }
    }
}

/// Applies one settlement to the claimed file.
fn settle_one(root: &Path, token: &SpoolToken, action: &Settle) -> io::Result<()> {
    let claimed = root.join("claimed").join(&token.name);
    let result = match action {
        Settle::Ack => std::fs::remove_file(&claimed),
        Settle::Reject => std::fs::rename(&claimed, root.join("dead").join(&token.name)),
        Settle::Release => std::fs::rename(&claimed, root.join("ready").join(&token.name)),
        Settle::Defer { delay } => std::fs::rename(
            &claimed,
            root.join("ready").join(renamed(&token.name, Some(*delay))),
        ),
        Settle::Nack { delay } => {
            // The next attempt: its number into the file, then back under its due time.
            let mut file = std::fs::OpenOptions::new().write(true).open(&claimed)?;
            file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
            file.write_all(&token.attempt.saturating_add(1).to_le_bytes())?;
            file.sync_data()?;
            std::fs::rename(
                &claimed,
                root.join("ready").join(renamed(&token.name, *delay)),
            )
        }
        // A settlement a newer msgio may add: leave the file for the lease to take back.
        _ => Ok(()),
    };
    match result {
        // Taken back after its lease by another server meanwhile: that one has it now.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Claims up to `max` due files from `ready/`, oldest first; also gives the due time of
/// the first one not due yet.
#[allow(clippy::type_complexity)]
fn claim(root: &Path, max: usize) -> io::Result<(Vec<(String, Vec<u8>)>, Option<u64>)> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("ready"))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    names.sort_unstable();
    let now = now_ms();
    let mut taken = Vec::new();
    for name in names {
        if taken.len() == max {
            break;
        }
        let due = due_of(&name);
        if due > now {
            return Ok((taken, Some(due)));
        }
        let claimed = root.join("claimed").join(&name);
        match std::fs::rename(root.join("ready").join(&name), &claimed) {
            Ok(()) => {}
            // Another server claimed it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        // The lease starts now (a rename keeps the old modification time).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&claimed)?
            .set_modified(SystemTime::now())?;
        let contents = std::fs::read(&claimed)?;
        taken.push((name, contents));
    }
    Ok((taken, None))
}

/// Renames claimed files whose lease passed back into `ready/`.
fn take_back_expired(root: &Path, lease: Duration) -> io::Result<()> {
    let claimed = root.join("claimed");
    for entry in std::fs::read_dir(&claimed)? {
        let Ok(entry) = entry else { continue };
        let expired = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|held| held > lease);
        if expired {
            match std::fs::rename(entry.path(), root.join("ready").join(entry.file_name())) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// A delivery of a claimed file, or a malformed one when it does not decode (the engine
/// then dead-letters it rather than handing it to the receiver).
fn delivery(name: String, contents: Vec<u8>) -> Delivery<SpoolToken> {
    match decode(&contents) {
        Ok((attempt, attributes, body)) => Delivery::new(
            SpoolToken {
                name: name.clone(),
                attempt,
            },
            body,
        )
        .with_attributes(attributes)
        .with_attempt(attempt)
        .with_message_id(name),
        Err(reason) => {
            let body = Bytes::from(contents);
            Delivery::malformed(
                SpoolToken { name, attempt: 1 },
                reason,
                Attributes::new(),
                body,
            )
        }
    }
}

fn encode(attempt: u32, attributes: &Attributes, body: &[u8]) -> Result<Vec<u8>, Error> {
    let too_long = |what: &str| Error::other(format!("a {what} longer than 4 GiB"));
    let mut out = Vec::with_capacity(64 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&attempt.to_le_bytes());
    let count = u32::try_from(attributes.iter().count()).map_err(|_| too_long("attribute list"))?;
    out.extend_from_slice(&count.to_le_bytes());
    for (key, value) in attributes.iter() {
        for part in [key, value] {
            let len = u32::try_from(part.len()).map_err(|_| too_long("attribute"))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.extend_from_slice(body);
    Ok(out)
}

fn decode(contents: &[u8]) -> Result<(u32, Attributes, Bytes), String> {
    let mut rest = contents
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a spool file (no MSGIOSP1 header)")?;
    let mut u32_field = |what: &str| -> Result<u32, String> {
        let (bytes, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("the file ends inside its {what}"))?;
        rest = tail;
        Ok(u32::from_le_bytes(*bytes))
    };
    let attempt = u32_field("attempt number")?;
    let count = u32_field("attribute count")?;
    let mut attributes = Attributes::new();
    for _ in 0..count {
        let mut text = || -> Result<String, String> {
            let (bytes, tail) = rest
                .split_first_chunk::<4>()
                .ok_or("the file ends inside its attributes")?;
            let len = u32::from_le_bytes(*bytes) as usize;
            if tail.len() < len {
                return Err("the file ends inside its attributes".to_owned());
            }
            let (text, tail) = tail.split_at(len);
            rest = tail;
            String::from_utf8(text.to_vec()).map_err(|_| "an attribute is not UTF-8".to_owned())
        };
        let key = text()?;
        let value = text()?;
        attributes.add(key, value);
    }
    Ok((attempt.max(1), attributes, Bytes::copy_from_slice(rest)))
}

/// `<due>-<seq>-<pid>-<random>`: sorts by due time, then publish order in this process.
fn file_name(due_ms: u64) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new();
    let random = std::hash::BuildHasher::hash_one(&random, seq);
    format!(
        "{due_ms:020}-{seq:020}-{}-{:016x}",
        std::process::id(),
        random
    )
}

/// `name` with a new due time: now, plus `delay`.
fn renamed(name: &str, delay: Option<Duration>) -> String {
    let rest = name.split_once('-').map_or(name, |(_, rest)| rest);
    let due = now_ms().saturating_add(millis(delay.unwrap_or_default()));
    format!("{due:020}-{rest}")
}

fn due_of(name: &str) -> u64 {
    name.split('-')
        .next()
        .and_then(|due| due.parse().ok())
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs file-system work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Error::from),
        Err(e) => Err(Error::other(format!("spool file work failed: {e}"))),
    }
}

/// Opens `spool:///<absolute directory>[?lease=<duration>]` URLs; register it with
/// `msgio::url::register("spool", SpoolOpener)`.
#[derive(Debug)]
pub struct SpoolOpener;

impl SpoolOpener {
    fn spool(url: &Url) -> Result<Spool, Error> {
        let mut query = url.query();
        let lease = query.duration("lease")?;
        query.finish_known(&["lease"])?;
        if !url.host().is_empty() || url.path().is_empty() {
            return Err(url.invalid(
                "url",
                "a spool URL is spool:///<absolute directory> (three slashes, no host)",
            ));
        }
        let spool = Spool::open(format!("/{}", url.path()))?;
        Ok(match lease {
            Some(lease) => spool.lease(lease),
            None => spool,
        })
    }
}

impl UrlOpener for SpoolOpener {
    type Topic = SpoolTopic;
    type Server = SpoolServer;

    async fn open_topic(&self, url: &Url) -> Result<SpoolTopic, Error> {
        Ok(Self::spool(url)?.topic())
    }

    async fn open_server(&self, url: &Url, config: ServerConfig) -> Result<SpoolServer, Error> {
        Self::spool(url)?.server(config)
    }
}
