//! Authentication: who is calling. Verifies the `Authorization: Bearer` JWT of every request but
//! `/healthz` and `/readyz`, and hands the handlers a [`Caller`], whose scopes decide what the
//! request may do (`vitalflow_schemas::auth`). Writes and SQL queries leave one audit line.
//!
//! ```text
//!  request ──▶ authenticate ──Caller──▶ handler (may_write_user, may_read_user, …) ──▶ response
//!                 │ 401 (no/invalid token)                                  │
//!                 └───────────────────────────── audit line (target "audit") ◀┘
//! ```
//!
//! Keys decide the algorithm, never the token: an HS256 secret verifies HS256 only, a JWKS key
//! RS256 or ES256 by its `kty`/`crv`/`alg`; `alg: none` and every other algorithm are refused.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use vitalflow_ingest::http::{AuditRequestId, AuditUser};
use vitalflow_schemas::auth::Caller;
use vitalflow_schemas::wire::ErrorBody;

use crate::config::{AuthConfig, AuthMode};

/// Shortest HS256 secret accepted: 256 bits, the size of the hash (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;

/// Routes open without a token: load balancers and orchestrators probe them.
const OPEN_ROUTES: [&str; 2] = ["/healthz", "/readyz"];

/// The authentication in force for the whole API.
pub struct Auth {
    /// `None`: auth mode `none`, every request is [`Caller::trusted`].
    verifier: Option<Verifier>,
}

/// Verifies tokens against the configured keys and claims.
struct Verifier {
    /// The HS256 secret.
    secret: Option<DecodingKey>,
    /// RS256/ES256 public keys of the JWKS file.
    file_keys: Vec<JwksKey>,
    /// RS256/ES256 public keys of the JWKS URL (replaced whole on each refresh).
    url_keys: Arc<RwLock<Vec<JwksKey>>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
}

/// One usable JWKS key: its id, the one algorithm it verifies, the key.
struct JwksKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The claims vitalflow reads; `exp` (and `nbf`, `iss`, `aud`) are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// OAuth 2.0 `scope`: space-separated (Auth0, Cognito, Keycloak).
    #[serde(default)]
    scope: Option<ScopeClaim>,
    /// `scp`: a list (Okta, Azure AD).
    #[serde(default)]
    scp: Option<ScopeClaim>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Spaced(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn joined(self) -> String {
        match self {
            ScopeClaim::Spaced(s) => s,
            ScopeClaim::List(l) => l.join(" "),
        }
    }
}

/// Why a request is not authenticated (401).
#[derive(Debug, PartialEq, Eq)]
enum Rejection {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token was sent but does not verify.
    Invalid(&'static str),
}

impl Auth {
    /// Reads the keys of `config` (and fetches the JWKS URL once); fails when none is usable.
    pub async fn load(config: &AuthConfig) -> anyhow::Result<Auth> {
        if config.effective_mode() == AuthMode::None {
            tracing::info!("auth mode none: every request is trusted (loopback only)");
            return Ok(Auth { verifier: None });
        }
        let (secret, file_keys) = load_files(config)?;
        let url_keys = match &config.jwks_url {
            Some(url) => fetch_jwks(url).await.with_context(|| format!("cannot load the JWKS at {url}"))?,
            None => Vec::new(),
        };
        if secret.is_none() && file_keys.is_empty() && url_keys.is_empty() {
            bail!("auth.mode = \"jwt\" has no usable key (no secret file, and no RS256/ES256 key in the JWKS)");
        }
        let (file_count, url_count) = (file_keys.len(), url_keys.len());
        let url_keys = Arc::new(RwLock::new(url_keys));
        if let Some(url) = config.jwks_url.clone() {
            spawn_refresh(url, Duration::from_secs(config.jwks_refresh_secs.max(10)), url_keys.clone());
        }
        tracing::info!(
            hs256 = secret.is_some(),
            jwks_file_keys = file_count,
            jwks_url_keys = url_count,
            issuer = config.issuer.as_deref().unwrap_or(""),
            audience = config.audience.as_deref().unwrap_or(""),
            "auth mode jwt"
        );
        Ok(Auth {
            verifier: Some(Verifier {
                secret,
                file_keys,
                url_keys,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                leeway_secs: config.leeway_secs,
            }),
        })
    }
}

/// Reads and checks the key files of `config` (mode `jwt`), so that a bad one stops vitalflow
/// before anything starts.
pub fn check_key_files(config: &AuthConfig) -> anyhow::Result<()> {
    if config.effective_mode() == AuthMode::Jwt {
        load_files(config)?;
    }
    Ok(())
}

/// The HS256 secret and the JWKS file's keys.
fn load_files(config: &AuthConfig) -> anyhow::Result<(Option<DecodingKey>, Vec<JwksKey>)> {
    let secret = match &config.jwt_secret_file {
        Some(path) => Some(DecodingKey::from_secret(&read_secret(path)?).context("unusable JWT secret")?),
        None => None,
    };
    let file_keys = match &config.jwks_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            jwks_keys(&text).with_context(|| format!("invalid JWKS in {}", path.display()))?
        }
        None => Vec::new(),
    };
    if config.jwks_url.is_none() && secret.is_none() && file_keys.is_empty() {
        bail!("auth.mode = \"jwt\" has no usable key (no secret file, and no RS256/ES256 key in the JWKS file)");
    }
    Ok((secret, file_keys))
}

