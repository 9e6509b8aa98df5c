//! `authorize` and `status`, as a person uses them: the real binary against
//! the real control plane, and a loopback authorization server. The test
//! plays the browser: it opens the printed address, which redirects after
//! "consent", and follows the redirect to the command's listener (or pastes
//! it into the command's terminal).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use oauth_token_operator::input_secrets::REFRESH_TOKEN_SECRET_TYPE;
use oauth_token_operator::resource::{
    ClientAuthentication, OAuthCredential, READY, REAUTH_REQUIRED,
};
use serde_json::{Value, json};

use crate::support::fixtures::*;
use crate::support::operator::Operator;
use crate::support::token_server::{Consent, Scripted, TokenServer};
use crate::support::{eventually, kubeconfig_as, with_namespace};

const GMAIL_SEND: &str = "https://www.googleapis.com/auth/gmail.send";
const DRIVE_FILE: &str = "https://www.googleapis.com/auth/drive.file";

/// A running `oauth-token-operator authorize`.
struct Authorize {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Authorize {
    fn start(args: &[&str], kubeconfig: Option<&std::path::Path>) -> Self {
        Self::start_with(args, kubeconfig, None)
    }

    /// With `browser`, the command opens the consent page with it (as
    /// `$BROWSER`) instead of being told `--no-browser`.
    fn start_with(
        args: &[&str],
        kubeconfig: Option<&std::path::Path>,
        browser: Option<&std::path::Path>,
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"));
        command
            .arg("authorize")
            .args(args)
            .arg("--allow-insecure-loopback-http")
            .envs(kubeconfig.map(|path| ("KUBECONFIG", path.as_os_str())));
        match browser {
            Some(browser) => command.env("BROWSER", browser),
            None => command.arg("--no-browser").env_remove("BROWSER"),
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start authorize");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        capture(child.stdout.take().unwrap(), stdout.clone());
        capture(child.stderr.take().unwrap(), stderr.clone());
        Authorize {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// The consent address the command printed.
    async fn consent_url(&self) -> String {
        eventually("the consent address", Duration::from_secs(20), || async {
            self.stderr
                .lock()
                .unwrap()
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("http://"))
                .map(str::to_owned)
        })
        .await
    }

    /// The consent address, or `None` when the command exited first.
    async fn consent_url_or_exit(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let printed = self
                .stderr
                .lock()
                .unwrap()
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("http://"))
                .map(str::to_owned);
            if printed.is_some() {
                return printed;
            }
            if self.child.try_wait().expect("wait for authorize").is_some() {
                return None;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "authorize printed no consent address within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the command's terminal.
    fn paste(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{text}").expect("write to authorize's stdin");
    }

    /// Waits for the exit: (success, stdout, stderr).
    async fn finish(mut self) -> (bool, String, String) {
        drop(self.stdin.take());
        let status = eventually("authorize to exit", Duration::from_secs(90), || {
            let status = self.child.try_wait().expect("wait for authorize");
            async move { status }
        })
        .await;
        // Let the capture threads drain the pipes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stdout = self.stdout.lock().unwrap().clone();
        let stderr = self.stderr.lock().unwrap().clone();
        (status.success(), stdout, stderr)
    }
}

impl Drop for Authorize {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn capture(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut out = into.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    });
}

fn browser() -> reqwest::Client {
    oauth_token_operator::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Opens the consent address; returns where the authorization server sends
/// the browser next.
async fn consent(url: &str) -> String {
    let response = browser().get(url).send().await.expect("open consent page");
    assert_eq!(response.status(), 302, "the consent page redirects");
    response.headers()["location"].to_str().unwrap().to_string()
}

/// Follows the redirect to the command's listener; returns the page shown.
async fn follow(location: &str) -> String {
    let response = browser()
        .get(location)
        .send()
        .await
        .expect("follow redirect");
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// A credential whose provider is the test server, asking for `scopes`.
async fn create_authorizable(
    client: &Client,
    ns: &str,
    server: &TokenServer,
    name: &str,
    scopes: &[&str],
) {
    let mut spec = credential_spec(server, name, ClientAuthentication::ClientSecretPost);
    spec.provider.authorization_endpoint = Some(server.authorization_url());
    spec.scopes = scopes.iter().map(|s| s.to_string()).collect();
    let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), ns);
    credentials
        .create(&PostParams::default(), &OAuthCredential::new(name, spec))
        .await
        .expect("create credential");
}

async fn secret(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets.get_opt(name).await.expect("get Secret")
}

fn assert_no_token_in(output: &str, server: &TokenServer) {
    for token in server.issued_tokens() {
        assert!(
            !output.contains(&token),
            "a token or code issued by the provider appears in authorize's output"
        );
    }
}

/// `status` as a person runs it.
fn status_command(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_oauth-token-operator"))
        .arg("status")
        .args(args)
        .output()
        .expect("run status");
    assert!(
        output.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn consent_creates_the_refresh_token_secret_and_the_operator_refreshes_with_it() {
    with_namespace("authz-new", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        create_client_secret(&client, &ns).await;
        create_authorizable(&client, &ns, &server, "mail", &[GMAIL_SEND, DRIVE_FILE]).await;
        let operator = Operator::start(&ns);
        let waiting = wait_for_condition(
            &client,
            &ns,
            "mail",
            REAUTH_REQUIRED,
            "True",
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            waiting.condition(REAUTH_REQUIRED).unwrap().reason,
            "RefreshTokenMissing"
        );
        assert!(secret(&client, &ns, "mail-refresh").await.is_none());

        // The browser is a script that records the address it was given;
        // the redirect listens on the port asked for.
        let browser_dir = std::env::temp_dir().join(format!("oto-{ns}-browser"));
        std::fs::create_dir_all(&browser_dir).unwrap();
        let opened = browser_dir.join("opened");
        let browser = browser_dir.join("browser");
        std::fs::write(
            &browser,
            format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", opened.display()),
        )
        .unwrap();
        std::fs::set_permissions(
            &browser,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let port_arg = port.to_string();
        let authorize = Authorize::start_with(
            &[&format!("{ns}/mail"), "--port", &port_arg],
            None,
            Some(&browser),
        );
        let url = authorize.consent_url().await;
        let in_browser = eventually("the browser to open", Duration::from_secs(10), || async {
            std::fs::read_to_string(&opened).ok()
        })
        .await;
        let _ = std::fs::remove_dir_all(&browser_dir);
        assert_eq!(in_browser, url, "the browser opened the printed address");
        let location = consent(&url).await;
        // A stray request with another state reaches the listener first: it
        // is refused, and does not end the consent.
        let stray = location.replace("state=", "state=stray");
        assert!(follow(&stray).await.contains("Authorization failed"));
        let page = follow(&location).await;
        assert!(page.contains("Consent received"), "{page}");
        let (success, stdout, stderr) = authorize.finish().await;
        assert!(success, "authorize failed:\n{stderr}");
        assert!(stdout.contains(&format!("{ns}/mail is Ready")), "{stdout}");

        // What was asked of the authorization server.
        let requests = server.authorization_requests();
        assert_eq!(requests.len(), 1);
        let param = |key: &str| {
            requests[0]
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(param("code_challenge_method"), "S256");
        assert_eq!(param("scope"), format!("{GMAIL_SEND} {DRIVE_FILE}"));
        assert!(param("state").len() >= 22, "an unguessable state");
        assert_eq!(param("redirect_uri"), format!("http://127.0.0.1:{port}/"));

        // The operator refreshed with the new token, which is stored sealed.
        let consented = server.consented_refresh_tokens();
        assert_eq!(consented.len(), 1);
        assert!(
            server
                .calls()
                .iter()
                .any(|c| c.grant_type == "refresh_token"
                    && c.refresh_token == consented[0]
                    && c.status == 200),
            "the operator refreshed with the consented refresh token"
        );
        let stored = secret(&client, &ns, "mail-refresh")
            .await
            .expect("Secret created");
        let data = stored.data.unwrap_or_default();
        assert!(
            data.contains_key("refresh_token.sealed"),
            "{:?}",
            data.keys()
        );
        assert!(!data.contains_key("refresh_token"), "sealed in place");
        let status = status_of(&client, &ns, "mail").await;
        assert!(status.is_true(READY));
        assert_eq!(status.condition(REAUTH_REQUIRED).unwrap().status, "False");
        assert!(access_token_in(&client, &ns, "mail-token").await.is_some());

        assert_no_token_in(&format!("{stdout}{stderr}"), &server);
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

#[tokio::test]
async fn reauth_required_is_fixed_by_authorize_alone_with_a_pasted_address() {
    with_namespace("authz-reauth", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        create_client_secret(&client, &ns).await;
        let old = server.new_grant();
        put_refresh_token(&client, &ns, "mail", &old).await;
        // A key of the person's own, which must survive.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .patch(
                "mail-refresh",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"note": "owned by team-a"}})),
            )
            .await
            .unwrap();
        create_authorizable(&client, &ns, &server, "mail", &[GMAIL_SEND]).await;
        let operator = Operator::start(&ns);
        wait_for_condition(&client, &ns, "mail", READY, "True", Duration::from_secs(30)).await;
        server.revoke(&old);
        force_refresh(&client, &ns, "mail", "revoked").await;
        wait_for_condition(
            &client,
            &ns,
            "mail",
            REAUTH_REQUIRED,
            "True",
            Duration::from_secs(30),
        )
        .await;

        // `status` says what is wrong and how to fix it.
        let table = status_command(&["-n", &ns]);
        let line = table
            .lines()
            .find(|l| l.starts_with("mail "))
            .unwrap_or_else(|| panic!("no row for mail:\n{table}"));
        assert!(line.contains("InvalidGrant"), "{table}");
        assert!(line.contains("waiting for consent"), "{table}");
        assert!(
            table.contains(&format!("  fix: oauth-token-operator authorize {ns}/mail")),
            "{table}"
        );
        let listed: Value = serde_json::from_str(&status_command(&["-A", "-o", "json"])).unwrap();
        let row = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["namespace"] == ns.as_str() && r["name"] == "mail")
            .expect("row in -A output")
            .clone();
        assert_eq!(row["reauthRequired"], "True");
        assert_eq!(row["lastFailure"]["reason"], "InvalidGrant");
        assert_eq!(
            row["fix"],
            format!("oauth-token-operator authorize {ns}/mail")
        );
        // As the kubectl plugin, the fix names the plugin.
        let plugin_dir = std::env::temp_dir().join(format!("oto-{ns}-plugin"));
        std::fs::create_dir_all(&plugin_dir).unwrap();
        let plugin = plugin_dir.join("kubectl-oauth_token");
        let _ = std::fs::remove_file(&plugin);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_oauth-token-operator"), &plugin).unwrap();
        let output = Command::new(&plugin)
            .args(["status", "-n", &ns])
            .output()
            .expect("run kubectl-oauth_token");
        let help = Command::new(&plugin)
            .args(["authorize", "--help"])
            .output()
            .expect("run kubectl-oauth_token");
        let _ = std::fs::remove_dir_all(&plugin_dir);
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(
            text.contains(&format!("  fix: kubectl oauth-token authorize {ns}/mail")),
            "{text}"
        );
        let help = String::from_utf8(help.stdout).unwrap();
        assert!(
            help.contains("Usage: kubectl oauth-token authorize [OPTIONS] <CREDENTIAL>"),
            "{help}"
        );

        // The browser runs elsewhere: the person pastes where it ended.
        let calls_before = server.call_count();
        let mut authorize = Authorize::start(&["-n", &ns, "mail"], None);
        let url = authorize.consent_url().await;
        let location = consent(&url).await;
        authorize.paste("not the address");
        authorize.paste(&location);
        let (success, stdout, stderr) = authorize.finish().await;
        assert!(success, "authorize failed:\n{stderr}");
        assert!(stderr.contains("That is not the address"), "{stderr}");
        assert!(stdout.contains("is Ready"), "{stdout}");

        let status = status_of(&client, &ns, "mail").await;
        assert!(status.is_true(READY));
        assert_eq!(status.condition(REAUTH_REQUIRED).unwrap().status, "False");
        let consented = server.consented_refresh_tokens();
        let refreshes: Vec<_> = server.calls()[calls_before..]
            .iter()
            .filter(|c| c.grant_type == "refresh_token")
            .cloned()
            .collect();
        assert!(
            refreshes.iter().all(|c| c.refresh_token == consented[0]),
            "after consent the operator uses only the new refresh token"
        );
        assert!(!refreshes.is_empty());
        let data = secret(&client, &ns, "mail-refresh")
            .await
            .unwrap()
            .data
            .unwrap();
        assert_eq!(data["note"].0, b"owned by team-a");

        let table = status_command(&["-n", &ns]);
        assert!(!table.contains("fix:"), "{table}");
        assert_no_token_in(&format!("{stdout}{stderr}"), &server);
        assert_no_token_leaked(&client, &ns, &server, &operator).await;
    })
    .await;
}

/// Runs authorize for `ns/mail` expecting failure; the test plays the
/// browser with `browse` (given the consent address). Returns what it said.
async fn fails<F, Fut>(
    ns: &str,
    extra: &[&str],
    kubeconfig: Option<&std::path::Path>,
    browse: F,
) -> String
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut args = vec![format!("{ns}/mail")];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut authorize = Authorize::start(&args, kubeconfig);
    if let Some(url) = authorize.consent_url_or_exit().await {
        browse(url).await;
    }
    let (success, stdout, stderr) = authorize.finish().await;
    assert!(
        !success,
        "authorize succeeded unexpectedly:\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("error: "), "{stderr}");
    stderr
}

#[tokio::test]
async fn every_failure_is_explained_and_leaves_the_secret_as_it_was() {
    with_namespace("authz-fail", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        create_client_secret(&client, &ns).await;
        create_authorizable(&client, &ns, &server, "mail", &[GMAIL_SEND, DRIVE_FILE]).await;
        put_refresh_token(&client, &ns, "mail", "the-old-refresh-token").await;
        // The operator checks the credential (authorize sends nothing to
        // endpoints it has not allowed), seals the old token and finds it
        // revoked; then the Secret stays as it is until someone writes it.
        let mut operator = Operator::start(&ns);
        wait_for_condition(
            &client,
            &ns,
            "mail",
            REAUTH_REQUIRED,
            "True",
            Duration::from_secs(30),
        )
        .await;
        let before = eventually("the old token sealed", Duration::from_secs(10), || async {
            let stored = secret(&client, &ns, "mail-refresh").await.unwrap();
            let sealed = stored.data.as_ref()?.contains_key("refresh_token.sealed");
            sealed.then_some(stored)
        })
        .await;
        let unchanged = || async {
            let now = secret(&client, &ns, "mail-refresh").await.unwrap();
            assert_eq!(
                now.metadata.resource_version,
                before.metadata.resource_version
            );
            assert_eq!(now.data, before.data);
        };

        // A redirect whose state was altered (or that another page forged)
        // is refused, and the wait goes on until the timeout.
        let said = fails(&ns, &["--timeout", "4s"], None, |url| async move {
            let location = consent(&url).await.replace("state=", "state=x");
            let page = follow(&location).await;
            assert!(page.contains("Authorization failed"), "{page}");
        })
        .await;
        assert!(said.contains("Ignored a redirect"), "{said}");
        assert!(said.contains("state does not match"), "{said}");
        assert!(said.contains("no consent arrived within 4s"), "{said}");
        unchanged().await;

        server.consent(Consent::Deny);
        let said = fails(&ns, &[], None, |url| async move {
            follow(&consent(&url).await).await;
        })
        .await;
        assert!(said.contains("consent was not given"), "{said}");
        assert!(said.contains("access_denied"), "{said}");
        unchanged().await;

        server.consent(Consent::GrantOnly(GMAIL_SEND.into()));
        let said = fails(&ns, &[], None, |url| async move {
            follow(&consent(&url).await).await;
        })
        .await;
        assert!(
            said.contains(&format!("lacks scopes the credential needs: {DRIVE_FILE}")),
            "{said}"
        );
        unchanged().await;

        server.consent(Consent::WithoutRefreshToken);
        let said = fails(&ns, &[], None, |url| async move {
            follow(&consent(&url).await).await;
        })
        .await;
        assert!(said.contains("no refresh token"), "{said}");
        unchanged().await;

        server.consent(Consent::Grant);
        server.script([Scripted::json(
            400,
            r#"{"error":"invalid_grant","error_description":"Malformed auth code."}"#,
        )]);
        let said = fails(&ns, &[], None, |url| async move {
            follow(&consent(&url).await).await;
        })
        .await;
        assert!(
            said.contains("did not accept the authorization code"),
            "{said}"
        );
        assert!(said.contains("Malformed auth code"), "{said}");
        unchanged().await;

        let said = fails(&ns, &["--timeout", "2s"], None, ignore).await;
        assert!(said.contains("no consent arrived within 2s"), "{said}");
        unchanged().await;

        // A person allowed to read but not to write the Secret is stopped
        // before anyone is asked for consent.
        let kubeconfig = read_only_kubeconfig(&client, &ns).await;
        let said = fails(&ns, &[], Some(&kubeconfig), no_consent_expected).await;
        assert!(said.contains("cannot be stored in Secret"), "{said}");
        assert!(said.contains("forbidden"), "{said}");
        assert!(said.contains("nothing was asked of anyone"), "{said}");
        let _ = std::fs::remove_file(&kubeconfig);
        unchanged().await;

        // An immutable Secret, likewise.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let frozen = secrets
            .patch(
                "mail-refresh",
                &PatchParams::default(),
                &Patch::Merge(json!({"immutable": true})),
            )
            .await
            .unwrap();
        let said = fails(&ns, &[], None, no_consent_expected).await;
        assert!(said.contains("immutable"), "{said}");
        let now = secret(&client, &ns, "mail-refresh").await.unwrap();
        assert_eq!(
            now.metadata.resource_version,
            frozen.metadata.resource_version
        );

        assert_no_token_in(&said, &server);
        let missing = Authorize::start(&[&format!("{ns}/nope")], None);
        let (success, _, stderr) = missing.finish().await;
        assert!(!success);
        assert!(
            stderr.contains(&format!("OAuthCredential {ns}/nope does not exist")),
            "{stderr}"
        );

        // The operator checked a credential and then stopped: the token is
        // stored, and the command says that nobody acted on it.
        create_authorizable(&client, &ns, &server, "idle", &[GMAIL_SEND]).await;
        wait_for_condition(
            &client,
            &ns,
            "idle",
            REAUTH_REQUIRED,
            "True",
            Duration::from_secs(30),
        )
        .await;
        operator.stop().await;
        let mut authorize = Authorize::start(&[&format!("{ns}/idle"), "--wait", "2s"], None);
        let url = authorize
            .consent_url_or_exit()
            .await
            .expect("consent address");
        follow(&consent(&url).await).await;
        let (success, _, stderr) = authorize.finish().await;
        assert!(!success);
        assert!(
            stderr.contains(
                "the refresh token is stored, but the operator did not act on it within 2s"
            ),
            "{stderr}"
        );
        let stored = secret(&client, &ns, "idle-refresh").await.expect("stored");
        let consented = server.consented_refresh_tokens();
        assert_eq!(
            stored.data.unwrap()["refresh_token"].0,
            consented.last().unwrap().as_bytes()
        );
    })
    .await;
}

/// A browser that opens nothing.
fn ignore(_url: String) -> std::future::Ready<()> {
    std::future::ready(())
}

/// For failures that must stop the command before it asks for consent.
fn no_consent_expected(_url: String) -> std::future::Ready<()> {
    panic!("the consent page was offered although the write cannot succeed")
}

/// A kubeconfig acting as a user who may read credentials and Secrets in
/// `ns` and annotate credentials, but not write Secrets.
async fn read_only_kubeconfig(client: &Client, ns: &str) -> std::path::PathBuf {
    let user = format!("reader-{ns}");
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
            {"apiGroups": ["oauth.tokenoperator.io"], "resources": ["oauthcredentials"], "verbs": ["get", "patch"]},
        ],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    kubeconfig_as(&user, &format!("oto-{ns}-reader.kubeconfig"))
}

