//! The scheme registry: which opener a URL goes to.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use super::Url;
use std::future::Future;

use crate::{BoxFuture, BoxServer, BoxTopic, Error, Server, ServerConfig, Topic};

/// Opens topics and servers for one transport's URLs (gocloud's `TopicURLOpener` and
/// `SubscriptionURLOpener`), registered under its schemes in a [`UrlMux`], which boxes
/// what it opens.
///
/// An opener reads the URL's parameters with [`Url::query`] and calls
/// [`Query::finish_known`](super::Query::finish_known) so that a misspelt parameter is an
/// error, not silently ignored.
///
/// # Examples
///
/// ```
/// use msgio::mem::{MemQueue, MemServer, MemTopic};
/// use msgio::url::{Url, UrlMux, UrlOpener};
/// use msgio::{Error, ServerConfig};
///
/// /// `mine://<queue>`, on the in-memory transport for illustration (a real opener
/// /// connects to its broker here).
/// struct Mine;
///
/// impl UrlOpener for Mine {
///     type Topic = MemTopic;
///     type Server = MemServer;
///
///     async fn open_topic(&self, url: &Url) -> Result<MemTopic, Error> {
///         url.query().finish()?;
///         Ok(MemQueue::named(url.host(), 16)?.topic())
///     }
///
///     async fn open_server(&self, url: &Url, config: ServerConfig) -> Result<MemServer, Error> {
///         url.query().finish()?;
///         MemQueue::named(url.host(), 16)?.server(config)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let mut mux = UrlMux::new();
/// mux.register("mine", Mine)?;
/// let _topic = mux.open_topic("mine://jobs").await?;
/// let e = mux.open_topic("mine://jobs?oops=1").await.unwrap_err();
/// assert!(e.to_string().contains("oops"));
/// # Ok(()) }
/// ```
pub trait UrlOpener: Send + Sync + 'static {
    /// The topic it opens.
    type Topic: Topic<Writer: 'static> + 'static;
    /// The server it opens.
    type Server: Server + 'static;

    /// A topic publishing to the destination `url` names.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a parameter it does not know or cannot use; whatever
    /// connecting gave.
    fn open_topic(&self, url: &Url) -> impl Future<Output = Result<Self::Topic, Error>> + Send;

    /// A server serving from the destination `url` names, configured by `config`.
    ///
    /// # Errors
    ///
    /// As [`open_topic`](UrlOpener::open_topic), and those of `config`.
    fn open_server(
        &self,
        url: &Url,
        config: ServerConfig,
    ) -> impl Future<Output = Result<Self::Server, Error>> + Send;
}

/// The object-safe form of [`UrlOpener`], which the mux keeps.
trait DynOpener: Send + Sync {
    fn open_topic_boxed<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<BoxTopic, Error>>;

    fn open_server_boxed<'a>(
        &'a self,
        url: &'a Url,
        config: ServerConfig,
    ) -> BoxFuture<'a, Result<BoxServer, Error>>;
}

impl<O: UrlOpener> DynOpener for O {
    fn open_topic_boxed<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<BoxTopic, Error>> {
        Box::pin(async move { Ok(BoxTopic::new(self.open_topic(url).await?)) })
    }

    fn open_server_boxed<'a>(
        &'a self,
        url: &'a Url,
        config: ServerConfig,
    ) -> BoxFuture<'a, Result<BoxServer, Error>> {
        Box::pin(async move { Ok(BoxServer::new(self.open_server(url, config).await?)) })
    }
}

/// Schemes and their openers. [`UrlMux::with_transports`] knows every transport compiled
/// in; the process-wide one behind [`open_topic`](crate::open_topic) starts as that, and
/// [`register`] adds to it.
#[derive(Clone, Default)]
pub struct UrlMux {
    openers: BTreeMap<String, Arc<dyn DynOpener>>,
}

