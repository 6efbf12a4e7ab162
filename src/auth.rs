//! Authentication and permissions: verify a JWT and decide what its bearer may do in a room.
//!
//! HS256 with a shared secret, or RS256/ES256 with a PEM public key; `exp` is required and
//! checked with a small leeway, `nbf` when present. Only the configured algorithm is
//! accepted (so `alg: none` and algorithm-confusion tokens fail). Claims name the rooms
//! (exact names or `prefix*` patterns) and the right (`read` or `write`). Without a key the
//! server is open: everyone may write. This module knows nothing of HTTP: the edge hands it
//! the token string.

use std::path::Path;

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use thiserror::Error;

use crate::id::RoomName;

/// The prefix of anonymous chat senders; token subjects may not start with it.
pub const ANONYMOUS_PREFIX: &str = "anon-";

pub use crate::id::Access;

/// The claims Tandem reads from a token.
#[derive(Debug, Deserialize)]
struct Claims {
    /// Who the bearer is.
    sub: Option<String>,
    /// Room names or `prefix*` patterns the token grants.
    #[serde(default)]
    rooms: Vec<String>,
    /// The right granted in those rooms.
    #[serde(default = "read_access")]
    perm: Access,
    /// Whether the bearer may use admin endpoints.
    #[serde(default)]
    admin: bool,
    /// Public presence info (a name, an avatar URL…) shown to the room's other members.
    #[serde(default)]
    info: Option<serde_json::Value>,
    /// Expiry, in seconds since the Unix epoch (required; checked by the validation). A
    /// number, which some issuers write with a fraction.
    exp: f64,
}

fn read_access() -> Access {
    Access::Read
}

/// What a verified token grants in one room.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// The token's subject, if any.
    pub subject: Option<String>,
    /// The right in the room.
    pub access: Access,
    /// Whether the bearer is an admin.
    pub admin: bool,
    /// The token's public presence info (`info` claim).
    pub info: Option<serde_json::Value>,
    /// When a session opened with this token must end, in seconds since the Unix epoch:
    /// the token's `exp` plus the leeway. None when the server is open.
    pub valid_until: Option<u64>,
}

impl Grant {
    /// How long from now until a session under this grant must end (zero if past).
    pub fn remaining(&self) -> Option<std::time::Duration> {
        let until = self.valid_until?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Some(std::time::Duration::from_secs(until).saturating_sub(now))
    }
}

/// Why a request is refused. The first group maps to 401, the second to 403.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token was presented.
    #[error("authentication required: pass a token as 'Authorization: Bearer …' or ?token=")]
    Missing,
    /// The token is malformed, forged, of the wrong algorithm, or lacks `exp`.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// The token is not valid yet (`nbf`).
    #[error("token not yet valid")]
    NotYetValid,
    /// The token does not name this room.
    #[error("token does not grant access to room {0}")]
    WrongRoom(String),
    /// The token grants read access only.
    #[error("token grants read-only access")]
    ReadOnly,
    /// The endpoint needs an admin token.
    #[error("admin token required")]
    NotAdmin,
}

impl AuthError {
    /// True for "who are you?" failures (401), false for "you may not" (403).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing
                | AuthError::Invalid(_)
                | AuthError::Expired
                | AuthError::NotYetValid
        )
    }
}

/// A key configuration that cannot be used.
#[derive(Debug, Error)]
#[error("JWT key: {0}")]
pub struct KeyError(String);

/// Verifies tokens; open (no key) or keyed.
pub struct Authenticator {
    key: Option<(DecodingKey, Validation)>,
}

impl Authenticator {
    /// An authenticator that lets everyone write (no key configured).
    pub fn open() -> Self {
        Self { key: None }
    }

    /// HS256 with a shared secret.
    pub fn with_secret(secret: &[u8], leeway_secs: u64) -> Result<Self, KeyError> {
        if secret.len() < 16 {
            return Err(KeyError(
                "the shared secret must be at least 16 bytes".into(),
            ));
        }
        Ok(Self::keyed(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
            leeway_secs,
        ))
    }

