//! What `oauth-token-operator status` prints: one line per credential (READY,
//! REAUTH, EXPIRES IN, NEXT REFRESH, LAST FAILURE) and, for each credential
//! that waits for a person, the command that fixes it. Pure: the credentials
//! and the clock come in, text or JSON goes out.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::resource::{OAuthCredential, READY, REAUTH_REQUIRED};
use crate::status::reason::REFRESH_TOKEN_EXPIRING;

/// One credential, as `status -o json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub name: String,
    /// Status of the `Ready` condition: `True`, `False`, or `Unknown` when
    /// the operator has not reported yet.
    pub ready: String,
    /// Reason of the `Ready` condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Status of the `ReauthRequired` condition.
    pub reauth_required: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Seconds until the access token expires; negative once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_at: Option<String>,
    /// Seconds until the next call to the token endpoint; negative when due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_refresh_in_seconds: Option<i64>,
    pub failed_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailure>,
    /// For `ReauthRequired=True`, or a refresh token that expires soon
    /// (`RefreshTokenExpiring`): the command that grants consent again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// For `ReauthRequired=True`: the condition's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reauth_message: Option<String>,
    /// The output Secret's name.
    pub output_secret: String,
    /// When the refresh token itself expires (time-limited grants).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_at: Option<String>,
    /// Seconds until the refresh token itself expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_in_seconds: Option<i64>,
}

/// Which columns the table has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Columns {
    /// A NAMESPACE column (with `-A`).
    pub namespace: bool,
    /// REASON, OUTPUT and REFRESH TOKEN EXPIRES too (`-o wide`).
    pub wide: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastFailure {
    pub time: String,
    pub category: String,
    pub reason: String,
    pub message: String,
    /// Whether it is part of the current streak (`failedAttempts > 0`) rather
    /// than kept for the record after a later success.
    pub current: bool,
}

/// The rows for `credentials`, sorted by namespace and name. `program` is how
/// the person invoked us (`oauth-token-operator` or `kubectl oauth-token`).
pub fn rows(credentials: &[OAuthCredential], program: &str, now: Timestamp) -> Vec<Row> {
    let mut rows: Vec<Row> = credentials
        .iter()
        .map(|credential| row(credential, program, now))
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

fn row(credential: &OAuthCredential, program: &str, now: Timestamp) -> Row {
    let namespace = credential.namespace().unwrap_or_default();
    let name = credential.name_any();
    let status = credential.status.clone().unwrap_or_default();
    let condition = |type_: &str| status.condition(type_);
    let state = |type_: &str| {
        condition(type_)
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".into())
    };
    let seconds_until = |t: Timestamp| t.duration_since(now).as_secs();
    let reauth = condition(REAUTH_REQUIRED).filter(|c| c.status == "True");
    let grant_expiry = status
        .refresh_token
        .as_ref()
        .and_then(|r| r.expires_at.as_ref())
        .map(|t| t.0);
    Row {
        output_secret: credential.spec.output.secret_name.clone(),
        refresh_token_expires_at: grant_expiry.map(|t| t.to_string()),
        refresh_token_expires_in_seconds: grant_expiry.map(seconds_until),
        ready: state(READY),
        reason: condition(READY).map(|c| c.reason.clone()),
        reauth_required: state(REAUTH_REQUIRED),
        expires_at: status.expires_at.as_ref().map(|t| t.0.to_string()),
        expires_in_seconds: status.expires_at.as_ref().map(|t| seconds_until(t.0)),
        refresh_at: status.refresh_at.as_ref().map(|t| t.0.to_string()),
        next_refresh_in_seconds: status.refresh_at.as_ref().map(|t| seconds_until(t.0)),
        failed_attempts: status.failed_attempts,
        last_failure: status.last_failure.as_ref().map(|f| LastFailure {
            time: f.time.0.to_string(),
            category: format!("{:?}", f.category),
            reason: f.reason.clone(),
            message: f.message.clone(),
            current: status.failed_attempts > 0,
        }),
        fix: (reauth.is_some()
            || condition(READY).is_some_and(|c| c.reason == REFRESH_TOKEN_EXPIRING))
        .then(|| format!("{program} authorize {namespace}/{name}")),
        reauth_message: reauth.map(|c| c.message.clone()),
        namespace,
        name,
    }
}

/// The table, then one paragraph per credential that waits for a person or
/// whose grant ends soon.
pub fn table(rows: &[Row], columns: Columns, now: Timestamp) -> String {
    let mut header = vec![
        "NAME",
        "READY",
        "REAUTH",
        "EXPIRES IN",
        "NEXT REFRESH",
        "LAST FAILURE",
    ];
    if columns.wide {
        header.extend(["REASON", "OUTPUT", "REFRESH TOKEN EXPIRES"]);
    }
    if columns.namespace {
        header.insert(0, "NAMESPACE");
    }
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let mut cells = vec![
            row.name.clone(),
            row.ready.clone(),
            row.reauth_required.clone(),
            expires_in(row.expires_in_seconds),
            next_refresh(row),
            last_failure(row, now),
        ];
        if columns.wide {
            cells.extend([
                row.reason.clone().unwrap_or_else(|| "-".into()),
                row.output_secret.clone(),
                expires_in(row.refresh_token_expires_in_seconds),
            ]);
        }
        if columns.namespace {
            cells.insert(0, row.namespace.clone());
        }
        lines.push(cells);
    }
    let mut out = align(&lines);
    for row in rows {
        out.push_str(&paragraph(row));
    }
    out
}