#[tokio::test]
async fn nothing_is_sent_to_endpoints_the_operator_has_not_allowed_nor_stored_in_a_secret_it_would_not_use()
 {
    with_namespace("authz-allow", |client, ns| async move {
        ensure_crd(&client).await;
        let allowed = TokenServer::start(Duration::from_secs(3600)).await;
        let unlisted = TokenServer::start(Duration::from_secs(3600)).await;
        create_client_secret(&client, &ns).await;
        create_authorizable(&client, &ns, &unlisted, "mail", &[GMAIL_SEND]).await;

        // No operator has checked the credential yet.
        let said = fails(&ns, &[], None, no_consent_expected).await;
        assert!(said.contains("the operator has not checked"), "{said}");

        // The operator refuses its endpoints: so does authorize.
        let _operator = Operator::start_with_own_allowlist(
            &ns,
            &["--allowed-endpoint", &format!("http://{}", allowed.addr)],
        );
        eventually("EndpointNotAllowed", Duration::from_secs(30), || async {
            let failure = status_of(&client, &ns, "mail").await.last_failure?;
            (failure.reason == "EndpointNotAllowed").then_some(())
        })
        .await;
        let said = fails(&ns, &[], None, no_consent_expected).await;
        assert!(said.contains("the operator refuses"), "{said}");
        assert!(said.contains("EndpointNotAllowed"), "{said}");
        assert!(unlisted.authorization_requests().is_empty());
        assert_eq!(unlisted.call_count(), 0);

        // Allowed endpoints, but a refresh-token Secret that never opted in.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .create(
                &PostParams::default(),
                &crate::support::fixtures::secret("mail-refresh", &[("note", "not a token")]),
            )
            .await
            .unwrap();
        let before = secret(&client, &ns, "mail-refresh").await.unwrap();
        let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &ns);
        credentials
            .patch(
                "mail",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"provider": {
                    "tokenEndpoint": allowed.url(),
                    "authorizationEndpoint": allowed.authorization_url(),
                }}})),
            )
            .await
            .unwrap();
        eventually("SecretNotAccepted", Duration::from_secs(30), || async {
            let failure = status_of(&client, &ns, "mail").await.last_failure?;
            (failure.reason == "SecretNotAccepted").then_some(())
        })
        .await;
        let said = fails(&ns, &[], None, no_consent_expected).await;
        assert!(
            said.contains("is not an OAuth refresh-token Secret"),
            "{said}"
        );
        assert!(said.contains(&format!("opt-in {ns}/mail")), "{said}");
        let after = secret(&client, &ns, "mail-refresh").await.unwrap();
        assert_eq!(
            after.metadata.resource_version,
            before.metadata.resource_version
        );
        assert!(allowed.authorization_requests().is_empty());
    })
    .await;
}

