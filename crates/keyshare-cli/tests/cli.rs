//! The `keyshare` binary end to end, in a throwaway home. Every error message is a snapshot
//! (`tests/snapshots/`), with the temporary directory replaced by `[HOME]`.

use assert_cmd::Command;

mod support;

use support::Home;

fn home() -> Home {
    Home::new().with_xdg_dirs()
}

#[test]
fn usage_errors() {
    let env = home();
    snapshot!(
        "usage_empty_key",
        env.failure(&["--store", "memory", "get", ""], b"")
    );
    let long = "k".repeat(4097);
    snapshot!(
        "usage_long_key",
        env.failure(&["--store", "memory", "get", &long], b"")
    );
    snapshot!("usage_missing_key", env.failure(&["set"], b""));
    // A value can never be passed on the command line.
    let refused = env.failure(&["set", "k", "s3cret"], b"");
    assert!(
        !refused.contains("s3cret"),
        "the value is never echoed: {refused}"
    );
    snapshot!("usage_value_in_argv", refused);
    snapshot!(
        "usage_bad_app",
        env.failure(&["--app", "code insiders", "list"], b"")
    );
    snapshot!(
        "usage_bad_flavor",
        env.failure(&["--flavor", "../x", "list"], b"")
    );
    snapshot!(
        "usage_bad_store",
        env.failure(&["--store", "cloud", "list"], b"")
    );
    snapshot!("usage_unknown_command", env.failure(&["bogus"], b""));
}

/// QA: clap's usage errors began `error: ...`, not `keyshare: error: ...` as every other
/// error does (and the README says); help and version are not errors and stay as clap prints
/// them.
#[test]
fn usage_errors_carry_the_program_name_and_help_does_not() {
    let env = home();
    for args in [
        &["bogus"][..],
        &["get"],
        &["--store", "cloud", "list"],
        &["list", "--frobnicate"],
    ] {
        let out = env.run(args, b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("keyshare: error: "),
            "{args:?}: {stderr}"
        );
    }
    let out = env
        .command(&["list"])
        .env("KEYSHARE_NO_AUTOSTART", "maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("keyshare: error: invalid value"));
    for args in [&["--help"][..], &["get", "--help"], &["-h"], &["--version"]] {
        let out = env.run(args, b"");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("keyshare: "), "{args:?}: {stdout}");
    }
    // Without a command, clap shows the help, as a usage error (exit 2): it is no `error:`
    // line, so it gets no prefix either.
    let out = env.run(&[], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("Share secrets"));
}

#[test]
fn too_large_value_names_the_limit() {
    let env = home();
    let big = vec![b'x'; 256 * 1024 + 1];
    snapshot!(
        "too_large",
        env.failure(&["--store", "memory", "set", "k"], &big)
    );
}

#[test]
fn from_file_that_does_not_exist() {
    let env = home();
    snapshot!(
        "from_file_missing",
        env.failure(
            &[
                "--store",
                "memory",
                "set",
                "k",
                "--from-file",
                "/nonexistent/v"
            ],
            b""
        )
    );
}

#[test]
fn not_found_is_exit_1() {
    let env = home();
    snapshot!(
        "get_not_found",
        env.failure(&["--store", "memory", "get", "nothing"], b"")
    );
    snapshot!(
        "delete_not_found",
        env.failure(&["--store", "memory", "delete", "nothing"], b"")
    );
}

#[test]
fn config_errors_are_exit_5() {
    let env = home();
    env.config("store = [");
    snapshot!("config_syntax", env.failure(&["list"], b""));
    env.config("stor = \"vault\"\n");
    snapshot!("config_unknown_field", env.failure(&["list"], b""));
    env.config("[flavors.\"bad name\"]\n");
    snapshot!("config_bad_flavor", env.failure(&["list"], b""));
    env.config("default_flavor = \"Insiders!\"\n");
    snapshot!("config_bad_default_flavor", env.failure(&["list"], b""));
    env.config("timeout_ms = 2147483648\n");
    snapshot!("config_timeout_too_long", env.failure(&["list"], b""));
    snapshot!(
        "config_explicit_missing",
        env.failure(&["--config", "/nonexistent/keyshare.toml", "list"], b"")
    );
}

