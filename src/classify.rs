//! What a token endpoint's answer means (DESIGN §4): success, a failure only a
//! person can fix, a configuration failure, or a transient one.
//!
//! Pure: it sees the HTTP status, a few headers and the body that the token
//! client read, never the network. Nothing it returns contains a token or a
//! raw body; provider error fields are kept, trimmed and stripped of control
//! characters, because status and events show them to people.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::resource::FailureCategory;

/// Lifetime assumed when a successful answer has no `expires_in` (it is only
/// RECOMMENDED by RFC 6749 §5.1). Short enough to be safe, long enough not to
/// hammer the provider.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Provider text longer than this is cut: `error_description`...
const MAX_ERROR_TEXT: usize = 256;
/// ...and `error` and `error_subtype`, which are codes.
const MAX_ERROR_CODE: usize = 64;
/// What replaces a secret that a provider echoed back.
pub const REDACTED: &str = "[redacted]";

/// A successful refresh. Token values are wrapped so that they never print.
#[derive(Clone, Debug)]
pub struct Token {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_in: Duration,
    /// Space-separated scopes, when the provider reported them.
    pub scope: Option<String>,
    /// A new refresh token (rotation). Must be persisted before anything else.
    pub refresh_token: Option<SecretString>,
    /// How long the refresh token itself stays valid, when the provider says
    /// (Google's time-limited grants: `refresh_token_expires_in`).
    pub refresh_token_expires_in: Option<Duration>,
}

/// The provider's error fields (RFC 6749 §5.2, plus Google's `error_subtype`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderError {
    pub error: Option<String>,
    pub description: Option<String>,
    pub subtype: Option<String>,
}

/// Why a refresh failed. Holds no token and no response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Who can fix it.
    pub category: FailureCategory,
    /// The CamelCase reason used in conditions, events and metrics. A fixed,
    /// small set: safe as a metric label.
    pub reason: &'static str,
    /// What went wrong, in our words, for transient failures.
    pub detail: &'static str,
    /// Boxed: failures travel in `Result`s and should stay small.
    pub provider: Box<ProviderError>,
    pub http_status: Option<u16>,
    /// How long the provider asked us to wait.
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn new(
        category: FailureCategory,
        reason: &'static str,
        detail: &'static str,
        http_status: Option<u16>,
    ) -> Self {
        Self {
            category,
            reason,
            detail,
            provider: Box::default(),
            http_status,
            retry_after: None,
        }
    }

    /// Whether the endpoint gave no answer at all (a timeout, a connection
    /// that failed), as opposed to an answer that was an error.
    pub fn unanswered(&self) -> bool {
        self.http_status.is_none() && matches!(self.reason, "Timeout" | "ConnectionFailed")
    }

    /// A sentence for a person: what happened and what to do.
    pub fn message(&self) -> String {
        let provider = self.provider.summary();
        let status = self
            .http_status
            .map(|code| format!("HTTP {code}, "))
            .unwrap_or_default();
        match self.category {
            FailureCategory::ReauthRequired => format!(
                "the provider rejected the refresh token ({status}{provider}): it was revoked or has expired; \
                 grant consent again, for example with `oauth-token-operator authorize`, to store a new refresh token"
            ),
            FailureCategory::Configuration => format!(
                "the token endpoint rejected the client or the request ({status}{provider}); \
                 fix the client Secret or the credential's spec: new consent will not help"
            ),
            FailureCategory::Transient => {
                let mut message = self.detail.to_string();
                if let Some(code) = self.http_status {
                    message.push_str(&format!(" (HTTP {code}"));
                    if self.provider.error.is_some() {
                        message.push_str(&format!(", {provider}"));
                    }
                    message.push(')');
                }
                message.push_str("; retrying with backoff");
                message
            }
        }
    }
}

impl ProviderError {
    /// `error: description [subtype]`, or "no error code" when the provider
    /// sent none.
    pub fn summary(&self) -> String {
        let mut text = self.error.clone().unwrap_or_else(|| "no error code".into());
        if let Some(description) = &self.description {
            text.push_str(": ");
            text.push_str(description);
        }
        if let Some(subtype) = &self.subtype {
            text.push_str(&format!(" [{subtype}]"));
        }
        text
    }
}

