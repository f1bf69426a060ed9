use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use keyshare::Store as _;
use serde_json::{json, Value};

use crate::broker;
use crate::config::StoreChoice;
use crate::stores::{self, Context};

/// `keyshare doctor`: which stores this app and flavour use and why, how they are protected,
/// where they live, what is wrong. Exits 0 only when it found no problem: a problem is anything
/// that makes commands fail or leaves the app's data behind (a store that does not answer,
/// pending repairs, an incomplete migration), and exits 7 otherwise.
///
/// `direct`: whether the user gave `--direct` (doctor itself always opens the stores in this
/// process, to examine them the way this machine would).
pub fn run(ctx: &Context, config_path: &Path, direct: bool) -> anyhow::Result<()> {
    let mut problems: Vec<String> = Vec::new();
    // What the user should know that does not make commands fail nor leave data behind.
    let mut notes: Vec<String> = Vec::new();
    let data_dir = ctx.dirs.flavour_data_dir(&ctx.flavour);
    let broker_log = ctx.dirs.broker_log_path(&ctx.flavour);
    for path in [
        Some(data_dir.clone()),
        Some(ctx.dirs.shared_vault_path(&ctx.flavour)),
        Some(ctx.dirs.app_vault_path(&ctx.flavour, &ctx.app)),
        // It names apps and keys (never values).
        broker_log
            .as_ref()
            .and_then(|log| log.parent().map(Into::into)),
        broker_log.clone(),
    ]
    .into_iter()
    .flatten()
    {
        if Some(&path) == broker_log.as_ref() {
            if let Some(what) = not_a_regular_file(&path) {
                // The broker refuses it (it does not follow a link: whoever planted one
                // chooses where the log goes), so it logs nothing; a chmod would change the
                // link's target, someone else's file maybe (found by QA: doctor advised one).
                problems.push(format!(
                    "{} is {what}, not a regular file, so a broker a command starts refuses it \
                     and logs nothing: remove it (the next broker begins a new log)",
                    path.display()
                ));
                continue;
            }
        }
        if let Ok(meta) = std::fs::metadata(&path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                problems.push(format!(
                    "{} is readable by other users (mode {mode:03o}); fix with: chmod {} {}",
                    path.display(),
                    if meta.is_dir() { "700" } else { "600" },
                    path.display()
                ));
            }
        }
    }
    // Before anything is opened: closing a descriptor of a file SQLite has open would drop the
    // locks SQLite holds on it. Opening for appending writes nothing.
    for vault in [
        ctx.dirs.shared_vault_path(&ctx.flavour),
        ctx.dirs.app_vault_path(&ctx.flavour, &ctx.app),
    ] {
        if !vault.is_file() {
            continue;
        }
        if let Err(err) = std::fs::OpenOptions::new().append(true).open(&vault) {
            problems.push(format!(
                "{} cannot be written ({err}), so writes to it fail",
                vault.display()
            ));
        }
    }

    // A store this process could not open because it needs a passphrase or an unlocked
    // keyring: a problem unless a running broker serves it (see below).
    let mut locked = None;
    let mut report = json!({
        "flavor": { "name": ctx.flavour.name(), "service": ctx.flavour.service() },
        "app": ctx.app.as_str(),
        "config": {
            "path": config_path.display().to_string(),
            "exists": config_path.exists(),
        },
        "data_dir": data_dir.display().to_string(),
        "store_setting": ctx.store.name(),
    });
    // Without the lazy migration pass the first operation would run: doctor reports an
    // incomplete migration and pending repairs, it does not carry them out (found by QA: it
    // copied legacy secrets into the shared store, and hid what it repaired).
    match stores::open_with(ctx, stores::Migration::Explicit) {
        Ok(opened) => {
            // Settles the storage and loads the app's repair journal (from the app's own
            // vault, whatever state the shared store is in).
            let ready = opened.storage.ready();
            let storage_type = match &ready {
                // The library's "persisted" means "in the shared store": the memory store
                // keeps nothing past this process.
                Ok(_) if ctx.store == StoreChoice::Memory && opened.legacy.is_none() => {
                    Value::String("in-memory".to_owned())
                }
                Ok(t) => Value::String(t.to_string()),
                Err(err) => {
                    problems.push(format!("storage not ready: {err}"));
                    Value::Null
                }
            };
            let status = opened.storage.status();
            let shared = &status.shared;
            // Opening a store connects at most; whether it answers is what commands meet (a
            // locked keyring opens, then refuses every read).
            let shared_answers = answers(&*opened.shared.store);
            if let Err(err) = &shared_answers {
                problems.push(format!(
                    "the shared store ({}) does not answer: {err}",
                    shared.kind
                ));
            } else if shared.kind == "vault" {
                damaged_values(&*opened.shared.store, "shared store", &mut problems);
            }
            report["shared"] = json!({
                "kind": shared.kind,
                "location": shared.location,
                "protection": shared.protection,
                "chosen_because": opened.shared.reason,
                "answers": shared_answers.is_ok(),
            });
            if shared.protection == stores::NOT_CREATED_YET && ctx.config.require_os_keyring {
                let keyring = ctx.probe_secret_service();
                if !keyring.is_usable() {
                    problems.push(format!(
                        "require_os_keyring is set, but no OS keyring can keep the key of the \
                         shared vault, which does not exist yet ({keyring}), so the first \
                         command that uses it fails: start a Secret Service in this session, \
                         or turn require_os_keyring off"
                    ));
                }
            }
            report["legacy"] = match (&status.legacy, &opened.legacy) {
                (Some(l), Some(store)) => {
                    let legacy_answers = answers(&**store);
                    if let Err(err) = &legacy_answers {
                        problems.push(format!(
                            "the legacy store ({}) does not answer: {err}",
                            l.kind
                        ));
                    } else if l.kind == "vault" {
                        damaged_values(&**store, "legacy store", &mut problems);
                    }
                    json!({
                        "kind": l.kind,
                        "location": l.location,
                        "protection": l.protection,
                        "answers": legacy_answers.is_ok(),
                    })
                }
                _ => Value::Null,
            };
            if let Some(why) = &opened.legacy_set_aside {
                notes.push(why.clone());
            }
            if shared_answers.is_ok() {
                match &opened.shared.vault {
                    Some(vault) => keyring_now_answers(ctx, vault, &mut notes),
                    None => vault_left_behind(ctx, shared.kind, &mut problems, &mut notes),
                }
            }
            report["storage_type"] = storage_type;
            if ready.is_ok() {
                // A legacy vault that does not exist yet has nothing to migrate.
                let migration_done = status.migration_done
                    || status
                        .legacy
                        .as_ref()
                        .is_some_and(|l| l.protection == stores::NOT_CREATED_YET);
                report["migration_done"] = json!(migration_done);
                // The commands that fix these act on one app's stores: they name it, as the
                // note of a write the shared store did not take does (found by QA: `keyshare
                // repair` alone repairs the default app, which has nothing pending).
                if !migration_done {
                    problems.push(format!(
                        "the migration of the legacy store into the shared store is incomplete; \
                         run `{}` (it says which keys fail and why)",
                        super::command_for(ctx, "migrate")
                    ));
                }
                let pending: Vec<&str> =
                    status.pending_repairs.iter().map(|k| k.as_str()).collect();
                if !pending.is_empty() {
                    problems.push(format!(
                        "{} key(s) wait for a repair of the shared store; run `{}`",
                        pending.len(),
                        super::command_for(ctx, "repair")
                    ));
                }
                report["pending_repairs"] = json!(pending);
                if shared_answers.is_ok() {
                    stale_legacy_copies(ctx, &opened, &mut report, &mut notes);
                }
                if opened.journal.is_some() {
                    repairs_kept_elsewhere(
                        ctx,
                        opened.shared.identity.as_deref(),
                        &status.pending_repairs,
                        &mut problems,
                    );
                }
            } else {
                // The journal was not read: what memory holds says nothing.
                report["migration_done"] = Value::Null;
                report["pending_repairs"] = Value::Null;
            }
        }
        Err(err) if err.downcast_ref::<stores::LegacyOpenFailed>().is_some() => {
            // The shared store opened; the app's own store did not (QA s19 F9: doctor said
            // "legacy store: none" next to the problem naming its damaged database).
            let failed = err
                .downcast_ref::<stores::LegacyOpenFailed>()
                .expect("checked by the guard");
            let error = crate::exit::one_line(&err);
            problems.push(format!("cannot open the legacy store: {error}"));
            report["shared"] = unopened_shared(ctx);
            report["shared"]["answers"] = Value::Null;
            report["shared"]["note"] =
                json!("not examined: the app's legacy store could not be opened");
            report["legacy"] = json!({
                "kind": failed.kind,
                "location": failed.location,
                "protection": Value::Null,
                "answers": false,
                "error": error,
            });
        }
        Err(err) => {
            let problem = format!("cannot open the stores: {}", crate::exit::one_line(&err));
            if needs_unlocking(&err) {
                // Decided once the broker was looked at: one that serves this store has it
                // unlocked already.
                locked = Some(problem);
            } else {
                problems.push(problem);
            }
            report["shared"] = unopened_shared(ctx);
            report["shared"]["answers"] = json!(false);
            report["shared"]["error"] = json!(crate::exit::one_line(&err));
        }
    }
    report["broker"] = broker_report(ctx, direct, &mut problems);
    if let Some(problem) = locked {
        let broker = &report["broker"];
        if !direct && broker["running"] == true && broker["answering"] == true {
            // Commands go through the broker, which opened the store with the passphrase or
            // key it was started with: not a problem (found by QA: doctor reported a vault
            // that every command used fine).
            report["shared"]["note"] = json!(format!(
                "this process could not open it ({}), but commands go through the running \
                 broker (pid {}), which has it open; only `--direct` needs it unlocked here",
                report["shared"]["error"].as_str().unwrap_or_default(),
                broker["pid"]
            ));
        } else {
            problems.push(problem);
        }
    }
    if ctx.store == StoreChoice::Openbao {
        report["openbao"] = crate::openbao::doctor_report(ctx, &mut problems);
    }
    report["notes"] = json!(notes);
    report["problems"] = json!(problems);
    // Commands advised by the stores and the broker, which know no flavour, made to work as
    // written here (found by QA: doctor's "stop that broker (`keyshare stop`)" stopped the
    // stable flavour's from insiders).
    advise_all(&mut report);

    let mut out = String::new();
    if ctx.json {
        say!(out, "{report}");
    } else {
        print_human(&report, &mut out);
    }
    super::print_out(&out)?;
    if !problems.is_empty() {
        anyhow::bail!("doctor found {} problem(s)", problems.len());
    }
    Ok(())
}

