//! `keyshare git-credential` driven by the real `git`: `git credential fill/approve/reject`
//! round trips, and clone/fetch over HTTP with basic auth against a local server
//! (`tests/support/git_http_server.py`, `git http-backend` behind a password check, loopback
//! only). Everything runs in a throwaway HOME with the embedded vault as the shared store, and
//! `GIT_TERMINAL_PROMPT=0` so that a missing credential fails instead of prompting.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

mod support;

const KEYSHARE: &str = env!("CARGO_BIN_EXE_keyshare");

/// `git` and `python3` (for the HTTP server) are needed; `scripts/test` installs them.
fn tools_available() -> bool {
    let runs = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    support::required(
        runs("git") && runs("python3"),
        "git or python3 is missing (scripts/test installs them)",
    )
}

struct Env {
    dir: tempfile::TempDir,
    helper: String,
}

impl Env {
    fn new() -> Self {
        Self::with_helper(&format!("!'{KEYSHARE}' --store vault git-credential"))
    }

    fn with_helper(helper: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Env {
            dir,
            helper: helper.to_owned(),
        }
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("HOME", self.home())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("XDG_CONFIG_HOME", self.home().join("config"))
            .env("XDG_DATA_HOME", self.home().join("data"))
            .env("XDG_RUNTIME_DIR", self.home().join("run"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid");
    }

    /// `git` with keyshare as the only credential helper (the empty value first clears any
    /// helper configured elsewhere).
    fn git(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        self.env(&mut cmd);
        cmd.args(["-c", "credential.helper=", "-c"])
            .arg(format!("credential.helper={}", self.helper))
            .args(args);
        cmd
    }

    fn git_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run_with_stdin(self.git(args), stdin.as_bytes())
    }

    fn keyshare(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = Command::new(KEYSHARE);
        self.env(&mut cmd);
        cmd.args(["--store", "vault"]).args(args);
        run_with_stdin(cmd, stdin)
    }

    fn keys(&self) -> Vec<String> {
        let out = self.keyshare(&["list"], b"");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).lines().map(str::to_owned).collect()
    }
}

fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A helper may stop reading early (and git ignores that): a closed pipe is not an error.
    let written = child.stdin.take().unwrap().write_all(stdin);
    if let Err(err) = written {
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

#[test]
fn fill_approve_reject_round_trip() {
    if !tools_available() {
        return;
    }
    let env = Env::new();
    let request = "protocol=https\nhost=git.example.com\n";
    // Nothing stored: git falls through to the (disabled) prompt and fails.
    assert!(!env
        .git_stdin(&["credential", "fill"], request)
        .status
        .success());

    ok(env.git_stdin(
        &["credential", "approve"],
        "protocol=https\nhost=git.example.com\nusername=alice\npassword=s3cret\n\
         oauth_refresh_token=refresh-me\n",
    ));
    assert_eq!(env.keys(), ["git:https://alice@git.example.com"]);
    let filled = text(&ok(env.git_stdin(&["credential", "fill"], request)).stdout);
    assert_eq!(
        filled,
        "protocol=https\nhost=git.example.com\nusername=alice\npassword=s3cret\n\
         oauth_refresh_token=refresh-me\n"
    );

    // git rejects a password that no longer works: a different one leaves ours in place.
    ok(env.git_stdin(
        &["credential", "reject"],
        "protocol=https\nhost=git.example.com\nusername=alice\npassword=older\n",
    ));
    assert_eq!(env.keys().len(), 1);
    ok(env.git_stdin(
        &["credential", "reject"],
        "protocol=https\nhost=git.example.com\nusername=alice\npassword=s3cret\n",
    ));
    assert!(env.keys().is_empty());
    assert!(!env
        .git_stdin(&["credential", "fill"], request)
        .status
        .success());
}

/// Since git 2.46, `git credential approve` of a credential of another `authtype`
/// (`credential=`, no username or password) runs every helper's `store` with neither: git's own
/// helpers ignore it silently, and keyshare printed an error, which git passed on to the user.
#[test]
fn approving_a_credential_without_username_or_password_says_nothing() {
    if !tools_available() {
        return;
    }
    let env = Env::new();
    let out = ok(env.git_stdin(
        &["credential", "approve"],
        "capability[]=authtype\nprotocol=https\nhost=git.example.com\nauthtype=Bearer\n\
         credential=tok3n\n",
    ));
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        (String::new(), String::new())
    );
    assert!(env.keys().is_empty());
}

