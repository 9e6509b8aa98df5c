//! Fairness between token endpoints: how many calls may be in flight to one
//! endpoint and from one namespace, and a circuit breaker per endpoint that
//! pauses one which keeps not answering. Pure: time is passed in.
//!
//! Without these, every reconcile shares the controller's concurrency slots,
//! and a call may hold one for the whole request timeout: 64 credentials
//! pointing at an endpoint that never answers made another credential's
//! refresh 97 s late. With them, one endpoint (or one namespace) can hold only
//! its share of the slots, and an endpoint that times out again and again is
//! not called at all for a while.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Consecutive calls that got no answer (timeouts, failed connections) after
/// which an endpoint is paused.
pub const OPEN_AFTER: u32 = 5;
/// The first pause; each further one doubles, up to `MAX_PAUSE`.
pub const FIRST_PAUSE: Duration = Duration::from_secs(30);
pub const MAX_PAUSE: Duration = Duration::from_secs(5 * 60);

/// How a call to an endpoint went, as far as the breaker cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// Any HTTP answer, even an error: the endpoint is there.
    Yes,
    /// No answer: a timeout or a connection that failed.
    No,
}

/// One endpoint's circuit breaker.
#[derive(Clone, Debug, Default)]
pub struct Breaker {
    unanswered: u32,
    /// Paused until then.
    open_until: Option<Instant>,
    /// How many pauses in a row (the next one is twice as long).
    pauses: u32,
    /// A probe call is in flight after a pause.
    probing: bool,
}

impl Breaker {
    /// Whether a call may start at `now`: `Ok` (and, after a pause, as the
    /// one probe), or the end of the pause.
    pub fn admit(&mut self, now: Instant) -> Result<(), Instant> {
        match self.open_until {
            Some(until) if now < until => Err(until),
            Some(until) if self.probing => Err(until),
            Some(_) => {
                self.probing = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records how a call went.
    pub fn record(&mut self, answered: Answered, now: Instant) {
        self.probing = false;
        match answered {
            Answered::Yes => *self = Breaker::default(),
            Answered::No => {
                self.unanswered += 1;
                let reopening = self.open_until.is_some();
                if reopening || self.unanswered >= OPEN_AFTER {
                    let pause = FIRST_PAUSE
                        .saturating_mul(1 << self.pauses.min(16))
                        .min(MAX_PAUSE);
                    self.pauses += 1;
                    self.open_until = Some(now + pause);
                }
            }
        }
    }

    /// Whether nothing about this endpoint needs remembering.
    pub fn is_idle(&self) -> bool {
        self.unanswered == 0 && self.open_until.is_none() && !self.probing
    }
}

/// Why a call may not start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The endpoint, or the namespace, has its share of calls in flight.
    Busy,
    /// The endpoint is paused until then.
    Paused(Instant),
}

/// Calls in flight, per endpoint and per namespace, and each endpoint's
/// breaker.
#[derive(Debug, Default)]
pub struct Calls {
    endpoints: HashMap<String, (usize, Breaker)>,
    namespaces: HashMap<String, usize>,
}

/// The limits.
#[derive(Clone, Copy, Debug)]
pub struct Shares {
    pub per_endpoint: usize,
    pub per_namespace: usize,
}

impl Calls {
    /// Starts a call to `endpoint` from `namespace` if both have room and
    /// the endpoint is not paused. Every `Ok` must be followed by `finish`.
    pub fn start(
        &mut self,
        endpoint: &str,
        namespace: &str,
        shares: Shares,
        now: Instant,
    ) -> Result<(), Refused> {
        let (in_flight, breaker) = self.endpoints.entry(endpoint.to_string()).or_default();
        if *in_flight >= shares.per_endpoint {
            return Err(Refused::Busy);
        }
        if self.namespaces.get(namespace).copied().unwrap_or(0) >= shares.per_namespace {
            return Err(Refused::Busy);
        }
        breaker.admit(now).map_err(Refused::Paused)?;
        *in_flight += 1;
        *self.namespaces.entry(namespace.to_string()).or_default() += 1;
        Ok(())
    }

    /// Whether a call to `endpoint` from `namespace` would find no room now
    /// (checked before anything else is done for it).
    pub fn is_full(&self, endpoint: &str, namespace: &str, shares: Shares) -> bool {
        let in_flight = self.endpoints.get(endpoint).map_or(0, |(n, _)| *n);
        let from_namespace = self.namespaces.get(namespace).copied().unwrap_or(0);
        in_flight >= shares.per_endpoint || from_namespace >= shares.per_namespace
    }

    /// Until when `endpoint` is paused, if it is (a probe being due counts as
    /// not paused).
    pub fn paused_until(&self, endpoint: &str, now: Instant) -> Option<Instant> {
        let (_, breaker) = self.endpoints.get(endpoint)?;
        breaker
            .open_until
            .filter(|until| now < *until || breaker.probing)
    }

    /// Ends a call started with `start`; `answered` is `None` when the call
    /// was not made after all.
    pub fn finish(
        &mut self,
        endpoint: &str,
        namespace: &str,
        answered: Option<Answered>,
        now: Instant,
    ) {
        if let Some((in_flight, breaker)) = self.endpoints.get_mut(endpoint) {
            *in_flight = in_flight.saturating_sub(1);
            match answered {
                Some(answered) => breaker.record(answered, now),
                None => breaker.probing = false,
            }
            if *in_flight == 0 && breaker.is_idle() {
                self.endpoints.remove(endpoint);
            }
        }
        if let Some(count) = self.namespaces.get_mut(namespace) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.namespaces.remove(namespace);
            }
        }
    }

