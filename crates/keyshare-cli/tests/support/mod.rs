//! Shared by the CLI's integration tests.

use std::io::Write;

/// A test that needs something `scripts/test` provides (a service, a tool) calls this with
/// whether it is there. Missing, it is a failure when `CI=true` (CI must never skip silently)
/// and a loud skip elsewhere; the caller returns early on `false`.
#[allow(dead_code)] // each test file uses what it needs
pub fn required(available: bool, missing: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true, but {missing}");
    }
    // Straight to stderr: libtest captures the output of passing tests, and a skip must show.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED: {missing}; run the tests through scripts/test\n"
    );
    false
}

/// The private gnome-keyring `scripts/test` starts (it sets `KEYSHARE_TEST_SECRET_SERVICE`).
#[allow(dead_code)]
pub fn keyring_available() -> bool {
    required(
        std::env::var_os("KEYSHARE_TEST_SECRET_SERVICE").is_some(),
        "no test Secret Service (KEYSHARE_TEST_SECRET_SERVICE is not set)",
    )
}
