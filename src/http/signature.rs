//! Signed webhooks: Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64>`, HMAC-SHA256 over `id.timestamp.body`)
//! and, optionally, GitHub's `X-Hub-Signature-256: sha256=<hex>`.
//!
//! Several secrets may be configured at once, so a sender can rotate its
//! secret without downtime. Comparisons are constant-time (`verify_slice`).

use crate::config::WebhookConfig;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a request's signature was refused (the 401's detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed(&'static str),
    OutsideTolerance,
    Mismatch,
}

impl SignatureError {
    pub fn detail(self) -> String {
        match self {
            SignatureError::Missing => "this daemon only accepts signed webhooks: send webhook-id, webhook-timestamp and webhook-signature (or X-Hub-Signature-256)".into(),
            SignatureError::Malformed(what) => format!("the signature headers are malformed: {what}"),
            SignatureError::OutsideTolerance => "webhook-timestamp is more than the allowed tolerance away from the server clock".into(),
            SignatureError::Mismatch => "no signature matches a configured secret".into(),
        }
    }
}

/// Standard base64 with or without its `=` padding: senders show secrets
/// both ways, and the Standard Webhooks reference libraries take both.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a Standard Webhooks secret: `whsec_` followed by base64.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    match SECRET_BASE64.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err("a webhook secret must be `whsec_` followed by base64 (as Standard Webhooks senders show it)".into()),
    }
}

/// The headers a signature check reads, copied out of a request.
#[derive(Debug, Default)]
pub struct SignatureHeaders {
    id: Option<String>,
    timestamp: Option<String>,
    signature: Option<String>,
    github: Option<String>,
}

impl SignatureHeaders {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        SignatureHeaders {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            github: header("x-hub-signature-256"),
        }
    }
}

pub struct WebhookVerifier {
    standard: Vec<Vec<u8>>,
    github: Vec<Vec<u8>>,
    tolerance_secs: i64,
}

impl WebhookVerifier {
    /// `None` when no secret is configured: webhooks are then not signed.
    pub fn new(config: &WebhookConfig) -> Result<Option<WebhookVerifier>, String> {
        if config.secrets.is_empty() && config.github_secrets.is_empty() {
            return Ok(None);
        }
        let standard = config
            .secrets
            .iter()
            .map(|s| decode_secret(s))
            .collect::<Result<_, _>>()?;
        let github = config
            .github_secrets
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        Ok(Some(WebhookVerifier {
            standard,
            github,
            tolerance_secs: i64::try_from(config.tolerance_secs).unwrap_or(i64::MAX),
        }))
    }

    /// Checks the request's signature; `now_secs` is the server clock.
    pub fn verify(
        &self,
        headers: &SignatureHeaders,
        body: &[u8],
        now_secs: i64,
    ) -> Result<(), SignatureError> {
        if let (false, Some(signatures)) = (self.standard.is_empty(), &headers.signature) {
            let id = headers
                .id
                .as_deref()
                .ok_or(SignatureError::Malformed("webhook-id is missing"))?;
            let timestamp = headers
                .timestamp
                .as_deref()
                .ok_or(SignatureError::Malformed("webhook-timestamp is missing"))?;
            return verify_standard(
                &self.standard,
                id,
                timestamp,
                signatures,
                body,
                now_secs,
                self.tolerance_secs,
            );
        }
        if let (false, Some(signature)) = (self.github.is_empty(), &headers.github) {
            return verify_github(&self.github, signature, body);
        }
        Err(SignatureError::Missing)
    }
}

/// HMAC-SHA256 of the parts; `None` only if the key were refused, which
/// HMAC (any key length) never does.
fn mac(key: &[u8], parts: &[&[u8]]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac)
}