impl Verifier {
    /// The caller a token stands for, if it verifies.
    fn verify(&self, token: &str) -> Result<Caller, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Invalid("malformed token"))?;
        let claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.secret.as_ref().ok_or(Rejection::Invalid("HS256 tokens are not accepted"))?;
                self.decode(token, key, Algorithm::HS256)?
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let url_keys = self.url_keys.read();
                let mut candidates = self
                    .file_keys
                    .iter()
                    .chain(url_keys.iter())
                    .filter(|k| k.alg == alg && (header.kid.is_none() || k.kid == header.kid))
                    .peekable();
                if candidates.peek().is_none() {
                    return Err(Rejection::Invalid("no key for the token's kid and alg"));
                }
                let mut last = Rejection::Invalid("bad signature");
                let mut verified = None;
                for k in candidates {
                    match self.decode(token, &k.key, alg) {
                        Ok(c) => {
                            verified = Some(c);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                verified.ok_or(last)?
            }
            _ => return Err(Rejection::Invalid("algorithm not accepted")),
        };
        if claims.sub.is_empty() {
            return Err(Rejection::Invalid("empty sub"));
        }
        let scope = claims.scope.or(claims.scp).map(ScopeClaim::joined).unwrap_or_default();
        Ok(Caller::from_claims(claims.sub, &scope))
    }

    fn decode(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, Rejection> {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        jsonwebtoken::decode::<Claims>(token, key, &v).map(|d| d.claims).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Rejection::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                ErrorKind::InvalidAlgorithm => "algorithm not accepted",
                _ => "malformed token",
            })
        })
    }
}

/// The middleware: `/healthz` and `/readyz` open, every other route needs a valid bearer token
/// (in mode `jwt`). Inserts the [`Caller`] for the handlers and writes the audit line.
pub async fn authenticate(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    if OPEN_ROUTES.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Some(verifier) = &auth.verifier else {
        req.extensions_mut().insert(Caller::trusted());
        return next.run(req).await;
    };
    let caller = match bearer(req.headers()).and_then(|t| verifier.verify(t)) {
        Ok(c) => c,
        Err(rejection) => {
            // No path: it holds user ids.
            tracing::debug!(reason = ?rejection, method = %req.method(), "request not authenticated");
            return unauthenticated(&rejection);
        }
    };
    let audited = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    req.extensions_mut().insert(caller.clone());
    let resp = next.run(req).await;
    if audited {
        tracing::info!(
            target: "audit",
            subject = caller.subject.as_deref().unwrap_or(""),
            scopes = %caller.scope_string(),
            method = %method,
            route = route.as_deref().unwrap_or("(unmatched)"),
            status = resp.status().as_u16(),
            request_id = resp.extensions().get::<AuditRequestId>().map(|r| r.0.as_str()),
            user = resp.extensions().get::<AuditUser>().map(|u| u.0.as_str()),
            "api call"
        );
    }
    resp
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, Rejection> {
    let value = headers.get(header::AUTHORIZATION).ok_or(Rejection::Missing)?;
    let value = value.to_str().map_err(|_| Rejection::Invalid("malformed Authorization header"))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(Rejection::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::Missing);
    }
    let token = token.trim();
    if token.is_empty() { Err(Rejection::Invalid("empty bearer token")) } else { Ok(token) }
}

/// 401 with `WWW-Authenticate: Bearer` (RFC 6750 §3), `error="invalid_token"` when one was sent.
fn unauthenticated(rejection: &Rejection) -> Response {
    let (challenge, message) = match rejection {
        Rejection::Missing => ("Bearer", "this route needs Authorization: Bearer <token>".to_owned()),
        Rejection::Invalid(why) => ("Bearer error=\"invalid_token\"", format!("invalid token: {why}")),
    };
    let body = ErrorBody { code: "UNAUTHENTICATED".into(), message };
    let mut resp = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

/// The HS256 secret in `path`, without surrounding whitespace (a trailing newline is common).
fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read the JWT secret file {}", path.display()))?;
    let secret = bytes.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET_BYTES {
        bail!(
            "the JWT secret in {} is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -base64 48`)",
            path.display(),
            secret.len()
        );
    }
    Ok(secret)
}

