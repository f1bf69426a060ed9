//! Copying an app's legacy secrets into another store (`keyshare import vscode`).

use std::fmt;

use crate::error::Result;
use crate::model::{SecretKey, SecretValue};
use crate::store::Store;

/// What happened to one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportOutcome {
    /// Copied to the target (or, in a dry run, would be).
    Imported,
    /// The target already holds the same value.
    AlreadyPresent,
    /// The target holds a different value, which was kept.
    Conflict,
    /// The key could not be read from the source, or read or written in the target.
    Failed,
}

/// Progress of an import, reported after each key.
#[derive(Debug)]
pub struct ImportProgress<'a> {
    /// Keys handled so far, this one included.
    pub done: usize,
    /// Keys in the source.
    pub total: usize,
    /// The key just handled.
    pub key: &'a SecretKey,
    /// What happened to it.
    pub outcome: ImportOutcome,
}

/// The result of an import. Reasons name keys and stores, never values.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ImportReport {
    /// Whether this was a dry run (then `imported` lists what would have been copied).
    pub dry_run: bool,
    /// Keys copied to the target.
    pub imported: Vec<SecretKey>,
    /// Keys the target already held with the same value.
    pub already_present: Vec<SecretKey>,
    /// Keys the target held with a different value: not overwritten, with the reason.
    pub conflicts: Vec<(SecretKey, String)>,
    /// Keys that could not be copied, with the reason. A later run retries them.
    pub failed: Vec<(SecretKey, String)>,
}

impl ImportReport {
    /// True when no key failed (conflicts are not failures: see [`import_legacy`]).
    pub fn is_success(&self) -> bool {
        self.failed.is_empty()
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, {} already present, {} kept (different value in the target), {} failed",
            self.imported.len(),
            if self.dry_run {
                "to import"
            } else {
                "imported"
            },
            self.already_present.len(),
            self.conflicts.len(),
            self.failed.len()
        )
    }
}

/// Keys written to the target per [`Store::set_many`] call: one durable transaction each in the
/// vault, instead of one per key.
const BATCH: usize = 256;

/// Copies every secret `source` lists into `target`, key by key, and reports what happened.
///
/// - Idempotent: a key the target already holds with the same value is `already_present`, so
///   a re-run imports only what is missing or failed before.
/// - A key the target holds with a **different** value is a conflict: the target's value is
///   kept and the key is reported with the reason. The target is the shared store other apps
///   write too, so its value may be newer (a refreshed token) than the legacy copy; this is the
///   same rule `SecretStorage`'s migration follows. Conflicts are not failures: re-running
///   cannot resolve them, and the shared value is a working sign-in.
/// - A key that cannot be read from the source (undecryptable, corrupt) or read or written in
///   the target is `failed`, with the reason; the others go on. Nothing is ever deleted.
/// - Writes go to the target in batches ([`Store::set_many`]); when a batch fails, its keys
///   are written one by one, so that each key still gets its own outcome.
/// - `dry_run` reads both stores and writes nothing.
///
/// Fails as a whole only when the source cannot list its keys.
pub fn import_legacy(
    source: &dyn Store,
    target: &dyn Store,
    dry_run: bool,
    progress: &mut dyn FnMut(&ImportProgress<'_>),
) -> Result<ImportReport> {
    let keys = source.keys()?;
    let total = keys.len();
    let mut report = ImportReport {
        dry_run,
        ..ImportReport::default()
    };
    let mut done = 0;
    for chunk in keys.chunks(BATCH) {
        // Each key's outcome; `None` for the keys waiting in `pending` to be written.
        let mut outcomes: Vec<Option<ImportOutcome>> = Vec::with_capacity(chunk.len());
        let mut pending = Vec::new();
        for key in chunk {
            match examine(source, target, key, &mut report) {
                Examined::Copy(value) => {
                    pending.push((key.clone(), value));
                    outcomes.push(None);
                }
                Examined::Done(outcome) => outcomes.push(Some(outcome)),
            }
        }
        let mut written = if dry_run {
            report
                .imported
                .extend(pending.iter().map(|(k, _)| k.clone()));
            vec![ImportOutcome::Imported; pending.len()]
        } else {
            write(target, &pending, &mut report)
        }
        .into_iter();
        // Progress after the batch's write, in key order.
        for (key, outcome) in chunk.iter().zip(outcomes) {
            done += 1;
            let outcome = outcome
                .or_else(|| written.next())
                .unwrap_or(ImportOutcome::Failed);
            progress(&ImportProgress {
                done,
                total,
                key,
                outcome,
            });
        }
    }
    Ok(report)
}

enum Examined {
    /// The target lacks the key: copy this value.
    Copy(SecretValue),
    /// Nothing to write; the outcome is recorded.
    Done(ImportOutcome),
}

/// Reads `key` from both stores; records the outcome unless the value is to be copied.
fn examine(
    source: &dyn Store,
    target: &dyn Store,
    key: &SecretKey,
    report: &mut ImportReport,
) -> Examined {
    let mut fail = |reason: String| {
        report.failed.push((key.clone(), reason));
        Examined::Done(ImportOutcome::Failed)
    };
    let value = match source.get(key) {
        Ok(Some(value)) => value,
        Ok(None) => return fail("it was deleted from the source during the import".to_owned()),
        Err(e) => return fail(format!("reading the source: {e}")),
    };
    match target.get(key) {
        Ok(Some(existing)) if existing == value => {
            report.already_present.push(key.clone());
            Examined::Done(ImportOutcome::AlreadyPresent)
        }
        Ok(Some(_)) => {
            report.conflicts.push((
                key.clone(),
                format!(
                    "{} already holds a different value; it was kept (delete it there and \
                     re-run to import the legacy value)",
                    target.info().kind
                ),
            ));
            Examined::Done(ImportOutcome::Conflict)
        }
        Ok(None) => Examined::Copy(value),
        Err(e) => fail(format!("reading the target: {e}")),
    }
}

/// Writes a batch; if the batch fails, each key on its own. Returns each key's outcome.
fn write(
    target: &dyn Store,
    pending: &[(SecretKey, SecretValue)],
    report: &mut ImportReport,
) -> Vec<ImportOutcome> {
    if pending.is_empty() {
        return Vec::new();
    }
    if target.set_many(pending).is_ok() {
        report
            .imported
            .extend(pending.iter().map(|(k, _)| k.clone()));
        return vec![ImportOutcome::Imported; pending.len()];
    }
    pending
        .iter()
        .map(|(key, value)| match target.set(key, value) {
            Ok(()) => {
                report.imported.push(key.clone());
                ImportOutcome::Imported
            }
            Err(e) => {
                report
                    .failed
                    .push((key.clone(), format!("writing the target: {e}")));
                ImportOutcome::Failed
            }
        })
        .collect()
}
