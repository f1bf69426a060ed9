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

/// A throwaway home (mode 0700) to run `keyshare` in, with nothing of the real user's: the
/// environment is cleared, then `HOME` and the XDG directories point into it (`PATH` is kept,
/// for the tools the binary may run).
#[allow(dead_code)]
pub struct Home {
    dir: tempfile::TempDir,
    store: Option<&'static str>,
}

#[allow(dead_code)]
impl Home {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Home { dir, store: None }
    }

    /// Creates `config`, `data` and `run` under the home first, as a desktop session has them.
    pub fn with_xdg_dirs(self) -> Self {
        for sub in ["config", "data", "run"] {
            std::fs::create_dir_all(self.path().join(sub)).unwrap();
        }
        self
    }

    /// Passes `--store STORE` before every command's own arguments.
    pub fn with_store(mut self, store: &'static str) -> Self {
        self.store = Some(store);
        self
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `keyshare ARGS` in this home, not yet run.
    pub fn command(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("keyshare").unwrap();
        cmd.env_clear()
            .env("HOME", self.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("XDG_DATA_HOME", self.path().join("data"))
            .env("XDG_RUNTIME_DIR", self.path().join("run"));
        if let Some(store) = self.store {
            cmd.args(["--store", store]);
        }
        cmd.args(args);
        cmd
    }

    /// Runs `keyshare ARGS` with `stdin` as its standard input.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> std::process::Output {
        self.command(args)
            .write_stdin(stdin.to_vec())
            .output()
            .unwrap()
    }

    /// Runs it and asserts success, showing stderr otherwise.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> std::process::Output {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The exit code of `keyshare ARGS` with empty standard input.
    pub fn code(&self, args: &[&str]) -> i32 {
        self.run(args, b"").status.code().unwrap()
    }

    /// Runs a command that must fail and print nothing on stdout: `exit CODE` and its stderr
    /// (this home's path replaced by `[HOME]`), for a snapshot.
    pub fn failure(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, stdin);
        assert!(!out.status.success(), "expected failure for {args:?}");
        assert!(
            out.stdout.is_empty(),
            "no stdout on failure: {:?}",
            out.stdout
        );
        let stderr = self.redact(&String::from_utf8_lossy(&out.stderr));
        format!("exit {}\n{stderr}", out.status.code().unwrap_or(-1))
    }

    /// keyshare's data directory (vaults) in this home.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.path().join("data/keyshare")
    }

    /// Writes the config file; its path.
    pub fn config(&self, text: &str) -> std::path::PathBuf {
        let path = self.path().join("config/keyshare/config.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `text` with this home's path replaced by `[HOME]`, for a snapshot.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.path().display().to_string(), "[HOME]")
    }
}

/// Asserts an `insta` snapshot named `$name` (no module prefix, so the snapshot files keep
/// their names).
#[macro_export]
macro_rules! snapshot {
    ($name:literal, $value:expr) => {
        insta::with_settings!({ prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!($name, $value);
        })
    };
}
