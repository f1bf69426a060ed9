//! Importing 10,000 `v11` secrets from a VS Code state database, against the bare decryption
//! of the same rows, measured in the same run.
//!
//! `cargo bench -p keyshare --bench import` builds a `state.vscdb` with 10,000 extension
//! secrets (a 200-byte token each, `v11` with a keyring password), then:
//! - baseline: decodes and decrypts the 10,000 row values in memory (oscrypt alone);
//! - measured: `import_legacy` from an `ElectronStore` into a new `VaultStore` (key file, WAL,
//!   `synchronous=FULL`: every secret is one durable transaction), in a child process so that
//!   its peak RSS (VmHWM) is its own.
//!
//! Targets: the import under 1 s, peak RSS under 64 MiB.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keyshare::store::electron::{import_legacy, ElectronStore, SafeStorageKeys, TARGET_MARKER_ROW};
use keyshare::store::vault::{VaultOptions, VaultStore};

const SECRETS: usize = 10_000;
const KEYRING_PASSWORD: &[u8] = b"k8Q2Vx0mZt5bN1cR4yW7pA==";
const CHILD_ENV: &str = "KEYSHARE_IMPORT_BENCH_DB";
const TARGET_TIME: Duration = Duration::from_secs(1);
const TARGET_RSS_KIB: u64 = 64 * 1024;

fn row_key(i: usize) -> String {
    oscrypt::extension_secret_row_key(&format!("publisher.extension-{i}"), "auth.token")
}

/// The database, written in one transaction, exactly as VS Code lays it out.
fn build_database(path: &Path) -> Vec<String> {
    let key = oscrypt::Key::linux_v11(KEYRING_PASSWORD);
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA user_version = 1; \
         CREATE TABLE IF NOT EXISTS ItemTable (key TEXT UNIQUE ON CONFLICT REPLACE, value BLOB)",
    )
    .unwrap();
    let tx = conn.transaction().unwrap();
    let mut marker = String::from("{");
    let mut values = Vec::with_capacity(SECRETS);
    for i in 0..SECRETS {
        let token = format!("{:0>200}", format!("gho_{i}"));
        let value = oscrypt::encode_buffer_json(&oscrypt::encrypt(&key, token.as_bytes()).unwrap());
        tx.execute(
            "INSERT INTO ItemTable (key, value) VALUES (?1, ?2)",
            (row_key(i), &value),
        )
        .unwrap();
        if i > 0 {
            marker.push(',');
        }
        marker.push_str(&serde_json::to_string(&row_key(i)).unwrap());
        marker.push_str(":1");
        values.push(value);
    }
    marker.push('}');
    tx.execute(
        "INSERT INTO ItemTable (key, value) VALUES (?1, ?2)",
        (TARGET_MARKER_ROW, marker),
    )
    .unwrap();
    tx.commit().unwrap();
    values
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The measured part, in its own process: open, import, report time and peak RSS.
fn child(db: &str) {
    // The vault insists on a private directory of its own.
    let vault_path = Path::new(db).with_file_name("vault").join("vault.db");
    let mut options = VaultOptions::new(&vault_path, "dev.keyshare.shared-secrets");
    options.keys.passphrase_env = None;
    let start = Instant::now();
    let keys = SafeStorageKeys::linux_keyring(KEYRING_PASSWORD, "bench".to_owned(), false);
    let source = ElectronStore::builder(db, keys)
        .read_only(true)
        .open()
        .unwrap();
    let target = VaultStore::open(options).unwrap();
    let report = import_legacy(&source, &target, false, &mut |_| {}).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(report.imported.len(), SECRETS, "{report}");
    assert!(report.failed.is_empty());
    println!("{} {}", elapsed.as_nanos(), peak_rss_kib());
}

fn main() {
    if let Ok(db) = std::env::var(CHILD_ENV) {
        child(&db);
        return;
    }
    // `cargo test --benches` runs bench binaries with `--bench` absent; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("import bench: skipped (run with `cargo bench`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.vscdb");
    let values = build_database(&db);

    let keys = oscrypt::Keys::linux(Some(KEYRING_PASSWORD));
    let start = Instant::now();
    for value in &values {
        let blob = oscrypt::decode_buffer_json(value).unwrap();
        black_box(oscrypt::decrypt(&keys, &blob).unwrap());
    }
    let decrypt_only = start.elapsed();

    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().unwrap());
    let import = Duration::from_nanos(fields.next().unwrap());
    let rss_kib = fields.next().unwrap();

    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "baseline  decode + decrypt {SECRETS} v11 rows in memory:      {:8.1} ms",
        decrypt_only.as_secs_f64() * 1e3
    );
    println!(
        "measured  import {SECRETS} v11 secrets (ElectronStore -> VaultStore): {:8.1} ms  \
         ratio {:.1}x  (target < {} ms: {})",
        import.as_secs_f64() * 1e3,
        import.as_secs_f64() / decrypt_only.as_secs_f64(),
        TARGET_TIME.as_millis(),
        verdict(import < TARGET_TIME)
    );
    println!(
        "measured  import peak RSS (VmHWM of the importing process):     {:8.1} MiB (target < {} MiB: {})",
        rss_kib as f64 / 1024.0,
        TARGET_RSS_KIB / 1024,
        verdict(rss_kib < TARGET_RSS_KIB)
    );
}