/// A config.toml that is a FIFO is refused at once, naming the file (found by QA: opening it
/// waited for a writer, so every command hung); so is a directory.
#[test]
fn a_config_that_is_not_a_regular_file_is_exit_5() {
    let env = home();
    let path = env.config("");
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let out = env
        .command(&["--store", "memory", "get", "a"])
        .timeout(std::time::Duration::from_secs(10))
        .output()
        .unwrap();
    let stderr = env.redact(&String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    snapshot!(
        "config_fifo",
        format!("exit {}\n{stderr}", out.status.code().unwrap_or(-1))
    );

    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    snapshot!(
        "config_directory",
        env.failure(&["--store", "memory", "get", "a"], b"")
    );
}

#[test]
fn migrate_without_a_legacy_store() {
    let env = home();
    snapshot!(
        "migrate_no_legacy",
        env.failure(&["--store", "memory", "migrate"], b"")
    );
}

/// Refused before anything is opened: a migrate with nothing to migrate created the vault (and
/// its key file) first (found by QA).
#[test]
fn migrate_without_a_legacy_store_creates_nothing() {
    let env = home();
    let out = env.run(&["--store", "vault", "--direct", "migrate"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nothing to migrate"), "{stderr}");
    assert!(!stderr.contains("created vault"), "{stderr}");
    assert!(
        !env.path().join("data/keyshare").exists(),
        "nothing is created under the data directory"
    );
}

#[test]
fn no_home_is_a_clear_error() {
    let mut cmd = Command::cargo_bin("keyshare").unwrap();
    let out = cmd.env_clear().args(["list"]).output().unwrap();
    let text = format!(
        "exit {}\n{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr)
    );
    snapshot!("no_home", text);
}

/// build.rs links GCC's unwinder in and main.rs defines `pow`, so the dynamic loader has two
/// libraries less to load at every start (see there).
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn the_binary_loads_neither_libgcc_s_nor_libm() {
    // The loader lists the libraries it would load and exits without running the program.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyshare"))
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("libc.so"),
        "{listed}"
    );
    assert!(!listed.contains("libgcc_s"), "{listed}");
    // main.rs defines `pow`, the one function it needed from the C math library.
    assert!(!listed.contains("libm.so"), "{listed}");
}

/// main.rs replaces Rust's start-up on Unix and must keep its one visible effect: SIGPIPE is
/// ignored, so writing to a reader that went away is a reported error, not a silent death.
#[test]
#[cfg(unix)]
fn a_closed_standard_output_is_an_error_not_a_signal() {
    let env = home();
    // A legacy store, for `repair` and `migrate` to have something to report on.
    env.config("[apps.keyshare]\nlegacy = { kind = \"vault\" }\n");
    let set = env.run(&["--store", "vault", "--direct", "set", "k"], b"value");
    assert!(set.status.success(), "{set:?}");
    // Every command that prints, `get` and the reports (which panicked, exit 101: found by
    // QA with `keyshare doctor | head -1`).
    for command in [
        &["get", "k"][..],
        &["list"],
        &["doctor"],
        &["repair"],
        &["migrate"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyshare"))
            .env_clear()
            .env("HOME", env.path())
            .env("XDG_CONFIG_HOME", env.path().join("config"))
            .env("XDG_DATA_HOME", env.path().join("data"))
            .args(["--store", "vault", "--direct"])
            .args(command)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            None,
            "{command:?} killed by a signal: {out:?}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(7),
            "{command:?}: the generic failure code: {stderr}"
        );
        assert!(
            stderr.contains("cannot write to standard output") && !stderr.contains("panicked"),
            "{command:?}: {stderr}"
        );
    }
}

/// The soft and hard core size limits of `pid`, from `/proc/<pid>/limits`, once `keyshare`
/// has set them (or after 5 s, whatever they are then).
#[cfg(target_os = "linux")]
fn core_limits(pid: u32) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap()
            .split_whitespace()
            .skip(4)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        if line == "0 0" || std::time::Instant::now() > deadline {
            return line;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A command holds secrets in memory (a value read from stdin, a vault's key): it runs with
/// core dumps off, whatever limit it inherited, so a crash or a SIGQUIT leaves no core file
/// with them. Found in review: a `git-credential store` killed with SIGQUIT dumped the password.
#[cfg(target_os = "linux")]
#[test]
fn commands_and_the_broker_run_with_core_dumps_off() {
    let env = home();
    for args in [
        &["--store", "memory", "git-credential", "store"][..],
        &["--store", "vault", "serve"],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyshare"))
            .env_clear()
            .env("HOME", env.path())
            .env("XDG_CONFIG_HOME", env.path().join("config"))
            .env("XDG_DATA_HOME", env.path().join("data"))
            .env("XDG_RUNTIME_DIR", env.path().join("run"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let limits = core_limits(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(limits, "0 0", "{args:?}");
    }
}

/// An empty input (a broken pipe, an unset variable) does not replace a secret with nothing;
/// `--allow-empty` stores an empty value on purpose. Found in review: it exited 0 and the
/// token was gone.
#[test]
fn an_empty_value_is_refused_unless_allowed() {
    let env = home();
    env.ok(
        &["--store", "vault", "--direct", "set", "github.auth"],
        b"gho_1",
    );
    snapshot!(
        "set_empty",
        env.failure(&["--store", "vault", "--direct", "set", "github.auth"], b"")
    );
    let got = env.ok(&["--store", "vault", "--direct", "get", "github.auth"], b"");
    assert_eq!(got.stdout, b"gho_1", "the stored value is untouched");
    let empty = env.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let out = env.run(
        &[
            "--store",
            "vault",
            "--direct",
            "set",
            "github.auth",
            "--from-file",
            empty.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
    env.ok(
        &[
            "--store",
            "vault",
            "--direct",
            "set",
            "--allow-empty",
            "github.auth",
        ],
        b"",
    );
    let got = env.ok(&["--store", "vault", "--direct", "get", "github.auth"], b"");
    assert!(got.stdout.is_empty());
}

/// The size in the error is the input's, not the limit plus one.
#[test]
fn too_large_says_the_true_size() {
    let env = home();
    let out = env.run(&["--store", "memory", "set", "k"], &vec![b'x'; 1_000_000]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("value is 1000000 bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Endless input ends in an error once far past the limit, instead of a command that reads
/// forever (found by QA: `set --from-file /dev/zero` never ended).
#[test]
fn endless_input_is_refused_instead_of_read_forever() {
    let env = home();
    for (args, zero_stdin) in [
        (&["set", "k", "--from-file", "/dev/zero"][..], false),
        (&["set", "k"], true),
    ] {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("keyshare"));
        cmd.env_clear()
            .env("HOME", env.path())
            .env("XDG_CONFIG_HOME", env.path().join("config"))
            .env("XDG_DATA_HOME", env.path().join("data"))
            .env("XDG_RUNTIME_DIR", env.path().join("run"))
            .args(["--store", "memory"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if zero_stdin {
            cmd.stdin(std::fs::File::open("/dev/zero").unwrap());
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{args:?} still reads after 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(
                "the input goes on past 67371009 bytes, where reading stopped; the limit is \
                 262144 bytes"
            ),
            "{stderr}"
        );
    }
}

/// `list` prints a key holding a control character quoted and escaped: a newline must not
/// make it look like two keys, nor an escape sequence reach the terminal; `--json` keeps every
/// key exact (found by QA).
#[test]
fn list_escapes_keys_with_control_characters() {
    let env = home();
    for key in ["a\nb", "\u{1b}[31mred", "plain.key"] {
        env.ok(&["--store", "vault", "--direct", "set", key], b"v");
    }
    let out = env.ok(&["--store", "vault", "--direct", "list"], b"");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "\"\\u{1b}[31mred\"\n\"a\\nb\"\nplain.key\n"
    );
    let out = env.ok(&["--store", "vault", "--direct", "--json", "list"], b"");
    let keys: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys, ["\u{1b}[31mred", "a\nb", "plain.key"]);
}

/// A vault's key file that is not one (garbage written over it) is reported and left
/// untouched, with the exit code of a file at the vault's path that is not a vault (7), not a
/// usage error (it was 2; found by QA).
#[test]
fn a_key_file_that_is_not_one_is_exit_7_and_left_untouched() {
    let env = home();
    env.ok(&["--store", "vault", "--direct", "set", "k"], b"v");
    let key_file = std::fs::read_dir(env.path().join("data/keyshare/stable"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|e| e == "key"))
        .expect("a new vault with no keyring gets a key file");
    std::fs::write(&key_file, "garbage\n").unwrap();
    let out = env.run(&["--store", "vault", "--direct", "get", "k"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("is not a keyshare key file"), "{stderr}");
    assert_eq!(std::fs::read(&key_file).unwrap(), b"garbage\n");
}

/// An empty `KEYSHARE_NO_AUTOSTART` counts as unset (a broker is started), and a bad value is
/// a usage error that names the variable (found by QA: both failed every command without
/// naming it).
#[test]
fn no_autostart_from_the_environment_empty_is_unset_and_garbage_is_named() {
    let env = home();
    let out = env
        .command(&["--store", "vault", "set", "k"])
        .env("KEYSHARE_NO_AUTOSTART", "")
        .write_stdin(b"v".to_vec())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lock = env.path().join("run/keyshare/stable.lock");
    let pid = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok())
        .expect("an empty value starts a broker, as an unset one does");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    );
    let out = env
        .command(&["--store", "memory", "list"])
        .env("KEYSHARE_NO_AUTOSTART", "garbage")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("KEYSHARE_NO_AUTOSTART takes 1 or 0"),
        "{stderr}"
    );
}

/// `KEYSHARE_NO_AUTOSTART` takes the usual ways of saying yes and no (it took only `true`
/// and `false`, and `1` failed every command, the docker helper's included).
#[test]
fn no_autostart_from_the_environment_takes_1_and_0() {
    let env = home();
    for (value, broker_started) in [("1", false), ("yes", false), ("0", true)] {
        let out = env
            .command(&["--store", "vault", "set", "k"])
            .env("KEYSHARE_NO_AUTOSTART", value)
            .write_stdin(b"v".to_vec())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lock = env.path().join("run/keyshare/stable.lock");
        let running = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok());
        assert_eq!(running.is_some(), broker_started, "{value}");
        if let Some(pid) = running {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::TERM,
            );
        }
    }
}

/// A config file another user could have written is refused (exit 6, saying what to fix), as
/// ssh refuses its config: it chooses the store, `require_os_keyring` and the broker's access
/// policy. Found by QA: a file anyone could write, in a directory anyone could write, or
/// owned by another user, was used without a word.
#[test]
fn a_config_file_others_could_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = home();
    let config = env.config("store = \"vault\"\n");
    let dir = config.parent().unwrap().to_owned();
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let refused = |expected: &str| {
        let out = env.run(&["--direct", "get", "k"], b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{stderr}");
        assert!(
            stderr.contains("refusing config file") && stderr.contains(expected),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    };
    mode(&config, 0o666);
    refused("chmod go-w");
    mode(&config, 0o602);
    refused("group or others can write it (mode 602)");
    mode(&config, 0o644);
    mode(&dir, 0o777);
    refused("can write its directory");
    // A sticky directory lets others add files, not replace this one.
    mode(&dir, 0o1777);
    assert_eq!(env.code(&["--direct", "get", "k"]), 1);
    mode(&dir, 0o755);
    assert_eq!(env.code(&["--direct", "get", "k"]), 1);
    // A symlinked config (a dotfile manager's) is judged by its target's directory too.
    let shared = env.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::rename(&config, shared.join("config.toml")).unwrap();
    std::os::unix::fs::symlink(shared.join("config.toml"), &config).unwrap();
    assert_eq!(env.code(&["--direct", "get", "k"]), 1);
    mode(&shared, 0o777);
    refused("can write its directory");
    std::fs::remove_file(&config).unwrap();
    std::fs::rename(shared.join("config.toml"), &config).unwrap();
    if rustix::process::geteuid().is_root() {
        // Group write for root's own private group (umask 002 on systems with user private
        // groups: found in review, every config made there was refused) is fine; for a group
        // others may be in, it is not.
        let root_group = std::fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .any(|line| line == "root:x:0:");
        std::os::unix::fs::chown(&config, None, Some(0)).unwrap();
        std::os::unix::fs::chown(&dir, None, Some(0)).unwrap();
        mode(&config, 0o664);
        mode(&dir, 0o775);
        if root_group {
            assert_eq!(env.code(&["--direct", "get", "k"]), 1);
        } else {
            eprintln!("NOTE: root's group has members here: the private-group case is not checked");
        }
        std::os::unix::fs::chown(&config, None, Some(65534)).unwrap();
        refused("group or others can write it (mode 664)");
        mode(&config, 0o644);
        std::os::unix::fs::chown(&dir, None, Some(65534)).unwrap();
        refused("can write its directory");
        mode(&dir, 0o755);
        std::os::unix::fs::chown(&config, Some(65534), None).unwrap();
        refused("belongs to uid 65534");
    } else {
        eprintln!("NOTE: not root: the ownership and group cases are not checked here");
    }
}

/// With the shared vault's key file away and a legacy store, an error from the stand-in for
/// the shared store says "unavailable (locked)" once, not twice (found in review).
#[test]
fn an_outage_error_names_the_store_once() {
    let env = home();
    env.config("[apps.code]\nlegacy = { kind = \"vault\" }\n");
    env.ok(
        &["--store", "vault", "--direct", "--app", "code", "set", "a"],
        b"x",
    );
    let key = env.path().join("data/keyshare/stable/vault.key");
    std::fs::rename(&key, env.path().join("vault.key.aside")).unwrap();
    let out = env.run(
        &["--store", "vault", "--direct", "--app", "code", "list"],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|line| line.starts_with("keyshare: error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert_eq!(
        error.matches("is unavailable (locked)").count(),
        1,
        "{error}"
    );
}

/// QA s20 #14: `KEYSHARE_LOG=debug keyshare --direct get k` logged nothing at all. It says which
/// shared store it opened and why, how (directly, and why not through a broker), and which
/// legacy store; never a value.
#[test]
fn debug_logs_say_which_stores_a_command_opens() {
    let env = home();
    env.config("[apps.code]\nlegacy = { kind = \"vault\" }\n");
    let logged = |args: &[&str], stdin: &[u8]| {
        let out = env
            .command(args)
            .env("KEYSHARE_LOG", "debug")
            .write_stdin(stdin.to_vec())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let log = logged(
        &["--store", "vault", "--direct", "--app", "code", "set", "k"],
        b"s3cret-value",
    );
    let log = log
        + &logged(
            &["--store", "vault", "--direct", "--app", "code", "get", "k"],
            b"",
        );
    for line in [
        "not through a broker: opening the shared store in this process why=\"--direct\"",
        "opened the shared store in this process store=\"vault\"",
        "why=chosen explicitly",
        "opened the app's legacy store app=code store=\"vault\"",
    ] {
        assert!(log.contains(line), "{line:?} not in {log}");
    }
    assert!(!log.contains("s3cret"), "a value in the log: {log}");
    let log = logged(&["--store", "memory", "list"], b"");
    assert!(
        log.contains("why=\"the memory store has no broker\"")
            && log.contains("the app has no legacy store app=keyshare"),
        "{log}"
    );
}
