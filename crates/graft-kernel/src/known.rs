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
