//! Who is looking: a login with a password (argon2 PHC hashes in the
//! config) or a name a reverse proxy vouches for, and what they may do.
//!
//! Password logins get a random session token in an `HttpOnly`,
//! `SameSite=Strict` cookie; sessions live in memory (a restart logs
//! everyone out) and expire after `console.session_minutes`. Every form that
//! changes something carries a CSRF token derived from the session (or, behind
//! a proxy, from the user name) and a per-process secret.

use crate::config::ConsoleConfig;
use argon2::password_hash::{phc::PasswordHash, PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName};
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const COOKIE: &str = "riskstream_session";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads every page and labels decisions.
    Reviewer,
    /// Reads every page.
    ReadOnly,
}

impl Role {
    fn parse(s: &str) -> Role {
        // The config was validated: anything but "reviewer" is read-only.
        if s == "reviewer" {
            Role::Reviewer
        } else {
            Role::ReadOnly
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reviewer => "reviewer",
            Role::ReadOnly => "read-only",
        }
    }
}

/// The user a request is made by.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub name: String,
    pub role: Role,
    /// The token every state-changing form must echo.
    pub csrf: String,
}

impl Viewer {
    pub fn may_label(&self) -> bool {
        self.role == Role::Reviewer
    }
}

enum Mode {
    Password,
    Proxy(HeaderName),
}

struct User {
    role: Role,
    hash: Option<String>,
}

struct Session {
    user: String,
    role: Role,
    expires: Instant,
}

pub struct Auth {
    mode: Mode,
    users: HashMap<String, User>,
    sessions: Mutex<HashMap<String, Session>>,
    ttl: Duration,
    /// Keys the CSRF tokens; new at every start.
    secret: [u8; 32],
    /// Checked when the name is unknown, so that a wrong name costs as much
    /// time as a wrong password.
    decoy: String,
}

impl Auth {
    /// From a validated `[console]` section.
    pub fn new(c: &ConsoleConfig) -> Auth {
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        let mode = match c.auth.as_str() {
            "proxy" => Mode::Proxy(
                HeaderName::try_from(c.proxy_header.as_str()).expect("validated header name"),
            ),
            _ => Mode::Password,
        };
        Auth {
            mode,
            users: c
                .users
                .iter()
                .map(|u| {
                    let user = User {
                        role: Role::parse(&u.role),
                        hash: u.password_hash.as_ref().map(|h| h.expose().to_owned()),
                    };
                    (u.name.clone(), user)
                })
                .collect(),
            sessions: Mutex::new(HashMap::new()),
            ttl: Duration::from_secs(c.session_minutes * 60),
            secret,
            decoy: hash_password("decoy").expect("argon2 with default parameters"),
        }
    }

    pub fn uses_passwords(&self) -> bool {
        matches!(self.mode, Mode::Password)
    }

    pub fn session_max_age(&self) -> u64 {
        self.ttl.as_secs()
    }

    /// Check a name and password (slow by design: run it off the async
    /// threads); a new session token when they match.
    pub fn login(&self, name: &str, password: &str) -> Option<String> {
        let (hash, role) = match self.users.get(name) {
            Some(User {
                hash: Some(h),
                role,
            }) => (h.as_str(), Some(*role)),
            _ => (self.decoy.as_str(), None),
        };
        let matches = PasswordHash::new(hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        let role = role.filter(|_| matches)?;
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            token.clone(),
            Session {
                user: name.to_owned(),
                role,
                expires: now + self.ttl,
            },
        );
        Some(token)
    }

    pub fn logout(&self, token: &str) {
        self.sessions.lock().expect("sessions lock").remove(token);
    }

