//! The kernels graft knows by name. This is the one place kernel versions are written down:
//! everything else (the CLI default, the tests, the demo) refers to these constants.

/// The target used when `--kernel` is omitted.
pub const DEFAULT_TARGET: &str = "debian:6.1.0-56-amd64";

/// Facts about [`DEFAULT_TARGET`] that tests pin, so a change in Debian's archive (a newer ABI,
/// a rebuilt package) shows up as a clear test failure rather than a silent drift.
pub mod default_target {
    /// `uname -r`.
    pub const RELEASE: &str = "6.1.0-56-amd64";
    /// The Debian source version the image was built from.
    pub const SOURCE_VERSION: &str = "6.1.192-2";
    /// The compiler the kernel's config names (`CONFIG_CC_VERSION_TEXT`).
    pub const COMPILER: &str = "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0";
}

/// Debian's archive as tests rely on it (checked 2026-12-02): older and newer targets beside
/// the default, and Debian's own updates between them. When Debian moves on, these change here
/// and nowhere else.
pub mod archive {
    /// Targets with their Debian source versions, oldest first.
    pub const TARGETS: &[(&str, &str)] = &[
        ("debian:6.1.0-54-amd64", "6.1.190-1"),
        ("debian:6.1.0-55-amd64", "6.1.192-1"),
        ("debian:6.1.0-56-amd64", "6.1.192-2"),
        ("debian:6.1.0-57-amd64", "6.1.192-3"),
    ];
    /// A target other than the default, fetched into an empty cache by the fresh-machine test;
    /// its kbuild is the one whose version broke an exact-version pin.
    pub const FRESH: &str = "debian:6.1.0-57-amd64";
    /// A target two Debian updates behind [`NFSD_UPDATE`].
    pub const TWO_UPDATES_BEHIND: &str = "debian:6.1.0-55-amd64";
    /// The Debian source version of the nfsd security update (CVE-2026-99362).
    pub const NFSD_UPDATE: &str = "6.1.192-3";
    /// Its CVE.
    pub const NFSD_CVE: &str = "CVE-2026-99362";
    /// The function it fixes, as `module:function`.
    pub const NFSD_FUNCTION: &str = "nfsd:nfsd4_sequence";
    /// The oldest target, whose kbuild the archive no longer has at its upstream version.
    pub const OLDEST: &str = "debian:6.1.0-54-amd64";
    /// The first Debian version of the next upstream stable release after [`OLDEST`]'s.
    pub const STABLE_UPDATE: &str = "6.1.192-1";
}