/// The RS256/ES256 signing keys of a JWKS document. Keys for encryption, symmetric keys and other
/// algorithms are skipped: they could only open the door to algorithm confusion.
fn jwks_keys(text: &str) -> anyhow::Result<Vec<JwksKey>> {
    let set: JwkSet = serde_json::from_str(text).context("not a JWKS document ({\"keys\": [...]})")?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        match jwks_key(jwk) {
            Ok(k) => keys.push(k),
            Err(e) => tracing::warn!(kid = kid.as_deref().unwrap_or(""), error = %e, "JWKS key skipped"),
        }
    }
    Ok(keys)
}

fn jwks_key(jwk: &Jwk) -> anyhow::Result<JwksKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        bail!("an encryption key (use = enc)");
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => bail!("only RSA and P-256 keys are accepted"),
    };
    let alg = match jwk.common.key_algorithm {
        None => by_type,
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => Algorithm::ES256,
        Some(other) => bail!("alg {other:?} is not accepted for this key type"),
    };
    let key = DecodingKey::from_jwk(jwk).context("unusable key")?;
    Ok(JwksKey { kid: jwk.common.key_id.clone(), alg, key })
}

/// Fetches and parses a JWKS URL.
async fn fetch_jwks(url: &str) -> anyhow::Result<Vec<JwksKey>> {
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(url)
        .send()
        .await?
        .error_for_status()?;
    jwks_keys(&resp.text().await?)
}

/// Refetches the JWKS URL every `every`; a failed fetch keeps the keys it had (providers rotate
/// keys with overlap, so a short outage does not lock callers out).
fn spawn_refresh(url: String, every: Duration, keys: Arc<RwLock<Vec<JwksKey>>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            match fetch_jwks(&url).await {
                Ok(fetched) if fetched.is_empty() => {
                    tracing::warn!("JWKS refresh returned no usable key; keeping the previous keys")
                }
                Ok(fetched) => {
                    tracing::debug!(keys = fetched.len(), "JWKS refreshed");
                    *keys.write() = fetched;
                }
                Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous keys"),
            }
        }
    });
}

/// `30s`, `15m`, `1h`, `7d`, or plain seconds.
pub fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = digits.parse().with_context(|| format!("invalid ttl '{s}': expected e.g. 30s, 15m, 1h, 7d"))?;
    let secs = match unit {
        's' => n,
        'm' => n * 60,
        'h' => n * 3600,
        'd' => n * 86_400,
        _ => bail!("invalid ttl '{s}': the suffix must be s, m, h or d"),
    };
    if secs == 0 {
        bail!("ttl must be positive");
    }
    Ok(Duration::from_secs(secs))
}

/// An HS256 token for `sub` with `scope`, valid for `ttl` from now.
pub fn mint(
    secret_file: &Path,
    sub: &str,
    scope: &str,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> anyhow::Result<String> {
    if sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let unknown: Vec<&str> =
        scope.split_ascii_whitespace().filter(|s| vitalflow_schemas::auth::Scope::parse(s).is_none()).collect();
    if !unknown.is_empty() {
        bail!("unknown scope(s) {unknown:?}; known: health:write health:read backend analytics ops");
    }
    let secret = read_secret(secret_file)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::json!({"sub": sub, "scope": scope, "iat": now, "exp": now + ttl.as_secs()});
    if let Some(iss) = issuer {
        claims["iss"] = iss.into();
    }
    if let Some(aud) = audience {
        claims["aud"] = aud.into();
    }
    Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&secret)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_takes_suffixes() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86_400));
        for bad in ["", "0s", "1w", "h", "-1h", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jwks_keeps_only_rs256_and_es256_signing_keys() {
        let jwks = r#"{"keys": [
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "rs", "n": "AQAB", "e": "AQAB"}
        ]}"#;
        let keys = jwks_keys(jwks).unwrap();
        let kept: Vec<(Option<&str>, Algorithm)> = keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect();
        assert_eq!(kept, vec![(Some("rs"), Algorithm::RS256)]);
        assert!(jwks_keys("[]").is_err());
    }

    #[test]
    fn bearer_header_forms() {
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(bearer(&HeaderMap::new()), Err(Rejection::Missing));
        assert_eq!(bearer(&headers("Basic dTpw")), Err(Rejection::Missing));
        assert_eq!(bearer(&headers("bearer abc")), Ok("abc"));
        assert_eq!(bearer(&headers("Bearer  ")), Err(Rejection::Missing));
        assert!(bearer(&headers("Bearer ")).is_err());
    }
}
