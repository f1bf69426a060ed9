//! The model-based test of `SecretStorage`'s consistency contract, reusable over any stores.
//!
//! Random sequences of set / get / delete / keys / migrate / repair / restart, plus writes by
//! "another app" straight to the shared store, run with random faults (fail before the effect,
//! fail after it, stall until the timeout) injected into the shared store, the legacy store or
//! the repair journal at any call. A reference model tracks, per key, every value a `get` may
//! legally return:
//! - after an acknowledged `set(v)`: exactly `{v}`; after an acknowledged `delete`: `{absent}`;
//! - an operation that returned an error adds its outcome (it may or may not have happened);
//! - another app's write to the shared store adds its outcome.
//!
//! Checks: every `get` and `keys` answer is allowed; an operation during which no fault fired
//! must succeed; and once faults stop, a repair and a migration pass leave the shared store (what
//! other apps read) agreeing with this app's reads. What they agree on is stricter than what a
//! `get` may return meanwhile: another app's change is the latest write of its key, so after it
//! only this app's own later operations may replace it (until a repair, this app may still read
//! its own earlier write that the shared store failed; afterwards, never). That needs a shared
//! store that records change times (see `Store::keeps_change_times`); over one that does not,
//! the final state may also be this app's earlier write, as a `get` may.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use crate::model::{SecretKey, SecretValue};
use crate::storage::SecretStorage;
use crate::store::Store;
use crate::testing::fault::{Fault, FaultStore};

/// The stores one case runs over. Each case gets fresh, empty ones.
#[derive(Debug)]
pub struct ModelStores {
    /// The shared store (other apps write it too).
    pub shared: Arc<dyn Store>,
    /// The app's legacy store.
    pub legacy: Arc<dyn Store>,
    /// The app's repair journal.
    pub journal: Arc<dyn Store>,
}

/// How much to run.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Number of random cases.
    pub cases: u32,
    /// Operations per case, at least.
    pub min_ops: usize,
    /// Operations per case, at most.
    pub max_ops: usize,
    /// How long an injected stall blocks.
    pub stall: Duration,
}

impl ModelConfig {
    /// `cases` from `KEYSHARE_MODEL_CASES` if set, else `default_cases`; 50 to 100 operations.
    pub fn from_env(default_cases: u32) -> Self {
        let cases = std::env::var("KEYSHARE_MODEL_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_cases);
        ModelConfig {
            cases,
            min_ops: 50,
            max_ops: 100,
            stall: Duration::from_micros(200),
        }
    }
}

const KEYS: [&str; 3] = [
    "github.auth",
    "b",
    r#"{"extensionId":"publisher.ext","key":"apiToken"}"#,
];

#[derive(Clone, Copy, Debug)]
enum Target {
    Shared,
    Legacy,
    Journal,
}

#[derive(Clone, Debug)]
enum Op {
    Set(usize),
    Get(usize),
    Delete(usize),
    Keys,
    Migrate,
    Repair,
    OtherSet(usize),
    OtherDelete(usize),
    Restart,
}

#[derive(Clone, Debug)]
struct Step {
    op: Op,
    fault: Option<(Target, u64, Fault)>,
}

#[derive(Clone, Debug)]
struct Case {
    initial_legacy: Vec<bool>,
    steps: Vec<Step>,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let k = 0..KEYS.len();
    prop_oneof![
        25 => k.clone().prop_map(Op::Set),
        25 => k.clone().prop_map(Op::Get),
        10 => k.clone().prop_map(Op::Delete),
        8 => Just(Op::Keys),
        4 => Just(Op::Migrate),
        4 => Just(Op::Repair),
        5 => k.clone().prop_map(Op::OtherSet),
        4 => k.prop_map(Op::OtherDelete),
        4 => Just(Op::Restart),
    ]
}

fn fault_strategy() -> impl Strategy<Value = Option<(Target, u64, Fault)>> {
    let target = prop_oneof![
        3 => Just(Target::Shared),
        2 => Just(Target::Legacy),
        1 => Just(Target::Journal),
    ];
    let kind = prop_oneof![
        Just(Fault::FailBefore),
        Just(Fault::FailAfter),
        Just(Fault::Stall)
    ];
    prop_oneof![
        6 => Just(None),
        4 => (target, 0..3u64, kind).prop_map(Some),
    ]
}

fn case_strategy(config: &ModelConfig) -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(any::<bool>(), KEYS.len()),
        proptest::collection::vec(
            (op_strategy(), fault_strategy()).prop_map(|(op, fault)| Step { op, fault }),
            config.min_ops..=config.max_ops,
        ),
    )
        .prop_map(|(initial_legacy, steps)| Case {
            initial_legacy,
            steps,
        })
}