impl fmt::Debug for UrlMux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlMux")
            .field("schemes", &self.openers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl UrlMux {
    /// A mux that knows no scheme.
    pub fn new() -> Self {
        Self::default()
    }

    /// A mux that knows the schemes of the transports compiled in: `mem`, `redis`, `nats`
    /// and `amqp`, each with its feature.
    pub fn with_transports() -> Self {
        let mut mux = Self::new();
        crate::backends::register_schemes(&mut mux);
        mux
    }

    /// Sends URLs of `scheme` to `opener`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (field `scheme`) when the scheme is not one (letters,
    /// digits, `+`, `-`, `.`, starting with a letter) or is registered already.
    pub fn register(&mut self, scheme: &str, opener: impl UrlOpener) -> Result<(), Error> {
        self.register_arc(scheme, Arc::new(opener))
    }

    /// Adds a built-in transport's opener (its scheme is known to be valid and new).
    #[allow(dead_code)] // with no transport feature on
    pub(crate) fn insert(&mut self, scheme: &'static str, opener: impl UrlOpener) {
        self.openers.insert(scheme.to_owned(), Arc::new(opener));
    }

    fn register_arc(&mut self, scheme: &str, opener: Arc<dyn DynOpener>) -> Result<(), Error> {
        if !super::parse::valid_scheme(scheme) {
            return Err(Error::invalid_config(
                "scheme",
                format!("{scheme:?} is not a URL scheme"),
            ));
        }
        let scheme = scheme.to_ascii_lowercase();
        if self.openers.contains_key(&scheme) {
            return Err(Error::invalid_config(
                "scheme",
                format!("{scheme}:// is registered already"),
            ));
        }
        self.openers.insert(scheme, opener);
        Ok(())
    }

    /// The schemes this mux knows, in order.
    pub fn schemes(&self) -> impl Iterator<Item = &str> {
        self.openers.keys().map(String::as_str)
    }

    fn opener(&self, url: &Url) -> Result<Arc<dyn DynOpener>, Error> {
        self.openers.get(url.scheme()).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.schemes().collect();
            url.invalid(
                "url",
                format!(
                    "no transport for {}:// (known here: {}; a transport's scheme needs its cargo feature)",
                    url.scheme(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
    }

    /// Opens a topic for `url` with the opener of its scheme.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that does not parse, an unknown scheme, or a
    /// parameter the transport refuses; whatever connecting gave. None shows credentials.
    pub async fn open_topic(&self, url: &str) -> Result<BoxTopic, Error> {
        let url = Url::parse(url)?;
        let opener = self.opener(&url)?;
        opener.open_topic_boxed(&url).await
    }

    /// Opens a server for `url` with the opener of its scheme.
    ///
    /// # Errors
    ///
    /// As [`open_topic`](UrlMux::open_topic), and those of `config`.
    pub async fn open_server(&self, url: &str, config: ServerConfig) -> Result<BoxServer, Error> {
        let url = Url::parse(url)?;
        let opener = self.opener(&url)?;
        opener.open_server_boxed(&url, config).await
    }
}

fn global() -> &'static RwLock<UrlMux> {
    static GLOBAL: OnceLock<RwLock<UrlMux>> = OnceLock::new();
    GLOBAL.get_or_init(|| RwLock::new(UrlMux::with_transports()))
}

fn global_snapshot() -> UrlMux {
    // A poisoned lock still holds a whole map: registering cannot panic half-way.
    global().read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Adds `opener` under `scheme` to the process-wide mux that [`open_topic`] and
/// [`open_server`] use.
///
/// # Errors
///
/// As [`UrlMux::register`]: a malformed or already registered scheme.
pub fn register(scheme: &str, opener: impl UrlOpener) -> Result<(), Error> {
    let opener: Arc<dyn DynOpener> = Arc::new(opener);
    global()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .register_arc(scheme, opener)
}

/// Opens a topic for `url`, with the transport registered under its scheme (see the
/// [`url`](crate::url) module for each transport's URL).
///
/// # Errors
///
/// [`Error::InvalidConfig`] for a URL that does not parse, an unknown scheme, or a
/// parameter the transport refuses; whatever connecting gave. None shows credentials.
///
/// # Examples
///
/// ```
/// use msgio::{Context, Message, Topic};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), msgio::Error> {
/// let topic = msgio::open_topic("mem://greetings?capacity=64").await?;
/// topic.publish(&Context::background(), Message::new("hello")).await?;
///
/// let e = msgio::open_topic("carrier-pigeon://loft").await.unwrap_err();
/// assert!(e.to_string().contains("carrier-pigeon"));
/// # Ok(()) }
/// ```
pub async fn open_topic(url: &str) -> Result<BoxTopic, Error> {
    let mux = global_snapshot();
    mux.open_topic(url).await
}

/// Opens a server for `url`, with the transport registered under its scheme (see the
/// [`url`](crate::url) module for each transport's URL).
///
/// # Errors
///
/// As [`open_topic`], and those of `config`.
///
/// # Examples
///
/// ```
/// use msgio::{Context, Message, ReceiverFunc, Server, ServerConfig, Topic};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), msgio::Error> {
/// let url = "mem://jobs";
/// let server = msgio::open_server(url, ServerConfig::new().concurrency(8)).await?;
/// let topic = msgio::open_topic(url).await?;
/// topic.publish(&Context::background(), Message::new("job 1")).await?;
///
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let serving = server.clone();
/// let task = tokio::spawn(async move {
///     serving
///         .serve(ReceiverFunc::new(move |_: Context, mut m: Message| {
///             let tx = tx.clone();
///             async move {
///                 tx.send(m.body.read_to_bytes(1024).await?).ok();
///                 Ok(())
///             }
///         }))
///         .await
/// });
/// assert_eq!(rx.recv().await.unwrap(), "job 1");
/// server.shutdown(Duration::from_secs(5)).await?;
/// # let _ = task.await;
/// # Ok(()) }
/// ```
pub async fn open_server(url: &str, config: ServerConfig) -> Result<BoxServer, Error> {
    let mux = global_snapshot();
    mux.open_server(url, config).await
}
