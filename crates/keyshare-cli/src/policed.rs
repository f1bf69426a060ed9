//! The broker's access policy (`[apps.*]` in config.toml), applied by a command that opens the
//! shared store itself because no broker answered (`--no-autostart`, `autostart = false`, a
//! broker that could not start). Found by QA: such a command read any key, whatever the policy
//! said, without a word, while the same command through a broker was denied. Only `--direct`
//! bypasses the policy, as the threat model says.

use std::sync::Arc;

use keyshare::{Error, SecretKey, SecretValue, Store, StoreInfo, UnavailableReason};
use keyshare_broker::access::{AccessPolicy, Grant};

/// The shared store as `app` may use it under `policy`: a refused app fails at once (as its
/// hello would), and each key it may not use is denied, as the broker denies it.
pub fn police(
    store: Arc<dyn Store>,
    policy: &AccessPolicy,
    app: &keyshare::AppId,
) -> keyshare::Result<Arc<dyn Store>> {
    // What the broker would see of this process: the program it runs.
    let exe = std::env::current_exe().ok();
    let grant = policy.admit(app, exe.as_deref()).map_err(|refusal| {
        Error::unavailable(
            "access policy",
            UnavailableReason::Denied,
            format!(
                "{refusal} (the broker's policy, applied by this command, which opens the shared \
                 store itself since no broker answers; --direct bypasses it)"
            ),
        )
    })?;
    Ok(Arc::new(Policed {
        inner: store,
        grant,
    }))
}

#[derive(Debug)]
struct Policed {
    inner: Arc<dyn Store>,
    grant: Grant,
}

impl Policed {
    fn check(&self, key: &SecretKey) -> keyshare::Result<()> {
        if self.grant.allows(key) {
            return Ok(());
        }
        Err(Error::unavailable(
            "access policy",
            UnavailableReason::Denied,
            self.grant.denial(key),
        ))
    }
}

impl Store for Policed {
    fn info(&self) -> StoreInfo {
        self.inner.info()
    }

    fn get(&self, key: &SecretKey) -> keyshare::Result<Option<SecretValue>> {
        self.check(key)?;
        self.inner.get(key)
    }

    fn set(&self, key: &SecretKey, value: &SecretValue) -> keyshare::Result<()> {
        self.check(key)?;
        self.inner.set(key, value)
    }

    fn delete(&self, key: &SecretKey) -> keyshare::Result<bool> {
        self.check(key)?;
        self.inner.delete(key)
    }

    fn keys(&self) -> keyshare::Result<Vec<SecretKey>> {
        let mut keys = self.inner.keys()?;
        keys.retain(|key| self.grant.allows(key));
        Ok(keys)
    }

    fn set_many(&self, entries: &[(SecretKey, SecretValue)]) -> keyshare::Result<()> {
        for (key, _) in entries {
            self.check(key)?;
        }
        self.inner.set_many(entries)
    }

    fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: std::time::SystemTime,
    ) -> keyshare::Result<bool> {
        self.check(key)?;
        self.inner.write_unless_changed_after(key, value, after)
    }

    fn set_many_unless_changed_after(
        &self,
        entries: &[(SecretKey, SecretValue)],
        after: std::time::SystemTime,
    ) -> keyshare::Result<Vec<bool>> {
        for (key, _) in entries {
            self.check(key)?;
        }
        self.inner.set_many_unless_changed_after(entries, after)
    }

    fn keeps_change_times(&self) -> bool {
        self.inner.keeps_change_times()
    }

    fn deleted_at(&self, key: &SecretKey) -> keyshare::Result<Option<std::time::SystemTime>> {
        self.check(key)?;
        self.inner.deleted_at(key)
    }
}
