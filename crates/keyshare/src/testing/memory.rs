//! Looking for copies of a secret in this process's memory, for tests of what an operation
//! leaves behind once its values are dropped (a process serving secrets for days must not keep
//! them in memory it no longer uses, where a memory image would find them: QA s18 F3).
//!
//! The scanner reads the process's writable mappings through `/proc/self/mem`. It never holds
//! the plaintext itself: it keeps the value's windows masked (each byte XORed with [`MASK`])
//! and unmasks the memory it reads instead, so the patterns it searches for are not
//! themselves a match. Random values make a match by chance unlikely.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileExt;

use zeroize::Zeroizing;

use crate::SecretValue;

/// What every byte of a masked value is XORed with.
pub const MASK: u8 = 0xa5;
const WINDOW: usize = 32;
const STRIDE: usize = 16;

/// The value's 32-byte windows at every 16th offset (as QA's search), masked, keyed by their
/// first 8 bytes for a quick look-up at every byte of memory.
#[derive(Debug)]
pub struct Needles {
    by_prefix: HashMap<[u8; 8], Vec<(usize, [u8; WINDOW])>>,
}

impl Needles {
    /// The windows of the value `masked_value` is the masked form of.
    pub fn new(masked_value: &[u8]) -> Self {
        let mut by_prefix: HashMap<[u8; 8], Vec<(usize, [u8; WINDOW])>> = HashMap::new();
        let mut offset = 0;
        while offset + WINDOW <= masked_value.len() {
            let window: [u8; WINDOW] = masked_value[offset..offset + WINDOW].try_into().unwrap();
            let prefix: [u8; 8] = window[..8].try_into().unwrap();
            by_prefix.entry(prefix).or_default().push((offset, window));
            offset += STRIDE;
        }
        Needles { by_prefix }
    }
}

/// Where a window of the value was found: the mapping's name and the value's offset.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hit {
    /// The mapping's name (`[heap]`, `this thread's stack`, ...).
    pub region: String,
    /// Where in the value the window found starts.
    pub value_offset: usize,
}

/// One writable mapping of this process.
#[derive(Debug)]
pub struct Region {
    start: u64,
    end: u64,
    name: String,
}

/// The process's writable mappings, as `/proc/self/maps` lists them now.
pub fn writable_regions() -> Vec<Region> {
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let name = fields.nth(3).unwrap_or("[anon]").to_owned();
            if !perms.starts_with("rw") || name == "[vvar]" || name == "[vsyscall]" {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Region {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                name,
            })
        })
        .collect()
}

/// [`scan`] of every writable mapping of the process now, naming the calling thread's stack.
pub fn scan_now(needles: &Needles) -> Vec<Hit> {
    // Any local of this thread lies in its stack's mapping.
    let here = std::hint::black_box(0u8);
    scan(
        &writable_regions(),
        needles,
        std::ptr::addr_of!(here) as u64,
    )
}

/// Searches `regions` for the value's windows. The read buffer is unmasked in place right
/// after each read, so it holds a copy of plaintext for no longer than that.
pub fn scan(regions: &[Region], needles: &Needles, stack_of_this_thread: u64) -> Vec<Hit> {
    let mem = fs::File::open("/proc/self/mem").unwrap();
    let mut buf = Zeroizing::new(vec![0u8; 1 << 20]);
    let mut hits = Vec::new();
    for region in regions {
        let name = if (region.start..region.end).contains(&stack_of_this_thread) {
            "this thread's stack".to_owned()
        } else {
            region.name.clone()
        };
        let mut at = region.start;
        while at < region.end {
            let len = ((region.end - at) as usize).min(buf.len());
            let Ok(n) = mem.read_at(&mut buf[..len], at) else {
                break;
            };
            if n == 0 {
                break;
            }
            for byte in &mut buf[..n] {
                *byte ^= MASK;
            }
            for i in 0..n.saturating_sub(WINDOW - 1) {
                let prefix: [u8; 8] = buf[i..i + 8].try_into().unwrap();
                if let Some(windows) = needles.by_prefix.get(&prefix) {
                    for (offset, window) in windows {
                        if buf[i..i + WINDOW] == window[..] {
                            hits.push(Hit {
                                region: name.clone(),
                                value_offset: *offset,
                            });
                        }
                    }
                }
            }
            buf[..n].fill(0);
            // Overlap the next read by a window, so a copy across the boundary is seen.
            at += (n.max(WINDOW) - (WINDOW - 1)) as u64;
            if n < WINDOW {
                break;
            }
        }
    }
    hits.sort();
    hits.dedup();
    hits
}

/// A value of `len` random letters, masked (see the module's docs): the plaintext exists only
/// in the `SecretValue` handed to the vault, which zeroizes it when dropped.
pub fn masked_random_value(len: usize) -> Zeroizing<Vec<u8>> {
    let mut masked = Zeroizing::new(vec![0u8; len]);
    getrandom::getrandom(&mut masked).unwrap();
    for byte in masked.iter_mut() {
        *byte = (b'a' + *byte % 26) ^ MASK;
    }
    masked
}

/// The value `masked` is the masked form of.
pub fn unmasked(masked: &[u8]) -> SecretValue {
    let plain: Zeroizing<Vec<u8>> = Zeroizing::new(masked.iter().map(|b| b ^ MASK).collect());
    SecretValue::from_slice(&plain)
}

/// Whether `value` is the value `masked` is the masked form of, compared masked, so that no
/// unmasked copy of the expected value is made.
pub fn is_masked(value: &SecretValue, masked: &[u8]) -> bool {
    value
        .expose_secret()
        .iter()
        .map(|b| b ^ MASK)
        .eq(masked.iter().copied())
}