/// `doctor`'s report when the command's context cannot be made (the config file is invalid or
/// unsafe, the home cannot be found): what is known (the config file's path) and the reason,
/// as its one problem; what depends on the config is not checked (`null` in `--json`).
pub fn report_without_context(
    json_output: bool,
    config_path: Option<&Path>,
    err: &anyhow::Error,
) -> anyhow::Result<()> {
    let problem = format!(
        "nothing else can be checked until this is fixed: {}",
        crate::exit::one_line(err)
    );
    let report = json!({
        "flavor": null,
        "app": null,
        "config": config_path.map(|path| json!({
            "path": path.display().to_string(),
            "exists": path.exists(),
        })),
        "data_dir": null,
        "store_setting": null,
        "shared": null,
        "legacy": null,
        "broker": null,
        "notes": [],
        "problems": [problem],
    });
    let mut out = String::new();
    if json_output {
        say!(out, "{report}");
    } else {
        if let Some(path) = config_path {
            say!(out, "config:        {}", path.display());
        }
        say!(out, "problem: {}", problem.replace('\n', " / "));
    }
    super::print_out(&out)
}

/// Every text of `report`, with its advised commands made to work for this command
/// ([`super::advised`]).
fn advise_all(report: &mut Value) {
    match report {
        Value::String(text) => *text = super::advised(text),
        Value::Array(items) => items.iter_mut().for_each(advise_all),
        Value::Object(fields) => fields.values_mut().for_each(advise_all),
        _ => {}
    }
}

