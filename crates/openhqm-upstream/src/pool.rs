//! The targets of one endpoint and what is known about each.
//!
//! A target gets traffic only while it is healthy (active checks), not
//! ejected (passive: consecutive failed forwards) and its breaker admits the
//! request. [`Pool::pick`] filters the candidates, lets the strategy choose,
//! and returns a [`Lease`] that counts the forward in flight (for
//! least-connections and the gauge) until the result is recorded. A lease
//! dropped without a result (the attempt was cancelled) gives back any
//! half-open trial slot it held.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use openhqm_core::Envelope;
use openhqm_metrics::{Metrics, UpstreamTargetMetrics};

use crate::balance::{HashKey, Ring, least_loaded_of_two, smooth_weighted};
use crate::breaker::{Admission, Breaker};
use crate::config::{
    EndpointConfig, HealthCheckConfig, PassiveEjectionConfig, Strategy, TargetConfig,
};
use crate::error::UpstreamError;
use crate::rewrite::Base;

/// One backend of an endpoint. Its `Debug` shows the label, never `url`,
/// which may carry credentials.
pub struct Target {
    /// Base URL, prepared for forwards.
    pub base: Base,
    /// The URL as configured, or without its credentials if it has any
    /// (`config::label`): the metric label and the `target_url` of logs.
    pub label: String,
    /// The URL as configured: where consistent hashing places the target.
    ring_key: String,
    /// Relative share of the load.
    pub weight: u32,
    in_flight: AtomicU64,
    state: Mutex<TargetState>,
    metrics: UpstreamTargetMetrics,
}

#[derive(Debug)]
struct TargetState {
    healthy: bool,
    probes_ok: u32,
    probes_failed: u32,
    failures: u32,
    ejected_until: Option<Instant>,
    breaker: Option<Breaker>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.label)
            .field("weight", &self.weight)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Target {
    fn new(
        cfg: &TargetConfig,
        base: Base,
        label: String,
        breaker: Option<Breaker>,
        m: UpstreamTargetMetrics,
    ) -> Self {
        m.healthy.set(1);
        Self {
            label,
            ring_key: cfg.url.clone(),
            base,
            weight: cfg.weight.max(1),
            in_flight: AtomicU64::new(0),
            state: Mutex::new(TargetState {
                healthy: true,
                probes_ok: 0,
                probes_failed: 0,
                failures: 0,
                ejected_until: None,
                breaker,
            }),
            metrics: m,
        }
    }

    fn lock(&self) -> MutexGuard<'_, TargetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn available(&self, now: Instant) -> bool {
        let s = self.lock();
        s.healthy
            && s.ejected_until.is_none_or(|until| now >= until)
            && s.breaker.as_ref().is_none_or(|b| b.available(now))
    }

    /// How long until this unavailable target may be tried again: an
    /// ejection or open breaker ends when it says; an unhealthy target waits
    /// for the health checks that could bring it back (`probe_every`), a
    /// half-open one for its trials to finish.
    fn next_try(&self, now: Instant, probe_every: Duration) -> Duration {
        let s = self.lock();
        if !s.healthy {
            return probe_every;
        }
        let open = s.breaker.as_ref().and_then(Breaker::open_until);
        match s.ejected_until.max(open) {
            Some(at) if at > now => at - now,
            // Half-open with every trial slot taken (or it freed up just now).
            _ => TRIAL_WAIT,
        }
    }

    /// Whether active checks currently consider the target healthy.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.lock().healthy
    }

    /// A snapshot of what is known about the target.
    #[must_use]
    pub fn status(&self) -> TargetStatus {
        let now = Instant::now();
        let s = self.lock();
        TargetStatus {
            url: self.label.clone(),
            healthy: s.healthy,
            ejected: s.ejected_until.is_some_and(|until| now < until),
            breaker: s.breaker.as_ref().map(|b| match b.state() {
                crate::breaker::State::Closed { .. } => "closed",
                crate::breaker::State::Open { until } if now < until => "open",
                crate::breaker::State::Open { .. } | crate::breaker::State::HalfOpen { .. } => {
                    "half_open"
                }
            }),
            in_flight: self.in_flight(),
        }
    }

    /// Forwards in flight to this target.
    #[must_use]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records one active probe.
    pub fn record_probe(&self, ok: bool, cfg: &HealthCheckConfig) {
        let mut s = self.lock();
        if ok {
            s.probes_ok += 1;
            s.probes_failed = 0;
            if !s.healthy && s.probes_ok >= cfg.healthy_threshold {
                s.healthy = true;
                s.ejected_until = None;
            }
        } else {
            s.probes_failed += 1;
            s.probes_ok = 0;
            if s.healthy && s.probes_failed >= cfg.unhealthy_threshold {
                s.healthy = false;
            }
        }
        self.metrics.healthy.set(i64::from(s.healthy));
    }

    fn record_forward(
        &self,
        admission: Option<Admission>,
        failed: bool,
        ej: Option<&PassiveEjectionConfig>,
    ) {
        let now = Instant::now();
        let mut s = self.lock();
        if let (Some(b), Some(a)) = (s.breaker.as_mut(), admission) {
            b.record(a, !failed, now);
        }
        if let Some(b) = &s.breaker {
            self.metrics.breaker_state.set(b.state().gauge());
        }
        if !failed {
            s.failures = 0;
            return;
        }
        s.failures += 1;
        if let Some(ej) = ej
            && s.failures >= ej.consecutive_failures
        {
            s.failures = 0;
            s.ejected_until = Some(now + Duration::from_secs(ej.ejection_seconds));
            self.metrics.ejections.inc();
            tracing::warn!(target_url = %self.label, "target ejected after consecutive failures");
        }
    }
}