    /// Endpoints and namespaces remembered (for the memory metric).
    pub fn len(&self) -> usize {
        self.endpoints.len() + self.namespaces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARES: Shares = Shares {
        per_endpoint: 2,
        per_namespace: 3,
    };

    #[test]
    fn an_endpoint_and_a_namespace_hold_at_most_their_share() {
        let now = Instant::now();
        let mut calls = Calls::default();
        assert_eq!(calls.start("slow:443", "a", SHARES, now), Ok(()));
        assert_eq!(calls.start("slow:443", "a", SHARES, now), Ok(()));
        assert_eq!(
            calls.start("slow:443", "b", SHARES, now),
            Err(Refused::Busy)
        );
        assert_eq!(calls.start("fast:443", "a", SHARES, now), Ok(()));
        assert_eq!(
            calls.start("other:443", "a", SHARES, now),
            Err(Refused::Busy),
            "namespace a has three in flight"
        );
        assert_eq!(calls.start("other:443", "b", SHARES, now), Ok(()));
        for (endpoint, ns) in [
            ("slow:443", "a"),
            ("slow:443", "a"),
            ("fast:443", "a"),
            ("other:443", "b"),
        ] {
            calls.finish(endpoint, ns, Some(Answered::Yes), now);
        }
        assert!(calls.is_empty(), "nothing is kept about idle endpoints");
    }

    #[test]
    fn an_endpoint_that_keeps_not_answering_is_paused_then_probed_once() {
        let start = Instant::now();
        let mut calls = Calls::default();
        let mut now = start;
        for _ in 0..OPEN_AFTER {
            calls.start("hole:443", "a", SHARES, now).unwrap();
            now += Duration::from_secs(10);
            calls.finish("hole:443", "a", Some(Answered::No), now);
        }
        let paused_until = now + FIRST_PAUSE;
        assert_eq!(
            calls.start("hole:443", "a", SHARES, now),
            Err(Refused::Paused(paused_until))
        );
        // After the pause: one probe, and no second call while it runs.
        now = paused_until;
        assert_eq!(calls.start("hole:443", "a", SHARES, now), Ok(()));
        assert!(matches!(
            calls.start("hole:443", "b", SHARES, now),
            Err(Refused::Paused(_))
        ));
        // The probe fails: paused twice as long.
        calls.finish("hole:443", "a", Some(Answered::No), now);
        assert_eq!(
            calls.start("hole:443", "a", SHARES, now),
            Err(Refused::Paused(now + FIRST_PAUSE * 2))
        );
        // A probe that gets an answer closes it.
        now += FIRST_PAUSE * 2;
        calls.start("hole:443", "a", SHARES, now).unwrap();
        calls.finish("hole:443", "a", Some(Answered::Yes), now);
        assert_eq!(calls.start("hole:443", "a", SHARES, now), Ok(()));
    }

    #[test]
    fn pauses_are_bounded() {
        let mut breaker = Breaker::default();
        let now = Instant::now();
        for _ in 0..40 {
            breaker.record(Answered::No, now);
        }
        assert_eq!(breaker.admit(now), Err(now + MAX_PAUSE));
    }
}