/// How to copy one key from the flavour's vault into the shared store `to` by hand: keyshare
/// has no command that moves secrets from one shared store to another. Both sides `--direct`,
/// since a running broker serves one store only; the value goes through a pipe, never argv.
fn copy_by_hand(ctx: &Context, to: &str) -> String {
    let keyshare = super::keyshare_in(ctx);
    format!(
        "`{keyshare} --direct --store vault get KEY | {keyshare} --direct --store {to} set KEY`"
    )
}

/// A vault whose key only a key file protects, while a Secret Service answers now: `auto`
/// found none on the flavour's first use (a session whose keyring came up later), and stays
/// with the vault it chose (found by QA: doctor said nothing, and its advice to remove the
/// record stranded every secret in the vault).
fn keyring_now_answers(
    ctx: &Context,
    vault: &keyshare::store::vault::VaultStore,
    notes: &mut Vec<String>,
) {
    let keyshare::store::vault::Protection::KeyFile { path } = vault.protection() else {
        return;
    };
    let report = ctx.probe_secret_service();
    if !(report.is_usable() || report.is_locked()) {
        return;
    }
    let held = vault
        .keys()
        .map(|keys| format!("{} secret(s)", keys.len()))
        .unwrap_or_else(|_| "secrets".to_owned());
    let switch = if stores::auto_chose_vault(ctx) {
        format!(
            "`auto` chose the vault on this flavour's first use, when no Secret Service \
             answered; removing {} would make the next command choose again, and choose the \
             Secret Service",
            ctx.dirs.auto_choice_path(&ctx.flavour).display()
        )
    } else {
        "`store = \"secret-service\"` would use it instead".to_owned()
    };
    notes.push(format!(
        "the shared vault's key is in the key file {} (protected only by its file permissions), \
         though a Secret Service answers now, whose keyring could protect this flavour's \
         secrets. {switch}; but the vault's {held} would stay behind in it, unread (every app \
         would find them missing): keyshare has no command that moves secrets from one shared \
         store to another. To switch, copy each key first with {}, then switch and stop the \
         broker (`keyshare --flavor {} stop`), which serves the vault",
        path.display(),
        copy_by_hand(ctx, "secret-service"),
        ctx.flavour.name()
    ));
}

