//! `CallbackSink` on the real embedded queue: what a job carries, and that a
//! message from a foreign producer (which never went through submit's check)
//! cannot make OpenHQM queue a call to a host off the allow-list.

use std::sync::Arc;
use std::time::Duration;

use openhqm_callbacks::{CallbackJob, CallbackPolicy, CallbackSink, EndpointCallbacks};
use openhqm_core::{CorrelationId, Envelope, RequestRecord, RequestStatus, ResultData};
use openhqm_embedded::{EmbeddedDb, Options};
use openhqm_metrics::Metrics;
use openhqm_queue::QueueBackend;
use openhqm_queue::backends::embedded::{EmbeddedQueue, EmbeddedQueueConfig};
use openhqm_worker::CompletionSink;
use serde_json::{Value, json};

fn envelope(metadata: Value) -> Envelope {
    Envelope::from_json(
        json!({"correlation_id": CorrelationId::new(), "payload": 1, "metadata": metadata})
            .to_string()
            .as_bytes(),
    )
    .expect("envelope")
}

fn finished(env: &Envelope) -> RequestRecord {
    RequestRecord {
        status: RequestStatus::Completed,
        outcome: Some(Box::new(ResultData {
            result: Some(json!({"ok": true})),
            completed_at_ms: Some(1_700_000_000_000),
            ..ResultData::default()
        })),
        ..RequestRecord::pending(env.correlation_id, 1_700_000_000_000)
    }
}

#[tokio::test]
async fn jobs_carry_the_response_json_and_only_allowed_urls_are_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = EmbeddedDb::open(dir.path(), &Options::default()).expect("db");
    let queue: Arc<dyn QueueBackend> = Arc::new(
        EmbeddedQueue::open(
            db.clone(),
            EmbeddedQueueConfig {
                name: "callbacks".into(),
                dead_letter_name: "callbacks-dlq".into(),
                lease: Duration::from_secs(5),
                max_payload: 1 << 20,
            },
        )
        .expect("queue"),
    );
    let metrics = Metrics::new();
    let sink = CallbackSink::new(
        Arc::clone(&queue),
        CallbackPolicy::new(&["hooks.example.com"]).expect("policy"),
        EndpointCallbacks {
            urls: [(
                "orders".to_owned(),
                "https://hooks.example.com/orders".to_owned(),
            )]
            .into(),
            default_endpoint: None,
        },
        (metrics.queue("callbacks"), metrics.callbacks()),
    );

    // A foreign producer's message naming any host: nothing is queued.
    let foreign = envelope(json!({"callback_url": "http://169.254.169.254/latest"}));
    sink.finished(&foreign, &finished(&foreign))
        .await
        .expect("skipped, not failed");
    // No callback asked for: nothing either.
    let plain = envelope(json!({}));
    sink.finished(&plain, &finished(&plain)).await.expect("ok");
    assert_eq!(queue.depth().await.expect("depth"), 0);

    // Its own URL, and its endpoint's.
    let own =
        envelope(json!({"callback_url": "https://hooks.example.com/a?b=c", "endpoint": "orders"}));
    let via_endpoint = envelope(json!({"endpoint": "orders"}));
    for env in [&own, &via_endpoint] {
        sink.finished(env, &finished(env)).await.expect("queued");
    }
    let deliveries = queue
        .receive(10, Duration::from_secs(1))
        .await
        .expect("receive");
    assert_eq!(deliveries.len(), 2);
    for (delivery, (env, url)) in deliveries.into_iter().zip([
        (&own, "https://hooks.example.com/a?b=c"),
        (&via_endpoint, "https://hooks.example.com/orders"),
    ]) {
        let job: CallbackJob = serde_json::from_slice(&delivery.message().body).expect("job");
        assert_eq!(job.url, url);
        assert_eq!(job.correlation_id, env.correlation_id);
        assert_eq!(
            job.webhook_id,
            format!("msg_{}_completed", env.correlation_id)
        );
        let body: Value = serde_json::from_str(job.body.get()).expect("json");
        assert_eq!(body, finished(env).response_body());
        delivery.ack().await.expect("ack");
    }
    let text = metrics.render();
    for line in [
        "openhqm_callbacks_deliveries_total{outcome=\"skipped\"} 1",
        "openhqm_callbacks_deliveries_total{outcome=\"enqueued\"} 2",
    ] {
        assert!(text.contains(line), "missing {line}");
    }
    db.close().await;
}