/// How soon a target whose half-open trials are all in flight is asked again.
const TRIAL_WAIT: Duration = Duration::from_secs(1);

/// What is known about one target, for health reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStatus {
    /// The URL as configured.
    pub url: String,
    /// Active health checks find it healthy (always true without checks).
    pub healthy: bool,
    /// Passively ejected right now.
    pub ejected: bool,
    /// Breaker state (`closed`, `open`, `half_open`), if it has a breaker.
    pub breaker: Option<&'static str>,
    /// Forwards in flight.
    pub in_flight: u64,
}

enum Selector {
    RoundRobin(AtomicUsize),
    Weighted(Mutex<BTreeMap<usize, i64>>),
    LeastConnections,
    Hash(Ring),
}

/// The targets of one endpoint.
pub struct Pool {
    endpoint: String,
    targets: Vec<Target>,
    selector: Selector,
    hash_key: Option<HashKey>,
    ejection: Option<PassiveEjectionConfig>,
    /// How long an unhealthy target takes to come back at the soonest: the
    /// health-check interval times `healthy_threshold`.
    probe_every: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.endpoint)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Builds the pool of `name`.
    ///
    /// # Errors
    /// A target URL or `hash_key` that does not parse.
    pub fn new(name: &str, cfg: &EndpointConfig, metrics: &Metrics) -> Result<Self, UpstreamError> {
        let bad = |message: String| UpstreamError::Config {
            endpoint: name.to_owned(),
            message,
        };
        let mut targets = Vec::new();
        for (i, t) in cfg.all_targets().into_iter().enumerate() {
            let url = crate::config::check_url(&t.url).map_err(bad)?;
            let breaker = cfg.circuit_breaker.as_ref().map(Breaker::new);
            let mut label = match cfg.from_env.urls_as_written.get(&t.url) {
                Some(written) => crate::config::label_as_written(written),
                None => crate::config::label(&t.url, &url),
            };
            // Targets that differ only by credentials keep metrics apart.
            if targets.iter().any(|o: &Target| o.label == label) {
                label = format!("{label}#{i}");
            }
            let base = Base::new(url).map_err(|e| bad(e.to_string()))?;
            let m = metrics.upstream_target(name, &label);
            targets.push(Target::new(&t, base, label, breaker, m));
        }
        if targets.is_empty() {
            return Err(bad("no url and no targets".into()));
        }
        let hash_key = cfg
            .hash_key
            .as_deref()
            .map(HashKey::parse)
            .transpose()
            .map_err(bad)?;
        let selector = match cfg.strategy {
            Strategy::RoundRobin => Selector::RoundRobin(AtomicUsize::new(0)),
            Strategy::Weighted => Selector::Weighted(Mutex::new(BTreeMap::new())),
            Strategy::LeastConnections => Selector::LeastConnections,
            Strategy::ConsistentHash => {
                let ids: Vec<(&str, u32)> = targets
                    .iter()
                    .map(|t| (t.ring_key.as_str(), t.weight))
                    .collect();
                Selector::Hash(Ring::new(&ids))
            }
        };
        Ok(Self {
            endpoint: name.to_owned(),
            targets,
            selector,
            hash_key,
            ejection: cfg.passive_ejection.clone(),
            // An unhealthy target needs `healthy_threshold` good probes in a
            // row to come back.
            probe_every: cfg.health_check.as_ref().map_or(TRIAL_WAIT, |h| {
                Duration::from_secs(h.interval_seconds.max(1)) * h.healthy_threshold.max(1)
            }),
        })
    }

    /// The targets, in configuration order (`url` first).
    #[must_use]
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Chooses a target for `env` and counts the forward in flight.
    ///
    /// # Errors
    /// [`UpstreamError::NoHealthyTarget`] when no target may take traffic.
    pub fn pick(&self, env: &Envelope) -> Result<Lease<'_>, UpstreamError> {
        let now = Instant::now();
        let mut candidates: Vec<usize> = (0..self.targets.len())
            .filter(|i| self.targets[*i].available(now))
            .collect();
        let key = self.hash_key.as_ref().and_then(|k| k.extract(env));
        while let Some(idx) = self.choose(&candidates, key.as_deref()) {
            let target = &self.targets[idx];
            let admission = {
                let mut s = target.lock();
                match s.breaker.as_mut() {
                    None => Some(None),
                    Some(b) => {
                        let a = b.admit(now).map(Some);
                        target.metrics.breaker_state.set(b.state().gauge());
                        a
                    }
                }
            };
            match admission {
                Some(admission) => {
                    target.in_flight.fetch_add(1, Ordering::Relaxed);
                    target.metrics.in_flight.inc();
                    return Ok(Lease {
                        pool: self,
                        idx,
                        admission,
                        finished: false,
                    });
                }
                None => candidates.retain(|c| *c != idx),
            }
        }
        let retry_after = self
            .targets
            .iter()
            .map(|t| t.next_try(now, self.probe_every))
            .min()
            .unwrap_or(TRIAL_WAIT);
        Err(UpstreamError::NoHealthyTarget {
            endpoint: self.endpoint.clone(),
            retry_after,
        })
    }

    fn choose(&self, candidates: &[usize], key: Option<&str>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let round_robin = |counter: &AtomicUsize| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            Some(candidates[n % candidates.len()])
        };
        match &self.selector {
            Selector::RoundRobin(counter) => round_robin(counter),
            Selector::Weighted(state) => {
                let cands: Vec<(usize, u32)> = candidates
                    .iter()
                    .map(|i| (*i, self.targets[*i].weight))
                    .collect();
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                smooth_weighted(&cands, &mut state)
            }
            Selector::LeastConnections => {
                let cands: Vec<(usize, u32, u64)> = candidates
                    .iter()
                    .map(|i| (*i, self.targets[*i].weight, self.targets[*i].in_flight()))
                    .collect();
                least_loaded_of_two(&cands, |n| fastrand::usize(0..n))
            }
            Selector::Hash(ring) => match key {
                Some(k) => ring.pick(k, |i| candidates.contains(&i)),
                // No key: any candidate will do; spread them.
                None => Some(candidates[fastrand::usize(0..candidates.len())]),
            },
        }
    }
}