/// Secrets in the flavour's vault while the shared store in use (`kind`) is another one: left
/// behind when the choice changed (`auto` chose again once its record was removed, or `store`
/// changed), and read by no command (found by QA: doctor said nothing of them).
fn vault_left_behind(
    ctx: &Context,
    kind: &str,
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    if matches!(kind, "vault" | "memory") || ctx.store == StoreChoice::Memory {
        return;
    }
    let path = ctx.dirs.shared_vault_path(&ctx.flavour);
    let keys = match stores::look_into_vault(&path, ctx.flavour.service(), ctx) {
        Ok(None) => return,
        Ok(Some(vault)) => vault.keys().map_err(anyhow::Error::new),
        Err(err) => Err(err),
    };
    match keys {
        Ok(keys) if keys.is_empty() => {}
        Ok(keys) => {
            let shown = shown_list(&keys);
            problems.push(format!(
                "the vault {} holds {} secret(s) of this flavour that the shared store in use \
                 ({kind}) does not have access to, so every app finds them missing: {}. They \
                 were left there when this flavour's store changed (`auto` chose again after \
                 its record was removed, or `store` changed); keyshare has no command that \
                 moves secrets from one shared store to another. Copy each key the shared \
                 store does not hold yet with {} (one it holds was set since, and is newer), \
                 then move the vault's files away together (vault.db, vault.db-wal, \
                 vault.db-shm, and vault.key if there is one)",
                path.display(),
                keys.len(),
                shown,
                copy_by_hand(ctx, kind)
            ));
        }
        Err(err) => notes.push(format!(
            "the vault {} is not the shared store in use ({kind}), and could not be opened to \
             see whether it holds secrets left behind: {}",
            path.display(),
            crate::exit::one_line(&err)
        )),
    }
}

/// Repairs this app's journal holds against other shared stores than the one in use, which
/// it never applies: recorded before the data directory moved (the journal is named after the
/// shared vault's path), or while `auto` used the other store (found by QA: they were skipped
/// without a word, and a signed-out token could come back).
fn repairs_kept_elsewhere(
    ctx: &Context,
    identity: Option<&str>,
    pending: &[keyshare::SecretKey],
    problems: &mut Vec<String>,
) {
    let path = ctx.dirs.app_vault_path(&ctx.flavour, &ctx.app);
    // None: no vault, so no journal (doctor creates none); an error is reported with the
    // legacy store or the journal already.
    let Ok(Some(vault)) = stores::look_into_vault(&path, "legacy", ctx) else {
        return;
    };
    let current = identity.map(|identity| format!("journal:{identity}"));
    let Ok(namespaces) = vault.namespaces_starting_with("journal:") else {
        return;
    };
    for namespace in namespaces {
        if Some(&namespace) == current.as_ref() {
            continue;
        }
        let Ok(journal) = vault.with_namespace(&namespace) else {
            continue;
        };
        let Ok(mut keys) = keyshare::pending_repairs_in_journal(std::sync::Arc::new(journal))
        else {
            continue;
        };
        // Carried over to the store in use, which a shared store new to the app does (its
        // journal is seeded from the earlier ones): pending here, said above.
        keys.retain(|key| !pending.contains(key));
        if keys.is_empty() {
            continue;
        }
        let shown = shown_list(&keys);
        problems.push(format!(
            "app {} has {} repair(s) recorded against another shared store, {}, which it does \
             not apply to the one in use: {}. If that store is this one under an earlier path \
             (a moved data directory), set each key again as this app (or delete it) to settle \
             it",
            ctx.app,
            keys.len(),
            namespace.trim_start_matches("journal:"),
            shown
        ));
    }
}

