//! Who is connecting, and what they may do.
//!
//! The driver asks [`Authenticator::identify`] for every WebSocket request
//! before the handshake completes; a refusal becomes an HTTP error response
//! (never a `101`). With `--auth none` the user comes from `?user=`; with
//! `--auth jwt` from the `sub` of an HS256 token given as `?token=` or
//! `Authorization: Bearer`, whose optional `rooms` and `broadcast` claims
//! become the connection's [`Grants`].

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;

pub use crate::hub::{Grants, ANONYMOUS_PREFIX};
use crate::percent::query_param;
use crate::protocol::{check_info, BadInfo};

/// Longest token accepted (bytes), checked before any decoding.
pub const MAX_TOKEN_LEN: usize = 8192;

/// The identity a connection will have in the hub.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user id; `None` means "give this connection an anonymous id".
    pub user: Option<String>,
    /// What the token allows; `None` means everything (auth off).
    pub grants: Option<Arc<Grants>>,
    /// When the token stops being valid (Unix seconds, leeway included).
    pub expires_at: Option<u64>,
    /// The connection's info: the token's `info` claim, or `?info=` with
    /// auth off; a JSON object within the size limit.
    pub info: Option<Box<RawValue>>,
}

/// A refused request: HTTP status and a short body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub message: String,
}

fn reject(status: u16, message: impl Into<String>) -> Rejection {
    Rejection {
        status,
        message: message.into(),
    }
}

/// How connections prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `?user=<id>` is believed (local development).
    None,
    /// An HS256 JWT is required.
    Jwt,
}

/// One HS256 key, optionally named by a `kid` for rotation.
#[derive(Clone)]
pub struct JwtKey {
    pub kid: Option<String>,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JwtKey {{ kid: {:?}, secret: <redacted> }}", self.kid)
    }
}

/// Verifies identities for the driver.
#[derive(Debug, Clone)]
pub struct Authenticator {
    pub mode: AuthMode,
    pub keys: Vec<JwtKey>,
    /// Allowed clock difference for `exp` and `nbf`, in seconds.
    pub leeway: u64,
    /// Largest `info`, in bytes as received.
    pub max_info_bytes: usize,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    rooms: Option<Vec<String>>,
    #[serde(default)]
    broadcast: bool,
    info: Option<Box<RawValue>>,
}

impl Authenticator {
    /// An authenticator for `mode`, with HS256 `keys`, a clock `leeway` in
    /// seconds, and connection info of at most `max_info_bytes`.
    pub fn new(
        mode: AuthMode,
        keys: Vec<JwtKey>,
        leeway: u64,
        max_info_bytes: usize,
    ) -> Authenticator {
        Authenticator {
            mode,
            keys,
            leeway,
            max_info_bytes,
        }
    }

    /// Identify a WebSocket request at Unix time `now`, from its query string
    /// and the token of its `Authorization: Bearer` header.
    pub fn identify(
        &self,
        query: Option<&str>,
        bearer: Option<&str>,
        max_user_id_len: usize,
        now: u64,
    ) -> Result<Identity, Rejection> {
        match self.mode {
            AuthMode::None => identify_by_query(query, max_user_id_len, self.max_info_bytes),
            AuthMode::Jwt => {
                if query_param(query, "info").is_some() {
                    return Err(reject(
                        400,
                        "?info= is not taken with token auth: put it in the token's info claim",
                    ));
                }
                let token = match query_param(query, "token") {
                    Some(Some(t)) => t,
                    Some(None) => return Err(reject(401, "token is not valid percent-encoding")),
                    None => match bearer {
                        Some(t) => t.to_string(),
                        None => {
                            return Err(reject(
                                401,
                                "a token is required (?token= or Authorization: Bearer)",
                            ))
                        }
                    },
                };
                self.verify(&token, max_user_id_len, now)
            }
        }
    }

