//! Signed level metadata: the publisher's statement of what a level is.
//!
//! The signed bytes are carried as they were signed (base64 of the canonical JSON), so
//! verification never depends on re-serialising: the agent checks a signature by a pinned key
//! over exactly those bytes, then parses them. Ed25519 keys (ed25519-dalek); a key is named by
//! the first 16 hex digits of the SHA-256 of its public bytes.

use std::collections::BTreeMap;

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::KernelId;

/// Why metadata is not trusted. Each says what and what to do.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Not signed by any pinned key.
    #[error("level metadata is not signed by a key this host trusts (signed by {}); it was refused: ask the fleet's operator, the server may be compromised", if signers.is_empty() { "nobody".to_string() } else { signers.join(", ") })]
    Unsigned {
        /// Key ids of the signatures present.
        signers: Vec<String>,
    },
    /// A signature does not verify.
    #[error("the signature by key {key} does not match the level metadata: it was tampered with, and was refused")]
    BadSignature {
        /// The key id.
        key: String,
    },
    /// Past its expiry.
    #[error("level metadata of {stream} level {level} expired at {expires} (now {now}): the publisher must re-sign it")]
    Expired {
        /// The stream.
        stream: String,
        /// The level.
        level: u32,
        /// Expiry, seconds since the epoch.
        expires: u64,
        /// Now.
        now: u64,
    },
    /// Older than what the host has seen.
    #[error("level metadata of {stream} has version {version}, older than version {seen} this host already saw: a rollback, refused")]
    Rollback {
        /// The stream.
        stream: String,
        /// Its version.
        version: u64,
        /// The newest version seen.
        seen: u64,
    },
    /// For another stream or kernel than asked.
    #[error("level metadata is for {got}, not for this host's {want}: refused")]
    WrongStream {
        /// The stream in the metadata.
        got: String,
        /// The stream the host runs.
        want: String,
    },
    /// A downloaded file is not the one the metadata names.
    #[error("{what} has SHA-256 {actual}, the signed metadata names {expected}: refused")]
    Digest {
        /// What.
        what: String,
        /// Signed.
        expected: String,
        /// Got.
        actual: String,
    },
    /// Malformed.
    #[error("malformed level metadata: {0}")]
    Malformed(String),
}

/// What a level is, as the publisher signs it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Level {
    /// The stream (kernel build).
    pub stream: String,
    /// The kernel the module is built for.
    pub kernel: KernelId,
    /// 1, 2, ...: each level carries every fix of the earlier ones (atomic replace).
    pub level: u32,
    /// Increases with every signing for the stream: agents refuse anything older.
    pub version: u64,
    /// The livepatch module's name.
    pub module_name: String,
    /// SHA-256 of the module.
    pub module_sha256: String,
    /// SHA-256 of its manifest.
    pub manifest_sha256: String,
    /// SHA-256 of each source patch the level carries.
    pub patches: Vec<String>,
    /// Seconds since the epoch after which agents refuse it.
    pub expires: u64,
    /// Health probes the hosts a rollout of this level samples run at every check-in: a name,
    /// and a shell command that prints one number, higher being worse (reported as the
    /// metric `probe:NAME` and gated like the kernel's own). Signed, because agents run them
    /// as root: a server cannot make a host run anything the publisher did not sign.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub probes: BTreeMap<String, String>,
}

/// Most probes a level names.
pub const MAX_PROBES: usize = 8;
/// Longest probe name.
pub const MAX_PROBE_NAME: usize = 32;
/// Longest probe command, in bytes.
pub const MAX_PROBE_COMMAND: usize = 1024;

impl Level {
    /// Checks the probes' names and commands against the limits; the first problem, named.
    pub fn check_probes(&self) -> Result<(), String> {
        check_probes(&self.probes)
    }
}

/// See [`Level::check_probes`].
pub fn check_probes(probes: &BTreeMap<String, String>) -> Result<(), String> {
    if probes.len() > MAX_PROBES {
        return Err(format!(
            "{} probes: at most {MAX_PROBES} per level",
            probes.len()
        ));
    }
    for (name, command) in probes {
        let good_name = !name.is_empty()
            && name.len() <= MAX_PROBE_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !good_name {
            return Err(format!(
                "probe name {name:?}: 1 to {MAX_PROBE_NAME} of a-z, 0-9 and _"
            ));
        }
        if command.trim().is_empty() || command.len() > MAX_PROBE_COMMAND || command.contains('\0')
        {
            return Err(format!(
                "probe {name}: a command of 1 to {MAX_PROBE_COMMAND} bytes, without NUL"
            ));
        }
    }
    Ok(())
}

/// A signature over [`SignedLevel::signed`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signature {
    /// The key's id.
    pub key: String,
    /// Hex of the Ed25519 signature.
    pub sig: String,
}