/// What the token endpoint answered, as read by the token client.
pub struct Answer<'a> {
    pub status: u16,
    /// The raw `Retry-After` header, if any.
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
    /// The body was cut at the size cap.
    pub truncated: bool,
    /// Every secret the request carried, in every form it was sent in: a
    /// provider may echo the request, and none of it may reach a person.
    pub sent_secrets: &'a [String],
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
    refresh_token: Option<String>,
    refresh_token_expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<serde_json::Value>,
    error_description: Option<serde_json::Value>,
    error_subtype: Option<serde_json::Value>,
}

/// Classifies a complete HTTP answer from the token endpoint.
pub fn classify(answer: &Answer<'_>, now: Timestamp) -> Result<Token, Failure> {
    use FailureCategory::{Configuration, ReauthRequired, Transient};
    let status = answer.status;
    let retry_after = answer.retry_after.and_then(|v| parse_retry_after(v, now));
    let with_retry_after = |mut failure: Failure| {
        failure.retry_after = retry_after;
        failure
    };
    if answer.truncated {
        let detail = "the token endpoint's answer exceeded the size limit";
        return Err(with_retry_after(Failure::new(
            Transient,
            "ResponseTooLarge",
            detail,
            Some(status),
        )));
    }
    if status == 200 {
        return parse_success(answer.body).map_err(|detail| {
            with_retry_after(Failure::new(
                Transient,
                "MalformedResponse",
                detail,
                Some(200),
            ))
        });
    }
    let provider = parse_error(answer.body, answer.sent_secrets);
    // The provider's own word decides first: invalid_grant needs a person
    // whatever the HTTP status, and "temporarily unavailable" is transient.
    let (category, reason, detail) = match provider.error.as_deref().unwrap_or("") {
        "invalid_grant" => (ReauthRequired, "InvalidGrant", ""),
        "temporarily_unavailable" | "server_error" | "internal_failure" | "slow_down" => (
            Transient,
            "ProviderUnavailable",
            "the token endpoint is temporarily unavailable",
        ),
        "invalid_client" | "unauthorized_client" | "deleted_client" => {
            (Configuration, "InvalidClient", "")
        }
        "invalid_scope" | "admin_policy_enforced" => (Configuration, "InvalidScope", ""),
        "invalid_request" | "unsupported_grant_type" => (Configuration, "InvalidRequest", ""),
        _ => match status {
            429 => (
                Transient,
                "RateLimited",
                "the token endpoint is rate limiting",
            ),
            // Google has answered throttling with 403 and an HTML page.
            403 if provider.error.is_none() => (
                Transient,
                "RateLimited",
                "the token endpoint refused the request without an OAuth error (possibly throttling)",
            ),
            408 | 500..=599 => (
                Transient,
                "ProviderUnavailable",
                "the token endpoint failed",
            ),
            401 => (Configuration, "InvalidClient", ""),
            400..=499 => (Configuration, "TokenRequestRejected", ""),
            _ => (
                Transient,
                "UnexpectedResponse",
                "the token endpoint gave an unexpected answer",
            ),
        },
    };
    let mut failure = with_retry_after(Failure::new(category, reason, detail, Some(status)));
    failure.provider = Box::new(provider);
    Err(failure)
}

fn parse_success(body: &[u8]) -> Result<Token, &'static str> {
    let parsed: SuccessBody = serde_json::from_slice(body)
        .map_err(|_| "the token endpoint's success answer is not a JSON object")?;
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or("the token endpoint's answer has no access_token")?;
    let expires_in = match parsed.expires_in {
        None | Some(serde_json::Value::Null) => DEFAULT_LIFETIME,
        Some(value) => parse_expires_in(&value)
            .ok_or("the token endpoint's expires_in is not a positive number of seconds")?,
    };
    Ok(Token {
        access_token: SecretString::from(access_token),
        token_type: parsed.token_type.unwrap_or_else(|| "Bearer".into()),
        expires_in,
        scope: parsed.scope.filter(|s| !s.trim().is_empty()),
        refresh_token: parsed
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from),
        // Informational: a malformed value is ignored, not a failure.
        refresh_token_expires_in: parsed
            .refresh_token_expires_in
            .as_ref()
            .and_then(parse_expires_in),
    })
}

