//! The pure parts of obtaining consent with the authorization-code flow
//! (RFC 6749 §4.1) and PKCE (RFC 7636): the verifier and its S256 challenge,
//! the `state`, the authorization URL, reading the redirect, and checking the
//! granted scopes. `authorize` does the I/O around them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Url;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

use crate::classify;

/// A PKCE code verifier and its S256 challenge.
pub struct Pkce {
    verifier: SecretString,
    challenge: String,
}

impl Pkce {
    /// A new verifier from 32 random bytes: 43 characters of base64url, the
    /// shortest RFC 7636 §4.1 allows and 256 bits of entropy.
    pub fn generate() -> Self {
        Self::from_verifier(SecretString::from(random_base64url::<32>()))
    }

    /// The pair for a given verifier: challenge = BASE64URL(SHA-256(verifier)).
    pub fn from_verifier(verifier: SecretString) -> Self {
        let digest =
            ring::digest::digest(&ring::digest::SHA256, verifier.expose_secret().as_bytes());
        Self {
            challenge: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            verifier,
        }
    }

    pub fn verifier(&self) -> &SecretString {
        &self.verifier
    }

    pub fn challenge(&self) -> &str {
        &self.challenge
    }
}

/// A new `state` value: 128 random bits, base64url.
pub fn new_state() -> String {
    random_base64url::<16>()
}

fn random_base64url<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What goes into the authorization URL.
pub struct Request<'a> {
    pub endpoint: &'a Url,
    pub google: bool,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    pub state: &'a str,
    pub code_challenge: &'a str,
}

/// The URL the person opens. Query parameters already in the endpoint (some
/// providers need them) are kept. For Google it asks for a refresh token
/// (`access_type=offline`), for it again on every consent (`prompt=consent`;
/// Google issues one only then), and keeps earlier grants of the same client
/// (`include_granted_scopes=true`).
pub fn authorization_url(request: &Request<'_>) -> Url {
    let mut url = request.endpoint.clone();
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", request.client_id)
            .append_pair("redirect_uri", request.redirect_uri)
            .append_pair("scope", &request.scopes.join(" "))
            .append_pair("state", request.state)
            .append_pair("code_challenge", request.code_challenge)
            .append_pair("code_challenge_method", "S256");
        if request.google {
            query
                .append_pair("access_type", "offline")
                .append_pair("prompt", "consent")
                .append_pair("include_granted_scopes", "true");
        }
    }
    url
}

/// Why consent did not produce a usable refresh token. Holds no code and no
/// token; provider text is cleaned and cut short.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConsentError {
    #[error(
        "the redirect's state does not match this request, so it did not come from the consent \
         page this command opened; nothing was written"
    )]
    StateMismatch,
    #[error("consent was not given: the provider answered {0}; nothing was written")]
    Denied(String),
    #[error("the redirect carries neither a code nor an error; nothing was written")]
    NoCode,
    #[error(
        "the grant lacks scopes the credential needs: {}; run again and allow every \
         permission the consent page asks for; nothing was written",
        .0.join(", ")
    )]
    MissingScopes(Vec<String>),
    #[error(
        "the provider returned no refresh token. Google issues one only with access_type=offline \
         and prompt=consent, which this command sends; other providers often need a scope such \
         as offline_access in spec.scopes; nothing was written"
    )]
    NoRefreshToken,
}

/// Reads the redirect's query: the code when `state` matches, else why not.
/// The state is checked first, so nothing from a forged redirect is used.
pub fn read_redirect(query: &str, expected_state: &str) -> Result<SecretString, ConsentError> {
    let mut state = None;
    let mut code = None;
    let mut error = None;
    let mut description = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "state" => state = Some(value.into_owned()),
            "code" => code = Some(value.into_owned()),
            "error" => error = Some(value.into_owned()),
            "error_description" => description = Some(value.into_owned()),
            _ => {}
        }
    }
    if state.as_deref() != Some(expected_state) {
        return Err(ConsentError::StateMismatch);
    }
    if let Some(error) = error {
        let mut text = classify::clean_str(&error).unwrap_or_else(|| "an empty error".into());
        if let Some(description) = description.as_deref().and_then(classify::clean_str) {
            text.push_str(&format!(" ({description})"));
        }
        return Err(ConsentError::Denied(text));
    }
    match code.filter(|c| !c.is_empty()) {
        Some(code) => Ok(SecretString::from(code)),
        None => Err(ConsentError::NoCode),
    }
}

/// Whether a query string is meant as the OAuth redirect (and not, say, a
/// browser asking for `/favicon.ico`).
pub fn looks_like_redirect(query: &str) -> bool {
    url::form_urlencoded::parse(query.as_bytes())
        .any(|(key, _)| matches!(key.as_ref(), "code" | "error" | "state"))
}

/// The query of what a person pasted: the whole address the browser ended
/// on, or just its query string.
pub fn pasted_query(text: &str) -> Option<String> {
    let text = text.trim();
    if let Ok(url) = Url::parse(text) {
        return url.query().map(str::to_owned);
    }
    let query = text.trim_start_matches(['/', '?']);
    looks_like_redirect(query).then(|| query.to_string())
}