/// Level metadata as it travels: the signed bytes and their signatures.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedLevel {
    /// Base64 of the canonical JSON of a [`Level`].
    pub signed: String,
    /// Signatures over the decoded bytes.
    pub signatures: Vec<Signature>,
}

/// The id of a public key: 16 hex digits of the SHA-256 of its bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))[..16].to_string()
}

/// A publisher key pair, freshly generated.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// A signing key from its hex form (the private key file's contents).
pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, TrustError> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| TrustError::Malformed("a signing key is 64 hex digits".into()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A public key from its hex form.
pub fn verifying_key_from_hex(text: &str) -> Result<VerifyingKey, TrustError> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| TrustError::Malformed("a public key is 64 hex digits".into()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| TrustError::Malformed(format!("bad public key: {e}")))
}

impl SignedLevel {
    /// Signs `level` with `key`.
    pub fn sign(level: &Level, key: &SigningKey) -> Self {
        let bytes = serde_json::to_vec(level).unwrap_or_default();
        let sig = key.sign(&bytes);
        Self {
            signed: base64::engine::general_purpose::STANDARD.encode(&bytes),
            signatures: vec![Signature {
                key: key_id(&key.verifying_key()),
                sig: hex::encode(sig.to_bytes()),
            }],
        }
    }

    /// The level, unverified (for display and for the server's own checks).
    pub fn peek(&self) -> Result<Level, TrustError> {
        let bytes = self.bytes()?;
        serde_json::from_slice(&bytes).map_err(|e| TrustError::Malformed(e.to_string()))
    }

    fn bytes(&self) -> Result<Vec<u8>, TrustError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.signed)
            .map_err(|e| TrustError::Malformed(format!("signed is not base64: {e}")))
    }

    /// Verifies the metadata against the pinned `keys`: a valid signature by one of them,
    /// not expired at `now`, for `stream`, and not older than `seen_version`.
    pub fn verify(
        &self,
        keys: &[VerifyingKey],
        stream: &str,
        now: u64,
        seen_version: Option<u64>,
    ) -> Result<Level, TrustError> {
        let bytes = self.bytes()?;
        let mut trusted = false;
        for s in &self.signatures {
            let Some(key) = keys.iter().find(|k| key_id(k) == s.key) else {
                continue;
            };
            let sig: [u8; 64] = hex::decode(&s.sig)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| TrustError::BadSignature { key: s.key.clone() })?;
            key.verify(&bytes, &ed25519_dalek::Signature::from_bytes(&sig))
                .map_err(|_| TrustError::BadSignature { key: s.key.clone() })?;
            trusted = true;
        }
        if !trusted {
            return Err(TrustError::Unsigned {
                signers: self.signatures.iter().map(|s| s.key.clone()).collect(),
            });
        }
        let level: Level =
            serde_json::from_slice(&bytes).map_err(|e| TrustError::Malformed(e.to_string()))?;
        if level.stream != stream {
            return Err(TrustError::WrongStream {
                got: level.stream,
                want: stream.to_string(),
            });
        }
        if level.expires <= now {
            return Err(TrustError::Expired {
                stream: level.stream,
                level: level.level,
                expires: level.expires,
                now,
            });
        }
        if let Some(seen) = seen_version.filter(|seen| level.version < *seen) {
            return Err(TrustError::Rollback {
                stream: level.stream,
                version: level.version,
                seen,
            });
        }
        Ok(level)
    }
}

