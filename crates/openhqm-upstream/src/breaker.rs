//! A circuit breaker per target: closed, open, half-open.
//!
//! After `failure_threshold` consecutive failures the breaker opens and the
//! target gets no traffic for `open_seconds`, so a failing backend is given
//! room to recover instead of being hammered by every retry. Then up to
//! `half_open_max` trial requests go through at once: one success closes the
//! breaker, one failure opens it again. The state machine is pure (time is
//! passed in) and table-tested.

use std::time::{Duration, Instant};

use crate::config::CircuitBreakerConfig;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Traffic flows; counts consecutive failures.
    Closed {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// No traffic until `until`.
    Open {
        /// When trials may start.
        until: Instant,
    },
    /// Trials in flight.
    HalfOpen {
        /// Trial requests not yet finished.
        trials: u32,
    },
}

impl State {
    /// Gauge value: 0 closed, 1 open, 2 half-open.
    #[must_use]
    pub fn gauge(&self) -> i64 {
        match self {
            Self::Closed { .. } => 0,
            Self::Open { .. } => 1,
            Self::HalfOpen { .. } => 2,
        }
    }
}

/// How a request got through, so its result is counted in the right state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Let through while closed, in the closed period that followed the
    /// given half-open round (0: the first): a late result from an earlier
    /// period must not count in this one.
    Normal(u32),
    /// A half-open trial, of the given half-open round: a late result or
    /// release from an earlier round must not decide or free this one.
    Trial(u32),
}

/// The breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    half_open_max: u32,
    state: State,
    /// Counts half-open rounds, to tell their trials apart.
    round: u32,
}

