//! The consistency contract, model-checked over memory stores with faults injected anywhere.
//!
//! `KEYSHARE_MODEL_CASES` overrides the number of cases (default 2,000 of 50 to 100 operations).
//! The long soak (about 1,000,000 operations) is
//! `KEYSHARE_MODEL_CASES=13400 cargo test --release -p keyshare --test model -- --ignored soak`.

use std::sync::Arc;

use keyshare::testing::model::{check_model, ModelConfig, ModelStores};
use keyshare::MemoryStore;

fn memory_stores() -> ModelStores {
    ModelStores {
        shared: Arc::new(MemoryStore::new()),
        legacy: Arc::new(MemoryStore::new()),
        journal: Arc::new(MemoryStore::new()),
    }
}

#[test]
fn consistency_contract_holds_with_faults() {
    check_model(&ModelConfig::from_env(2000), &memory_stores);
}

#[test]
#[ignore = "long soak: about a million operations; run explicitly"]
fn soak() {
    let mut config = ModelConfig::from_env(13_400);
    config.min_ops = 50;
    config.max_ops = 100;
    check_model(&config, &memory_stores);
}
