//! Who is calling: JWT bearer tokens, the four roles, and one extractor per role so a
//! handler's signature says who may call it.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::config::{Config, JwtAlgorithm};
use crate::error::AppError;

/// File in the data directory holding the generated development HS256 secret.
pub const DEV_KEY_FILE: &str = "dev-jwt-secret";

/// What a token holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Advisor,
    Compliance,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Advisor => "advisor",
            Role::Compliance => "compliance",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client" => Ok(Role::Client),
            "advisor" => Ok(Role::Advisor),
            "compliance" => Ok(Role::Compliance),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (expected client, advisor, compliance or admin)"
            )),
        }
    }
}

/// The claims wealthdesk reads from a token. Identity providers must put the role in
/// a `role` claim; `name` and `lang` are optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iat: u64,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read or create the development signing key {path}: {source}")]
    DevKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("auth.public_key_file {path}: {problem}")]
    PublicKey { path: String, problem: String },
    #[error(
        "tokens cannot be issued here: auth.algorithm is {0:?}, so the identity provider holds the private key"
    )]
    CannotIssue(JwtAlgorithm),
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Verifies tokens (and, with a shared secret, issues them).
pub struct TokenService {
    algorithm: JwtAlgorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for TokenService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenService")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TokenService {
    /// Builds the keys the configuration names. With HS256 and no secret configured, a
    /// development secret is generated once, kept in the data directory, and a warning logged.
    pub fn from_config(config: &Config) -> Result<TokenService, AuthSetupError> {
        let auth = &config.auth;
        let (algorithm, encoding, decoding) = match auth.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = match &auth.jwt_secret {
                    Some(secret) => secret.expose().as_bytes().to_vec(),
                    None => dev_secret(&config.data_dir)?,
                };
                (
                    Algorithm::HS256,
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            other => {
                let path = auth.public_key_file.as_deref().expect("validated at load");
                let pem = std::fs::read(path).map_err(|e| AuthSetupError::PublicKey {
                    path: path.display().to_string(),
                    problem: e.to_string(),
                })?;
                let (alg, key) = match other {
                    JwtAlgorithm::RS256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
                    JwtAlgorithm::ES256 => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
                    _ => (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
                };
                let key = key.map_err(|e| AuthSetupError::PublicKey {
                    path: path.display().to_string(),
                    problem: format!("not a {other:?} public key in PEM form ({e})"),
                })?;
                (alg, None, key)
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = auth.leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &auth.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &auth.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(TokenService {
            algorithm: auth.algorithm,
            encoding,
            decoding,
            validation,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
        })
    }

    /// Signs a token for `sub` with `role`, valid for `ttl`.
    pub fn issue(
        &self,
        sub: &str,
        role: Role,
        ttl: Duration,
        name: Option<String>,
        lang: Option<String>,
    ) -> Result<String, AuthSetupError> {
        let key = self
            .encoding
            .as_ref()
            .ok_or(AuthSetupError::CannotIssue(self.algorithm))?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_string(),
            role,
            iat: now,
            exp: now + ttl.as_secs(),
            name,
            lang,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| AuthSetupError::Sign(e.to_string()))
    }

    /// Checks signature, expiry, issuer and audience and returns who the caller is.
    pub fn verify(&self, token: &str) -> Result<AuthUser, AppError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AppError::TokenExpired,
                ErrorKind::InvalidSignature => {
                    AppError::InvalidToken("its signature does not match".into())
                }
                ErrorKind::InvalidIssuer => AppError::InvalidToken("unexpected issuer".into()),
                ErrorKind::InvalidAudience => AppError::InvalidToken("unexpected audience".into()),
                ErrorKind::InvalidAlgorithm => {
                    AppError::InvalidToken("it is signed with another algorithm".into())
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    AppError::InvalidToken(format!("the {claim} claim is missing"))
                }
                ErrorKind::Json(e) => AppError::InvalidToken(format!("bad claims ({e})")),
                _ => AppError::InvalidToken("it is not a well-formed JWT".into()),
            })?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() || claims.sub.len() > 128 {
            return Err(AppError::InvalidToken(
                "the sub claim must be 1 to 128 characters".into(),
            ));
        }
        Ok(AuthUser {
            id: claims.sub.clone(),
            role: claims.role,
            display_name: claims.name.unwrap_or(claims.sub),
            language: claims.lang,
            expires_at: claims.exp,
        })
    }
}

