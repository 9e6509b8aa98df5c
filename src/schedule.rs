//! When to call the token endpoint: the refresh time derived from a token's
//! real expiry, and the backoff after a failed attempt.
//!
//! Pure functions of their inputs. Every time they return is truncated to
//! whole seconds, because status stores whole seconds and a recomputation from
//! status must land on exactly the same instant (as cert-manager does).

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::resource::FailureCategory;

/// Jitter moves a refresh earlier by at most this fraction of the margin...
const JITTER_FRACTION_OF_MARGIN: f64 = 0.1;
/// ...and never by more than this.
const MAX_JITTER: Duration = Duration::from_secs(5 * 60);

/// Backoff after a transient failure (rate limit, 5xx, network): starts here
/// and doubles per consecutive failure up to the cap.
pub const TRANSIENT_BACKOFF_BASE: Duration = Duration::from_secs(5);
pub const TRANSIENT_BACKOFF_CAP: Duration = Duration::from_secs(5 * 60);
/// Backoff after a configuration failure (bad client, bad scope): long,
/// because only a change to the client Secret or the spec can fix it, and
/// either change triggers a new attempt at once.
pub const CONFIGURATION_BACKOFF_BASE: Duration = Duration::from_secs(5 * 60);
pub const CONFIGURATION_BACKOFF_CAP: Duration = Duration::from_secs(60 * 60);
/// A `Retry-After` longer than this is not believed.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// Parses a `refreshBefore` value: one or more of `<n>h`, `<n>m`, `<n>s`, in
/// that order, e.g. `20m`, `1h30m`, `90s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}: expected a form like 20m, 1h30m or 90s");
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_unit = 0;
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let (rank, seconds) = match ch {
            'h' => (1, 3600),
            'm' => (2, 60),
            's' => (3, 1),
            _ => return Err(invalid()),
        };
        if digits.is_empty() || rank <= last_unit {
            return Err(invalid());
        }
        let n: u64 = digits.parse().map_err(|_| invalid())?;
        total = n
            .checked_mul(seconds)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(invalid)?;
        digits.clear();
        last_unit = rank;
    }
    if !digits.is_empty() || last_unit == 0 {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

/// Truncates to whole seconds, towards the past.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).expect("a valid timestamp truncated stays valid")
}

/// A number in [0, 1) derived from `seed`, stable across processes and
/// releases (FNV-1a, then SplitMix64's finaliser so that seeds differing only
/// in their last byte still land far apart), so that recomputing a schedule
/// gives the same answer.
pub fn unit_interval(seed: &str) -> f64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    // Top 53 bits give an exactly representable fraction.
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// When to refresh a token obtained at `issued_at` that expires at
/// `expires_at`.
///
/// The margin before expiry is `refresh_before`, or one third of the lifetime
/// when it is unset or not shorter than the lifetime (a margin as long as the
/// token would refresh it at once, forever). Jitter, derived from
/// `jitter_seed`, moves the time earlier by up to a tenth of the margin
/// (at most five minutes), so credentials issued together spread out.
pub fn refresh_time(
    issued_at: Timestamp,
    expires_at: Timestamp,
    refresh_before: Option<Duration>,
    jitter_seed: &str,
) -> Timestamp {
    let lifetime = expires_at
        .duration_since(issued_at)
        .max(SignedDuration::ZERO);
    let default_margin = lifetime / 3;
    let margin = match refresh_before {
        Some(before) => {
            let before = SignedDuration::try_from(before).unwrap_or(SignedDuration::MAX);
            if before < lifetime {
                before
            } else {
                default_margin
            }
        }
        None => default_margin,
    };
    let max_jitter = margin
        .mul_f64(JITTER_FRACTION_OF_MARGIN)
        .min(SignedDuration::try_from(MAX_JITTER).expect("constant fits"));
    let jitter = max_jitter.mul_f64(unit_interval(jitter_seed));
    let at = expires_at
        .checked_sub(margin)
        .and_then(|t| t.checked_sub(jitter))
        .unwrap_or(issued_at);
    whole_seconds(at.max(issued_at))
}

/// A transient failure is retried at least this long after the last
/// attempt, however close the deadline.
pub const MIN_TRANSIENT_RETRY: Duration = Duration::from_secs(1);

