//! A check of the vault's write-ahead log before SQLite opens it: a damaged frame followed by
//! committed transactions is reported instead of silently dropped.
//!
//! Why: when SQLite recovers a WAL (the first connection after the last one closed), it keeps
//! the transactions up to the first frame whose checksum fails and ignores the rest, since that
//! is what a write torn by a crash looks like. A frame damaged later (a flipped bit on disk)
//! looks the same, so acknowledged secrets vanished ("not found"), and the next checkpoint
//! emptied the WAL that held them (found by QA). A torn write can only be in the last
//! transaction: SQLite syncs a transaction's frames before it acknowledges it and before the
//! next one is written. So when frames after a damaged one still verify, chained from the
//! damaged frame's own recorded checksum, and commit a *later* transaction, the damaged one had
//! been synced: something damaged a committed transaction, and the vault is refused as corrupt
//! with its files left untouched.
//!
//! Not caught: damage in the last transaction, which nothing after it can vouch for (a power
//! loss may persist its frames in any order, so even its own intact commit frame proves
//! nothing); SQLite drops that transaction as a torn write.
//!
//! The format (sqlite.org/fileformat2.html, "WAL File Format"): a 32-byte header (magic, whose
//! low bit gives the checksum's byte order, format version, page size, checkpoint sequence,
//! two salts, a checksum of its first 24 bytes), then frames of a 24-byte header (page number,
//! database size after the commit or 0, the two salts, a cumulative checksum) and one page.
//! The checksum runs over 32-bit word pairs: `s0 += x0 + s1; s1 += x1 + s0`, wrapping.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

const HEADER_LEN: usize = 32;
const FRAME_HEADER_LEN: usize = 24;
const MAGIC_LITTLE: u32 = 0x377f_0682;
const MAGIC_BIG: u32 = 0x377f_0683;

/// How a damaged WAL looks: the first damaged frame (`None`: the log's header), and how many
/// later transactions follow its own intact.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    pub(crate) frame: Option<usize>,
    pub(crate) commits_after: usize,
}

/// Reads the WAL beside `db` (none, or one too short to hold a frame, is fine) and returns an
/// error naming it when it holds committed transactions after a damaged frame. A writer
/// appending meanwhile can make a frame look damaged for a moment, so damage is confirmed by a
/// second look before it is reported.
pub(crate) fn check(db: &Path, wal: &Path) -> Result<()> {
    let mut damage = None;
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let bytes = match read(wal) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("reading {}", wal.display()), e)),
        };
        damage = find_damage(&bytes);
        if damage.is_none() {
            return Ok(());
        }
    }
    let damage = damage.expect("set when the loop ends");
    Err(Error::Corrupt {
        store: format!("vault {}", db.display()),
        key: None,
        detail: format!(
            "its write-ahead log {} has a damaged {} followed by {} committed transaction(s), \
             which SQLite would silently drop; both files were left untouched. Copy them \
             somewhere safe; moving the -wal file aside opens the vault without those \
             transactions",
            wal.display(),
            match damage.frame {
                Some(n) => format!("frame (number {})", n + 1),
                None => "header".to_owned(),
            },
            damage.commits_after
        ),
    })
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The damage in a WAL's bytes, if committed frames follow a damaged one.
pub(crate) fn find_damage(wal: &[u8]) -> Option<Damage> {
    let header = wal.get(..HEADER_LEN)?;
    let word = |bytes: &[u8], at: usize| {
        u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
    };
    let big_endian = match word(header, 0) {
        MAGIC_BIG => true,
        MAGIC_LITTLE => false,
        // Not a WAL SQLite would use: it ignores (and resets) it, and there is nothing to save.
        _ => return None,
    };
    let page_size = word(header, 8) as usize;
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return None;
    }
    let salts = &header[16..24];
    let frames: Vec<&[u8]> = wal[HEADER_LEN..]
        .chunks_exact(FRAME_HEADER_LEN + page_size)
        .collect();
    let stored = |frame: &[u8]| (word(frame, 16), word(frame, 20));
    let is_commit = |frame: &[u8]| word(frame, 4) != 0;
    let frame_sum = |running, frame: &[u8]| {
        let running = checksum(big_endian, running, &frame[..8]);
        checksum(big_endian, running, &frame[FRAME_HEADER_LEN..])
    };
    // Commits of transactions after the one the log's end falls in: frames of this log (its
    // salts; an earlier generation's have others) from `from` on that verify chained from
    // `seed`. The first commit closes that transaction (`closed`: the end was its commit);
    // each one after it proves the transaction had been synced.
    let later_commits = |from: usize, seed, mut closed: bool| {
        let mut running = seed;
        let mut commits = 0;
        for frame in &frames[from..] {
            let sum = frame_sum(running, frame);
            if &frame[8..16] != salts || sum != stored(frame) {
                break;
            }
            running = sum;
            if is_commit(frame) {
                if closed {
                    commits += 1;
                }
                closed = true;
            }
        }
        commits
    };
    let found = |frame, commits_after: usize| {
        (commits_after > 0).then_some(Damage {
            frame,
            commits_after,
        })
    };
    let header_sum = checksum(big_endian, (0, 0), &header[..24]);
    let recorded = (word(header, 24), word(header, 28));
    if header_sum != recorded {
        // SQLite ignores the whole log. The header is written with the first transaction after
        // the log restarts, so only a second one proves it was synced. Either checksum may be
        // the true one: the damage may be in the header's fields or in its checksum.
        let commits = [recorded, header_sum]
            .into_iter()
            .map(|seed| later_commits(0, seed, false))
            .max()
            .unwrap_or(0);
        return found(None, commits);
    }
    let mut running = header_sum;
    for (n, frame) in frames.iter().enumerate() {
        let sum = frame_sum(running, frame);
        if &frame[8..16] == salts && sum == stored(frame) {
            running = sum;
            continue;
        }
        // Where SQLite takes the log to end: a frame torn by a crash, one of an earlier
        // generation, or a damaged one (its data, its checksum field or its salts). Later
        // frames may verify chained from its recorded checksum (its data was damaged) or from
        // the one its bytes give (its checksum field was).
        let commits = [stored(frame), sum]
            .into_iter()
            .map(|seed| later_commits(n + 1, seed, is_commit(frame)))
            .max()
            .unwrap_or(0);
        return found(Some(n), commits);
    }
    None
}