fn dev_secret(data_dir: &Path) -> Result<Vec<u8>, AuthSetupError> {
    let path = data_dir.join(DEV_KEY_FILE);
    let io_err = |source| AuthSetupError::DevKey {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => {
            tracing::warn!(
                path = %path.display(),
                "using the development signing key; set auth.jwt_secret (or WEALTHDESK_AUTH__JWT_SECRET) in production"
            );
            return Ok(text.trim().as_bytes().to_vec());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(io_err)?;
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &hex).map_err(io_err)?;
    tracing::warn!(
        path = %path.display(),
        "generated a development signing key; it is for development only — set auth.jwt_secret in production"
    );
    Ok(hex.into_bytes())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

/// An authenticated caller of any role.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The token's subject: the participant id.
    pub id: String,
    pub role: Role,
    pub display_name: String,
    /// Preferred language from the token, if any.
    pub language: Option<String>,
    /// When the token expires (Unix seconds); long-lived connections end then.
    pub expires_at: u64,
}

impl AuthUser {
    /// Refuses the call unless the caller holds one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), AppError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(AppError::RoleNotAllowed(self.role.as_str()))
        }
    }
}

/// The bearer token of a request: the `Authorization` header, or `access_token` in the
/// query string for browsers opening a WebSocket or an EventSource.
pub fn bearer_token(parts: &Parts) -> Result<&str, AppError> {
    if let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let value = header
            .to_str()
            .map_err(|_| AppError::InvalidToken("the Authorization header is not text".into()))?;
        return value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AppError::InvalidToken(
                "the Authorization header must be `Bearer <token>`".into(),
            ));
    }
    parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")))
        .filter(|t| !t.is_empty())
        .ok_or(AppError::MissingToken(
            "a bearer token is required (Authorization header or access_token parameter)",
        ))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = bearer_token(parts)?;
        state.tokens.verify(token)
    }
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $($role:expr),+) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub AuthUser);

        impl FromRequestParts<AppState> for $name {
            type Rejection = AppError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, AppError> {
                let user = AuthUser::from_request_parts(parts, state).await?;
                user.require(&[$($role),+])?;
                Ok($name(user))
            }
        }
    };
}

role_extractor!(
    /// A retail client.
    ClientUser,
    Role::Client
);
role_extractor!(
    /// A human advisor.
    Advisor,
    Role::Advisor
);
role_extractor!(
    /// A compliance officer.
    ComplianceOfficer,
    Role::Compliance
);
role_extractor!(
    /// An operator of the service.
    Admin,
    Role::Admin
);

/// Parses `8h`, `30m`, `45s`, `7d` (for `token issue --ttl`).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 8h, 30m or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" | "" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use s, m, h or d)"
            ));
        }
    };
    if secs == 0 || secs > 366 * 86_400 {
        return Err(format!("{text:?} must be between 1s and 366d"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn service(secret: &str) -> TokenService {
        let mut config = Config::default();
        config.auth.jwt_secret = Some(Secret::new(secret));
        TokenService::from_config(&config).unwrap()
    }

    #[test]
    fn an_issued_token_verifies_with_its_role() {
        let tokens = service("a-secret-of-at-least-32-bytes-long!!");
        let token = tokens
            .issue("c-1", Role::Client, Duration::from_secs(60), None, None)
            .unwrap();
        let user = tokens.verify(&token).unwrap();
        assert_eq!(user.id, "c-1");
        assert_eq!(user.role, Role::Client);
    }

    #[test]
    fn a_token_from_another_key_is_refused() {
        let token = service("a-secret-of-at-least-32-bytes-long!!")
            .issue("c-1", Role::Client, Duration::from_secs(60), None, None)
            .unwrap();
        let err = service("another-secret-of-32-bytes-or-more!!")
            .verify(&token)
            .unwrap_err();
        assert_eq!(err.code(), "invalid_token");
    }

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("8h").unwrap().as_secs(), 8 * 3600);
        assert_eq!(parse_ttl("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_ttl("7d").unwrap().as_secs(), 7 * 86_400);
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("8w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn roles_parse_from_their_names_only() {
        assert_eq!("advisor".parse::<Role>().unwrap(), Role::Advisor);
        assert!("root".parse::<Role>().is_err());
    }
}
