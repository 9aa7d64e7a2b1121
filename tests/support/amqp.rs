//! What the RabbitMQ test binaries share: the broker's URL and the kit's transport.

#![allow(dead_code)]

use msgio::amqp::{Amqp, AmqpServer, AmqpTopic, QueueOptions};
use msgio::testing::Transport;
use msgio::{Error, ServerConfig};

pub fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub async fn connect() -> Option<Amqp> {
    let url = url();
    match Amqp::connect(&url).await {
        Ok(amqp) => Some(amqp),
        Err(e) => {
            msgio::testing::skip_or_fail("RabbitMQ", &url, &e);
            None
        }
    }
}

pub fn queue_name() -> String {
    format!("msgio_test_{}", msgio::testing::unique_suffix())
}

pub struct Rabbit {
    pub amqp: Amqp,
}

impl Transport for Rabbit {
    type Destination = String;
    type Topic = AmqpTopic;
    type Server = AmqpServer;

    async fn destination(&self) -> Result<String, Error> {
        let queue = queue_name();
        self.amqp.declare_queue(&QueueOptions::new(&queue)).await?;
        Ok(queue)
    }

    async fn topic(&self, queue: &String) -> Result<AmqpTopic, Error> {
        self.amqp.queue_topic(queue)
    }

    async fn server(&self, queue: &String, config: ServerConfig) -> Result<AmqpServer, Error> {
        self.amqp.server(QueueOptions::new(queue), config).await
    }

    async fn unsettled(&self, queue: &String) -> Result<Option<u64>, Error> {
        // Ready messages: what a consumer held unacknowledged went back to the queue when
        // its channel closed, with its server.
        let connection = lapin::Connection::connect(&url(), lapin::ConnectionProperties::default())
            .await
            .map_err(Error::other)?;
        let channel = connection.create_channel().await.map_err(Error::other)?;
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .map_err(Error::other)?;
        let _ = connection.close(0, "".into()).await;
        Ok(Some(u64::from(declared.message_count())))
    }

    async fn remove(&self, queue: String) -> Result<(), Error> {
        self.amqp.delete_wait_queues("", &queue).await?;
        self.amqp.delete_queue(&queue).await
    }
}