impl Breaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(cfg: &CircuitBreakerConfig) -> Self {
        Self {
            threshold: cfg.failure_threshold.max(1),
            open_for: Duration::from_secs(cfg.open_seconds),
            half_open_max: cfg.half_open_max.max(1),
            state: State::Closed { failures: 0 },
            round: 0,
        }
    }

    /// The current state (an expired `Open` is reported until the next call
    /// to [`Breaker::admit`]).
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a request could be admitted now, without admitting it.
    #[must_use]
    pub fn available(&self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { trials } => trials < self.half_open_max,
        }
    }

    /// When an open breaker lets a trial through, if it is open.
    #[must_use]
    pub fn open_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Admits a request, or refuses it.
    pub fn admit(&mut self, now: Instant) -> Option<Admission> {
        if let State::Open { until } = self.state {
            if now < until {
                return None;
            }
            self.state = State::HalfOpen { trials: 0 };
            self.round = self.round.wrapping_add(1);
        }
        match &mut self.state {
            State::Closed { .. } => Some(Admission::Normal(self.round)),
            State::HalfOpen { trials } if *trials < self.half_open_max => {
                *trials += 1;
                Some(Admission::Trial(self.round))
            }
            _ => None,
        }
    }

    /// Records the result of an admitted request.
    pub fn record(&mut self, admission: Admission, success: bool, now: Instant) {
        let this_round = admission == Admission::Trial(self.round);
        let this_period = admission == Admission::Normal(self.round);
        self.state = match (self.state, admission, success) {
            (State::Closed { .. }, Admission::Normal(_), true) if this_period => {
                State::Closed { failures: 0 }
            }
            (State::Closed { failures }, Admission::Normal(_), false)
                if this_period && failures + 1 >= self.threshold =>
            {
                State::Open {
                    until: now + self.open_for,
                }
            }
            (State::Closed { failures }, Admission::Normal(_), false) if this_period => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (State::HalfOpen { .. }, Admission::Trial(_), true) if this_round => {
                State::Closed { failures: 0 }
            }
            (State::HalfOpen { .. }, Admission::Trial(_), false) if this_round => State::Open {
                until: now + self.open_for,
            },
            // A request admitted before the breaker changed state (or in an
            // earlier half-open round) says nothing about the state it
            // finishes in.
            (state, _, _) => state,
        };
    }

    /// A trial abandoned without a result (the attempt was cancelled).
    pub fn release(&mut self, admission: Admission) {
        if let (State::HalfOpen { trials }, Admission::Trial(round)) = (&mut self.state, admission)
            && round == self.round
        {
            *trials = trials.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Admit at t seconds; expect admission.
        Admit(u64, Option<Admission>),
        /// Record a result at t seconds.
        Record(u64, Admission, bool),
        /// Abandon an admitted request without a result.
        Release(Admission),
        /// Ask at t seconds whether a request could be admitted.
        Available(u64, bool),
    }

    /// Runs `steps` on a breaker that opens after two failures for ten
    /// seconds and lets one trial through at a time; `expected` is its state
    /// after each step.
    fn check(steps: &[Step], expected: &[&str]) {
        check_with(1, steps, expected);
    }

    /// [`check`], with `half_open_max` trials at a time.
    fn check_with(half_open_max: u32, steps: &[Step], expected: &[&str]) {
        let t0 = Instant::now();
        let mut b = Breaker::new(&CircuitBreakerConfig {
            failure_threshold: 2,
            open_seconds: 10,
            half_open_max,
        });
        let mut got = Vec::new();
        for step in steps {
            match *step {
                Step::Admit(t, want) => {
                    assert_eq!(b.admit(t0 + Duration::from_secs(t)), want, "{step:?}");
                }
                Step::Record(t, a, ok) => b.record(a, ok, t0 + Duration::from_secs(t)),
                Step::Release(a) => b.release(a),
                Step::Available(t, want) => {
                    assert_eq!(b.available(t0 + Duration::from_secs(t)), want, "{step:?}");
                }
            }
            got.push(match b.state() {
                State::Closed { failures } => format!("closed{failures}"),
                State::Open { until } => format!("open{}", (until - t0).as_secs()),
                State::HalfOpen { trials } => format!("half{trials}"),
            });
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn breaker_transitions() {
        use Admission::{Normal, Trial};
        use Step::{Admit, Record};
        // Failures open it; a success in between resets the count.
        check(
            &[
                Record(0, Normal(0), false),
                Record(0, Normal(0), true),
                Record(1, Normal(0), false),
                Record(2, Normal(0), false),
                Admit(5, None),
            ],
            &["closed1", "closed0", "closed1", "open12", "open12"],
        );
        // After open_seconds one trial goes through; a second waits.
        check(
            &[
                Record(0, Normal(0), false),
                Record(0, Normal(0), false),
                Admit(10, Some(Trial(1))),
                Admit(10, None),
                Record(11, Trial(1), true),
                Admit(11, Some(Normal(1))),
                // Admitted before the trip, finishing after the close: it
                // belongs to the period that tripped, not this one.
                Record(12, Normal(0), false),
                Record(12, Normal(0), false),
            ],
            &[
                "closed1", "open10", "half1", "half1", "closed0", "closed0", "closed0", "closed0",
            ],
        );
        // A failed trial opens it again from the time of the failure.
        check(
            &[
                Record(0, Normal(0), false),
                Record(0, Normal(0), false),
                Admit(10, Some(Trial(1))),
                Record(12, Trial(1), false),
                Admit(13, None),
            ],
            &["closed1", "open10", "half1", "open22", "open22"],
        );
        // A trial of an earlier round neither closes the breaker nor frees a
        // slot of the current round.
        check(
            &[
                Record(0, Normal(0), false),
                Record(0, Normal(0), false),
                Admit(10, Some(Trial(1))),
                Record(11, Trial(1), false),
                Admit(21, Some(Trial(2))),
                Record(21, Trial(1), true),
                Admit(21, None),
            ],
            &[
                "closed1", "open10", "half1", "open21", "half1", "half1", "half1",
            ],
        );
        // Late results of requests admitted while closed change nothing.
        check(
            &[
                Record(0, Normal(0), false),
                Record(0, Normal(0), false),
                Record(1, Normal(0), true),
                Admit(10, Some(Trial(1))),
                Record(10, Normal(0), false),
            ],
            &["closed1", "open10", "open10", "half1", "half1"],
        );
    }

    #[test]
    fn half_open_admits_exactly_half_open_max_trials() {
        use Admission::{Normal, Trial};
        use Step::{Admit, Available, Record, Release};
        let open = [Record(0, Normal(0), false), Record(0, Normal(0), false)];
        let steps = |rest: &[Step]| [&open[..], rest].concat();
        // Three trials go through at once, a fourth waits until one of them
        // finishes or is abandoned; one success closes the breaker.
        check_with(
            3,
            &steps(&[
                Admit(10, Some(Trial(1))),
                Admit(10, Some(Trial(1))),
                Available(10, true),
                Admit(10, Some(Trial(1))),
                Available(10, false),
                Admit(10, None),
                Release(Trial(1)),
                Admit(11, Some(Trial(1))),
                Admit(11, None),
                Record(12, Trial(1), true),
                // The round's other trials failing after it closed count for
                // nothing: two would reach the threshold of the closed state.
                Record(13, Trial(1), false),
                Record(13, Trial(1), false),
                Admit(13, Some(Normal(1))),
            ]),
            &[
                "closed1", "open10", "half1", "half2", "half2", "half3", "half3", "half3", "half2",
                "half3", "half3", "closed0", "closed0", "closed0", "closed0",
            ],
        );
        // One failure among them opens it again; the other trials of that
        // round, finishing later either way, change nothing, and the next
        // round has all three places again.
        check_with(
            3,
            &steps(&[
                Admit(10, Some(Trial(1))),
                Admit(10, Some(Trial(1))),
                Admit(10, Some(Trial(1))),
                Record(11, Trial(1), false),
                Record(12, Trial(1), true),
                Admit(20, None),
                Admit(21, Some(Trial(2))),
                Release(Trial(1)),
                Admit(21, Some(Trial(2))),
                Admit(21, Some(Trial(2))),
                Admit(21, None),
            ]),
            &[
                "closed1", "open10", "half1", "half2", "half3", "open21", "open21", "open21",
                "half1", "half1", "half2", "half3", "half3",
            ],
        );
    }

    #[test]
    fn released_trial_frees_its_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&CircuitBreakerConfig {
            failure_threshold: 1,
            open_seconds: 0,
            half_open_max: 1,
        });
        b.record(Admission::Normal(0), false, t0);
        assert_eq!(b.admit(t0), Some(Admission::Trial(1)));
        assert!(!b.available(t0));
        b.release(Admission::Trial(0));
        assert!(
            !b.available(t0),
            "a release from another round frees nothing"
        );
        b.release(Admission::Trial(1));
        assert!(b.available(t0));
    }
}
