//! The conformance suite against the Redis Streams queue, on a private
//! `redis-server` per test (see `openhqm-redis-testkit`).
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use openhqm_queue::QueueBackend;
use openhqm_queue::backends::redis::{RedisQueue, RedisQueueConfig};
use openhqm_queue::conformance::Harness;
use openhqm_redis_testkit::RedisServer;

struct Redis {
    server: RedisServer,
}

impl Redis {
    fn new() -> Self {
        Self {
            server: RedisServer::start(),
        }
    }
}

#[async_trait]
impl Harness for Redis {
    async fn open(&self) -> Arc<dyn QueueBackend> {
        let config = RedisQueueConfig {
            url: self.server.url(),
            stream: "conformance".into(),
            group: "openhqm-workers".into(),
            consumer: "conformance-consumer".into(),
            dead_letter_stream: "conformance-dlq".into(),
            lease: self.lease(),
            max_payload: 64 * 1024,
            trim_older_than: None,
        };
        Arc::new(RedisQueue::open(config).await.expect("open redis queue"))
    }

    async fn restart(&self, queue: Arc<dyn QueueBackend>) -> Arc<dyn QueueBackend> {
        queue.close().await;
        drop(queue);
        self.open().await
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(400)
    }
}

openhqm_queue::conformance_tests!(Redis::new());
