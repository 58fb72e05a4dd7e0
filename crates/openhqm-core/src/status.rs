//! Request status and the one table of legal transitions.
//!
//! Every store enforces [`RequestStatus::can_become`]; no other code decides
//! whether a status may change. The table guarantees that a finished request
//! stays finished (a duplicate delivery cannot turn COMPLETED back into
//! PROCESSING) and that PROCESSING is never a dead end: a redelivered message
//! re-enters PROCESSING, a retry returns to PENDING.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestStatus {
    /// Stored on the queue, waiting for a worker (first time or for a retry).
    Pending,
    /// A worker holds the message.
    Processing,
    /// Finished; the result is kept.
    Completed,
    /// Finished without success after the last attempt, or permanently rejected.
    Failed,
    /// Finished because the last attempt ran past its deadline.
    Timeout,
    /// Withdrawn by the client (`DELETE`) while it was still waiting; a
    /// worker that later receives the message drops it unprocessed.
    Cancelled,
}

impl RequestStatus {
    /// Every status, for tables and exhaustive tests.
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::Failed,
        Self::Timeout,
        Self::Cancelled,
    ];

    /// `true` once nothing will change the request again.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Timeout | Self::Cancelled
        )
    }

    /// The table of legal transitions.
    ///
    /// | from \ to  | PENDING | PROCESSING | COMPLETED | FAILED | TIMEOUT | CANCELLED |
    /// |------------|---------|------------|-----------|--------|---------|-----------|
    /// | PENDING    |         | yes        |           | yes    |         | yes       |
    /// | PROCESSING | yes     | yes        | yes       | yes    | yes     |           |
    /// | terminal   |         |            |           |        |         |           |
    ///
    /// PENDING → FAILED covers a message rejected before any processing
    /// (undecodable, dead-lettered); PROCESSING → PROCESSING is a redelivery
    /// after a worker died; PROCESSING → PENDING is a scheduled retry.
    /// Only a waiting request can be cancelled: once a worker holds it, the
    /// backend may already have seen it, and saying otherwise would be a lie.
    #[must_use]
    pub fn can_become(self, to: Self) -> bool {
        use RequestStatus::{Cancelled, Completed, Failed, Pending, Processing, Timeout};
        matches!(
            (self, to),
            (Pending, Processing | Failed | Cancelled)
                | (
                    Processing,
                    Pending | Processing | Completed | Failed | Timeout
                )
        )
    }

    /// Whether a redrive of the request's dead-lettered message may take it
    /// back to PROCESSING: the one way out of a terminal status, for failures
    /// only. A COMPLETED or CANCELLED request stays as it is.
    #[must_use]
    pub fn can_be_redriven(self) -> bool {
        matches!(self, Self::Failed | Self::Timeout)
    }

    /// The wire name, e.g. `COMPLETED`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Timeout => "TIMEOUT",
            Self::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RequestStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown status `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::RequestStatus::{self, *};

    fn check(from: RequestStatus, allowed: &[RequestStatus]) {
        for to in RequestStatus::ALL {
            assert_eq!(from.can_become(to), allowed.contains(&to), "{from} -> {to}");
        }
    }

    #[test]
    fn transition_table() {
        check(Pending, &[Processing, Failed, Cancelled]);
        check(
            Processing,
            &[Pending, Processing, Completed, Failed, Timeout],
        );
        check(Completed, &[]);
        check(Failed, &[]);
        check(Timeout, &[]);
        check(Cancelled, &[]);
    }

    #[test]
    fn wire_names_round_trip() {
        for st in RequestStatus::ALL {
            assert_eq!(st.as_str().parse::<RequestStatus>(), Ok(st));
            assert_eq!(
                serde_json::to_string(&st).ok(),
                Some(format!("\"{}\"", st.as_str()))
            );
        }
    }
}
