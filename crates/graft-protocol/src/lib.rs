//! The fleet's protocol, shared by `graft server`, `graft agent`, `graft fleet` and the
//! simulator so that they cannot drift apart.
//!
//! - [`api`]: the JSON bodies of every endpoint, and the limits the server enforces on them.
//! - [`rollout`]: staged rollouts, their waves and their gate decisions.
//! - [`trust`]: signed level metadata. The publisher signs, with a key the server never holds,
//!   what a level is (stream, kernel, level, version, module and manifest digests, expiry);
//!   agents pin the fleet's public keys at enrollment and refuse metadata that is unsigned,
//!   tampered with, expired or older than what they have seen. A compromised server can
//!   withhold levels, never make a host load one the publisher did not sign.

pub mod api;
pub mod rollout;
pub mod trust;

/// The API's version prefix.
pub const API: &str = "/v1";

/// A kernel build: what a stream is for.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct KernelId {
    /// `uname -r`.
    pub release: String,
    /// The GNU build-id of the running image.
    pub build_id: String,
}

impl KernelId {
    /// The stream of this kernel build: `<release>@<first 12 hex digits of the build-id>`.
    pub fn stream(&self) -> String {
        let short: String = self.build_id.chars().take(12).collect();
        format!("{}@{short}", self.release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_names_one_kernel_build() {
        let k = KernelId {
            release: "6.1.0-56-amd64".into(),
            build_id: "eb4fbcd037e7253717950bf2b93bd5566f47c56f".into(),
        };
        assert_eq!(k.stream(), "6.1.0-56-amd64@eb4fbcd037e7");
    }
}
