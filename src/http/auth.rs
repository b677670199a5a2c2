//! Bearer tokens and their roles. Tokens are kept only as SHA-256 digests
//! and compared in constant time; they are never logged.

use super::problem::ApiError;
use crate::config::AuthConfig;
use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do. Each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Ingest,
    Admin,
}

pub struct Auth {
    tokens: Vec<([u8; 32], Role)>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Auth {
        let roles = [
            (&config.read_tokens, Role::Read),
            (&config.ingest_tokens, Role::Ingest),
            (&config.admin_tokens, Role::Admin),
        ];
        let tokens = roles
            .into_iter()
            .flat_map(|(tokens, role)| tokens.iter().map(move |token| (digest(token), role)))
            .collect();
        Auth { tokens }
    }

    /// Allows the request when no tokens are configured, or when it carries
    /// a token whose role includes `needed`.
    pub fn require(&self, headers: &HeaderMap, needed: Role) -> Result<(), ApiError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        let presented = digest(presented);
        // Compare against every token, so the time taken says nothing
        // about which one (if any) matched.
        let mut role = None;
        for (known, known_role) in &self.tokens {
            if bool::from(known.ct_eq(&presented)) {
                role = role.max(Some(*known_role));
            }
        }
        match role {
            None => Err(ApiError::Unauthorized),
            Some(role) if role < needed => Err(ApiError::Forbidden),
            Some(_) => Ok(()),
        }
    }
}
