//! Copying an app's legacy secrets into another store (`keyshare import vscode`).

use std::collections::HashSet;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Result;
use crate::model::{SecretKey, SecretValue};
use crate::store::electron::utc_stamp;
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
    /// The target lacks the key because it was deleted there (another app signed out) after
    /// the legacy copy was made: not copied, so that the delete stands.
    LeftDeleted,
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

/// How to import: see [`import_legacy_with`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ImportOptions {
    /// Read both stores and report, writing nothing.
    pub dry_run: bool,
    /// Keys an earlier import from this source found in, or copied to, this target. For a
    /// target that keeps no change times, such a key the target lacks now was deleted there
    /// since (nothing else removes it), so it is left deleted.
    pub imported_before: HashSet<SecretKey>,
    /// Copy keys the target lacks even when it was deleted there (recorded by the target, or
    /// known from `imported_before`): the user asks to bring signed-out secrets back.
    pub restore_deleted: bool,
}

impl ImportOptions {
    /// A real import (or a dry run), leaving deleted keys deleted, with no earlier imports.
    pub fn new(dry_run: bool) -> Self {
        ImportOptions {
            dry_run,
            ..ImportOptions::default()
        }
    }

    /// The keys an earlier import from the same source handled (see the field).
    pub fn imported_before(mut self, keys: HashSet<SecretKey>) -> Self {
        self.imported_before = keys;
        self
    }

    /// Whether to bring deleted keys back (see the field).
    pub fn restore_deleted(mut self, restore: bool) -> Self {
        self.restore_deleted = restore;
        self
    }
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
    /// Keys deleted in the target after the legacy copy was made (another app signed out):
    /// not copied, with the reason (when the target recorded the delete, and how it is known).
    pub left_deleted: Vec<(SecretKey, String)>,
    /// Keys that could not be copied, with the reason. A later run retries them.
    pub failed: Vec<(SecretKey, String)>,
}

impl ImportReport {
    /// True when no key failed (conflicts and deletes left standing are not failures: see
    /// [`import_legacy`]).
    pub fn is_success(&self) -> bool {
        self.failed.is_empty()
    }

    /// Keys the target held or now holds from this import: what a later import must treat as
    /// imported before ([`ImportOptions::imported_before`]). Empty for a dry run.
    pub fn handled(&self) -> impl Iterator<Item = &SecretKey> {
        let real = !self.dry_run;
        self.imported
            .iter()
            .chain(&self.already_present)
            .chain(self.conflicts.iter().map(|(k, _)| k))
            .filter(move |_| real)
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, {} already present, {} kept (different value in the target), \
             {} left deleted (deleted in the target), {} failed",
            self.imported.len(),
            if self.dry_run {
                "to import"
            } else {
                "imported"
            },
            self.already_present.len(),
            self.conflicts.len(),
            self.left_deleted.len(),
            self.failed.len()
        )
    }
}

/// Keys written to the target per batch: one durable transaction each in the vault, instead
/// of one per key.
const BATCH: usize = 256;

