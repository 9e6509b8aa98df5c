//! Refresh tokens sealed at rest, against the real control plane: sealed in
//! place on first sight, unreadable values reported (never a crash or a
//! loop), and a seal-key rotation end to end.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use oauth_token_operator::resource::{READY, REAUTH_REQUIRED};
use serde_json::json;

use crate::support::fixtures::*;
use crate::support::operator::Operator;
use crate::support::token_server::TokenServer;
use crate::support::{eventually, operator_namespace, run_cli as cli, with_namespace};

const READY_WITHIN: Duration = Duration::from_secs(30);

async fn refresh_secret_data(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> std::collections::BTreeMap<String, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get(&format!("{name}-refresh"))
        .await
        .expect("refresh-token Secret");
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("utf-8")))
        .collect()
}

#[tokio::test]
async fn a_plaintext_refresh_token_is_sealed_in_place_and_no_plaintext_remains() {
    with_namespace("seal-inplace", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        let refresh_token = create_credential(&client, &ns, &server, "gmail").await;
        let status = wait_for_condition(&client, &ns, "gmail", READY, "True", READY_WITHIN).await;

        let data = refresh_secret_data(&client, &ns, "gmail").await;
        assert!(
            !data.contains_key("refresh_token"),
            "the plaintext key is removed"
        );
        let sealed = &data["refresh_token.sealed"];
        assert!(sealed.starts_with("oto-sealed:v2:"), "{sealed}");
        assert!(
            data.values().all(|v| !v.contains(&refresh_token)),
            "no plaintext anywhere in the Secret"
        );
        let key_id = status
            .refresh_token
            .expect("status.refreshToken")
            .sealed_with
            .expect("sealedWith");
        assert!(sealed.starts_with(&format!("oto-sealed:v2:{key_id}:")));

        // The operator created its key ring Secret once, in its own namespace.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &operator_namespace(&ns));
        let ring = secrets
            .get("oauth-token-operator-seal-keys")
            .await
            .expect("key ring Secret");
        assert!(ring.data.unwrap().contains_key("keyring.yaml"));
        assert!(operator.output().contains("created a key ring Secret"));

        // A person supplies a new plaintext token: it is sealed again and used.
        let new_token = server.new_grant();
        put_refresh_token(&client, &ns, "gmail", &new_token).await;
        eventually("the new token to be sealed", READY_WITHIN, || async {
            let data = refresh_secret_data(&client, &ns, "gmail").await;
            (!data.contains_key("refresh_token") && data.values().all(|v| !v.contains(&new_token)))
                .then_some(())
        })
        .await;
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn a_sealed_value_that_does_not_open_asks_for_consent_without_crashing_or_calling_the_provider()
 {
    with_namespace("seal-unreadable", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let mut operator = Operator::start(&ns);
        create_client_secret(&client, &ns).await;
        create_credential(&client, &ns, &server, "one").await;
        create_credential(&client, &ns, &server, "two").await;
        wait_for_condition(&client, &ns, "one", READY, "True", READY_WITHIN).await;
        wait_for_condition(&client, &ns, "two", READY, "True", READY_WITHIN).await;
        let calls = server.call_count();

        // Copy two's sealed token into one's Secret: bound to another
        // credential, it must not open.
        let moved = refresh_secret_data(&client, &ns, "two").await["refresh_token.sealed"].clone();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&moved);
        secrets
            .patch(
                "one-refresh",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"refresh_token.sealed": encoded}})),
            )
            .await
            .unwrap();
        force_refresh(&client, &ns, "one", "now").await;
        let status =
            wait_for_condition(&client, &ns, "one", REAUTH_REQUIRED, "True", READY_WITHIN).await;
        let reauth = status.condition(REAUTH_REQUIRED).unwrap();
        assert_eq!(reauth.reason, "SealedTokenUnreadable");
        assert!(
            reauth
                .message
                .contains("sealed for another credential or namespace"),
            "{}",
            reauth.message
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            server.call_count(),
            calls,
            "an unreadable token is never sent"
        );
        assert!(operator.is_running(), "no crash");
        assert!(
            status_of(&client, &ns, "two").await.is_true(READY),
            "the other credential is unaffected"
        );
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn rotating_the_seal_key_reseals_every_credential_and_the_old_key_can_go() {
    with_namespace("seal-rotate", |client, ns| async move {
        ensure_crd(&client).await;
        let dir = std::env::temp_dir().join(format!("oto-keys-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keyring.yaml");
        let key = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        std::fs::write(&file, format!("primary: old\nkeys:\n  old: {}\n", key(1))).unwrap();

        let server = TokenServer::start(Duration::from_secs(3600)).await;
        let operator = Operator::start_with(&ns, &["--seal-keys-file", file.to_str().unwrap()]);
        create_client_secret(&client, &ns).await;
        let names = ["a", "b", "c"];
        for name in names {
            create_credential(&client, &ns, &server, name).await;
        }
        for name in names {
            let status = wait_for_condition(&client, &ns, name, READY, "True", READY_WITHIN).await;
            assert_eq!(
                status.refresh_token.unwrap().sealed_with.as_deref(),
                Some("old")
            );
        }

        // 1. Add a key and make it primary: every credential is re-sealed.
        std::fs::write(
            &file,
            format!(
                "primary: new\nkeys:\n  old: {}\n  new: {}\n",
                key(1),
                key(2)
            ),
        )
        .unwrap();
        for name in names {
            eventually(
                &format!("{name} re-sealed under the new key"),
                Duration::from_secs(40),
                || async {
                    let status = status_of(&client, &ns, name).await;
                    let sealed =
                        refresh_secret_data(&client, &ns, name).await["refresh_token.sealed"]
                            .clone();
                    (status.refresh_token.and_then(|r| r.sealed_with).as_deref() == Some("new")
                        && sealed.starts_with("oto-sealed:v2:new:"))
                    .then_some(())
                },
            )
            .await;
        }
        // 2. Remove the old key: everything still refreshes.
        std::fs::write(&file, format!("primary: new\nkeys:\n  new: {}\n", key(2))).unwrap();
        tokio::time::sleep(Duration::from_secs(12)).await;
        let calls = server.call_count();
        for name in names {
            force_refresh(&client, &ns, name, "after-rotation").await;
        }
        eventually(
            "a refresh per credential after the old key is gone",
            READY_WITHIN,
            || async { (server.call_count() >= calls + names.len()).then_some(()) },
        )
        .await;
        for name in names {
            let status = status_of(&client, &ns, name).await;
            assert!(status.is_true(READY), "{name}");
            assert_eq!(status.failed_attempts, 0, "{name}");
        }
        assert!(server.calls().iter().all(|c| c.status == 200));
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

async fn sealed_with(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    status_of(client, ns, name)
        .await
        .refresh_token
        .and_then(|r| r.sealed_with)
}

#[tokio::test]
async fn a_lost_key_ring_restored_from_an_export_opens_every_token_again_and_rotate_reseals() {
    with_namespace("seal-backup", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        create_client_secret(&client, &ns).await;
        let mut operator = Operator::start(&ns);
        let names = create_ready_credentials(&client, &ns, &server, "c", 2).await;
        let op_ns = operator_namespace(&ns);
        let original = sealed_with(&client, &ns, "c1").await.expect("sealedWith");

        // 1. Back up.
        let export = cli(&["keys", "export", "-n", &op_ns]).await;
        assert!(export.status.success(), "{export:?}");
        let backup = String::from_utf8(export.stdout).unwrap();
        assert!(backup.contains("kind: Secret") && backup.contains("keyring.yaml"));
        let told = String::from_utf8_lossy(&export.stderr);
        assert!(told.contains(&format!("primary {original}")), "{told}");
        let file = std::env::temp_dir().join(format!("{ns}-seal-keys.yaml"));
        std::fs::write(&file, &backup).unwrap();

        // 2. Lose the ring (as when the namespace goes): the operator starts
        // with a new one, and no sealed token opens.
        operator.stop().await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &op_ns);
        secrets
            .delete("oauth-token-operator-seal-keys", &Default::default())
            .await
            .unwrap();
        operator.restart().await;
        for name in &names {
            force_refresh(&client, &ns, name, "after-loss").await;
            let status =
                wait_for_condition(&client, &ns, name, REAUTH_REQUIRED, "True", READY_WITHIN).await;
            let reason = &status.condition(REAUTH_REQUIRED).unwrap().reason;
            assert_eq!(reason, "SealedTokenUnreadable");
        }
        let calls = server.call_count();

        // 3. Restore: every credential is Ready again, without a consent.
        let import = cli(&["keys", "import", "-n", &op_ns, "-f", file.to_str().unwrap()]).await;
        std::fs::remove_file(&file).unwrap();
        assert!(import.status.success(), "{import:?}");
        let said = String::from_utf8_lossy(&import.stdout);
        assert!(said.contains(&format!("added: {original}")), "{said}");
        assert!(!said.contains(&backup), "no key material is echoed");
        for name in &names {
            wait_for_condition(&client, &ns, name, REAUTH_REQUIRED, "False", READY_WITHIN).await;
            wait_for_condition(&client, &ns, name, READY, "True", READY_WITHIN).await;
        }
        assert!(
            server.call_count() > calls,
            "the refreshes asked for went out"
        );

        // 4. Rotate: a new primary key, and every token re-sealed under it.
        let rotate = cli(&["keys", "rotate", "-n", &op_ns]).await;
        assert!(rotate.status.success(), "{rotate:?}");
        let said = String::from_utf8_lossy(&rotate.stdout).into_owned();
        let new_id = said
            .split("new primary key ")
            .nth(1)
            .and_then(|rest| rest.split('.').next())
            .unwrap_or_else(|| panic!("{said}"))
            .to_string();
        assert_ne!(new_id, original);
        for name in &names {
            eventually(&format!("{name} re-sealed"), READY_WITHIN, || async {
                (sealed_with(&client, &ns, name).await.as_deref() == Some(new_id.as_str()))
                    .then_some(())
            })
            .await;
        }

        // Where there is no key ring, export says how to name it.
        let missing = cli(&["keys", "export", "-n", &ns]).await;
        assert_eq!(missing.status.code(), Some(1), "{missing:?}");
        assert!(String::from_utf8_lossy(&missing.stderr).contains("--secret"));
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}
