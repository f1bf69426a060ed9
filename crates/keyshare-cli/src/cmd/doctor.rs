use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::broker;
use crate::config::StoreChoice;
use crate::stores::{self, Context};

/// `keyshare doctor`: which stores this app and flavour use and why, how they are protected,
/// where they live, what is wrong. Exits 0 when it found no problem.
pub fn run(ctx: &Context, config_path: &Path) -> anyhow::Result<()> {
    let mut problems: Vec<String> = Vec::new();
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
    match stores::open(ctx) {
        Ok(opened) => {
            let storage_type = match opened.storage.ready() {
                Ok(t) => Value::String(t.to_string()),
                Err(err) => {
                    problems.push(format!("storage not ready: {err}"));
                    Value::Null
                }
            };
            let status = opened.storage.status();
            let shared = &status.shared;
            report["shared"] = json!({
                "kind": shared.kind,
                "location": shared.location,
                "protection": shared.protection,
                "chosen_because": opened.shared.reason,
            });
            report["legacy"] = match &status.legacy {
                Some(l) => {
                    json!({ "kind": l.kind, "location": l.location, "protection": l.protection })
                }
                None => Value::Null,
            };
            report["storage_type"] = storage_type;
            report["migration_done"] = json!(status.migration_done);
            let pending: Vec<&str> = status.pending_repairs.iter().map(|k| k.as_str()).collect();
            if !pending.is_empty() {
                problems.push(format!(
                    "{} key(s) wait for a repair of the shared store; run `keyshare repair`",
                    pending.len()
                ));
            }
            report["pending_repairs"] = json!(pending);
        }
        Err(err) => problems.push(format!("cannot open the stores: {err:#}")),
    }
    report["broker"] = broker_report(ctx, &mut problems);
    if ctx.store == StoreChoice::Openbao {
        report["openbao"] = crate::openbao::doctor_report(ctx, &mut problems);
    }
    report["problems"] = json!(problems);

    if ctx.json {
        println!("{report}");
    } else {
        print_human(&report);
    }
    if !problems.is_empty() {
        anyhow::bail!("doctor found {} problem(s)", problems.len());
    }
    Ok(())
}

/// The flavour's broker: doctor examines the store the way this process would open it, but
/// commands go through the broker when one runs, so the user needs to know whether one does and
/// what it serves.
fn broker_report(ctx: &Context, problems: &mut Vec<String>) -> Value {
    let mut report = broker_state(ctx, problems);
    if let Some(report) = report.as_object_mut() {
        // Where a broker started by a command logs (one started by hand logs to its stderr,
        // one started by systemd to the journal): the place to look when a broker refused
        // something or failed.
        let log = ctx.dirs.broker_log_path(&ctx.flavour);
        report.insert(
            "log".to_owned(),
            json!(log.map(|log| log.display().to_string())),
        );
    }
    report
}

fn broker_state(ctx: &Context, problems: &mut Vec<String>) -> Value {
    match broker::probe(ctx) {
        Ok(broker::Probe::NoRuntimeDir) => json!({
            "running": false,
            "socket": Value::Null,
            "note": "XDG_RUNTIME_DIR is not set: commands open the stores directly",
        }),
        Ok(broker::Probe::NotRunning { socket, why }) => json!({
            "running": false,
            "socket": socket.display().to_string(),
            "note": format!("no broker answers ({why}); commands start one unless --no-autostart or autostart = false"),
        }),
        Ok(broker::Probe::Running { socket, status }) => json!({
            "running": true,
            "socket": socket.display().to_string(),
            "pid": status.pid,
            "version": status.server_version,
            "connections": status.connections,
            "shared_store": status.shared_store,
            "legacy_store": status.legacy_store,
            "pending_repairs": status.pending_repairs,
        }),
        Ok(broker::Probe::Refused { socket, why }) => {
            problems.push(format!(
                "the broker at {} refused this app: {why}",
                socket.display()
            ));
            json!({ "running": true, "socket": socket.display().to_string(), "refused": why })
        }
        Err(err) => {
            problems.push(format!("cannot check for a broker: {err:#}"));
            Value::Null
        }
    }
}

fn print_human(report: &Value) {
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    println!(
        "flavour:       {} (service {})",
        s(&report["flavor"]["name"]),
        s(&report["flavor"]["service"])
    );
    println!("app:           {}", s(&report["app"]));
    println!(
        "config:        {}{}",
        s(&report["config"]["path"]),
        if report["config"]["exists"] == Value::Bool(true) {
            ""
        } else {
            " (not present: defaults)"
        }
    );
    if !report["shared"].is_null() {
        println!(
            "shared store:  {} at {} ({})",
            s(&report["shared"]["kind"]),
            s(&report["shared"]["location"]),
            s(&report["shared"]["chosen_because"])
        );
        println!("  protection:  {}", s(&report["shared"]["protection"]));
    }
    if report["legacy"].is_null() {
        println!("legacy store:  none");
    } else {
        println!(
            "legacy store:  {} at {}",
            s(&report["legacy"]["kind"]),
            s(&report["legacy"]["location"])
        );
        println!("  protection:  {}", s(&report["legacy"]["protection"]));
    }
    if !report["storage_type"].is_null() {
        println!("storage type:  {}", s(&report["storage_type"]));
    }
    let broker = &report["broker"];
    if broker["running"] == Value::Bool(true) && broker["refused"].is_null() {
        println!(
            "broker:        running (pid {}, {} connection(s)) on {}",
            s(&broker["pid"]),
            s(&broker["connections"]),
            s(&broker["socket"])
        );
        println!("  serves:      {}", s(&broker["shared_store"]));
    } else if broker["running"] == Value::Bool(true) {
        println!(
            "broker:        refuses this app ({})",
            s(&broker["refused"])
        );
    } else if !broker.is_null() {
        println!("broker:        not running ({})", s(&broker["note"]));
    }
    if let Some(log) = broker["log"].as_str() {
        println!("  log:         {log} (of a broker started by a command)");
    }
    crate::openbao::print_human(&report["openbao"]);
    if let Some(pending) = report["pending_repairs"].as_array() {
        println!("pending repairs: {}", pending.len());
    }
    if let Some(problems) = report["problems"].as_array() {
        for p in problems {
            println!("problem: {}", s(p));
        }
        if problems.is_empty() {
            println!("no problems found");
        }
    }
}