#[test]
fn expiry_and_use_http_path() {
    if !tools_available() {
        return;
    }
    let env = Env::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ok(env.git_stdin(
        &["credential", "approve"],
        &format!(
            "protocol=https\nhost=h.example\nusername=u\npassword=p\npassword_expiry_utc={}\n",
            now + 3600
        ),
    ));
    let filled = text(
        &ok(env.git_stdin(&["credential", "fill"], "protocol=https\nhost=h.example\n")).stdout,
    );
    assert!(
        filled.contains(&format!("password_expiry_utc={}\n", now + 3600)),
        "{filled}"
    );

    // An expired credential's password is never handed to git, even one written behind git's
    // back (its username and refresh token are: see `an_expired_access_token_s_refresh_token...`).
    let record = format!(
        r#"{{"v":1,"protocol":"https","host":"old.example","username":"u","password":"p","password_expiry_utc":{},"stored_at":1}}"#,
        now - 10
    );
    ok(env.keyshare(&["set", "git:https://u@old.example"], record.as_bytes()));
    assert!(!env
        .git_stdin(
            &["credential", "fill"],
            "protocol=https\nhost=old.example\n"
        )
        .status
        .success());
    // And `store` refuses one that has already expired, saying so, changing nothing.
    let refused = env.keyshare(
        &["git-credential", "store"],
        format!(
            "protocol=https\nhost=old.example\nusername=v\npassword=p\npassword_expiry_utc={}\n",
            now - 10
        )
        .as_bytes(),
    );
    assert!(refused.status.success());
    assert!(text(&refused.stderr).contains("not storing an already expired credential"));
    assert!(!env.keys().contains(&"git:https://v@old.example".to_owned()));

    // With useHttpPath, git sends the path: the credential is per repository.
    let with_path = |args: &[&str], stdin: &str| {
        let mut full = vec!["-c", "credential.useHttpPath=true"];
        full.extend_from_slice(args);
        env.git_stdin(&full, stdin)
    };
    ok(with_path(
        &["credential", "approve"],
        "url=https://p.example/org/one.git\nusername=u1\npassword=one\n",
    ));
    assert!(env
        .keys()
        .contains(&"git:https://u1@p.example/org/one.git".to_owned()));
    let filled = text(
        &ok(with_path(
            &["credential", "fill"],
            "url=https://p.example/org/one.git\n",
        ))
        .stdout,
    );
    assert!(filled.contains("password=one\n"), "{filled}");
    assert!(!with_path(
        &["credential", "fill"],
        "url=https://p.example/org/two.git\n"
    )
    .status
    .success());
    // Without useHttpPath, git sends no path, and the per-repository entry is not offered.
    assert!(!env
        .git_stdin(
            &["credential", "fill"],
            "url=https://p.example/org/one.git\n"
        )
        .status
        .success());
}

/// git's OAuth flow (git 2.41): a storage helper, then an OAuth helper such as
/// git-credential-oauth. Once the access token has expired, git drops the storage helper's
/// password but passes its `oauth_refresh_token` to the OAuth helper, which refreshes without a
/// browser sign-in. QA: keyshare returned nothing once expired, so the OAuth helper got no
/// refresh token and opened a browser every two hours (GitLab's token lifetime).
#[test]
fn an_expired_access_token_s_refresh_token_reaches_the_next_helper() {
    if !tools_available() {
        return;
    }
    let env = Env::new();
    // Stands in for git-credential-oauth: notes what git forwarded, and answers with a fresh
    // token only when it got a refresh token (the real one would open a browser otherwise).
    let oauth = env.home().join("fake-oauth");
    let forwarded = env.home().join("forwarded");
    std::fs::write(
        &oauth,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || {{ cat >/dev/null; exit 0; }}\n\
             input=$(cat); printf '%s\\n' \"$input\" > '{}'\n\
             case \"$input\" in *oauth_refresh_token=RT-1*) \
             printf 'username=oauth2\\npassword=AT-new\\n';; esac\n",
            forwarded.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&oauth, std::fs::Permissions::from_mode(0o700)).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ok(env.git_stdin(
        &["credential", "approve"],
        &format!(
            "protocol=https\nhost=gitlab.example\nusername=oauth2\npassword=AT-old\n\
             password_expiry_utc={}\noauth_refresh_token=RT-1\n",
            now + 3600
        ),
    ));
    // The access token expires: written behind git's back rather than waited for.
    let record = format!(
        r#"{{"v":1,"protocol":"https","host":"gitlab.example","username":"oauth2","password":"AT-old","password_expiry_utc":{},"oauth_refresh_token":"RT-1","stored_at":1}}"#,
        now - 10
    );
    ok(env.keyshare(
        &["set", "git:https://oauth2@gitlab.example"],
        record.as_bytes(),
    ));

    let mut fill = env.git(&[
        "-c",
        &format!("credential.helper=!'{}'", oauth.display()),
        "credential",
        "fill",
    ]);
    fill.env("GIT_TERMINAL_PROMPT", "0");
    let filled = text(
        &ok(run_with_stdin(
            fill,
            b"protocol=https\nhost=gitlab.example\n\n",
        ))
        .stdout,
    );
    let forwarded = std::fs::read_to_string(&forwarded).unwrap();
    assert!(
        forwarded.contains("username=oauth2\n") && forwarded.contains("oauth_refresh_token=RT-1\n"),
        "git forwarded to the OAuth helper: {forwarded}"
    );
    assert!(!forwarded.contains("AT-old"), "{forwarded}");
    assert!(filled.contains("password=AT-new\n"), "{filled}");
}

