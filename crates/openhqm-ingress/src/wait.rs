//! Holding a caller until its request is finished: the passthrough ingress
//! and long-polls on `/api/v1/response/{id}` share this.

use std::time::Duration;

use openhqm_core::RequestRecord;

use crate::ApiState;

/// How long the last read of a wait may take.
const LAST_LOOK: Duration = Duration::from_secs(1);

/// Waits until the record is terminal, the wait runs out, or the process
/// starts shutting down; returns the freshest record (read again when the
/// wait ran out: it may have moved on from PENDING meanwhile), and whether
/// the wait asked for held (RFC 7240's `Preference-Applied`): it did for a
/// request already finished and for a wait of 0, answered at once; not with
/// `server.max_waiting` callers already waiting, the store failing, or a
/// shutdown cutting it short.
///
/// The request is stored whatever happens here, so a store that fails while
/// we wait is not an error for the caller: it gets the status it has, with
/// the `Location` to follow it.
pub(crate) async fn wait_for_answer(
    state: &ApiState,
    record: RequestRecord,
    wait: Duration,
) -> (RequestRecord, bool) {
    if record.status.is_terminal() || wait.is_zero() {
        return (record, true);
    }
    let Ok(_permit) = state.waiting.try_acquire() else {
        return (record, false);
    };
    let mut stopping = state.stopping.clone();
    let id = record.correlation_id;
    let stopped = async move {
        if stopping.wait_for(|stop| *stop).await.is_err() {
            // No one can signal a stop any more: it never comes.
            std::future::pending::<()>().await;
        }
    };
    // Finished, or the latest status: one read either way, and a short one,
    // so a store that stopped answering holds no caller past its wait.
    let latest = || async {
        match tokio::time::timeout(LAST_LOOK, state.store.get(id)).await {
            Ok(Ok(Some(now))) => Some(now),
            _ => None,
        }
    };
    let (found, held) = tokio::select! {
        r = state.store.wait_terminal(id, wait) => match r {
            Ok(Some(done)) => (Some(done), true),
            Ok(None) => (latest().await, true),
            Err(e) => {
                tracing::warn!(correlation_id = %id, error = %e, "waiting for a result failed; answering with the status");
                (None, false)
            }
        },
        // Shutting down: one last look, then hand out the Location. The
        // wait was cut short, so it is not reported as applied.
        () = stopped => (latest().await, false),
    };
    (found.unwrap_or(record), held)
}