/// Classifies the answer of a revocation endpoint (RFC 7009 §2.2): 200 is
/// success, and so is `invalid_token` (the token was already invalid, which
/// is what revocation wants); anything else is a failure, classified as a
/// token endpoint's would be.
pub fn classify_revocation(answer: &Answer<'_>, now: Timestamp) -> Result<(), Failure> {
    if answer.status == 200 && !answer.truncated {
        return Ok(());
    }
    match classify(answer, now) {
        Err(failure) if failure.provider.error.as_deref() == Some("invalid_token") => Ok(()),
        Err(failure) => Err(failure),
        Ok(_) => Ok(()),
    }
}

/// Access tokens longer than this are refused (Google's are at most 2 KiB,
/// STS tokens up to 12 KB).
const MAX_ACCESS_TOKEN: usize = 16 * 1024;
/// More scopes than this, or a scope longer than `MAX_SCOPE`, are refused.
const MAX_SCOPES: usize = 64;
const MAX_SCOPE: usize = 512;

/// Checks what a successful answer puts into the output Secret before it
/// reaches a workload: the access token in the RFC 6750 `b64token` alphabet
/// and of bounded length, a `token_type` among `token_types` (compared
/// without case, written as configured), and a bounded list of scopes of
/// RFC 6749 scope characters. A refusal is transient: providers fix such
/// answers, people cannot.
pub fn check_content(mut token: Token, token_types: &[String]) -> Result<Token, Failure> {
    let refuse = |detail: &'static str| {
        Failure::new(
            FailureCategory::Transient,
            "InvalidTokenResponse",
            detail,
            Some(200),
        )
    };
    let access = token.access_token.expose_secret();
    let b64token = access.len() <= MAX_ACCESS_TOKEN
        && access.trim_end_matches('=').bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if !b64token || access.trim_end_matches('=').is_empty() {
        return Err(refuse(
            "the token endpoint's access_token is not a bearer token (RFC 6750 characters, at most 16 KiB)",
        ));
    }
    match token_types
        .iter()
        .find(|t| t.eq_ignore_ascii_case(&token.token_type))
    {
        Some(accepted) => token.token_type = accepted.clone(),
        None => {
            return Err(refuse(
                "the token endpoint's token_type is not one the operator accepts (--token-type)",
            ));
        }
    }
    if let Some(scope) = &token.scope {
        let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
        let valid = scopes.len() <= MAX_SCOPES
            && scopes.iter().all(|s| {
                s.len() <= MAX_SCOPE
                    && s.bytes().all(|b| {
                        b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
                    })
            });
        if !valid {
            return Err(refuse(
                "the token endpoint's scope is not a list of at most 64 RFC 6749 scopes of at most 512 characters",
            ));
        }
    }
    Ok(token)
}

/// `expires_in` as a number, or (as some providers send it) a numeric string.
fn parse_expires_in(value: &serde_json::Value) -> Option<Duration> {
    let seconds = match value {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (seconds > 0 && seconds <= 10 * 365 * 24 * 3600).then(|| Duration::from_secs(seconds))
}

fn parse_error(body: &[u8], secrets: &[String]) -> ProviderError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let text = |value: &Option<serde_json::Value>, limit| {
        // Only strings: a nested object is not something to show a person.
        let raw = value.as_ref()?.as_str()?;
        clean(&scrub(raw, secrets), limit)
    };
    ProviderError {
        error: text(&parsed.error, MAX_ERROR_CODE),
        description: text(&parsed.error_description, MAX_ERROR_TEXT),
        subtype: text(&parsed.error_subtype, MAX_ERROR_CODE),
    }
}

/// `text` with every occurrence of each secret replaced by `REDACTED`. Done
/// before anything is cut, so that no part of a secret survives a cut.
/// Values shorter than four characters are left alone (they would only
/// mangle the text; no token or client secret is that short).
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| s.chars().count() >= 4).collect();
    // Longest first, so that a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        text = text.replace(secret.as_str(), REDACTED);
    }
    text
}

