//! Topic administration: the engine creates what it needs, idempotently.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::ClientConfig;
use std::sync::Mutex;
use std::time::Duration;

/// Why the topics could not be made sure of.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot create topic {topic}: {code}")]
    Create {
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// librdkafka reported it while the request waited (it retries a
    /// refused login on its own, so the request itself only times out).
    #[error("the brokers refused the connection: {0} (check kafka.properties: SASL credentials, TLS certificates)")]
    Refused(String),
}

impl TopicsError {
    /// Worth retrying at start-up: the brokers are not reachable or not
    /// ready yet. Refused credentials, certificates and authorisation are not.
    pub fn is_transient(&self) -> bool {
        match self {
            TopicsError::Kafka(e) => e.rdkafka_error_code().is_none_or(transient),
            TopicsError::Create { code, .. } => transient(*code),
            TopicsError::Refused(_) => false,
        }
    }
}

/// Kafka error codes that a broker coming up (or back) clears by itself.
pub fn transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        BrokerTransportFailure
            | AllBrokersDown
            | Resolve
            | OperationTimedOut
            | MessageTimedOut
            | RequestTimedOut
            | NetworkException
            | LeaderNotAvailable
            | BrokerNotAvailable
            | NotController
            | CoordinatorNotAvailable
            | NotCoordinator
            | KafkaStorageError
    )
}

/// Remembers the first connection refusal librdkafka reports as an error
/// event (authentication or TLS); a request itself only sees a transport
/// failure or a timeout, which would be retried forever.
#[derive(Default)]
struct Refusals(Mutex<Option<String>>);

impl ClientContext for Refusals {
    fn error(&self, error: KafkaError, reason: &str) {
        let refused = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::SSL
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::TopicAuthorizationFailed
            )
        );
        if refused {
            self.0
                .lock()
                .expect("lock")
                .get_or_insert_with(|| reason.to_owned());
        }
    }
}

impl ProducerContext for Refusals {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Connect and read the cluster's metadata; a refused login or handshake
/// is [`TopicsError::Refused`]. Blocking.
fn probe(client: &ClientConfig) -> Result<(), TopicsError> {
    let producer: BaseProducer<Refusals> = client.create_with_context(Refusals::default())?;
    let metadata = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(10));
    // Serves the error events librdkafka queued meanwhile.
    producer.poll(Duration::from_millis(100));
    if let Some(reason) = producer.context().0.lock().expect("lock").take() {
        return Err(TopicsError::Refused(reason));
    }
    metadata?;
    Ok(())
}

/// Create `(name, partitions)` topics that do not exist yet, with a client
/// from [`super::client`]. Connects first, so a refused login fails here
/// with its cause; gives up after about ten seconds otherwise, so a caller
/// retrying at start-up says so early.
pub async fn ensure_topics(
    client: &ClientConfig,
    topics: &[(&str, i32)],
) -> Result<(), TopicsError> {
    let probing = client.clone();
    tokio::task::spawn_blocking(move || probe(&probing))
        .await
        .expect("kafka probe panicked")?;
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, parts)| NewTopic::new(name, *parts, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(&new, &options).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(TopicsError::Create { topic, code }),
        }
    }
    Ok(())
}