type Allowed = HashSet<Option<String>>;

struct Harness {
    raw_shared: Arc<dyn Store>,
    shared: Arc<FaultStore<Arc<dyn Store>>>,
    legacy: Arc<FaultStore<Arc<dyn Store>>>,
    journal: Arc<FaultStore<Arc<dyn Store>>>,
    storage: SecretStorage,
}

impl Harness {
    fn new(stores: ModelStores, stall: Duration) -> Self {
        let shared = Arc::new(FaultStore::new(stores.shared.clone(), stall));
        let legacy = Arc::new(FaultStore::new(stores.legacy, stall));
        let journal = Arc::new(FaultStore::new(stores.journal, stall));
        let storage = Self::build(&shared, &legacy, &journal);
        Harness {
            raw_shared: stores.shared,
            shared,
            legacy,
            journal,
            storage,
        }
    }

    fn build(
        shared: &Arc<FaultStore<Arc<dyn Store>>>,
        legacy: &Arc<FaultStore<Arc<dyn Store>>>,
        journal: &Arc<FaultStore<Arc<dyn Store>>>,
    ) -> SecretStorage {
        SecretStorage::builder(shared.clone())
            .legacy(legacy.clone())
            .journal(journal.clone())
            .build()
    }

    fn fired(&self) -> u64 {
        self.shared.fired() + self.legacy.fired() + self.journal.fired()
    }

    fn disarm(&self) {
        self.shared.disarm();
        self.legacy.disarm();
        self.journal.disarm();
    }
}

fn key(i: usize) -> SecretKey {
    SecretKey::new(KEYS[i]).expect("model keys are valid")
}

fn text(v: &Option<SecretValue>) -> Option<String> {
    v.as_ref()
        .map(|v| String::from_utf8_lossy(v.expose_secret()).into_owned())
}