/// One forward to one target, counted in flight until dropped.
#[derive(Debug)]
pub struct Lease<'a> {
    pool: &'a Pool,
    idx: usize,
    admission: Option<Admission>,
    finished: bool,
}

impl Lease<'_> {
    /// The chosen target.
    #[must_use]
    pub fn target(&self) -> &Target {
        &self.pool.targets[self.idx]
    }

    /// Records the result: `failed` when the target failed (network error,
    /// timeout, 5xx), which feeds its breaker and passive ejection.
    pub fn finish(mut self, class: &str, seconds: f64, failed: bool) {
        self.finished = true;
        let target = self.target();
        target.metrics.request(class, seconds);
        target.record_forward(self.admission, failed, self.pool.ejection.as_ref());
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let target = &self.pool.targets[self.idx];
        target.in_flight.fetch_sub(1, Ordering::Relaxed);
        target.metrics.in_flight.dec();
        if !self.finished
            && let (Some(b), Some(a)) = (target.lock().breaker.as_mut(), self.admission)
        {
            b.release(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metrics and logs name a target by its label: a URL whose path came
    /// from the environment is named as the file wrote it.
    #[test]
    fn a_target_from_the_environment_is_named_as_written() {
        let url = "https://hooks.example/services/T0/B0/HOOKSECRET";
        let mut cfg = EndpointConfig::with_url(url);
        cfg.targets.push(crate::config::TargetConfig {
            url: "http://plain.example:8080/".into(),
            weight: 1,
        });
        cfg.from_env.urls_as_written.insert(
            url.into(),
            "https://hooks.example/services/${HOOK_PATH}".into(),
        );
        let metrics = Metrics::new();
        let pool = Pool::new("hook", &cfg, &metrics).expect("pool");
        let labels: Vec<&str> = pool.targets().iter().map(|t| t.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "https://hooks.example/services/${HOOK_PATH}",
                "http://plain.example:8080/"
            ]
        );
        let exported = metrics.render();
        assert!(!exported.contains("HOOKSECRET"), "{exported}");
    }
}
