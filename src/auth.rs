//! Bearer tokens: HS256 JWTs with the claims `sub` (user id), `role` and `exp`.
//!
//! Reads are open to everyone; the resolvers ask [`Auth`] for a user when they need one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch (optional; honoured when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// The signing secret, ready to sign and verify.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    /// Longest a token may still be valid for, when bounded (AUTH_JWT_MAX_TTL).
    max_ttl: Option<Duration>,
}

/// Longest `sub` we accept; it is stored as an author or owner id.
const MAX_SUBJECT_LEN: usize = 200;

/// Longest token we try to decode, in bytes: anything larger is refused unread.
pub const MAX_TOKEN_BYTES: usize = 4096;

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        // Seconds of clock difference tolerated on exp and nbf.
        validation.leeway = 5;
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: None,
            audience: None,
            max_ttl: None,
        }
    }

    /// Refuses tokens that stay valid longer than `max_ttl` from now (and will not mint one).
    pub fn with_max_ttl(mut self, max_ttl: Option<Duration>) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// Requires tokens to carry this issuer (`iss`), when set.
    pub fn with_issuer(mut self, issuer: Option<&str>) -> Self {
        if let Some(issuer) = issuer {
            self.validation.set_issuer(&[issuer]);
            self.validation.required_spec_claims.insert("iss".into());
            self.issuer = Some(issuer.to_owned());
        }
        self
    }

    /// Requires tokens to carry this audience (`aud`), when set.
    pub fn with_audience(mut self, audience: Option<&str>) -> Self {
        if let Some(audience) = audience {
            self.validation.set_audience(&[audience]);
            self.validation.validate_aud = true;
            self.validation.required_spec_claims.insert("aud".into());
            self.audience = Some(audience.to_owned());
        }
        self
    }

    /// Signs a token for `sub` that expires after `ttl`.
    pub fn mint(&self, sub: &str, role: Role, ttl: Duration) -> anyhow::Result<String> {
        if let Some(max) = self.max_ttl {
            anyhow::ensure!(
                ttl <= max,
                "--ttl {}s is longer than AUTH_JWT_MAX_TTL ({}s)",
                ttl.as_secs(),
                max.as_secs()
            );
        }
        let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl.as_secs();
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            exp,
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Checks a token's signature, algorithm and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("invalid token: too large".into());
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".to_owned(),
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    "token not yet valid".to_owned()
                }
                _ => "invalid token".to_owned(),
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_SUBJECT_LEN {
            return Err("invalid token: bad subject".into());
        }
        if let Some(max) = self.max_ttl {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|_| "clock before 1970".to_owned())?
                .as_secs();
            if claims.exp > now + max.as_secs() + self.validation.leeway {
                return Err("invalid token: it lives longer than this server allows".into());
            }
        }
        Ok(claims)
    }
}

/// Who sent the request, as far as the Authorization header tells.
#[derive(Debug, Clone)]
pub enum Auth {
    Anonymous,
    User(Claims),
    /// A token was sent but is not valid; the reason is safe to show.
    Invalid(String),
}

impl Auth {
    /// Reads an `Authorization` header value.
    pub fn from_header(keys: &TokenKeys, header: Option<&str>) -> Self {
        let Some(value) = header else {
            return Auth::Anonymous;
        };
        let Some(token) = value.strip_prefix("Bearer ") else {
            return Auth::Invalid("the Authorization header must be `Bearer <token>`".into());
        };
        match keys.verify(token.trim()) {
            Ok(claims) => Auth::User(claims),
            Err(reason) => Auth::Invalid(reason),
        }
    }

    /// The caller's claims, or UNAUTHENTICATED.
    pub fn user(&self) -> Result<&Claims, ApiError> {
        match self {
            Auth::User(claims) => Ok(claims),
            Auth::Anonymous => Err(ApiError::Unauthenticated(
                "this operation needs a bearer token".into(),
            )),
            Auth::Invalid(reason) => Err(ApiError::Unauthenticated(reason.clone())),
        }
    }
}