#[test]
fn unknown_operations_are_ignored_as_git_asks() {
    if !tools_available() {
        return;
    }
    let env = Env::new();
    let out = ok(env.keyshare(
        &["git-credential", "frobnicate"],
        b"protocol=https\nhost=h\n",
    ));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let out = ok(env.keyshare(&["git-credential", "get"], b"protocol=https\nhost=h\n"));
    assert!(out.stdout.is_empty(), "nothing found: no output");
}

/// The test HTTP server, stopped when dropped.
struct Server {
    child: Child,
    port: u16,
    root: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(env: &Env, user: &str, password: &str) -> Server {
        let root = env.home().join("srv");
        std::fs::create_dir_all(&root).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/git_http_server.py");
        let mut cmd = Command::new("python3");
        env.env(&mut cmd);
        let mut child = cmd
            .arg(script)
            .env("GIT_PROJECT_ROOT", &root)
            .env("TEST_GIT_USER", user)
            .env("TEST_GIT_PASSWORD", password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        // Readiness: the server prints its port once it is listening.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the test server did not start: {line:?}"));
        Server { child, port, root }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/repo.git", self.port)
    }

    /// Creates (or advances) the served repository with one commit whose message is `message`.
    fn commit(&self, env: &Env, message: &str) {
        let work = env.home().join("work");
        if !work.exists() {
            ok(run(
                env,
                &["init", "-q", "-b", "main", work.to_str().unwrap()],
                None,
            ));
        }
        std::fs::write(work.join("file"), message).unwrap();
        ok(run(env, &["add", "file"], Some(&work)));
        ok(run(env, &["commit", "-q", "-m", message], Some(&work)));
        let bare = self.root.join("repo.git");
        if !bare.exists() {
            ok(run(
                env,
                &[
                    "clone",
                    "-q",
                    "--bare",
                    work.to_str().unwrap(),
                    bare.to_str().unwrap(),
                ],
                None,
            ));
        } else {
            ok(run(
                env,
                &["push", "-q", bare.to_str().unwrap(), "main"],
                Some(&work),
            ));
        }
    }
}

/// Plain git, without any credential helper, for setting up repositories.
fn run(env: &Env, args: &[&str], dir: Option<&Path>) -> Output {
    let mut cmd = Command::new("git");
    env.env(&mut cmd);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.args(args).output().unwrap()
}

fn store(env: &Env, server: &Server, password: &str) {
    ok(env.keyshare(
        &["git-credential", "store"],
        format!(
            "protocol=http\nhost=127.0.0.1:{}\nusername=alice\npassword={password}\n",
            server.port
        )
        .as_bytes(),
    ));
}

#[test]
fn clone_and_fetch_over_http_with_the_stored_password() {
    if !tools_available() {
        return;
    }
    let env = Env::new();
    let server = Server::start(&env, "alice", "correct horse");
    server.commit(&env, "first");
    let clone = env.home().join("clone");

    // No credential yet: the server refuses, git cannot prompt, the clone fails.
    let refused = env
        .git(&["clone", "-q", &server.url(), clone.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(!clone.exists());

    store(&env, &server, "correct horse");
    ok(env
        .git(&["clone", "-q", &server.url(), clone.to_str().unwrap()])
        .output()
        .unwrap());
    assert_eq!(
        std::fs::read_to_string(clone.join("file")).unwrap(),
        "first"
    );

    server.commit(&env, "second");
    let mut fetch = env.git(&["fetch", "-q", "origin"]);
    ok(fetch.current_dir(&clone).output().unwrap());
    let log = run(
        &env,
        &["log", "-1", "--format=%s", "origin/main"],
        Some(&clone),
    );
    assert_eq!(text(&log.stdout).trim(), "second");
    // The credential worked, so git approved it again (stored, still one entry).
    assert_eq!(
        env.keys(),
        [format!("git:http://alice@127.0.0.1:{}", server.port)]
    );
}

#[test]
fn a_wrong_stored_password_fails_the_clone_and_git_erases_it() {
    if !tools_available() {
        return;
    }
    let env = Env::new();
    let server = Server::start(&env, "alice", "correct horse");
    server.commit(&env, "first");
    store(&env, &server, "battery staple");
    let clone = env.home().join("clone");
    let out = env
        .git(&["clone", "-q", &server.url(), clone.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "clone must fail with the wrong password"
    );
    assert!(!clone.exists());
    // git rejected the password it was given; keyshare erased exactly that one.
    assert!(env.keys().is_empty(), "{:?}", env.keys());
}

#[test]
fn the_multicall_name_works_as_credential_helper_keyshare() {
    // `credential.helper = keyshare` makes git run `git-credential-keyshare` from PATH.
    multicall_helper_setup("keyshare", "m.example");
}

#[test]
fn the_issue_setup_line_keyshare_git_credential_works_with_the_link() {
    // `credential.helper = "keyshare git-credential"` makes git run
    // `git-credential-keyshare git-credential store`.
    multicall_helper_setup("keyshare git-credential", "m.example");
}

/// QA: the README's form, with a global flag before the repeated subcommand name, made git
/// run `git-credential-keyshare --flavor insiders git-credential store`, which was refused
/// (git still exited 0, and nothing was stored).
#[test]
fn the_readme_s_setup_line_with_global_flags_works_with_the_link() {
    if !tools_available() {
        return;
    }
    let env = multicall_helper_setup("keyshare --flavor insiders git-credential", "f.example");
    let insiders = env.keyshare(&["--flavor", "insiders", "list"], b"");
    assert_eq!(text(&ok(insiders).stdout), "git:https://u@f.example\n");
    assert!(env.keys().is_empty(), "stored in the stable flavour");
}

fn multicall_helper_setup(helper: &str, host: &str) -> Env {
    let env = Env::with_helper(helper);
    if !tools_available() {
        return env;
    }
    let bin = env.home().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(KEYSHARE, bin.join("git-credential-keyshare")).unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    // The helper runs without --store: pick the vault through the config file.
    let config = env.home().join("config/keyshare/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "store = \"vault\"\n").unwrap();
    let approve = env
        .git(&["credential", "approve"])
        .env("PATH", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut approve = approve;
    approve
        .stdin
        .take()
        .unwrap()
        .write_all(format!("protocol=https\nhost={host}\nusername=u\npassword=p\n").as_bytes())
        .unwrap();
    let approved = ok(approve.wait_with_output().unwrap());
    // git exits 0 even when its helper fails: only its stderr tells (the first call's notice
    // of a vault created is no error).
    let stderr = text(&approved.stderr);
    assert!(!stderr.contains("error"), "{stderr}");
    let flavour = helper
        .split_once("--flavor ")
        .map(|(_, rest)| &rest[..rest.find(' ').unwrap_or(rest.len())]);
    let listed = match flavour {
        Some(flavour) => env.keyshare(&["--flavor", flavour, "list"], b""),
        None => env.keyshare(&["list"], b""),
    };
    assert_eq!(text(&ok(listed).stdout), format!("git:https://u@{host}\n"));
    env
}

/// QA: `erase` with the old password, racing a `store` of a new one in another process,
/// deleted the new one (16% of races through the broker, 49% with `--direct`). Real
/// processes, as git and another app run them; each round its own username, stored more than
/// a second before (`git::UNSEEN_CHANGE_MARGIN`) so that the erase has no reason to wait.
#[test]
fn an_erase_racing_a_store_of_a_new_password_never_removes_it() {
    if !tools_available() {
        return;
    }
    const ROUNDS: usize = 30;
    for flags in [&[][..], &["--direct"]] {
        let env = Env::new();
        let helper = |op: &str, user: usize, password: Option<&str>| {
            let mut cmd = Command::new(KEYSHARE);
            env.env(&mut cmd);
            cmd.args(["--store", "vault"])
                .args(flags)
                .args(["git-credential", op])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            let mut input = format!("protocol=https\nhost=r.example\nusername=u{user}\n");
            if let Some(password) = password {
                input.push_str(&format!("password={password}\n"));
            }
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child
        };
        for user in 0..ROUNDS {
            ok(helper("store", user, Some("old"))
                .wait_with_output()
                .unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(1200));
        let mut lost = Vec::new();
        for user in 0..ROUNDS {
            let erase = helper("erase", user, Some("old"));
            let store = helper("store", user, Some("new"));
            ok(erase.wait_with_output().unwrap());
            ok(store.wait_with_output().unwrap());
            let got = text(&ok(helper("get", user, None).wait_with_output().unwrap()).stdout);
            if !got.contains("password=new\n") {
                lost.push(user);
            }
        }
        let _ = env.keyshare(&["stop"], b"");
        assert!(
            lost.is_empty(),
            "{flags:?}: the new password was erased in rounds {lost:?} of {ROUNDS}"
        );
    }
}
