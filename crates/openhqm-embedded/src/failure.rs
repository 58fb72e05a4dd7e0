//! How the engine tells the process it has failed for good.
//!
//! fjall poisons itself after an I/O error on a write path (a journal write
//! or sync, a flush, a compaction) and refuses every later write; only a new
//! process, recovering from the journal, can write again. Three things
//! notice: the writer, when a commit fails; the writer thread's own panic;
//! and a watchdog asking fjall directly, for the case where the writer is
//! stuck inside fjall (its write stall waits for a flush worker that died).

use std::sync::Arc;

use tokio::sync::watch;

/// The first cause reported wins; later ones are consequences.
#[derive(Debug)]
pub(crate) struct Failure(watch::Sender<Option<Arc<str>>>);

impl Failure {
    pub(crate) fn new() -> Self {
        Self(watch::Sender::new(None))
    }

    pub(crate) fn report(&self, cause: &dyn std::fmt::Display) {
        self.0.send_if_modified(|failure| {
            if failure.is_some() {
                return false;
            }
            tracing::error!(error = %cause, "the embedded storage failed; no write can succeed until a restart");
            *failure = Some(cause.to_string().into());
            true
        });
    }

    pub(crate) fn cause(&self) -> Option<Arc<str>> {
        self.0.borrow().clone()
    }

    /// Resolves with the cause once one is reported.
    pub(crate) async fn reported(&self) -> Arc<str> {
        let mut failure = self.0.subscribe();
        // Never closed while `self` holds the sender.
        let cause = failure
            .wait_for(Option::is_some)
            .await
            .map(|cause| cause.clone())
            .ok()
            .flatten();
        cause.unwrap_or_else(|| "unknown".into())
    }
}

/// What a fjall error says about why the engine failed. `Poisoned` says
/// only that an earlier write failed (a flush or compaction, whose worker
/// logs the I/O error itself), so the cause points there.
pub(crate) fn cause_of(e: &fjall::Error) -> String {
    match e {
        fjall::Error::Poisoned => {
            "an I/O error in fjall's flush or compaction (fjall logged it just before) poisoned the database".into()
        }
        other => other.to_string(),
    }
}

/// Reports a panic of the thread that holds it.
pub(crate) struct ReportPanic<'a>(pub &'a Failure);

impl Drop for ReportPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.report(&"the writer thread panicked");
        }
    }
}