/// What doctor can say of a shared store it did not open: what it would have been.
fn unopened_shared(ctx: &Context) -> Value {
    let attempted = stores::shared_placeholder_info(ctx);
    json!({
        "kind": attempted.kind,
        "location": attempted.location,
        "protection": Value::Null,
        "chosen_because": Value::Null,
    })
}

/// Keys as messages show them, comma-separated.
fn shown_list(keys: &[keyshare::SecretKey]) -> String {
    keys.iter()
        .map(|key| super::shown(key).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The secrets the app's own store keeps although the shared store no longer has them (found
/// by QA: a sign-out left a copy in every other app's legacy store, and nothing said so).
fn stale_legacy_copies(
    ctx: &Context,
    opened: &stores::Opened,
    report: &mut Value,
    notes: &mut Vec<String>,
) {
    let Ok(stale) = opened.storage.stale_legacy_copies() else {
        return;
    };
    report["stale_legacy_copies"] = json!(stale.iter().map(|k| k.as_str()).collect::<Vec<_>>());
    if stale.is_empty() {
        return;
    }
    let shown = shown_list(&stale);
    notes.push(format!(
        "app {}'s own store keeps {} secret(s) that the shared store in use does not have, \
         though this app shared them (another app signed out of them, or they were shared with \
         an earlier shared store, as none is moved when the store changes): {}. They are never \
         read, and stay at rest until this app writes the key again",
        ctx.app,
        stale.len(),
        shown
    ));
}

/// Reads every value of a vault (`which` store), to find those whose stored bytes are
/// damaged: the page check at open sees only the file's structure, and a damaged value shows
/// only when its key is read (found by QA: doctor said "no problems found"). The values read
/// are dropped (zeroized) at once; none is shown.
fn damaged_values(store: &dyn keyshare::Store, which: &str, problems: &mut Vec<String>) {
    let Ok(keys) = store.keys() else { return };
    let damaged: Vec<String> = keys
        .iter()
        .filter(|key| matches!(store.get(key), Err(keyshare::Error::Corrupt { .. })))
        .map(|key| super::shown(key).into_owned())
        .collect();
    if !damaged.is_empty() {
        problems.push(format!(
            "the {which} holds {} damaged value(s), left untouched, which reads fail (exit 4): \
             {}; set each again or delete it",
            damaged.len(),
            damaged.join(", ")
        ));
    }
}

/// Whether `err` says that the store is locked (a vault's passphrase not given, a keyring
/// not unlocked), which a broker that has it open already got past.
fn needs_unlocking(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<keyshare::Error>(),
            Some(keyshare::Error::Unavailable {
                reason: keyshare::UnavailableReason::Locked,
                ..
            })
        )
    })
}

/// Whether a store answers: it lists its keys (never a value), which is what a locked keyring,
/// a hung service or an unreachable server refuses.
fn answers(store: &dyn keyshare::Store) -> keyshare::Result<()> {
    store.keys().map(drop)
}

/// The flavour's broker: doctor examines the store the way this process would open it, but
/// commands go through the broker when one runs, so the user needs to know whether one does,
/// what it serves, whether commands start one, and where it logs.
fn broker_report(ctx: &Context, direct: bool, problems: &mut Vec<String>) -> Value {
    let mut report = broker_state(ctx, direct, problems);
    if let Some(object) = report.as_object_mut() {
        // A broker started by a command logs to this file; one started by hand logs to its
        // stderr, one started by systemd to the journal. Which one runs, its command line says.
        let log = ctx.dirs.broker_log_path(&ctx.flavour);
        let started_by_command = object
            .get("pid")
            .and_then(Value::as_u64)
            .and_then(started_by_a_command);
        object.insert("started_by_command".to_owned(), json!(started_by_command));
        let log = match started_by_command {
            Some(false) => None,
            // Without XDG_RUNTIME_DIR no broker can start, so none logs there (found by QA:
            // the file was named as where a broker a command starts logs).
            _ if ctx.dirs.runtime_dir.is_none() => None,
            _ => log.map(|log| log.display().to_string()),
        };
        object.insert("log".to_owned(), json!(log));
    }
    report
}

/// Whether the broker with this pid was started by a command (`serve --autostarted`), from its
/// command line; `None` where that cannot be read.
fn started_by_a_command(pid: u64) -> Option<bool> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == b"--autostarted"),
    )
}