/// When to try again after the `failed_attempts`-th consecutive failure
/// (counting from 1) at `now`: exponential from the category's base to its
/// cap, with up to 20% subtracted as jitter, and never before `retry_after`
/// from the provider (itself capped at an hour). Never, for a failure that
/// only a person can fix.
///
/// Deadline-aware: while the current access token is still valid (until
/// `valid_until`), a transient failure is retried after at most a third of
/// the time left (and at least `MIN_TRANSIENT_RETRY` later), so that while
/// the provider allows it the token is replaced before it expires;
/// `Retry-After` still wins. Once the token has expired, the plain
/// exponential backoff applies.
pub fn retry_time(
    now: Timestamp,
    category: FailureCategory,
    failed_attempts: u32,
    retry_after: Option<Duration>,
    jitter_seed: &str,
    valid_until: Option<Timestamp>,
) -> Option<Timestamp> {
    let (base, cap) = match category {
        FailureCategory::Transient => (TRANSIENT_BACKOFF_BASE, TRANSIENT_BACKOFF_CAP),
        FailureCategory::Configuration => (CONFIGURATION_BACKOFF_BASE, CONFIGURATION_BACKOFF_CAP),
        FailureCategory::ReauthRequired => return None,
    };
    let exponent = failed_attempts.saturating_sub(1).min(20);
    let backoff = base.saturating_mul(1 << exponent).min(cap);
    let mut backoff = backoff.mul_f64(1.0 - 0.2 * unit_interval(jitter_seed));
    if category == FailureCategory::Transient
        && let Some(left) = valid_until
            .map(|until| until.duration_since(now))
            .and_then(|left| Duration::try_from(left).ok())
            .filter(|left| !left.is_zero())
    {
        backoff = backoff.min((left / 3).max(MIN_TRANSIENT_RETRY));
    }
    let wait = match retry_after {
        Some(after) => backoff.max(after.min(MAX_RETRY_AFTER)),
        None => backoff,
    };
    // Round up so that the retry is never earlier than the backoff says.
    let at = now + SignedDuration::try_from(wait).expect("bounded backoff fits");
    let whole = whole_seconds(at);
    Some(if whole == at {
        whole
    } else {
        whole + SignedDuration::from_secs(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn durations_parse_in_hours_minutes_seconds_order() {
        assert_eq!(parse_duration("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h0m5s"), Ok(Duration::from_secs(3605)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        for bad in [
            "",
            "20",
            "m",
            "5m1h",
            "1.5h",
            "10d",
            "-5m",
            "5mm",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn default_refresh_is_when_a_third_of_the_lifetime_remains_minus_bounded_jitter() {
        let issued = ts("2026-11-21T19:00:00Z");
        let expires = ts("2026-11-21T20:00:00Z");
        let latest = ts("2026-11-21T19:40:00Z");
        // Jitter is at most a tenth of the 20-minute margin: two minutes.
        let earliest = ts("2026-11-21T19:38:00Z");
        for seed in ["a", "b", "c", "team-a/gmail", "uid-1/2026"] {
            let at = refresh_time(issued, expires, None, seed);
            assert!(at <= latest && at >= earliest, "{seed}: {at}");
            assert_eq!(at.subsec_nanosecond(), 0);
        }
    }

    #[test]
    fn jitter_spreads_credentials_issued_together() {
        let issued = ts("2026-11-21T19:00:00Z");
        let expires = ts("2026-11-21T20:00:00Z");
        let distinct: std::collections::BTreeSet<_> = (0..100)
            .map(|i| refresh_time(issued, expires, None, &format!("credential-{i}")))
            .collect();
        assert!(
            distinct.len() > 50,
            "only {} distinct refresh times",
            distinct.len()
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_time() {
        let issued = ts("2026-11-21T19:00:00.250Z");
        let expires = ts("2026-11-21T19:59:59.750Z");
        let a = refresh_time(issued, expires, None, "uid/1");
        let b = refresh_time(issued, expires, None, "uid/1");
        assert_eq!(a, b);
    }

    #[test]
    fn refresh_before_overrides_the_default_margin() {
        let issued = ts("2026-11-21T19:00:00Z");
        let expires = ts("2026-11-21T20:00:00Z");
        let at = refresh_time(issued, expires, Some(Duration::from_secs(5 * 60)), "x");
        assert!(
            at <= ts("2026-11-21T19:55:00Z") && at >= ts("2026-11-21T19:54:30Z"),
            "{at}"
        );
    }

    #[test]
    fn a_refresh_before_longer_than_the_lifetime_falls_back_to_the_default() {
        let issued = ts("2026-11-21T19:00:00Z");
        let expires = ts("2026-11-21T19:10:00Z");
        let at = refresh_time(issued, expires, Some(Duration::from_secs(20 * 60)), "x");
        // 10-minute token: a third is 200 s, so 19:06:40 minus up to 20 s.
        assert!(
            at <= ts("2026-11-21T19:06:40Z") && at >= ts("2026-11-21T19:06:20Z"),
            "{at}"
        );
    }

    #[test]
    fn short_lived_tokens_are_refreshed_well_before_expiry() {
        let issued = ts("2026-11-21T19:00:00Z");
        let expires = ts("2026-11-21T19:00:20Z");
        let at = refresh_time(issued, expires, None, "x");
        assert!(
            at >= ts("2026-11-21T19:00:12Z") && at <= ts("2026-11-21T19:00:14Z"),
            "{at}"
        );
    }

    #[test]
    fn an_already_expired_token_is_due_at_its_issue_time() {
        let t = ts("2026-11-21T19:00:00Z");
        assert_eq!(refresh_time(t, t, None, "x"), t);
        assert_eq!(refresh_time(t, ts("2026-11-21T18:00:00Z"), None, "x"), t);
    }

    #[test]
    fn transient_backoff_doubles_up_to_its_cap_with_at_most_twenty_percent_off() {
        let now = ts("2026-11-21T19:00:00Z");
        let wait = |n| {
            retry_time(now, FailureCategory::Transient, n, None, "s", None)
                .unwrap()
                .duration_since(now)
        };
        let secs = |n| wait(n).as_secs();
        assert!((4..=5).contains(&secs(1)), "{}", secs(1));
        assert!((8..=10).contains(&secs(2)), "{}", secs(2));
        assert!((16..=20).contains(&secs(3)), "{}", secs(3));
        assert!((240..=300).contains(&secs(30)), "{}", secs(30));
        assert!((240..=300).contains(&secs(u32::MAX)), "{}", secs(u32::MAX));
    }

    #[test]
    fn configuration_backoff_is_long() {
        let now = ts("2026-11-21T19:00:00Z");
        let first = retry_time(now, FailureCategory::Configuration, 1, None, "s", None)
            .unwrap()
            .duration_since(now);
        assert!(first.as_secs() >= 240, "{first}");
        let late = retry_time(now, FailureCategory::Configuration, 10, None, "s", None)
            .unwrap()
            .duration_since(now);
        assert!((2880..=3600).contains(&late.as_secs()), "{late}");
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let now = ts("2026-11-21T19:00:00Z");
        let after = |s| {
            retry_time(
                now,
                FailureCategory::Transient,
                1,
                Some(Duration::from_secs(s)),
                "x",
                None,
            )
            .unwrap()
            .duration_since(now)
            .as_secs()
        };
        assert_eq!(after(120), 120);
        let fractional = "2026-11-21T19:00:00.700Z".parse().unwrap();
        let at = retry_time(
            fractional,
            FailureCategory::Transient,
            1,
            Some(Duration::from_secs(12)),
            "x",
            None,
        );
        assert_eq!(
            at,
            Some(ts("2026-11-21T19:00:13Z")),
            "never earlier than Retry-After, in whole seconds"
        );
        assert!(
            after(1) >= 4,
            "a short Retry-After does not shorten the backoff"
        );
        assert_eq!(after(86_400), 3600);
    }

    #[test]
    fn a_failure_only_a_person_can_fix_is_never_retried_on_a_timer() {
        let now = ts("2026-11-21T19:00:00Z");
        assert_eq!(
            retry_time(now, FailureCategory::ReauthRequired, 1, None, "s", None),
            None
        );
    }

    #[test]
    fn transient_retries_land_before_a_valid_token_expires_when_the_provider_allows() {
        // 20 s of a token left; 3 x 503, then 2 x 429 with Retry-After 2 s.
        let expires = ts("2026-11-21T19:00:20Z");
        let mut now = ts("2026-11-21T19:00:00Z");
        let answers = [None, None, None, Some(2), Some(2)];
        for (attempt, retry_after) in answers.iter().enumerate() {
            let retry_after = retry_after.map(Duration::from_secs);
            let at = retry_time(
                now,
                FailureCategory::Transient,
                attempt as u32 + 1,
                retry_after,
                "s",
                Some(expires),
            )
            .unwrap();
            assert!(at > now, "attempt {attempt}: {at}");
            if let Some(after) = retry_after {
                assert!(at.duration_since(now).as_secs() >= after.as_secs() as i64);
            }
            now = at;
        }
        assert!(
            now < expires,
            "the sixth attempt comes before expiry: {now}"
        );
        // Without the deadline the same failures wait 5 + 10 + 20 + 40 s.
        let plain = retry_time(
            ts("2026-11-21T19:00:00Z"),
            FailureCategory::Transient,
            4,
            None,
            "s",
            None,
        )
        .unwrap();
        assert!(plain.duration_since(ts("2026-11-21T19:00:00Z")).as_secs() >= 32);
    }

    #[test]
    fn retry_after_wins_over_the_deadline_and_an_expired_token_backs_off_plainly() {
        let now = ts("2026-11-21T19:00:00Z");
        let soon = Some(ts("2026-11-21T19:00:06Z"));
        let at = retry_time(
            now,
            FailureCategory::Transient,
            3,
            Some(Duration::from_secs(30)),
            "s",
            soon,
        );
        assert_eq!(at, Some(ts("2026-11-21T19:00:30Z")));
        let expired = Some(ts("2026-11-21T18:59:00Z"));
        let at = retry_time(now, FailureCategory::Transient, 3, None, "s", expired).unwrap();
        assert!(at.duration_since(now).as_secs() >= 16, "{at}");
        let configuration =
            retry_time(now, FailureCategory::Configuration, 1, None, "s", soon).unwrap();
        assert!(configuration.duration_since(now).as_secs() >= 240);
    }
}
