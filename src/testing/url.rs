//! The kit against a transport opened by URL.

use std::fmt;
use std::sync::Arc;

use super::Transport;
use crate::url::UrlMux;
use crate::{BoxFuture, BoxServer, BoxTopic, Error, ServerConfig};

/// What removes a destination the kit is done with, given its URL.
type RemoveFn = Arc<dyn Fn(String) -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

/// A [`Transport`] whose topics and servers are opened by URL, through
/// [`open_topic`](crate::open_topic) and [`open_server`](crate::open_server) or a
/// [`UrlMux`] of your own: the kit then proves what a program that only knows a URL gets.
///
/// The URL is a template: each destination replaces `{name}` in it with a new name
/// (`kit` and a random hex suffix: letters and digits only, valid for every broker).
///
/// ```
/// use msgio::testing::{Capabilities, UrlTransport};
///
/// # #[tokio::main]
/// # async fn main() {
/// let transport = UrlTransport::new("mem://{name}?capacity=10000");
/// let caps = Capabilities::new().ordering().delay().dead_letter().persistence().consumer_groups();
/// msgio::testing::run(transport, caps).await.assert_passed();
/// # }
/// ```
#[derive(Clone)]
pub struct UrlTransport {
    template: String,
    mux: Option<UrlMux>,
    remove: Option<RemoveFn>,
}

impl fmt::Debug for UrlTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlTransport")
            .field("template", &crate::redact::url(&self.template))
            .field("mux", &self.mux)
            .finish()
    }
}

impl UrlTransport {
    /// Opens destinations from `template`, whose `{name}` each destination replaces, with
    /// the process-wide registry of schemes.
    pub fn new(template: impl Into<String>) -> Self {
        UrlTransport {
            template: template.into(),
            mux: None,
            remove: None,
        }
    }

    /// Opens with `mux` instead of the process-wide registry.
    pub fn mux(mut self, mux: UrlMux) -> Self {
        self.mux = Some(mux);
        self
    }

    /// Removes what a destination left on the broker once its case is done (a stream, a
    /// queue), given its URL; by default nothing is removed.
    pub fn remove_with<F, Fut>(mut self, remove: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), Error>> + Send + 'static,
    {
        self.remove = Some(Arc::new(move |url| Box::pin(remove(url))));
        self
    }
}

impl Transport for UrlTransport {
    type Destination = String;
    type Topic = BoxTopic;
    type Server = BoxServer;

    async fn destination(&self) -> Result<String, Error> {
        if !self.template.contains("{name}") {
            return Err(Error::invalid_config(
                "template",
                format!(
                    "{} has no {{name}} for the kit to fill in",
                    crate::redact::url(&self.template)
                ),
            ));
        }
        let name = format!("kit{}", super::unique_suffix());
        Ok(self.template.replace("{name}", &name))
    }

    async fn topic(&self, url: &String) -> Result<BoxTopic, Error> {
        match &self.mux {
            Some(mux) => mux.open_topic(url).await,
            None => crate::open_topic(url).await,
        }
    }

    async fn server(&self, url: &String, config: ServerConfig) -> Result<BoxServer, Error> {
        match &self.mux {
            Some(mux) => mux.open_server(url, config).await,
            None => crate::open_server(url, config).await,
        }
    }

    async fn remove(&self, url: String) -> Result<(), Error> {
        match &self.remove {
            Some(remove) => remove(url).await,
            None => Ok(()),
        }
    }
}