/// What commands do about the broker, in words: whether they use one, and start one;
/// `running`: whether one runs now, which they then use (found by QA: next to "broker:
/// running", the note said they start one when none runs).
fn routing_note(ctx: &Context, direct: bool, running: bool) -> String {
    if ctx.store == StoreChoice::Memory {
        return "commands with the memory store never use a broker: each has a store of its own"
            .to_owned();
    }
    let autostart_off = if ctx.routing.no_autostart {
        Some("--no-autostart or KEYSHARE_NO_AUTOSTART")
    } else if ctx.config.autostart == Some(false) {
        Some("autostart = false in the config")
    } else {
        None
    };
    let commands = if direct {
        "commands without --direct"
    } else {
        "commands"
    };
    let others = match autostart_off {
        _ if running => format!("{commands} use this one"),
        None => format!("{commands} start one when none runs (autostart is on)"),
        Some(why) => format!(
            "autostart is off ({why}): {commands} use a running broker and otherwise open the \
             store themselves; `keyshare serve` starts one"
        ),
    };
    if direct {
        format!(
            "--direct (given here) makes a command open the store itself, never using or \
             starting a broker; {others}"
        )
    } else {
        others
    }
}

/// A problem when the running broker says it decides by another access policy than the one
/// config.toml holds now (a broker that does not say is taken at its word).
fn policy_in_force(
    ctx: &Context,
    status: &keyshare_broker::protocol::BrokerStatus,
    problems: &mut Vec<String>,
) {
    let (Some(in_force), Ok(configured)) = (&status.policy, broker::policy(&ctx.config)) else {
        return;
    };
    if *in_force != configured.fingerprint() {
        problems.push(format!(
            "the broker (pid {}) decides by another access policy than config.toml's: it \
             applies an edit within about 2 s, unless it was started with another --config; \
             if this persists, restart it (`{}`; the next command starts another)",
            status.pid,
            stop_command(ctx)
        ));
    }
}

/// Why the access policy refuses this command's app, as a problem line: what every command of
/// the app meets without a broker, and through one.
fn policy_refusal(ctx: &Context) -> Option<String> {
    let policy = broker::policy(&ctx.config).ok()?;
    let exe = std::env::current_exe().ok();
    let refusal = policy.admit(&ctx.app, exe.as_deref()).err()?;
    Some(format!(
        "the access policy refuses app {:?}: {refusal}; every command of it fails (exit 8), \
         with or without a broker (--direct bypasses the policy)",
        ctx.app.as_str()
    ))
}

/// What is at the broker's socket path when it is something else than a socket (a broker
/// refuses to start then: found by QA, with `doctor` finding no problem).
fn not_a_socket(socket: &std::path::Path) -> Option<&'static str> {
    file_kind(socket).filter(|kind| *kind != SOCKET)
}

/// What is at `path` when it is something else than a regular file, not following a link.
pub fn not_a_regular_file(path: &Path) -> Option<&'static str> {
    file_kind(path).filter(|kind| *kind != REGULAR_FILE)
}

const SOCKET: &str = "a socket";
const REGULAR_FILE: &str = "a regular file";

