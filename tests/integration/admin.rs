//! The admin server after an end-to-end run: health endpoints answer, and the
//! metrics match what happened.

use std::time::Duration;

use oauth_token_operator::resource::{READY, REAUTH_REQUIRED};

use crate::support::fixtures::*;
use crate::support::operator::Operator;
use crate::support::token_server::TokenServer;
use crate::support::{eventually, with_namespace};

async fn get(url: &str) -> (u16, String) {
    oauth_token_operator::tls::install_crypto_provider();
    let response = reqwest::get(url).await.expect("admin server answers");
    (response.status().as_u16(), response.text().await.unwrap())
}

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_match_what_happened_and_health_endpoints_answer() {
    with_namespace("admin", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        let admin = operator.admin_url().await;
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "good").await;
        let revoked = create_credential(&client, &ns, &server, "revoked").await;
        server.revoke(&revoked);
        wait_for_condition(&client, &ns, "good", READY, "True", Duration::from_secs(30)).await;
        wait_for_condition(
            &client,
            &ns,
            "revoked",
            REAUTH_REQUIRED,
            "True",
            Duration::from_secs(30),
        )
        .await;

        assert_eq!(get(&format!("{admin}/livez")).await.0, 200);
        assert_eq!(get(&format!("{admin}/readyz")).await.0, 200);
        // OpenMetrics says so (else Prometheus drops counters' HELP), with the
        // build and the process beside the operator's own series.
        let response = reqwest::get(format!("{admin}/metrics")).await.unwrap();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        assert!(text.ends_with("# EOF\n"), "an OpenMetrics body");
        assert!(
            text.contains(&format!(
                "oauth_token_operator_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                oauth_token_operator::cli::GIT_COMMIT
            )),
            "{text}"
        );
        let rss = value(&text, "process_resident_memory_bytes").unwrap_or_default();
        assert!(rss > 1e6, "the operator's RSS, not ours: {rss}");
        assert!(value(&text, "process_cpu_seconds_total").is_some_and(|s| s > 0.0));
        let metrics = eventually(
            "the credential gauges to catch up",
            Duration::from_secs(15),
            || async {
                let (_, text) = get(&format!("{admin}/metrics")).await;
                (value(
                    &text,
                    r#"oauth_token_operator_credentials{ready="True",reauth_required="False"}"#,
                ) == Some(1.0)
                    && value(
                        &text,
                        r#"oauth_token_operator_credentials{ready="False",reauth_required="True"}"#,
                    ) == Some(1.0))
                .then_some(text)
            },
        )
        .await;
        assert_eq!(
            value(
                &metrics,
                r#"oauth_token_operator_refresh_attempts_total{outcome="success"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &metrics,
                r#"oauth_token_operator_refresh_attempts_total{outcome="InvalidGrant"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &metrics,
                "oauth_token_operator_refresh_duration_seconds_count"
            ),
            Some(2.0)
        );
        assert_eq!(value(&metrics, "oauth_token_operator_leader"), Some(1.0));
        assert_eq!(
            value(&metrics, "oauth_token_operator_credentials_scheduled"),
            Some(2.0)
        );
        let status = status_of(&client, &ns, "good").await;
        let expiry = status.expires_at.unwrap().0.as_second() as f64;
        assert_eq!(
            value(
                &metrics,
                "oauth_token_operator_earliest_expiry_timestamp_seconds"
            ),
            Some(expiry)
        );
        assert_eq!(
            value(
                &metrics,
                "oauth_token_operator_next_refresh_timestamp_seconds"
            ),
            Some(status.refresh_at.unwrap().0.as_second() as f64)
        );
        for token in server.issued_tokens() {
            assert!(!metrics.contains(&token), "no token in metrics");
        }
        assert!(
            !metrics.contains(&ns),
            "no namespace (unbounded label) in metrics"
        );
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn calls_to_one_endpoint_respect_its_rate_limit_and_the_waits_are_counted() {
    with_namespace("ratelimit", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start_with(
            &ns,
            &["--token-endpoint-rate", "1", "--token-endpoint-burst", "1"],
        );
        let admin = operator.admin_url().await;
        create_client_secret(&client, &ns).await;
        let names = ["r1", "r2", "r3", "r4"];
        for name in names {
            create_credential(&client, &ns, &server, name).await;
        }
        for name in names {
            wait_for_condition(&client, &ns, name, READY, "True", Duration::from_secs(30)).await;
        }
        let calls = server.calls();
        assert_eq!(calls.len(), 4);
        let span = calls[3].at.duration_since(calls[0].at).unwrap();
        assert!(
            span >= Duration::from_millis(2800),
            "4 calls at 1/s took only {span:?}"
        );
        let (_, text) = get(&format!("{admin}/metrics")).await;
        let waits = value(&text, "oauth_token_operator_rate_limit_waits_total").unwrap_or(0.0);
        assert!(waits >= 2.0, "{waits} waits counted");
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}