/// Checks that `bytes` are what the metadata names as `what` (`expected` a hex SHA-256).
pub fn check_digest(what: &str, bytes: &[u8], expected: &str) -> Result<(), TrustError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual == expected {
        Ok(())
    } else {
        Err(TrustError::Digest {
            what: what.to_string(),
            expected: expected.to_string(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(version: u64, expires: u64) -> Level {
        Level {
            stream: "6.1.0-56-amd64@eb4fbcd037e7".into(),
            kernel: KernelId {
                release: "6.1.0-56-amd64".into(),
                build_id: "eb4fbcd0".into(),
            },
            level: 2,
            version,
            module_name: "fix2".into(),
            module_sha256: "aa".into(),
            manifest_sha256: "bb".into(),
            patches: vec!["p1".into(), "p2".into()],
            expires,
            probes: BTreeMap::new(),
        }
    }

    #[test]
    fn probes_are_signed_and_metadata_without_them_reads_as_before() {
        let key = generate_key();
        let keys = [key.verifying_key()];
        let stream = "6.1.0-56-amd64@eb4fbcd037e7";
        // Without probes, the signed bytes have no `probes` key at all: metadata signed before
        // probes existed verifies unchanged.
        let plain = SignedLevel::sign(&level(1, 100), &key);
        let bytes = plain.bytes().unwrap();
        assert!(!String::from_utf8(bytes).unwrap().contains("probes"));
        assert!(plain
            .verify(&keys, stream, 10, None)
            .unwrap()
            .probes
            .is_empty());
        let mut probed = level(2, 100);
        probed
            .probes
            .insert("dns_ms".into(), "cat /run/dns-latency-ms".into());
        let signed = SignedLevel::sign(&probed, &key);
        let verified = signed.verify(&keys, stream, 10, None).unwrap();
        assert_eq!(verified.probes["dns_ms"], "cat /run/dns-latency-ms");
        // A probe changed on the way is a bad signature.
        let mut tampered = probed.clone();
        tampered.probes.insert("dns_ms".into(), "rm -rf /".into());
        let forged = SignedLevel {
            signed: base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&tampered).unwrap()),
            signatures: signed.signatures.clone(),
        };
        assert!(matches!(
            forged.verify(&keys, stream, 10, None),
            Err(TrustError::BadSignature { .. })
        ));
    }

    #[test]
    fn probe_names_and_commands_have_limits() {
        let probes = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(n, c)| (n.to_string(), c.to_string()))
                .collect()
        };
        assert!(check_probes(&probes(&[("dns_ms", "echo 1"), ("q2", "echo 2")])).is_ok());
        for (bad, why) in [
            (probes(&[("DNS", "echo 1")]), "probe name"),
            (probes(&[("", "echo 1")]), "probe name"),
            (probes(&[(&"a".repeat(33), "echo 1")]), "probe name"),
            (probes(&[("a", "  ")]), "a command of"),
            (probes(&[("a", &"x".repeat(1025))]), "a command of"),
            (probes(&[("a", "echo \0")]), "a command of"),
        ] {
            let err = check_probes(&bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let many: BTreeMap<String, String> =
            (0..9).map(|i| (format!("p{i}"), "echo 1".into())).collect();
        assert!(check_probes(&many).unwrap_err().contains("at most 8"));
    }

    const STREAM: &str = "6.1.0-56-amd64@eb4fbcd037e7";

    #[test]
    fn a_signed_level_verifies_with_its_key_only() {
        let key = generate_key();
        let signed = SignedLevel::sign(&level(3, 1000), &key);
        let pinned = [key.verifying_key()];
        assert_eq!(
            signed.verify(&pinned, STREAM, 10, Some(3)).unwrap().level,
            2
        );
        let other = [generate_key().verifying_key()];
        assert!(matches!(
            signed.verify(&other, STREAM, 10, None),
            Err(TrustError::Unsigned { .. })
        ));
    }

    #[test]
    fn tampered_expired_rolled_back_and_foreign_metadata_is_refused() {
        let key = generate_key();
        let pinned = [key.verifying_key()];
        let mut tampered = SignedLevel::sign(&level(3, 1000), &key);
        let mut other = level(3, 1000);
        other.module_sha256 = "evil".into();
        tampered.signed = SignedLevel::sign(&other, &generate_key()).signed;
        assert!(matches!(
            tampered.verify(&pinned, STREAM, 10, None),
            Err(TrustError::BadSignature { .. })
        ));
        let expired = SignedLevel::sign(&level(3, 5), &key);
        assert!(matches!(
            expired.verify(&pinned, STREAM, 10, None),
            Err(TrustError::Expired { .. })
        ));
        let old = SignedLevel::sign(&level(2, 1000), &key);
        let err = old.verify(&pinned, STREAM, 10, Some(3)).unwrap_err();
        assert!(err.to_string().contains("rollback"), "{err}");
        let err = old
            .verify(&pinned, "6.1.0-57-amd64@x", 10, None)
            .unwrap_err();
        assert!(matches!(err, TrustError::WrongStream { .. }));
        let mut unsigned = old.clone();
        unsigned.signatures.clear();
        assert!(matches!(
            unsigned.verify(&pinned, STREAM, 10, None),
            Err(TrustError::Unsigned { .. })
        ));
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let key = generate_key();
        let again = signing_key_from_hex(&hex::encode(key.to_bytes())).unwrap();
        assert_eq!(key_id(&again.verifying_key()), key_id(&key.verifying_key()));
        let public = verifying_key_from_hex(&hex::encode(key.verifying_key().as_bytes())).unwrap();
        assert_eq!(public, key.verifying_key());
        assert!(signing_key_from_hex("xyz").is_err());
        assert!(check_digest("m", b"abc", "00").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// Damaged metadata is refused, never a panic.
        #[test]
        fn damaged_metadata_never_panics(signed in "[A-Za-z0-9+/=]{0,200}", key in "[0-9a-f]{0,20}", sig in "[0-9a-f]{0,140}") {
            let pinned = [generate_key().verifying_key()];
            let m = SignedLevel { signed, signatures: vec![Signature { key, sig }] };
            let _ = m.verify(&pinned, STREAM, 10, Some(1));
            let _ = m.peek();
        }
    }
}