/// What kind of file is at `path`, in words, not following a link; `None` when nothing is.
fn file_kind(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(path).ok()?.file_type();
    Some(if kind.is_socket() {
        SOCKET
    } else if kind.is_file() {
        REGULAR_FILE
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else {
        "a special file"
    })
}

/// The command that stops this flavour's broker.
fn stop_command(ctx: &Context) -> String {
    format!("keyshare --flavor {} stop", ctx.flavour.name())
}

fn broker_state(ctx: &Context, direct: bool, problems: &mut Vec<String>) -> Value {
    let probe = broker::probe(ctx);
    // Without a broker, commands apply its policy themselves (`policed.rs`): an app it refuses
    // fails every command (found by QA: doctor said "no problems found" then, and reported the
    // refusal only while a broker ran).
    if !direct && !matches!(probe, Ok(broker::Probe::Running { .. })) {
        if let Some(refusal) = policy_refusal(ctx) {
            problems.push(refusal);
        }
    }
    match probe {
        Ok(broker::Probe::NoRuntimeDir) => json!({
            "running": false,
            "socket": Value::Null,
            "note": "XDG_RUNTIME_DIR is not set: commands open the stores directly",
        }),
        Ok(broker::Probe::NotRunning { socket, why }) => {
            let obstacle = broker::paths(ctx)
                .ok()
                .and_then(|paths| broker::start_obstacle(&paths));
            let autostart = ctx.store != StoreChoice::Memory && broker::autostart_on(ctx);
            if let Some(obstacle) = obstacle {
                problems.push(format!(
                    "{obstacle}. Until then {}",
                    if autostart {
                        "every command warns that it could not start the broker, and opens the \
                         store itself (applying the broker's access policy, but without its \
                         change events)"
                    } else {
                        "`keyshare serve` fails too"
                    }
                ));
            } else if let Some(what) = not_a_socket(&socket) {
                problems.push(format!(
                    "{} is {what}, not a socket, so no broker can start there (it leaves what \
                     it did not make alone) and commands open the store themselves: remove it \
                     by hand",
                    socket.display()
                ));
            }
            json!({
                "running": false,
                "socket": socket.display().to_string(),
                "note": format!("{why}; {}", routing_note(ctx, direct, false)),
            })
        }
        Ok(broker::Probe::Running { socket, status }) => {
            policy_in_force(ctx, &status, problems);
            json!({
            "running": true,
            "answering": true,
            "socket": socket.display().to_string(),
            "pid": status.pid,
            "version": status.server_version,
            "connections": status.connections,
            "shared_store": status.shared_store,
            "legacy_store": status.legacy_store,
            "pending_repairs": status.pending_repairs,
            "note": (direct || ctx.store == StoreChoice::Memory)
                .then(|| routing_note(ctx, direct, true)),
            })
        }
        Ok(broker::Probe::Foreign { socket, why }) => {
            problems.push(why.clone());
            json!({
                "running": false,
                "foreign": true,
                "socket": socket.display().to_string(),
                "refused": why,
            })
        }
        Ok(broker::Probe::Busy { socket, why }) => {
            problems.push(format!(
                "the broker at {} runs but cannot serve another client now: {why}",
                socket.display()
            ));
            json!({
                "running": true,
                "answering": true,
                "socket": socket.display().to_string(),
                "busy": why,
            })
        }
        Ok(broker::Probe::Refused { socket, why }) => {
            problems.push(format!(
                "the broker at {} refused this app: {why}",
                socket.display()
            ));
            json!({
                "running": true,
                "answering": true,
                "socket": socket.display().to_string(),
                "refused": why,
            })
        }
        Ok(broker::Probe::NotAnswering { socket, pid, why }) => {
            problems.push(match pid {
                Some(pid) => format!(
                    "the broker (pid {pid}) runs but does not answer on {} ({why}), so commands \
                     that use it fail (exit 3): if it was stopped (Ctrl-Z, a debugger), resume \
                     it with `kill -CONT {pid}`; otherwise end it with `{}` (a command \
                     then starts another)",
                    socket.display(),
                    stop_command(ctx)
                ),
                None => format!(
                    "something accepts connections on {} but does not answer ({why}), and no \
                     broker holds the instance lock, so commands that use the socket fail \
                     (exit 3): a socket unit whose broker does not start? (`systemctl --user \
                     status`)",
                    socket.display()
                ),
            });
            json!({
                "running": pid.is_some(),
                "answering": false,
                "socket": socket.display().to_string(),
                "pid": pid,
            })
        }
        Err(err) => {
            problems.push(format!(
                "cannot check for a broker: {}",
                crate::exit::one_line(&err)
            ));
            Value::Null
        }
    }
}

fn print_human(report: &Value, out: &mut String) {
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    say!(
        out,
        "flavour:       {} (service {})",
        s(&report["flavor"]["name"]),
        s(&report["flavor"]["service"])
    );
    say!(out, "app:           {}", s(&report["app"]));
    say!(
        out,
        "config:        {}{}",
        s(&report["config"]["path"]),
        if report["config"]["exists"] == Value::Bool(true) {
            ""
        } else {
            " (not present: defaults)"
        }
    );
    let shared = &report["shared"];
    if let Some(note) = shared["note"].as_str() {
        say!(
            out,
            "shared store:  {} at {}",
            s(&shared["kind"]),
            s(&shared["location"])
        );
        say!(out, "  note:        {note}");
    } else if let Some(error) = shared["error"].as_str() {
        say!(
            out,
            "shared store:  {} at {} (cannot be opened: {error})",
            s(&shared["kind"]),
            s(&shared["location"])
        );
    } else if !shared.is_null() {
        say!(
            out,
            "shared store:  {} at {} ({})",
            s(&shared["kind"]),
            s(&shared["location"]),
            s(&shared["chosen_because"])
        );
        say!(out, "  protection:  {}", s(&shared["protection"]));
        if shared["answers"] == Value::Bool(false) {
            say!(out, "  answers:     no (see the problems below)");
        }
    }
    if report["legacy"].is_null() {
        say!(out, "legacy store:  none");
    } else if let Some(error) = report["legacy"]["error"].as_str() {
        say!(
            out,
            "legacy store:  {} at {} (cannot be opened: {error})",
            s(&report["legacy"]["kind"]),
            s(&report["legacy"]["location"])
        );
    } else {
        say!(
            out,
            "legacy store:  {} at {}",
            s(&report["legacy"]["kind"]),
            s(&report["legacy"]["location"])
        );
        say!(out, "  protection:  {}", s(&report["legacy"]["protection"]));
        if report["legacy"]["answers"] == Value::Bool(false) {
            say!(out, "  answers:     no (see the problems below)");
        }
    }
    match report["storage_type"].as_str() {
        None => {}
        Some("in-memory") => say!(
            out,
            "storage type:  in-memory (nothing outlives this process)"
        ),
        Some(t) => say!(out, "storage type:  {t}"),
    }
    let broker = &report["broker"];
    if broker["answering"] == Value::Bool(false) {
        match broker["pid"].as_u64() {
            Some(pid) => say!(
                out,
                "broker:        running (pid {pid}) but not answering on {} (see the problems \
                 below)",
                s(&broker["socket"])
            ),
            None => say!(
                out,
                "broker:        not answering on {} (see the problems below)",
                s(&broker["socket"])
            ),
        }
    } else if broker["running"] == Value::Bool(true)
        && broker["refused"].is_null()
        && broker["busy"].is_null()
    {
        say!(
            out,
            "broker:        running (pid {}, {} connection(s)) on {}",
            s(&broker["pid"]),
            s(&broker["connections"]),
            s(&broker["socket"])
        );
        say!(out, "  serves:      {}", s(&broker["shared_store"]));
        if let Some(note) = broker["note"].as_str() {
            say!(out, "  note:        {note}");
        }
    } else if broker["foreign"] == Value::Bool(true) {
        say!(
            out,
            "broker:        refused, another user's ({})",
            s(&broker["refused"])
        );
    } else if broker["busy"].is_string() {
        say!(
            out,
            "broker:        runs, but serves no more clients now ({})",
            s(&broker["busy"])
        );
    } else if broker["running"] == Value::Bool(true) {
        say!(
            out,
            "broker:        refuses this app ({})",
            s(&broker["refused"])
        );
    } else if !broker.is_null() {
        say!(out, "broker:        not running ({})", s(&broker["note"]));
    }
    let running = broker["running"] == Value::Bool(true);
    match (
        broker["log"].as_str(),
        broker["started_by_command"].as_bool(),
    ) {
        (Some(log), Some(true)) => say!(out, "  log:         {log}"),
        (None, Some(false)) => {
            say!(out,
            "  log:         its standard error (it was not started by a command; under systemd, \
             the journal)"
        )
        }
        (Some(log), _) if running => say!(
            out,
            "  log:         {log} if a command started it (one started by hand logs to its \
             stderr, under systemd to the journal)"
        ),
        (Some(log), _) => say!(
            out,
            "  log:         {log} (where a broker a command starts logs)"
        ),
        (None, _) => {}
    }
    print_openbao(&report["openbao"], out);
    match report["pending_repairs"].as_array() {
        Some(pending) => say!(out, "pending repairs: {}", pending.len()),
        // The journal could not be read (the problem says why).
        None if report.get("pending_repairs").is_some() => {
            say!(
                out,
                "pending repairs: unknown (the repair journal could not be read)"
            )
        }
        None => {}
    }
    if report["migration_done"] == Value::Bool(false) {
        say!(out, "migration:     incomplete");
    }
    for note in report["notes"].as_array().into_iter().flatten() {
        say!(out, "note: {}", s(note));
    }
    if let Some(problems) = report["problems"].as_array() {
        for p in problems {
            // One line each: SQLite's integrity report, say, comes in several (found by QA).
            say!(out, "problem: {}", s(p).replace('\n', " / "));
        }
        if problems.is_empty() {
            say!(out, "no problems found");
        }
    }
}

/// The OpenBao section. A single node without HA has no leader: its `null` is shown as that,
/// not as "null".
fn print_openbao(report: &Value, out: &mut String) {
    if report.is_object() && report["leader"].is_null() {
        let mut report = report.clone();
        // Whether HA is enabled is known only from a node's answer (found by QA: an
        // unreachable node was said to have HA off).
        report["leader"] = json!(match report["ha_enabled"] {
            Value::Bool(true) => "none (no node names one)",
            Value::Bool(false) => "none (HA is not enabled)",
            _ => "unknown (no node answered)",
        });
        crate::openbao::print_human(&report, out);
    } else {
        crate::openbao::print_human(report, out);
    }
}