    /// The viewer of a request, if it is allowed in at all.
    fn viewer(&self, parts: &Parts) -> Result<Viewer, Refusal> {
        match &self.mode {
            Mode::Password => {
                let token = session_cookie(&parts.headers).ok_or(Refusal::LogIn)?;
                let sessions = self.sessions.lock().expect("sessions lock");
                let s = sessions
                    .get(token)
                    .filter(|s| s.expires > Instant::now())
                    .ok_or(Refusal::LogIn)?;
                Ok(Viewer {
                    name: s.user.clone(),
                    role: s.role,
                    csrf: self.csrf_for(token),
                })
            }
            Mode::Proxy(header) => {
                let name = parts
                    .headers
                    .get(header)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .ok_or(Refusal::Forbidden(format!(
                        "the proxy did not name a user in {header}"
                    )))?;
                let user = self
                    .users
                    .get(name)
                    .ok_or_else(|| Refusal::Forbidden(format!("{name:?} is not a console user")))?;
                Ok(Viewer {
                    name: name.to_owned(),
                    role: user.role,
                    csrf: self.csrf_for(name),
                })
            }
        }
    }

    fn csrf_for(&self, subject: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(subject.as_bytes());
        hex::encode(&h.finalize()[..16])
    }
}

/// The session token of a request's cookie.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// A new argon2id PHC string for `password` (random salt, default parameters).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

enum Refusal {
    LogIn,
    Forbidden(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::LogIn => Redirect::to("/login").into_response(),
            Refusal::Forbidden(why) => super::PageError::Forbidden(why).into_response(),
        }
    }
}

impl FromRequestParts<Arc<super::Console>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<super::Console>,
    ) -> Result<Viewer, Response> {
        console
            .auth
            .viewer(parts)
            .map_err(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConsoleConfig, ConsoleUser, Secret};

    fn config(auth: &str) -> ConsoleConfig {
        ConsoleConfig {
            listen: "127.0.0.1:0".into(),
            url: Secret::new("postgres://x"),
            auth: auth.into(),
            proxy_header: "x-forwarded-user".into(),
            session_minutes: 5,
            users: vec![
                ConsoleUser {
                    name: "alice".into(),
                    role: "reviewer".into(),
                    password_hash: Some(Secret::new(hash_password("wonderland").unwrap())),
                },
                ConsoleUser {
                    name: "bob".into(),
                    role: "read-only".into(),
                    password_hash: Some(Secret::new(hash_password("builder").unwrap())),
                },
            ],
        }
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = axum::http::Request::builder().uri("/queue");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_password_login_gives_a_session_with_the_users_role() {
        let auth = Auth::new(&config("password"));
        assert!(auth.login("alice", "wrong").is_none());
        assert!(auth.login("nobody", "wonderland").is_none());
        let token = auth.login("alice", "wonderland").expect("right password");
        let cookie = format!("other=1; {COOKIE}={token}");
        let v = auth.viewer(&parts(&[("cookie", &cookie)])).ok().unwrap();
        assert_eq!((v.name.as_str(), v.role), ("alice", Role::Reviewer));
        let bob = auth.login("bob", "builder").unwrap();
        let b = auth
            .viewer(&parts(&[("cookie", &format!("{COOKIE}={bob}"))]))
            .ok()
            .unwrap();
        assert_eq!(b.role, Role::ReadOnly);
        assert!(!b.may_label());
        assert_ne!(v.csrf, b.csrf, "CSRF tokens are per session");
        auth.logout(&token);
        assert!(matches!(
            auth.viewer(&parts(&[("cookie", &cookie)])),
            Err(Refusal::LogIn)
        ));
        assert!(matches!(
            auth.viewer(&parts(&[("cookie", &format!("{COOKIE}=forged"))])),
            Err(Refusal::LogIn)
        ));
    }

    #[test]
    fn behind_a_proxy_only_listed_users_get_in() {
        let auth = Auth::new(&config("proxy"));
        let v = auth
            .viewer(&parts(&[("x-forwarded-user", "bob")]))
            .ok()
            .unwrap();
        assert_eq!(v.role, Role::ReadOnly);
        assert!(matches!(
            auth.viewer(&parts(&[("x-forwarded-user", "mallory")])),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            auth.viewer(&parts(&[])),
            Err(Refusal::Forbidden(_))
        ));
    }
}
