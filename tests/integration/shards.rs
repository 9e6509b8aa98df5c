//! Three replicas sharing the work through shard Leases, against the real
//! control plane and a rotating token endpoint that revokes a grant on
//! replay: each holds its share of the shards and serves only their
//! credentials; a killed replica's shards are taken over within the lease
//! duration, a new replica gets its share back, and no refresh token is
//! ever exchanged twice.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::ListParams;
use oauth_token_operator::resource::READY;
use oauth_token_operator::shards::{LEASE_SET_LABEL, shard_of};

use crate::support::fixtures::*;
use crate::support::operator::Operator;
use crate::support::token_server::TokenServer;
use crate::support::{eventually, operator_namespace, with_namespace};

const SHARDS: u32 = 6;
const LEASE: Duration = Duration::from_secs(8);
const LIFETIME: Duration = Duration::from_secs(9);
const SET: &str = "oto-shards";

fn replica(ns: &str, name: &str) -> Operator {
    Operator::start_with(
        ns,
        &[
            "--leader-election",
            "--lease-name",
            SET,
            "--shards",
            "6",
            "--lease-duration",
            "8s",
            "--lease-renew-before",
            "5s",
            "--instance",
            name,
        ],
    )
}

/// Shard → holder, from the shard Leases (held and not expired by the
/// holder's own writes: an emptied Lease has no holder).
async fn holders(client: &kube::Client, ns: &str) -> BTreeMap<u32, String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &operator_namespace(ns));
    let listed = leases
        .list(&ListParams::default().labels(&format!("{LEASE_SET_LABEL}={SET}")))
        .await
        .expect("list leases");
    let now = k8s_openapi::jiff::Timestamp::now();
    listed
        .items
        .into_iter()
        .filter_map(|lease| {
            let name = lease.metadata.name?;
            let shard: u32 = name.strip_prefix(&format!("{SET}-shard-"))?.parse().ok()?;
            let spec = lease.spec?;
            let renewed = spec.renew_time?.0;
            let duration = k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds?,
            ));
            (renewed + duration > now).then_some((shard, spec.holder_identity?))
        })
        .collect()
}

/// Waits until every shard is held, by exactly the replicas `alive`, each
/// holding its share; returns the holders.
async fn balanced(
    client: &kube::Client,
    ns: &str,
    alive: &[&str],
    limit: Duration,
) -> BTreeMap<u32, String> {
    let share = SHARDS.div_ceil(alive.len() as u32) as usize;
    eventually(
        &format!("the shards spread over {alive:?}"),
        limit,
        || async {
            let holders = holders(client, ns).await;
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for holder in holders.values() {
                *counts.entry(holder.as_str()).or_default() += 1;
            }
            let spread = holders.len() == SHARDS as usize
                && counts.keys().all(|h| alive.contains(h))
                && counts.values().all(|c| *c <= share);
            spread.then_some(holders)
        },
    )
    .await
}

async fn metric(operator: &Operator, name: &str) -> Option<i64> {
    oauth_token_operator::tls::install_crypto_provider();
    let text = reqwest::get(format!("{}/metrics", operator.admin_url().await))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn replicas_share_the_shards_take_over_a_killed_ones_and_never_replay_a_grant() {
    with_namespace("shards", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(LIFETIME).await;
        server.rotate(true);
        // As in leader.rs: a kill inside the exchange window loses a rotated
        // token whatever the client does; real providers' reuse grace covers it.
        server.allow_reuse_within(Duration::from_secs(30));
        let names = ["r0", "r1", "r2"];
        let mut replicas: HashMap<&str, Operator> =
            names.iter().map(|n| (*n, replica(&ns, n))).collect();
        create_client_secret(&client, &ns).await;
        let credentials = create_ready_credentials(&client, &ns, &server, "c", 30).await;
        let holders = balanced(&client, &ns, &names, Duration::from_secs(30)).await;

        // Each replica serves exactly the credentials of its shards.
        for (name, operator) in &replicas {
            let expected = credentials
                .iter()
                .filter(|c| {
                    holders.get(&shard_of(&ns, c, SHARDS)).map(String::as_str) == Some(*name)
                })
                .count() as i64;
            let served = eventually(
                &format!("{name} to serve its shards"),
                Duration::from_secs(20),
                || async {
                    let scheduled =
                        metric(operator, "oauth_token_operator_credentials_scheduled").await?;
                    (scheduled == expected).then_some(scheduled)
                },
            )
            .await;
            eprintln!("{name}: {served} of {} credentials", credentials.len());
            assert_eq!(
                metric(operator, "oauth_token_operator_shards_held").await,
                Some(2)
            );
        }

        // Kill one: the two survivors hold three shards each within the
        // lease duration (and the few seconds of a round).
        let victim = "r1";
        replicas.get_mut(victim).unwrap().kill();
        let killed = Instant::now();
        balanced(&client, &ns, &["r0", "r2"], LEASE + Duration::from_secs(10)).await;
        let takeover = killed.elapsed();
        eprintln!("shards of a killed replica taken over after {takeover:?} (lease {LEASE:?})");
        assert!(
            takeover <= LEASE + Duration::from_secs(4),
            "takeover after {takeover:?}"
        );
        tokio::time::sleep(LIFETIME).await;

        // It comes back: shards spread over three again.
        replicas.insert(victim, replica(&ns, victim));
        let started = Instant::now();
        balanced(&client, &ns, &names, Duration::from_secs(40)).await;
        eprintln!(
            "rebalanced over three replicas after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(LIFETIME * 2).await;

        assert_eq!(
            server.revoked_grants(),
            0,
            "a rotated refresh token was replayed: two replicas exchanged the same token"
        );
        let calls = server.calls();
        assert!(
            calls.iter().all(|c| c.status == 200),
            "every exchange succeeded"
        );
        for reuse in server.reuses() {
            assert!(
                reuse >= Duration::from_secs(2),
                "a rotated token presented again {reuse:?} after rotation"
            );
        }
        eprintln!(
            "{} refreshes, {} grace reuses",
            calls.len(),
            server.reuses().len()
        );
        for name in &credentials {
            wait_for_condition(&client, &ns, name, READY, "True", Duration::from_secs(20)).await;
        }
        for replica in replicas.values() {
            assert_no_token_leaked(&client, &ns, &server, replica).await;
        }
    })
    .await;
}
