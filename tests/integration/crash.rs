//! Crash safety with one replica: the operator is SIGKILLed at random moments
//! while refreshing against a rotating provider that revokes a grant on
//! replay, and restarted; afterwards every credential is Ready and every
//! grant alive.
//!
//! A kill after the provider rotated a token but before the operator stored
//! it loses that token, whatever the client does; real providers give a reuse
//! grace for this (Auth0's reuse interval, Okta's rotation grace period). The
//! test server grants 30 s and reports how often it was needed: the operator
//! must never present a token rotated away longer ago than that.

use std::time::Duration;

use oauth_token_operator::resource::READY;

use crate::support::fixtures::*;
use crate::support::operator::Operator;
use crate::support::token_server::TokenServer;
use crate::support::{eventually, random_fraction, with_namespace};

const LIFETIME: Duration = Duration::from_secs(9);

#[tokio::test]
async fn sigkill_at_random_moments_loses_no_rotated_refresh_token() {
    with_namespace("crash", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(LIFETIME).await;
        server.rotate(true);
        server.allow_reuse_within(Duration::from_secs(30));
        let mut operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        let names = create_ready_credentials(&client, &ns, &server, "k", 12).await;

        let mut kills = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while server.call_count() < 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} refreshes in 300 s",
                server.call_count()
            );
            tokio::time::sleep(Duration::from_millis(
                500 + (random_fraction() * 3000.0) as u64,
            ))
            .await;
            operator.kill();
            kills += 1;
            operator = Operator::start(&ns);
        }
        // Let every credential pass at least one more refresh after the last kill.
        let settled = server.call_count() + names.len();
        eventually("refreshes after the last restart", LIFETIME * 2, || async {
            (server.call_count() >= settled).then_some(())
        })
        .await;

        let calls = server.calls();
        let reuses = server.reuses();
        eprintln!(
            "{} refreshes, {kills} kills, {} grace reuses after {reuses:?}",
            calls.len(),
            reuses.len()
        );
        assert!(
            reuses.len() <= kills,
            "more reuses of rotated tokens than crashes that could explain them"
        );
        assert_eq!(
            server.revoked_grants(),
            0,
            "a rotated refresh token was lost and the old one replayed"
        );
        assert!(
            calls.iter().all(|c| c.status == 200),
            "every exchange succeeded"
        );
        for name in &names {
            let status = status_of(&client, &ns, name).await;
            assert!(
                status.is_true(READY),
                "{name}: {:?}",
                status.condition(READY)
            );
        }
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}