/// The Standard Webhooks check: any `v1,` signature of the space-separated
/// list made with any of the secrets, within the tolerance.
pub fn verify_standard(
    secrets: &[Vec<u8>],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let sent_at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed("webhook-timestamp is not a number of seconds"))?;
    if (now_secs - sent_at).abs() > tolerance_secs {
        return Err(SignatureError::OutsideTolerance);
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .collect();
    for key in secrets {
        let Some(expected) = mac(
            key,
            &[id.as_bytes(), b".", timestamp.trim().as_bytes(), b".", body],
        ) else {
            continue;
        };
        // verify_slice refuses a wrong length and compares in constant time.
        if candidates
            .iter()
            .any(|candidate| expected.clone().verify_slice(candidate).is_ok())
        {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// GitHub's check: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn verify_github(secrets: &[Vec<u8>], header: &str, body: &[u8]) -> Result<(), SignatureError> {
    let hex_digest = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed(
            "X-Hub-Signature-256 must start with sha256=",
        ))?;
    let candidate = hex::decode(hex_digest)
        .map_err(|_| SignatureError::Malformed("X-Hub-Signature-256 is not hex"))?;
    for key in secrets {
        if mac(key, &[body]).is_some_and(|mac| mac.verify_slice(&candidate).is_ok()) {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const AT: i64 = 1_614_265_330;

    fn secrets() -> Vec<Vec<u8>> {
        vec![decode_secret(SECRET).unwrap()]
    }

    #[test]
    fn the_published_test_vector_verifies() {
        assert_eq!(
            verify_standard(&secrets(), ID, TIMESTAMP, SIGNATURE, BODY, AT, 300),
            Ok(())
        );
    }

    #[test]
    fn empty_truncated_wrong_length_and_tampered_signatures_fail() {
        let check = |signature: &str, body: &[u8]| {
            verify_standard(&secrets(), ID, TIMESTAMP, signature, body, AT, 300)
        };
        assert_eq!(check("v1,", BODY), Err(SignatureError::Mismatch));
        assert_eq!(
            check("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJE", BODY),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OEAAAA=", BODY),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(check("v1,AAAA", BODY), Err(SignatureError::Mismatch));
        assert_eq!(
            check("v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", BODY),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(SIGNATURE, br#"{"test": 2432232315}"#),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(check("", BODY), Err(SignatureError::Mismatch));
    }

    #[test]
    fn any_listed_signature_and_any_configured_secret_will_do() {
        let listed = format!("v1,bm90IGl0 {SIGNATURE}");
        assert_eq!(
            verify_standard(&secrets(), ID, TIMESTAMP, &listed, BODY, AT, 300),
            Ok(())
        );
        let rotated = vec![b"an older secret".to_vec(), decode_secret(SECRET).unwrap()];
        assert_eq!(
            verify_standard(&rotated, ID, TIMESTAMP, SIGNATURE, BODY, AT, 300),
            Ok(())
        );
    }

    #[test]
    fn timestamps_outside_five_minutes_fail_either_way() {
        for now in [AT + 301, AT - 301] {
            assert_eq!(
                verify_standard(&secrets(), ID, TIMESTAMP, SIGNATURE, BODY, now, 300),
                Err(SignatureError::OutsideTolerance)
            );
        }
        assert_eq!(
            verify_standard(&secrets(), ID, TIMESTAMP, SIGNATURE, BODY, AT + 300, 300),
            Ok(())
        );
        assert!(matches!(
            verify_standard(&secrets(), ID, "soon", SIGNATURE, BODY, AT, 300),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn github_signatures_verify_and_fail_like_the_others() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        let secrets = vec![b"It's a Secret to Everybody".to_vec()];
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(verify_github(&secrets, good, b"Hello, World!"), Ok(()));
        assert_eq!(
            verify_github(&secrets, good, b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_github(&secrets, "sha256=", b"Hello, World!"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_github(&secrets, "sha256=757107", b"Hello, World!"),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify_github(&secrets, "sha1=abc", b"x"),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(decode_secret(SECRET).is_ok());
        // With and without padding, the same key.
        assert_eq!(decode_secret("whsec_YWJjZA==").unwrap(), b"abcd");
        assert_eq!(decode_secret("whsec_YWJjZA").unwrap(), b"abcd");
        assert!(decode_secret("whsec_not base64!").is_err());
        assert!(decode_secret("whsec_").is_err());
    }
}