    /// RS256 or ES256 with a PEM public key (the key type picks the algorithm).
    pub fn with_public_key(path: &Path, leeway_secs: u64) -> Result<Self, KeyError> {
        let pem = std::fs::read(path)
            .map_err(|e| KeyError(format!("reading {}: {e}", path.display())))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Self::keyed(key, Algorithm::RS256, leeway_secs));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            return Ok(Self::keyed(key, Algorithm::ES256, leeway_secs));
        }
        Err(KeyError(format!(
            "{} is neither an RSA nor an EC (P-256) public key in PEM",
            path.display()
        )))
    }

    fn keyed(key: DecodingKey, algorithm: Algorithm, leeway_secs: u64) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway_secs;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            key: Some((key, validation)),
        }
    }

    /// Seconds of leeway granted past a token's `exp`.
    fn leeway_secs(&self) -> u64 {
        self.key
            .as_ref()
            .map_or(0, |(_, validation)| validation.leeway)
    }

    /// Whether no key is configured.
    pub fn is_open(&self) -> bool {
        self.key.is_none()
    }

    /// Checks `token` and what it grants in `room`.
    pub fn authorize(&self, token: Option<&str>, room: &RoomName) -> Result<Grant, AuthError> {
        let claims = match self.verify(token)? {
            None => {
                return Ok(Grant {
                    subject: None,
                    access: Access::Write,
                    admin: false,
                    info: None,
                    valid_until: None,
                })
            }
            Some(claims) => claims,
        };
        if !claims.rooms.iter().any(|p| room_matches(p, room.as_str())) {
            return Err(AuthError::WrongRoom(room.to_string()));
        }
        // Anonymous chat senders are named `anon-…`; a subject may not pass for one.
        if claims
            .sub
            .as_deref()
            .is_some_and(|s| s.starts_with(ANONYMOUS_PREFIX))
        {
            return Err(AuthError::Invalid(format!(
                "subjects starting with {ANONYMOUS_PREFIX:?} are reserved"
            )));
        }
        Ok(Grant {
            subject: claims.sub,
            access: claims.perm,
            admin: claims.admin,
            info: claims.info,
            // `as` saturates: a negative or absurd `exp` cannot wrap.
            valid_until: Some((claims.exp.floor() as u64).saturating_add(self.leeway_secs())),
        })
    }

    /// Checks that `token` carries the admin claim (always true when open).
    pub fn authorize_admin(&self, token: Option<&str>) -> Result<(), AuthError> {
        match self.verify(token)? {
            Some(claims) if !claims.admin => Err(AuthError::NotAdmin),
            _ => Ok(()),
        }
    }

    fn verify(&self, token: Option<&str>) -> Result<Option<Claims>, AuthError> {
        let Some((key, validation)) = &self.key else {
            return Ok(None);
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        use jsonwebtoken::errors::ErrorKind;
        match decode::<Claims>(token, key, validation) {
            Ok(data) => Ok(Some(data.claims)),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid(e.to_string()),
            }),
        }
    }
}

/// Whether a room pattern (`name`, `prefix*`, or `*`) covers `room`.
fn room_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"a test secret of enough length";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[test]
    fn patterns() {
        assert!(room_matches("doc", "doc"));
        assert!(!room_matches("doc", "doc2"));
        assert!(room_matches("team:*", "team:notes"));
        assert!(!room_matches("team:*", "other"));
        assert!(room_matches("*", "anything"));
    }

    #[test]
    fn open_server_grants_write() {
        let grant = Authenticator::open().authorize(None, &room("r")).unwrap();
        assert_eq!(grant.access, Access::Write);
    }

    #[test]
    fn tokens_are_checked() {
        let auth = Authenticator::with_secret(SECRET, 5).unwrap();
        let r = room("team:a");
        let valid =
            token(json!({"sub": "ada", "exp": now() + 60, "rooms": ["team:*"], "perm": "write"}));
        let grant = auth.authorize(Some(&valid), &r).unwrap();
        assert_eq!(
            (grant.subject.as_deref(), grant.access),
            (Some("ada"), Access::Write)
        );

        let reader = token(json!({"exp": now() + 60, "rooms": ["team:a"]}));
        assert_eq!(
            auth.authorize(Some(&reader), &r).unwrap().access,
            Access::Read
        );

        let cases = [
            (None, AuthError::Missing),
            (
                Some(token(json!({"exp": now() - 600, "rooms": ["*"]}))),
                AuthError::Expired,
            ),
            (
                Some(token(
                    json!({"exp": now() + 600, "nbf": now() + 300, "rooms": ["*"]}),
                )),
                AuthError::NotYetValid,
            ),
            (
                Some(token(json!({"exp": now() + 60, "rooms": ["other"]}))),
                AuthError::WrongRoom("team:a".into()),
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(auth.authorize(token.as_deref(), &r), Err(expected));
        }
        let no_exp = token(json!({"rooms": ["*"]}));
        assert!(matches!(
            auth.authorize(Some(&no_exp), &r),
            Err(AuthError::Invalid(_))
        ));
        let forged = encode(
            &Header::default(),
            &json!({"exp": now() + 60, "rooms": ["*"]}),
            &EncodingKey::from_secret(b"another secret, also long"),
        )
        .unwrap();
        assert!(matches!(
            auth.authorize(Some(&forged), &r),
            Err(AuthError::Invalid(_))
        ));
        // alg: none — header {"alg":"none"}, no signature.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            base64_url(&json!({"exp": now() + 60, "rooms": ["*"], "perm": "write"}).to_string())
        );
        assert!(matches!(
            auth.authorize(Some(&none), &r),
            Err(AuthError::Invalid(_))
        ));
    }

    fn base64_url(text: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, &b| acc << 8 | b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