    /// Verify an HS256 token and turn its claims into an identity.
    pub fn verify(
        &self,
        token: &str,
        max_user_id_len: usize,
        now: u64,
    ) -> Result<Identity, Rejection> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(reject(401, "token too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(reject(401, "malformed token"));
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| reject(401, "malformed token"))
        };
        let header: Header = serde_json::from_slice(&decode(h)?)
            .map_err(|_| reject(401, "malformed token header"))?;
        if header.alg != "HS256" {
            return Err(reject(401, "only HS256 tokens are accepted"));
        }
        let signature = decode(s)?;
        let signed = &token[..h.len() + 1 + c.len()];
        let candidates: Vec<&JwtKey> = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => self.keys.iter().collect(),
        };
        let valid = candidates.iter().any(|key| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&key.secret).expect("HMAC takes any key length");
            mac.update(signed.as_bytes());
            mac.verify_slice(&signature).is_ok()
        });
        if !valid {
            return Err(reject(401, "bad token signature"));
        }
        let claims: Claims = serde_json::from_slice(&decode(c)?)
            .map_err(|_| reject(401, "malformed token claims"))?;
        let Some(exp) = claims.exp else {
            return Err(reject(401, "token has no exp"));
        };
        let now_f = now as f64;
        if exp + (self.leeway as f64) < now_f {
            return Err(reject(401, "token expired"));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now_f + self.leeway as f64)
        {
            return Err(reject(401, "token not yet valid"));
        }
        let user = match claims.sub {
            Some(sub) if !sub.is_empty() && sub.len() <= max_user_id_len => sub,
            Some(_) => {
                return Err(reject(
                    401,
                    format!("token sub must be 1 to {max_user_id_len} bytes"),
                ))
            }
            None => return Err(reject(401, "token has no sub")),
        };
        if user.starts_with(ANONYMOUS_PREFIX) {
            return Err(reject(
                401,
                format!("user ids starting with `{ANONYMOUS_PREFIX}` are reserved"),
            ));
        }
        let info = match claims.info {
            Some(raw) => Some(check_info(raw.get(), self.max_info_bytes).map_err(|e| {
                reject(
                    401,
                    info_problem("token's info claim", e, self.max_info_bytes),
                )
            })?),
            None => None,
        };
        let grants = Grants::new(claims.rooms, claims.broadcast);
        Ok(Identity {
            user: Some(user),
            grants: Some(Arc::new(grants)),
            expires_at: Some((exp.max(0.0) as u64).saturating_add(self.leeway)),
            info,
        })
    }
}

/// What is wrong with an `info`, for the refusal's body.
fn info_problem(source: &str, problem: BadInfo, max: usize) -> String {
    let what = match problem {
        BadInfo::NotJson => {
            "is not valid JSON (or is nested too deep, or has a number out of range)"
        }
        BadInfo::NotObject => "is not a JSON object",
        BadInfo::TooLong => "is too long",
    };
    format!("the {source} {what}: info must be a JSON object of at most {max} bytes")
}

/// Identify by `?user=<id>`, bounded by `max_user_id_len`, with `?info=`
/// (auth off).
fn identify_by_query(
    query: Option<&str>,
    max_user_id_len: usize,
    max_info_bytes: usize,
) -> Result<Identity, Rejection> {
    let user = match query_param(query, "user") {
        None => None,
        Some(None) => return Err(reject(400, "user id is not valid percent-encoded UTF-8")),
        Some(Some(user)) if user.is_empty() => return Err(reject(400, "user id is empty")),
        Some(Some(user)) if user.len() > max_user_id_len => {
            return Err(reject(400, format!("user id longer than {max_user_id_len} bytes")))
        }
        Some(Some(user)) if user.starts_with(ANONYMOUS_PREFIX) => {
            return Err(reject(
                400,
                format!("user ids starting with `{ANONYMOUS_PREFIX}` are reserved for anonymous connections"),
            ))
        }
        Some(Some(user)) => Some(user),
    };
    let info = match query_param(query, "info") {
        None => None,
        Some(None) => return Err(reject(400, "?info= is not valid percent-encoded UTF-8")),
        Some(Some(text)) => Some(
            check_info(&text, max_info_bytes)
                .map_err(|e| reject(400, info_problem("?info= value", e, max_info_bytes)))?,
        ),
    };
    Ok(Identity {
        user,
        grants: None,
        expires_at: None,
        info,
    })
}

/// Browser origins allowed to connect; empty means any (and no `Origin` is
/// always allowed: non-browser clients do not send one).
pub fn check_origin(allowed: &[String], origin: Option<&str>) -> Result<(), Rejection> {
    match origin {
        Some(origin) if !allowed.is_empty() && !allowed.iter().any(|a| a == "*" || a == origin) => {
            Err(reject(403, "origin not allowed"))
        }
        _ => Ok(()),
    }
}