/// What a person should do about a credential, if anything.
fn paragraph(row: &Row) -> String {
    if let (Some(fix), Some(message)) = (&row.fix, &row.reauth_message) {
        return format!(
            "\n{}/{} needs a person: {message}\n  fix: {fix}\n",
            row.namespace, row.name
        );
    }
    match (&row.reason, &row.refresh_token_expires_at) {
        (Some(reason), Some(at)) if reason == REFRESH_TOKEN_EXPIRING => format!(
            "\n{}/{}: the refresh token expires at {at} (in {}); grant consent again before then\n  fix: {}\n",
            row.namespace,
            row.name,
            short(row.refresh_token_expires_in_seconds.unwrap_or(0)),
            row.fix.as_deref().unwrap_or_default()
        ),
        _ => String::new(),
    }
}

fn align(lines: &[Vec<String>]) -> String {
    let columns = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i + 1 == columns {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn expires_in(seconds: Option<i64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s <= 0 => format!("expired {} ago", short(-s)),
        Some(s) => short(s),
    }
}

fn next_refresh(row: &Row) -> String {
    match row.next_refresh_in_seconds {
        Some(s) if s > 0 => format!("in {}", short(s)),
        Some(_) => "due now".into(),
        None if row.fix.is_some() => "waiting for consent".into(),
        None => "-".into(),
    }
}

fn last_failure(row: &Row, now: Timestamp) -> String {
    let Some(failure) = &row.last_failure else {
        return "-".into();
    };
    let age = failure
        .time
        .parse::<Timestamp>()
        .map(|t| format!(" {} ago", short(now.duration_since(t).as_secs().max(0))))
        .unwrap_or_default();
    if failure.current {
        let attempts = match row.failed_attempts {
            1 => "1 attempt".to_string(),
            n => format!("{n} attempts"),
        };
        format!("{}{age} ({attempts})", failure.reason)
    } else {
        format!("{}{age} (recovered)", failure.reason)
    }
}

/// A duration in at most two units: `45s`, `12m`, `1h05m`, `3d4h`.
pub fn short(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::resource::{
        Condition, Failure, FailureCategory, Inputs, OAuthCredentialSpec, OAuthCredentialStatus,
    };

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(ts("2026-11-21T10:00:00Z")),
            observed_generation: Some(1),
        }
    }

    fn credential(ns: &str, name: &str, status: Option<OAuthCredentialStatus>) -> OAuthCredential {
        let spec: OAuthCredentialSpec = serde_json::from_value(serde_json::json!({
            "provider": {"google": {}},
            "clientSecretRef": {"name": "c"},
            "refreshTokenSecretRef": {"name": "r"},
            "scopes": ["s"],
            "output": {"secretName": "o"},
        }))
        .unwrap();
        let mut credential = OAuthCredential::new(name, spec);
        credential.metadata.namespace = Some(ns.into());
        credential.status = status;
        credential
    }

    fn healthy() -> OAuthCredentialStatus {
        OAuthCredentialStatus {
            conditions: vec![
                condition(READY, "True", "TokenValid", "ok"),
                condition(REAUTH_REQUIRED, "False", "RefreshSucceeded", "ok"),
            ],
            expires_at: Some(Time(ts("2026-11-21T13:00:00Z"))),
            refresh_at: Some(Time(ts("2026-11-21T12:40:00Z"))),
            ..Default::default()
        }
    }

    fn revoked() -> OAuthCredentialStatus {
        OAuthCredentialStatus {
            conditions: vec![
                condition(READY, "False", "TokenExpired", "expired"),
                condition(
                    REAUTH_REQUIRED,
                    "True",
                    "InvalidGrant",
                    "the provider rejected the refresh token",
                ),
            ],
            expires_at: Some(Time(ts("2026-11-21T11:58:00Z"))),
            refresh_at: None,
            failed_attempts: 1,
            last_failure: Some(Box::new(Failure {
                time: Time(ts("2026-11-21T09:00:00Z")),
                category: FailureCategory::ReauthRequired,
                reason: "InvalidGrant".into(),
                message: "the provider rejected the refresh token".into(),
                error: Some("invalid_grant".into()),
                error_description: None,
                error_subtype: None,
                http_status: Some(400),
                inputs: Inputs::default(),
            })),
            ..Default::default()
        }
    }

    const NOW: &str = "2026-11-21T12:00:00Z";

    #[test]
    fn the_table_shows_each_credential_and_how_to_fix_the_one_waiting_for_a_person() {
        let credentials = vec![
            credential("team-b", "drive-importer", Some(revoked())),
            credential("team-a", "gmail-sender", Some(healthy())),
            credential("team-a", "new", None),
        ];
        let rows = rows(&credentials, "oauth-token-operator", ts(NOW));
        let text = table(
            &rows,
            Columns {
                namespace: true,
                wide: false,
            },
            ts(NOW),
        );
        let expected = "\
NAMESPACE   NAME             READY     REAUTH    EXPIRES IN       NEXT REFRESH          LAST FAILURE
team-a      gmail-sender     True      False     1h00m            in 40m                -
team-a      new              Unknown   Unknown   -                -                     -
team-b      drive-importer   False     True      expired 2m ago   waiting for consent   InvalidGrant 3h00m ago (1 attempt)

team-b/drive-importer needs a person: the provider rejected the refresh token
  fix: oauth-token-operator authorize team-b/drive-importer
";
        assert_eq!(text, expected);
    }

    #[test]
    fn without_all_namespaces_there_is_no_namespace_column() {
        let rows = rows(
            &[credential("team-a", "gmail-sender", Some(healthy()))],
            "kubectl oauth-token",
            ts(NOW),
        );
        let text = table(&rows, Columns::default(), ts(NOW));
        assert!(text.starts_with("NAME "), "{text}");
        assert!(!text.contains("team-a"), "{text}");
    }

    #[test]
    fn json_rows_carry_times_seconds_and_the_fix() {
        let rows = rows(
            &[credential("team-b", "drive-importer", Some(revoked()))],
            "kubectl oauth-token",
            ts(NOW),
        );
        let json = serde_json::to_value(&rows).unwrap();
        let row = &json[0];
        assert_eq!(row["ready"], "False");
        assert_eq!(row["reason"], "TokenExpired");
        assert_eq!(row["reauthRequired"], "True");
        assert_eq!(row["expiresInSeconds"], -120);
        assert!(row.get("nextRefreshInSeconds").is_none());
        assert_eq!(row["lastFailure"]["reason"], "InvalidGrant");
        assert_eq!(row["lastFailure"]["category"], "ReauthRequired");
        assert_eq!(row["lastFailure"]["current"], true);
        assert_eq!(
            row["fix"],
            "kubectl oauth-token authorize team-b/drive-importer"
        );
    }

    #[test]
    fn a_recovered_failure_is_marked_as_such() {
        let mut status = healthy();
        status.last_failure = revoked().last_failure;
        let rows = rows(&[credential("a", "b", Some(status))], "x", ts(NOW));
        assert_eq!(
            last_failure(&rows[0], ts(NOW)),
            "InvalidGrant 3h00m ago (recovered)"
        );
        assert_eq!(rows[0].fix, None);
    }

    #[test]
    fn wide_shows_the_reason_the_output_and_a_grant_that_ends_with_its_fix() {
        let mut status = healthy();
        status.conditions[0] = condition(READY, "True", REFRESH_TOKEN_EXPIRING, "ends");
        status.refresh_token = Some(crate::resource::RefreshTokenState {
            expires_at: Some(Time(ts("2026-11-24T12:00:00Z"))),
            ..Default::default()
        });
        let rows = rows(
            &[credential("team-a", "gmail-sender", Some(status))],
            "kubectl oauth-token",
            ts(NOW),
        );
        let text = table(
            &rows,
            Columns {
                namespace: false,
                wide: true,
            },
            ts(NOW),
        );
        let expected = "\
NAME           READY   REAUTH   EXPIRES IN   NEXT REFRESH   LAST FAILURE   REASON                 OUTPUT   REFRESH TOKEN EXPIRES
gmail-sender   True    False    1h00m        in 40m         -              RefreshTokenExpiring   o        3d0h

team-a/gmail-sender: the refresh token expires at 2026-11-24T12:00:00Z (in 3d0h); grant consent again before then
  fix: kubectl oauth-token authorize team-a/gmail-sender
";
        assert_eq!(text, expected);
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["refreshTokenExpiresInSeconds"], 3 * 86_400);
        assert_eq!(json[0]["outputSecret"], "o");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short(0), "0s");
        assert_eq!(short(59), "59s");
        assert_eq!(short(60), "1m");
        assert_eq!(short(3599), "59m");
        assert_eq!(short(3600 + 5 * 60), "1h05m");
        assert_eq!(short(3 * 86_400 + 4 * 3600 + 59), "3d4h");
        assert_eq!(short(-5), "0s");
    }
}