#[tokio::test]
async fn the_documented_role_suffices_and_a_time_limited_grant_is_recorded() {
    with_namespace("authz-role", |client, ns| async move {
        ensure_crd(&client).await;
        let server = TokenServer::start(Duration::from_secs(3600)).await;
        server.refresh_token_expires_in(Some(7 * 24 * 3600));
        create_client_secret(&client, &ns).await;
        create_authorizable(&client, &ns, &server, "mail", &[GMAIL_SEND]).await;
        // The refresh-token Secret exists, empty, as the Role's comment says.
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(
                &PostParams::default(),
                &typed_secret("mail-refresh", REFRESH_TOKEN_SECRET_TYPE, &[]),
            )
            .await
            .unwrap();
        // examples/rbac/authorize-role.yaml, for this namespace and credential.
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/rbac/authorize-role.yaml"
        ))
        .unwrap()
        .replace("team-a", &ns)
        .replace("google-oauth-client", CLIENT_SECRET_NAME)
        .replace("gmail-sender", "mail");
        let role: Role = serde_yaml_ng::from_str(&example).unwrap();
        Api::<Role>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &role)
            .await
            .unwrap();
        let user = format!("person-{ns}");
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "person"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role.metadata.name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
        let kubeconfig = kubeconfig_as(&user, &format!("oto-{ns}-person.kubeconfig"));
        let _operator = Operator::start(&ns);

        let authorize = Authorize::start(&[&format!("{ns}/mail")], Some(&kubeconfig));
        let url = authorize.consent_url().await;
        follow(&consent(&url).await).await;
        let (success, stdout, stderr) = authorize.finish().await;
        let _ = std::fs::remove_file(&kubeconfig);
        assert!(success, "authorize with the documented Role failed:\n{stderr}");
        assert!(stdout.contains(&format!("{ns}/mail is Ready")), "{stdout}");

        // The grant's end, from the code exchange, kept on the Secret and in
        // status.
        let stored = secret(&client, &ns, "mail-refresh").await.unwrap();
        let recorded: k8s_openapi::jiff::Timestamp = stored
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("oauth.tokenoperator.io/refresh-token-expires-at"))
            .expect("the annotation")
            .parse()
            .unwrap();
        let in_a_week = k8s_openapi::jiff::Timestamp::now()
            + k8s_openapi::jiff::SignedDuration::from_secs(7 * 24 * 3600);
        assert!(
            in_a_week.duration_since(recorded).as_secs().abs() < 60,
            "{recorded}"
        );
        let status = status_of(&client, &ns, "mail").await;
        let expires = status.refresh_token.and_then(|r| r.expires_at).unwrap().0;
        assert!(expires.duration_since(recorded).as_secs().abs() < 60, "{expires}");
        // A week left is within the default warning (7 days): said so.
        assert_eq!(
            status.conditions.iter().find(|c| c.type_ == READY).unwrap().reason,
            "RefreshTokenExpiring"
        );
    })
    .await;
}