/// [`import_legacy_with`] with no earlier imports known and deleted keys left deleted.
pub fn import_legacy(
    source: &dyn Store,
    target: &dyn Store,
    dry_run: bool,
    progress: &mut dyn FnMut(&ImportProgress<'_>),
) -> Result<ImportReport> {
    import_legacy_with(source, target, &ImportOptions::new(dry_run), progress)
}

/// Copies every secret `source` lists into `target`, key by key, and reports what happened.
///
/// - Idempotent: a key the target already holds with the same value is `already_present`, so
///   a re-run imports only what is missing or failed before.
/// - A key the target holds with a **different** value is a conflict: the target's value is
///   kept and the key is reported with the reason. The target is the shared store other apps
///   write too, so its value may be newer (a refreshed token) than the legacy copy; this is the
///   same rule `SecretStorage`'s migration follows. Conflicts are not failures: re-running
///   cannot resolve them, and the shared value is a working sign-in.
/// - A key the target lacks because it was deleted there is not copied (`left_deleted`): the
///   delete (another app signing out) is later than the legacy copy, as in `SecretStorage`'s
///   migration. A target that [keeps change times](Store::keeps_change_times) says so itself,
///   and the copy is conditional on it ([`Store::set_many_unless_changed_after`]), so a delete
///   made during the import stands too; for one that keeps none, a key in
///   [`ImportOptions::imported_before`] counts as deleted. `restore_deleted` copies them anyway.
/// - A key that cannot be read from the source (undecryptable, corrupt) or read or written in
///   the target is `failed`, with the reason; the others go on. Nothing is ever deleted.
/// - Writes go to the target in batches; when a batch fails, its keys are written one by one,
///   so that each key still gets its own outcome.
/// - A dry run reads both stores and writes nothing.
///
/// Fails as a whole only when the source cannot list its keys.
pub fn import_legacy_with(
    source: &dyn Store,
    target: &dyn Store,
    options: &ImportOptions,
    progress: &mut dyn FnMut(&ImportProgress<'_>),
) -> Result<ImportReport> {
    let keys = source.keys()?;
    let total = keys.len();
    let mut report = ImportReport {
        dry_run: options.dry_run,
        ..ImportReport::default()
    };
    let mut done = 0;
    for chunk in keys.chunks(BATCH) {
        // Each key's outcome; `None` for the keys waiting in `pending` to be written.
        let mut outcomes: Vec<Option<ImportOutcome>> = Vec::with_capacity(chunk.len());
        let mut pending = Vec::new();
        for key in chunk {
            match examine(source, target, key, options, &mut report) {
                Examined::Copy(value) => {
                    pending.push((key.clone(), value));
                    outcomes.push(None);
                }
                Examined::Done(outcome) => outcomes.push(Some(outcome)),
            }
        }
        let mut written = if options.dry_run {
            report
                .imported
                .extend(pending.iter().map(|(k, _)| k.clone()));
            vec![ImportOutcome::Imported; pending.len()]
        } else {
            write(target, &pending, options.restore_deleted, &mut report)
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

/// Why a key the target recorded as deleted is not copied.
fn deleted_reason(target: &dyn Store, at: Option<SystemTime>) -> String {
    let when = at.map_or_else(String::new, |at| format!(" at {}", utc_stamp(at)));
    format!(
        "deleted in the shared store ({}){when} (an app signed out); left deleted, since this \
         database does not say when its copy was written: if the app signed in again since, \
         --restore-deleted imports its copy",
        target.info().kind
    )
}

/// Reads `key` from both stores; records the outcome unless the value is to be copied.
fn examine(
    source: &dyn Store,
    target: &dyn Store,
    key: &SecretKey,
    options: &ImportOptions,
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
        Ok(None) if options.restore_deleted => Examined::Copy(value),
        Ok(None) if target.keeps_change_times() => match target.deleted_at(key) {
            Ok(None) => Examined::Copy(value),
            Ok(Some(at)) => {
                report
                    .left_deleted
                    .push((key.clone(), deleted_reason(target, Some(at))));
                Examined::Done(ImportOutcome::LeftDeleted)
            }
            Err(e) => fail(format!("reading when the target last deleted it: {e}")),
        },
        Ok(None) if options.imported_before.contains(key) => {
            report.left_deleted.push((
                key.clone(),
                format!(
                    "an earlier import from this database copied it (or found it) into the shared store ({}), \
                     which no longer holds it: an app signed out (that store records no \
                     change times, so keyshare remembers its imports); left deleted \
                     (--restore-deleted imports it again)",
                    target.info().kind
                ),
            ));
            Examined::Done(ImportOutcome::LeftDeleted)
        }
        Ok(None) => Examined::Copy(value),
        Err(e) => fail(format!("reading the target: {e}")),
    }
}

/// Writes a batch; if the batch fails, each key on its own. Returns each key's outcome.
///
/// Over a target that keeps change times, the writes are conditional on the key not having
/// changed there at all (a delete made since `examine` looked stands), unless `restore`.
fn write(
    target: &dyn Store,
    pending: &[(SecretKey, SecretValue)],
    restore: bool,
    report: &mut ImportReport,
) -> Vec<ImportOutcome> {
    if pending.is_empty() {
        return Vec::new();
    }
    let conditional = target.keeps_change_times() && !restore;
    let batch = if conditional {
        target.set_many_unless_changed_after(pending, UNIX_EPOCH)
    } else {
        target.set_many(pending).map(|()| vec![true; pending.len()])
    };
    if let Ok(written) = batch {
        if written.len() == pending.len() {
            return pending
                .iter()
                .zip(written)
                .map(|((key, _), written)| outcome_of(target, key, Ok(written), report))
                .collect();
        }
    }
    pending
        .iter()
        .map(|(key, value)| {
            let result = if conditional {
                target.write_unless_changed_after(key, Some(value), UNIX_EPOCH)
            } else {
                target.set(key, value).map(|()| true)
            };
            outcome_of(target, key, result, report)
        })
        .collect()
}

/// Records one key's write: written, refused by a later change, or failed.
fn outcome_of(
    target: &dyn Store,
    key: &SecretKey,
    written: Result<bool>,
    report: &mut ImportReport,
) -> ImportOutcome {
    match written {
        Ok(true) => {
            report.imported.push(key.clone());
            ImportOutcome::Imported
        }
        // Changed in the target since `examine` looked: another app deleted or wrote it
        // during the import, and that later change stands.
        Ok(false) => match target.deleted_at(key) {
            Ok(Some(at)) => {
                report
                    .left_deleted
                    .push((key.clone(), deleted_reason(target, Some(at))));
                ImportOutcome::LeftDeleted
            }
            _ => {
                report.conflicts.push((
                    key.clone(),
                    format!(
                        "another app wrote it in {} during the import; its value was kept",
                        target.info().kind
                    ),
                ));
                ImportOutcome::Conflict
            }
        },
        Err(e) => {
            report
                .failed
                .push((key.clone(), format!("writing the target: {e}")));
            ImportOutcome::Failed
        }
    }
}