fn run_case(
    case: &Case,
    make: &dyn Fn() -> ModelStores,
    stall: Duration,
) -> Result<(), TestCaseError> {
    let stores = make();
    let mut allowed: Vec<Allowed> = vec![Allowed::new(); KEYS.len()];
    // What the key may hold once repaired: as `allowed`, except that another app's change
    // replaces it instead of adding to it.
    let strict = stores.shared.keeps_change_times();
    let mut settled: Vec<Allowed> = vec![Allowed::new(); KEYS.len()];
    for (i, present) in case.initial_legacy.iter().enumerate() {
        let v = if *present {
            let v = format!("init-{i}");
            stores
                .legacy
                .set(&key(i), &SecretValue::from_slice(v.as_bytes()))
                .map_err(|e| TestCaseError::fail(format!("seeding legacy: {e}")))?;
            Some(v)
        } else {
            None
        };
        allowed[i].insert(v.clone());
        settled[i].insert(v);
    }
    let mut h = Harness::new(stores, stall);

    for (n, step) in case.steps.iter().enumerate() {
        if let Some((target, nth, fault)) = step.fault {
            let store = match target {
                Target::Shared => &h.shared,
                Target::Legacy => &h.legacy,
                Target::Journal => &h.journal,
            };
            store.arm(nth, fault);
        }
        let fired_before = h.fired();
        let op_failed: Option<String>;
        match &step.op {
            Op::Set(i) => {
                let v = format!("v{n}");
                match h
                    .storage
                    .set(&key(*i), &SecretValue::from_slice(v.as_bytes()))
                {
                    Ok(()) => {
                        allowed[*i] = Allowed::from([Some(v.clone())]);
                        settled[*i] = Allowed::from([Some(v)]);
                        op_failed = None;
                    }
                    Err(e) => {
                        allowed[*i].insert(Some(v.clone()));
                        settled[*i].insert(Some(v));
                        op_failed = Some(e.to_string());
                    }
                }
            }
            Op::Delete(i) => match h.storage.delete(&key(*i)) {
                Ok(_) => {
                    allowed[*i] = Allowed::from([None]);
                    settled[*i] = Allowed::from([None]);
                    op_failed = None;
                }
                Err(e) => {
                    allowed[*i].insert(None);
                    settled[*i].insert(None);
                    op_failed = Some(e.to_string());
                }
            },
            Op::Get(i) => match h.storage.get(&key(*i)) {
                Ok(v) => {
                    let got = text(&v);
                    prop_assert!(
                        allowed[*i].contains(&got),
                        "step {n}: get({}) returned {got:?}, allowed {:?}",
                        KEYS[*i],
                        allowed[*i]
                    );
                    op_failed = None;
                }
                Err(e) => op_failed = Some(e.to_string()),
            },
            Op::Keys => match h.storage.keys() {
                Ok(keys) => {
                    let listed: BTreeSet<String> =
                        keys.iter().map(|k| k.as_str().to_owned()).collect();
                    for (i, name) in KEYS.iter().enumerate() {
                        let present = listed.contains(*name);
                        let ok = if present {
                            allowed[i].iter().any(|v| v.is_some())
                        } else {
                            allowed[i].contains(&None)
                        };
                        prop_assert!(
                            ok,
                            "step {n}: keys() {} {name}, allowed {:?}",
                            if present { "listed" } else { "omitted" },
                            allowed[i]
                        );
                    }
                    op_failed = None;
                }
                Err(e) => op_failed = Some(e.to_string()),
            },
            Op::Migrate => {
                op_failed = h.storage.migrate(|_| {}).err().map(|e| e.to_string());
            }
            Op::Repair => {
                op_failed = h.storage.repair().err().map(|e| e.to_string());
            }
            Op::OtherSet(i) => {
                let v = format!("other{n}");
                h.raw_shared
                    .set(&key(*i), &SecretValue::from_slice(v.as_bytes()))
                    .map_err(|e| TestCaseError::fail(format!("other app write: {e}")))?;
                allowed[*i].insert(Some(v.clone()));
                if strict {
                    settled[*i] = Allowed::from([Some(v)]);
                } else {
                    settled[*i].insert(Some(v));
                }
                op_failed = None;
            }
            Op::OtherDelete(i) => {
                h.raw_shared
                    .delete(&key(*i))
                    .map_err(|e| TestCaseError::fail(format!("other app delete: {e}")))?;
                allowed[*i].insert(None);
                if strict {
                    settled[*i] = Allowed::from([None]);
                } else {
                    settled[*i].insert(None);
                }
                op_failed = None;
            }
            Op::Restart => {
                h.storage = Harness::build(&h.shared, &h.legacy, &h.journal);
                op_failed = None;
            }
        }
        let fired = h.fired() > fired_before;
        h.disarm();
        if let Some(err) = op_failed {
            prop_assert!(
                fired,
                "step {n}: {:?} failed with no injected fault: {err}",
                step.op
            );
        }
    }

    // Faults stop: one repair and one migration pass must bring the shared store, which other
    // apps read, into agreement with this app.
    h.disarm();
    let repair = h
        .storage
        .repair()
        .map_err(|e| TestCaseError::fail(format!("final repair: {e}")))?;
    prop_assert!(
        repair.failed.is_empty(),
        "final repair failed: {:?}",
        repair.failed
    );
    let migration = h
        .storage
        .migrate(|_| {})
        .map_err(|e| TestCaseError::fail(format!("final migration: {e}")))?;
    prop_assert!(
        migration.complete,
        "final migration incomplete: {:?}",
        migration.failed
    );
    prop_assert!(h.storage.status().pending_repairs.is_empty());
    for (i, name) in KEYS.iter().enumerate() {
        let mine = text(
            &h.storage
                .get(&key(i))
                .map_err(|e| TestCaseError::fail(format!("final get: {e}")))?,
        );
        let theirs = text(
            &h.raw_shared
                .get(&key(i))
                .map_err(|e| TestCaseError::fail(format!("final shared get: {e}")))?,
        );
        prop_assert!(
            settled[i].contains(&mine),
            "final get({name}) = {mine:?}, allowed {:?}",
            settled[i]
        );
        prop_assert_eq!(
            &mine,
            &theirs,
            "after repair, another app reading {} disagrees",
            name
        );
    }
    Ok(())
}

/// Runs the model test; panics with the shrunk failing case on a violation.
pub fn check_model(config: &ModelConfig, make: &dyn Fn() -> ModelStores) {
    let mut runner = TestRunner::new(Config {
        cases: config.cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        max_shrink_iters: 2048,
        ..Config::default()
    });
    let stall = config.stall;
    let result = runner.run(&case_strategy(config), |case| run_case(&case, make, stall));
    if let Err(err) = result {
        panic!("model test failed: {err}");
    }
}