/// Compare secrets without leaking where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Make an HS256 token (tests, examples and backends written in Rust).
pub fn sign_hs256(claims: &serde_json::Value, kid: Option<&str>, secret: &[u8]) -> String {
    let header = match kid {
        Some(kid) => serde_json::json!({ "alg": "HS256", "typ": "JWT", "kid": kid }),
        None => serde_json::json!({ "alg": "HS256", "typ": "JWT" }),
    };
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(token.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    token.push('.');
    token.push_str(&signature);
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn auth() -> Authenticator {
        Authenticator {
            mode: AuthMode::Jwt,
            keys: vec![
                JwtKey {
                    kid: Some("old".into()),
                    secret: b"old-secret".to_vec(),
                },
                JwtKey {
                    kid: Some("new".into()),
                    secret: b"new-secret".to_vec(),
                },
                JwtKey {
                    kid: None,
                    secret: b"plain".to_vec(),
                },
            ],
            leeway: 5,
            max_info_bytes: 1024,
        }
    }

    fn status(token: &str) -> u16 {
        match auth().verify(token, 64, NOW) {
            Ok(_) => 200,
            Err(r) => r.status,
        }
    }

    #[test]
    fn valid_tokens_give_user_grants_and_expiry() {
        let t = sign_hs256(
            &json!({"sub":"ann","exp":NOW + 60,"rooms":["chat:*","lobby"]}),
            Some("new"),
            b"new-secret",
        );
        let id = auth().verify(&t, 64, NOW).unwrap();
        assert_eq!(id.user.as_deref(), Some("ann"));
        assert_eq!(id.expires_at, Some(NOW + 65));
        let g = id.grants.unwrap();
        assert!(g.may_join("chat:42") && g.may_join("lobby") && !g.may_join("lobby2"));
        assert!(!g.may_broadcast());
        // Rotation: the old key still works by kid, and an untagged key by trying all.
        let old = sign_hs256(
            &json!({"sub":"a","exp":NOW + 1}),
            Some("old"),
            b"old-secret",
        );
        assert_eq!(status(&old), 200);
        let untagged = sign_hs256(
            &json!({"sub":"a","exp":NOW + 1,"broadcast":true}),
            None,
            b"plain",
        );
        assert!(auth()
            .verify(&untagged, 64, NOW)
            .unwrap()
            .grants
            .unwrap()
            .may_broadcast());
    }

    #[test]
    fn bad_tokens_are_401() {
        let exp = NOW + 60;
        assert_eq!(
            status(&sign_hs256(
                &json!({"sub":"a","exp":exp}),
                Some("new"),
                b"wrong"
            )),
            401
        );
        assert_eq!(
            status(&sign_hs256(
                &json!({"sub":"a","exp":exp}),
                Some("nokid"),
                b"new-secret"
            )),
            401
        );
        assert_eq!(
            status(&sign_hs256(
                &json!({"sub":"a","exp":NOW - 6}),
                None,
                b"plain"
            )),
            401,
            "expired"
        );
        assert_eq!(
            status(&sign_hs256(
                &json!({"sub":"a","exp":NOW - 4}),
                None,
                b"plain"
            )),
            200,
            "leeway"
        );
        assert_eq!(
            status(&sign_hs256(
                &json!({"sub":"a","exp":exp,"nbf":NOW + 60}),
                None,
                b"plain"
            )),
            401
        );
        assert_eq!(
            status(&sign_hs256(&json!({"sub":"a"}), None, b"plain")),
            401,
            "no exp"
        );
        assert_eq!(
            status(&sign_hs256(&json!({"exp":exp}), None, b"plain")),
            401,
            "no sub"
        );
        assert_eq!(
            status(&sign_hs256(
                &json!({"sub":"anon-1","exp":exp}),
                None,
                b"plain"
            )),
            401
        );
        assert_eq!(status("a.b"), 401);
        assert_eq!(status("!!.??.**"), 401);
        assert_eq!(status(&"x".repeat(MAX_TOKEN_LEN + 1)), 401);
        // alg confusion: a token claiming "none" is refused even with no signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(json!({"sub":"a","exp":exp}).to_string())
        );
        assert_eq!(status(&none), 401);
    }

    #[test]
    fn origins_and_secrets() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(check_origin(&allowed, Some("https://app.example")).is_ok());
        assert_eq!(
            check_origin(&allowed, Some("https://evil.example"))
                .unwrap_err()
                .status,
            403
        );
        assert!(check_origin(&allowed, None).is_ok());
        assert!(check_origin(&[], Some("https://any")).is_ok());
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kex"));
        assert!(!constant_time_eq(b"key", b"keys"));
    }
}