/// The forms in which a request carries `secret`: as is, and
/// form-urlencoded (as in a request body or query).
pub fn sent_forms(secret: &str) -> [String; 2] {
    [
        secret.to_string(),
        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
    ]
}

/// Provider text made printable: control characters and invisible Unicode
/// format characters (bidirectional overrides such as U+202E, zero-width
/// characters) become spaces; cut to `limit` characters and trimmed; `None`
/// when nothing is left.
pub fn clean(text: &str, limit: usize) -> Option<String> {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_control() || is_format_character(c) {
                ' '
            } else {
                c
            }
        })
        .take(limit)
        .collect();
    let cleaned = cleaned.trim().to_string();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// `clean` with the limit of an `error_description`.
pub fn clean_str(text: &str) -> Option<String> {
    clean(text, MAX_ERROR_TEXT)
}

/// Unicode general category Cf (format), which renders as nothing or
/// reorders the text around it.
fn is_format_character(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = k8s_openapi::jiff::fmt::rfc2822::parse(value)
        .ok()?
        .timestamp();
    let wait = date.duration_since(now);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn now() -> Timestamp {
        "2026-11-21T19:00:00Z".parse().unwrap()
    }

    /// A complete answer with no Retry-After, to a request that sent nothing
    /// secret.
    fn reply(status: u16, body: &str) -> Answer<'_> {
        Answer {
            status,
            retry_after: None,
            body: body.as_bytes(),
            truncated: false,
            sent_secrets: &[],
        }
    }

    fn answer(status: u16, body: &str) -> Result<Token, Failure> {
        classify(&reply(status, body), now())
    }

    #[test]
    fn a_success_yields_the_token_and_its_lifetime() {
        let token = answer(200, r#"{"access_token":"ya29.a","expires_in":3599,"scope":"s1 s2","token_type":"Bearer","id_token":"x"}"#)
            .unwrap();
        assert_eq!(token.access_token.expose_secret(), "ya29.a");
        assert_eq!(token.expires_in, Duration::from_secs(3599));
        assert_eq!(token.scope.as_deref(), Some("s1 s2"));
        assert!(token.refresh_token.is_none());
    }

    #[test]
    fn a_success_with_a_refresh_token_is_a_rotation() {
        let token = answer(
            200,
            r#"{"access_token":"a","expires_in":"60","refresh_token":"r2"}"#,
        )
        .unwrap();
        assert_eq!(token.refresh_token.unwrap().expose_secret(), "r2");
        assert_eq!(token.expires_in, Duration::from_secs(60));
        assert_eq!(token.token_type, "Bearer");
    }

    #[test]
    fn a_time_limited_grant_says_when_its_refresh_token_expires() {
        let token = answer(
            200,
            r#"{"access_token":"a","expires_in":3599,"refresh_token_expires_in":604799}"#,
        )
        .unwrap();
        assert_eq!(
            token.refresh_token_expires_in,
            Some(Duration::from_secs(604_799))
        );
        let odd = answer(
            200,
            r#"{"access_token":"a","refresh_token_expires_in":"soon"}"#,
        )
        .unwrap();
        assert_eq!(odd.refresh_token_expires_in, None, "ignored, not a failure");
    }

    #[test]
    fn a_revocation_succeeds_on_200_and_on_an_already_invalid_token() {
        let revocation = |status: u16, body: &str| classify_revocation(&reply(status, body), now());
        assert!(revocation(200, "").is_ok());
        assert!(revocation(400, r#"{"error":"invalid_token"}"#).is_ok());
        let failure = revocation(503, "").unwrap_err();
        assert_eq!(failure.category, FailureCategory::Transient);
        let failure = revocation(401, r#"{"error":"invalid_client"}"#).unwrap_err();
        assert_eq!(failure.reason, "InvalidClient");
    }

    #[test]
    fn a_success_without_expires_in_assumes_an_hour() {
        let token = answer(200, r#"{"access_token":"a"}"#).unwrap();
        assert_eq!(token.expires_in, DEFAULT_LIFETIME);
    }

    #[test]
    fn a_malformed_success_is_transient() {
        for body in [
            "<html>ok</html>",
            "{}",
            r#"{"access_token":""}"#,
            r#"{"access_token":"a","expires_in":-5}"#,
            r#"{"access_token":"a","expires_in":{}}"#,
        ] {
            let failure = answer(200, body).unwrap_err();
            assert_eq!(failure.reason, "MalformedResponse", "{body}");
            assert!(
                !failure.message().contains("access_token\":\"a"),
                "no body in messages"
            );
        }
    }

    #[test]
    fn invalid_grant_needs_reauth_whatever_its_description_or_subtype() {
        for body in [
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            r#"{"error":"invalid_grant","error_description":"Bad Request"}"#,
            r#"{"error":"invalid_grant","error_subtype":"invalid_rapt"}"#,
            r#"{"error":"invalid_grant","error_subtype":"rapt_required"}"#,
        ] {
            let failure = answer(400, body).unwrap_err();
            assert_eq!(failure.category, FailureCategory::ReauthRequired, "{body}");
            assert_eq!(failure.reason, "InvalidGrant");
        }
        let failure = answer(
            400,
            r#"{"error":"invalid_grant","error_subtype":"invalid_rapt"}"#,
        )
        .unwrap_err();
        assert_eq!(failure.provider.subtype.as_deref(), Some("invalid_rapt"));
        assert!(
            failure.message().contains("invalid_grant [invalid_rapt]"),
            "{}",
            failure.message()
        );
    }

    #[test]
    fn client_and_request_errors_are_configuration_failures() {
        let cases = [
            (401, "invalid_client", "InvalidClient"),
            (401, "unauthorized_client", "InvalidClient"),
            (401, "deleted_client", "InvalidClient"),
            (400, "invalid_scope", "InvalidScope"),
            (400, "admin_policy_enforced", "InvalidScope"),
            (400, "invalid_request", "InvalidRequest"),
            (400, "unsupported_grant_type", "InvalidRequest"),
        ];
        for (status, error, reason) in cases {
            let failure = answer(
                status,
                &format!(r#"{{"error":"{error}","error_description":"d"}}"#),
            )
            .unwrap_err();
            assert_eq!(failure.category, FailureCategory::Configuration, "{error}");
            assert_eq!(failure.reason, reason, "{error}");
            assert!(
                !failure.message().contains("oauth-token-operator authorize"),
                "configuration errors do not send people to re-consent"
            );
        }
    }

    #[test]
    fn rate_limits_server_errors_and_timeouts_are_transient() {
        for status in [429, 408, 500, 502, 503, 504] {
            let failure = answer(status, "").unwrap_err();
            assert_eq!(failure.category, FailureCategory::Transient, "{status}");
        }
        assert_eq!(answer(429, "").unwrap_err().reason, "RateLimited");
        assert_eq!(
            answer(503, "<html>Service Unavailable</html>")
                .unwrap_err()
                .reason,
            "ProviderUnavailable"
        );
        assert_eq!(
            answer(403, "<html>Rate Limit Exceeded</html>")
                .unwrap_err()
                .reason,
            "RateLimited"
        );
        assert_eq!(
            answer(400, r#"{"error":"temporarily_unavailable"}"#)
                .unwrap_err()
                .reason,
            "ProviderUnavailable"
        );
    }

    #[test]
    fn an_unknown_client_error_is_a_configuration_failure() {
        let failure = answer(400, r#"{"error":"something_new"}"#).unwrap_err();
        assert_eq!(failure.reason, "TokenRequestRejected");
        assert_eq!(
            answer(401, "Unauthorized").unwrap_err().reason,
            "InvalidClient"
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        assert_eq!(
            parse_retry_after("120", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 19:01:30 GMT", now()),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 18:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now()), None);
        let failure = classify(
            &Answer {
                status: 429,
                retry_after: Some("30"),
                body: b"",
                truncated: false,
                sent_secrets: &[],
            },
            now(),
        )
        .unwrap_err();
        assert_eq!(failure.retry_after, Some(Duration::from_secs(30)));
    }

    #[test]
    fn an_oversized_answer_is_transient_even_when_it_says_200() {
        let failure = classify(
            &Answer {
                status: 200,
                retry_after: None,
                body: b"{",
                truncated: true,
                sent_secrets: &[],
            },
            now(),
        )
        .unwrap_err();
        assert_eq!(failure.reason, "ResponseTooLarge");
    }

    #[test]
    fn provider_text_is_cleaned_and_cut() {
        let long = "x".repeat(1000);
        let failure = answer(
            400,
            &format!(r#"{{"error":"invalid_grant","error_description":"line1\nline2 {long}"}}"#),
        )
        .unwrap_err();
        let description = failure.provider.description.clone().unwrap();
        assert!(!description.contains('\n'));
        assert!(description.len() <= MAX_ERROR_TEXT);
    }

    #[test]
    fn echoed_secrets_are_scrubbed_before_anything_is_cut() {
        let refresh = "1//0g-refresh-token-abcdef".to_string();
        let client_secret = "GOCSPX-client/secret+value".to_string();
        let mut sent: Vec<String> = sent_forms(&refresh).into();
        sent.extend(sent_forms(&client_secret));
        // The secret straddles the 256-character cut: no prefix of it survives.
        let padding = "p".repeat(240);
        let body = serde_json::json!({
            "error": format!("invalid_grant {refresh}"),
            "error_description": format!(
                "{padding}{refresh} client_secret={} {client_secret}",
                url::form_urlencoded::byte_serialize(client_secret.as_bytes()).collect::<String>()
            ),
            "error_subtype": "\u{202e}evil\u{200b}x",
        })
        .to_string();
        let failure = classify(
            &Answer {
                status: 400,
                retry_after: None,
                body: body.as_bytes(),
                truncated: false,
                sent_secrets: &sent,
            },
            now(),
        )
        .unwrap_err();
        let text = format!("{:?} {}", failure.provider, failure.message());
        assert!(!text.contains("1//0g"), "{text}");
        assert!(!text.contains("GOCSPX"), "{text}");
        assert!(!text.contains("client%2Fsecret"), "{text}");
        assert!(
            failure
                .provider
                .error
                .as_deref()
                .unwrap()
                .ends_with(REDACTED)
        );
        let subtype = failure.provider.subtype.clone().unwrap();
        assert!(
            !subtype.contains('\u{202e}') && !subtype.contains('\u{200b}'),
            "{subtype:?}"
        );
        assert!(failure.provider.error.as_ref().unwrap().chars().count() <= MAX_ERROR_CODE);
    }

    #[test]
    fn hostile_token_content_is_refused_before_it_reaches_a_secret() {
        let token = |access: &str, token_type: &str, scope: Option<String>| Token {
            access_token: SecretString::from(access.to_string()),
            token_type: token_type.into(),
            expires_in: Duration::from_secs(3600),
            scope,
            refresh_token: None,
            refresh_token_expires_in: None,
        };
        let types = ["Bearer".to_string()];
        let ok = check_content(
            token("ya29.a0-b_c~d+e/f==", "bearer", Some("a b".into())),
            &types,
        )
        .unwrap();
        assert_eq!(ok.token_type, "Bearer", "written as configured");
        for (access, token_type, scope) in [
            ("abc\r\nX-Evil: 1", "Bearer", None),
            ("abc\u{0}def", "Bearer", None),
            ("abc\u{1b}[31m", "Bearer", None),
            ("abc def", "Bearer", None),
            ("abc", "Bearer\r\nEvil: 1", None),
            ("abc", "MAC", None),
            ("abc", "Bearer", Some(vec!["s"; 9000].join(" "))),
            ("abc", "Bearer", Some("a\"b".into())),
        ] {
            let failure = check_content(token(access, token_type, scope), &types).unwrap_err();
            assert_eq!(failure.reason, "InvalidTokenResponse");
            assert_eq!(failure.category, FailureCategory::Transient);
        }
        assert!(check_content(token(&"a".repeat(20 * 1024), "Bearer", None), &types).is_err());
    }
}
