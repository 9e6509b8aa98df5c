//! `refresh` and `status` as a person or a script runs them: the binary
//! against the real control plane and a running operator.

use std::process::{Command, Output};
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use oauth_token_operator::resource::{OAuthCredential, READY, REAUTH_REQUIRED};
use serde_json::json;

use crate::support::fixtures::*;
use crate::support::operator::Operator;
use crate::support::token_server::TokenServer;
use crate::support::{run_cli as run, with_namespace};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn forced(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    status_of(client, ns, name).await.last_forced_refresh
}

#[tokio::test]
async fn refresh_and_status_flags_behave_as_documented() {
    with_namespace("cli", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        create_client_secret(&client, &ns).await;
        let _operator = Operator::start(&ns);
        let names = create_ready_credentials(&client, &ns, &server, "c", 3).await;
        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        for name in &names[..2] {
            let labels = json!({"metadata": {"labels": {"team": "mail"}}});
            credentials
                .patch(name, &PatchParams::default(), &Patch::Merge(labels))
                .await
                .unwrap();
        }

        // One credential, waited for.
        let calls = server.call_count();
        let one = run(&["refresh", &format!("{ns}/c1")]).await;
        assert!(one.status.success(), "{one:?}");
        assert!(
            stdout(&one).contains(&format!("{ns}/c1 refreshed: the access token expires at")),
            "{}",
            stdout(&one)
        );
        assert_eq!(server.call_count(), calls + 1);

        // By selector: c1 and c2, not c3.
        let before = forced(&client, &ns, "c3").await;
        let selected = run(&["refresh", "-n", &ns, "-l", "team=mail"]).await;
        assert!(selected.status.success(), "{selected:?}");
        let text = stdout(&selected);
        assert!(
            text.contains(&format!("{ns}/c1 refreshed"))
                && text.contains(&format!("{ns}/c2 refreshed")),
            "{text}"
        );
        assert!(!text.contains("c3"), "{text}");
        assert_eq!(forced(&client, &ns, "c3").await, before, "c3 not asked");

        // All, without waiting: asked, then acted on.
        let all = run(&["refresh", "-n", &ns, "--all", "--wait", "0s"]).await;
        assert!(all.status.success(), "{all:?}");
        assert_eq!(
            stdout(&all).matches("refresh requested").count(),
            3,
            "{}",
            stdout(&all)
        );
        let value = crate::support::eventually("c3 acted on", Duration::from_secs(20), || async {
            forced(&client, &ns, "c3")
                .await
                .filter(|v| Some(v) != before.as_ref())
        })
        .await;
        assert!(!value.is_empty());

        // status: formats and selector.
        let yaml = run(&["status", "-n", &ns, "-o", "yaml"]).await;
        let parsed: serde_json::Value = serde_yaml_ng::from_str(&stdout(&yaml)).unwrap();
        assert_eq!(parsed["items"].as_array().unwrap().len(), 3);
        let json = run(&["status", "-n", &ns, "-l", "team=mail", "-o", "json"]).await;
        let parsed: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
        assert_eq!(parsed["items"].as_array().unwrap().len(), 2);
        assert_eq!(parsed["items"][0]["outputSecret"], "c1-token");
        let wide = run(&["status", "-n", &ns, "-o", "wide"]).await;
        let header = stdout(&wide).lines().next().unwrap_or_default().to_string();
        assert!(
            header.contains("REASON") && header.contains("OUTPUT"),
            "{header}"
        );
        let fine = run(&["status", "-n", &ns, "--fail-on-reauth"]).await;
        assert_eq!(fine.status.code(), Some(0), "{fine:?}");

        // A revoked grant: refresh fails, and status --fail-on-reauth says so
        // with its own exit status.
        server.revoke_all();
        let revoked = run(&["refresh", &format!("{ns}/c3")]).await;
        assert_eq!(revoked.status.code(), Some(1), "{revoked:?}");
        assert!(
            stdout(&revoked).contains("did not refresh: InvalidGrant"),
            "{}",
            stdout(&revoked)
        );
        wait_for_condition(
            &client,
            &ns,
            "c3",
            REAUTH_REQUIRED,
            "True",
            Duration::from_secs(10),
        )
        .await;
        let failing = run(&["status", "-n", &ns, "--fail-on-reauth"]).await;
        assert_eq!(failing.status.code(), Some(3), "{failing:?}");
        assert!(String::from_utf8_lossy(&failing.stderr).contains("1 credential(s) need a person"));
        assert!(
            stdout(&failing).contains("fix: oauth-token-operator authorize"),
            "{}",
            stdout(&failing)
        );
        let ready_ones = run(&["status", "-n", &ns, "-l", "team=mail", "--fail-on-reauth"]).await;
        assert_eq!(
            ready_ones.status.code(),
            Some(0),
            "the selector leaves c3 out"
        );
        assert!(status_of(&client, &ns, "c1").await.is_true(READY));

        // A credential whose output name is taken answers too, with why.
        kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
            .create(&Default::default(), &secret("clash-token", &[("x", "y")]))
            .await
            .unwrap();
        create_credential(&client, &ns, &server, "clash").await;
        wait_for_condition(
            &client,
            &ns,
            "clash",
            READY,
            "False",
            Duration::from_secs(20),
        )
        .await;
        let started = std::time::Instant::now();
        let clash = run(&["refresh", &format!("{ns}/clash"), "--wait", "30s"]).await;
        assert_eq!(clash.status.code(), Some(1), "{clash:?}");
        assert!(
            stdout(&clash).contains("did not refresh: SecretConflict"),
            "{}",
            stdout(&clash)
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "answered, not timed out"
        );

        // Usage errors.
        let neither = run(&["refresh"]).await;
        assert_eq!(neither.status.code(), Some(2), "{neither:?}");
        let missing = run(&["refresh", &format!("{ns}/nothing")]).await;
        assert_eq!(missing.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&missing.stderr).contains("not found"),
            "{missing:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn version_names_the_commit_of_the_checkout() {
    let output = run(&["--version"]).await;
    assert!(output.status.success(), "{output:?}");
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git rev-parse HEAD");
    let head = String::from_utf8(head.stdout).unwrap();
    assert_eq!(
        stdout(&output).trim(),
        format!(
            "oauth-token-operator {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            head.trim()
        )
    );
}

#[tokio::test]
async fn completion_scripts_load_in_their_shells_and_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let output = run(&["completion", shell]).await;
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = stdout(&output);
        for command in ["authorize", "status", "refresh", "opt-in", "run", "crd"] {
            assert!(script.contains(command), "{shell} script lacks {command}");
        }
    }
    // bash (the shell here) loads the script and registers the completion.
    let loaded = Command::new("bash")
        .args([
            "-c",
            "source <(\"$0\" completion bash) && complete -p oauth-token-operator",
            env!("CARGO_BIN_EXE_oauth-token-operator"),
        ])
        .output()
        .expect("run bash");
    assert!(loaded.status.success(), "{loaded:?}");
    assert!(
        stdout(&loaded).contains("oauth-token-operator"),
        "{loaded:?}"
    );
    let unknown = run(&["completion", "tcsh"]).await;
    assert_eq!(unknown.status.code(), Some(2), "a usage error");
}