/// SQLite's WAL checksum of `data` (a multiple of 8 bytes), continuing from `running`.
fn checksum(big_endian: bool, running: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s0, mut s1) = running;
    for pair in data.chunks_exact(8) {
        let read = |b: &[u8]| {
            let b: [u8; 4] = b.try_into().expect("4 bytes");
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s0 = s0.wrapping_add(read(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(read(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A WAL header (big-endian checksums) for `page_size`, with a valid checksum.
    fn header(page_size: u32) -> Vec<u8> {
        let mut h = Vec::new();
        for word in [MAGIC_BIG, 3_007_000, page_size, 0, 7, 9] {
            h.extend_from_slice(&word.to_be_bytes());
        }
        let (s0, s1) = checksum(true, (0, 0), &h);
        h.extend_from_slice(&s0.to_be_bytes());
        h.extend_from_slice(&s1.to_be_bytes());
        h
    }

    /// Appends a frame for `page`, a commit when `commit`, chained from `running`.
    fn frame(wal: &mut Vec<u8>, running: &mut (u32, u32), page: &[u8], commit: bool) {
        let mut f = Vec::new();
        f.extend_from_slice(&1u32.to_be_bytes());
        f.extend_from_slice(&u32::from(commit).to_be_bytes());
        f.extend_from_slice(&wal[16..24]);
        let sum = checksum(true, checksum(true, *running, &f[..8]), page);
        *running = sum;
        f.extend_from_slice(&sum.0.to_be_bytes());
        f.extend_from_slice(&sum.1.to_be_bytes());
        f.extend_from_slice(page);
        wal.extend_from_slice(&f);
    }

    fn wal_of(commits: &[bool]) -> Vec<u8> {
        let mut wal = header(512);
        let mut running = checksum(true, (0, 0), &wal[..24]);
        for (n, commit) in commits.iter().enumerate() {
            frame(&mut wal, &mut running, &[n as u8; 512], *commit);
        }
        wal
    }

    #[test]
    fn damage_is_reported_only_before_a_later_commit() {
        // Three transactions: frames 0-1, 2, 3-4.
        let clean = wal_of(&[false, true, true, false, true]);
        assert_eq!(find_damage(&clean), None);
        let page = |n: usize| 32 + n * (24 + 512) + 24;
        for (damaged, later) in [(0, 2), (1, 2), (2, 1)] {
            let mut wal = clean.clone();
            wal[page(damaged) + 5] ^= 1;
            assert_eq!(
                find_damage(&wal),
                Some(Damage {
                    frame: Some(damaged),
                    commits_after: later
                }),
                "frame {damaged}"
            );
        }
        // Found by QA: damage to a frame's checksum field or its salts, and to the log's
        // header, dropped the later transactions too.
        let header = |n: usize| 32 + n * (24 + 512);
        for (at, frame, later) in [
            (header(0) + 17, Some(0), 2),
            (header(1) + 9, Some(1), 2),
            (header(2) + 20, Some(2), 1),
            (27, None, 2),
            (17, None, 0),
        ] {
            let mut wal = clean.clone();
            wal[at] ^= 1;
            let expected = (later > 0).then_some(Damage {
                frame,
                commits_after: later,
            });
            assert_eq!(find_damage(&wal), expected, "byte {at}");
        }
        // The last transaction's frames, its commit intact or not: a torn write for all anyone
        // can tell.
        for damaged in [3, 4] {
            let mut wal = clean.clone();
            wal[page(damaged) + 5] ^= 1;
            assert_eq!(find_damage(&wal), None, "frame {damaged}");
        }
        // Frames of an earlier log generation (other salts) end the log.
        let mut old = clean;
        old[32 + 3 * (24 + 512) + 8] ^= 1;
        assert_eq!(find_damage(&old), None);
    }

    proptest! {
        // Whatever the file holds, the check answers without panicking.
        #[test]
        fn any_bytes_are_answered(mut bytes in proptest::collection::vec(any::<u8>(), 0..3000),
                                  valid_header in any::<bool>()) {
            if valid_header && bytes.len() >= 32 {
                bytes[..32].copy_from_slice(&header(512));
            }
            let _ = find_damage(&bytes);
        }
    }
}