/// The requested scopes the answer does not cover. An answer without `scope`
/// grants exactly what was asked (RFC 6749 §5.1). Google reports the `email`
/// and `profile` scopes by their userinfo URLs.
pub fn missing_scopes(requested: &[String], granted: Option<&str>, google: bool) -> Vec<String> {
    let Some(granted) = granted else {
        return Vec::new();
    };
    let granted: Vec<&str> = granted.split_whitespace().collect();
    let alias = |scope: &str| -> Option<&'static str> {
        match (google, scope) {
            (true, "email") => Some("https://www.googleapis.com/auth/userinfo.email"),
            (true, "profile") => Some("https://www.googleapis.com/auth/userinfo.profile"),
            _ => None,
        }
    };
    requested
        .iter()
        .filter(|scope| {
            !granted
                .iter()
                .any(|g| g == scope || alias(scope) == Some(*g))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::GOOGLE_AUTHORIZATION_ENDPOINT;

    #[test]
    fn the_s256_challenge_matches_rfc_7636_appendix_b() {
        let pkce = Pkce::from_verifier(SecretString::from(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        ));
        assert_eq!(
            pkce.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn generated_verifiers_and_states_are_long_unreserved_and_distinct() {
        let a = Pkce::generate();
        let b = Pkce::generate();
        let verifier = a.verifier().expose_secret();
        assert_eq!(verifier.len(), 43);
        assert!(
            verifier
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        );
        assert_ne!(verifier, b.verifier().expose_secret());
        assert_ne!(new_state(), new_state());
        assert_eq!(new_state().len(), 22);
    }

    fn request<'a>(endpoint: &'a Url, google: bool, scopes: &'a [String]) -> Request<'a> {
        Request {
            endpoint,
            google,
            client_id: "id.apps.example",
            redirect_uri: "http://127.0.0.1:4711/",
            scopes,
            state: "st",
            code_challenge: "ch",
        }
    }

    fn params(url: &Url) -> Vec<(String, String)> {
        url.query_pairs().into_owned().collect()
    }

    #[test]
    fn google_asks_for_offline_access_and_consent() {
        let endpoint = Url::parse(GOOGLE_AUTHORIZATION_ENDPOINT).unwrap();
        let scopes = vec!["a".to_string(), "b".to_string()];
        let url = authorization_url(&request(&endpoint, true, &scopes));
        let params = params(&url);
        for (key, value) in [
            ("response_type", "code"),
            ("client_id", "id.apps.example"),
            ("redirect_uri", "http://127.0.0.1:4711/"),
            ("scope", "a b"),
            ("state", "st"),
            ("code_challenge", "ch"),
            ("code_challenge_method", "S256"),
            ("access_type", "offline"),
            ("prompt", "consent"),
            ("include_granted_scopes", "true"),
        ] {
            assert!(
                params.contains(&(key.into(), value.into())),
                "{key}={value} in {url}"
            );
        }
    }

    #[test]
    fn generic_providers_get_the_standard_parameters_and_keep_their_own() {
        let endpoint = Url::parse("https://login.example.com/authorize?tenant=t1").unwrap();
        let scopes = vec!["offline_access".to_string()];
        let url = authorization_url(&request(&endpoint, false, &scopes));
        let params = params(&url);
        assert!(params.contains(&("tenant".into(), "t1".into())));
        assert!(params.contains(&("code_challenge_method".into(), "S256".into())));
        assert!(
            !params
                .iter()
                .any(|(k, _)| k == "access_type" || k == "prompt")
        );
    }

    #[test]
    fn the_redirect_yields_the_code_only_with_the_right_state() {
        let code = read_redirect("code=4%2F0Ab&state=st&scope=a", "st").unwrap();
        assert_eq!(code.expose_secret(), "4/0Ab");
        assert_eq!(
            read_redirect("code=4%2F0Ab&state=other", "st").unwrap_err(),
            ConsentError::StateMismatch
        );
        assert_eq!(
            read_redirect("code=4%2F0Ab", "st").unwrap_err(),
            ConsentError::StateMismatch
        );
        // A forged error is not believed either.
        assert_eq!(
            read_redirect("error=access_denied&state=x", "st").unwrap_err(),
            ConsentError::StateMismatch
        );
        assert_eq!(
            read_redirect("state=st", "st").unwrap_err(),
            ConsentError::NoCode
        );
    }

    #[test]
    fn a_refusal_is_reported_with_the_providers_cleaned_words() {
        let error = read_redirect(
            "error=access_denied&error_description=The+user+said%0Ano&state=st",
            "st",
        )
        .unwrap_err();
        assert_eq!(
            error,
            ConsentError::Denied("access_denied (The user said no)".into())
        );
        assert!(error.to_string().contains("nothing was written"));
    }

    #[test]
    fn pasted_text_may_be_the_whole_address_or_its_query() {
        assert_eq!(
            pasted_query("  http://127.0.0.1:4711/?code=c&state=s \n").as_deref(),
            Some("code=c&state=s")
        );
        assert_eq!(
            pasted_query("?code=c&state=s").as_deref(),
            Some("code=c&state=s")
        );
        assert_eq!(pasted_query("hello"), None);
        assert!(!looks_like_redirect(""));
        assert!(looks_like_redirect("error=access_denied"));
    }

    #[test]
    fn missing_scopes_are_named_and_google_aliases_count() {
        let requested = vec![
            "https://www.googleapis.com/auth/gmail.send".to_string(),
            "email".to_string(),
        ];
        assert!(missing_scopes(&requested, None, true).is_empty());
        assert!(
            missing_scopes(
                &requested,
                Some("openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/gmail.send"),
                true
            )
            .is_empty()
        );
        assert_eq!(
            missing_scopes(
                &requested,
                Some("https://www.googleapis.com/auth/userinfo.email"),
                true
            ),
            vec!["https://www.googleapis.com/auth/gmail.send"]
        );
        assert_eq!(
            missing_scopes(
                &requested,
                Some(
                    "https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/gmail.send"
                ),
                false
            ),
            vec!["email"]
        );
    }
}
