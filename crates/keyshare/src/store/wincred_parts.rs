//! How the Windows store splits a value over credentials of at most 2560 bytes (see
//! `wincred`). Platform-free, so that it is tested everywhere.

use zeroize::Zeroizing;

/// The largest credential blob Windows accepts (`CRED_MAX_CREDENTIAL_BLOB_SIZE`).
pub(crate) const MAX_BLOB: usize = 2560;
/// The length of the write id that starts every part and ends the header.
pub(crate) const ID_LEN: usize = 8;
const PART_PAYLOAD: usize = MAX_BLOB - ID_LEN;

/// A value laid out for writing.
pub(crate) struct Split<'v> {
    /// The main credential's blob: the first bytes of the value.
    pub main: &'v [u8],
    /// The blobs of parts 1, 2, ...: the write id, then the next bytes of the value.
    pub parts: Vec<Zeroizing<Vec<u8>>>,
    /// The main credential's header attribute (part count, little endian u32, then the write
    /// id), or `None` when the value fits in the main credential.
    pub header: Option<Vec<u8>>,
}

pub(crate) fn split(value: &[u8], id: [u8; ID_LEN]) -> Split<'_> {
    let main = &value[..value.len().min(MAX_BLOB)];
    let parts: Vec<Zeroizing<Vec<u8>>> = value[main.len()..]
        .chunks(PART_PAYLOAD)
        .map(|payload| {
            let mut blob = Zeroizing::new(Vec::with_capacity(ID_LEN + payload.len()));
            blob.extend_from_slice(&id);
            blob.extend_from_slice(payload);
            blob
        })
        .collect();
    let header = (!parts.is_empty()).then(|| {
        (parts.len() as u32)
            .to_le_bytes()
            .into_iter()
            .chain(id)
            .collect()
    });
    Split {
        main,
        parts,
        header,
    }
}

/// A header read back: how many parts to read, and the id they must carry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub parts: u32,
    pub id: [u8; ID_LEN],
}

/// `None` when the header is malformed.
pub(crate) fn parse_header(header: &[u8]) -> Option<Header> {
    let (count, id) = header.split_first_chunk::<4>()?;
    Some(Header {
        parts: u32::from_le_bytes(*count),
        id: id.try_into().ok()?,
    })
}

/// Appends a part's payload to `value`; false when the part belongs to another write.
pub(crate) fn append_part(value: &mut Zeroizing<Vec<u8>>, header: &Header, part: &[u8]) -> bool {
    match part.strip_prefix(&header.id) {
        Some(payload) => {
            value.extend_from_slice(payload);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(len: usize) {
        let value: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
        let s = split(&value, [7; ID_LEN]);
        assert!(s.main.len() <= MAX_BLOB);
        assert!(
            s.parts.iter().all(|p| p.len() <= MAX_BLOB),
            "a part is too big"
        );
        let mut joined = Zeroizing::new(s.main.to_vec());
        match &s.header {
            None => assert!(s.parts.is_empty()),
            Some(h) => {
                let header = parse_header(h).expect("header parses");
                assert_eq!(header.parts as usize, s.parts.len());
                for part in &s.parts {
                    assert!(append_part(&mut joined, &header, part));
                }
            }
        }
        assert!(*joined == value, "length {len} did not round-trip");
    }

    #[test]
    fn values_of_every_interesting_length_round_trip() {
        for len in [
            0,
            1,
            MAX_BLOB - 1,
            MAX_BLOB,
            MAX_BLOB + 1,
            MAX_BLOB + PART_PAYLOAD,
            MAX_BLOB + PART_PAYLOAD + 1,
            256 * 1024,
        ] {
            round_trip(len);
        }
        assert!(split(&[1; MAX_BLOB], [0; ID_LEN]).header.is_none());
        assert_eq!(split(&[1; MAX_BLOB + 1], [0; ID_LEN]).parts.len(), 1);
    }

    #[test]
    fn parts_from_another_write_are_refused() {
        let value = vec![1u8; MAX_BLOB * 2];
        let old = split(&value, [1; ID_LEN]);
        let new = split(&value, [2; ID_LEN]);
        let header = parse_header(new.header.as_deref().unwrap()).unwrap();
        let mut joined = Zeroizing::new(new.main.to_vec());
        assert!(!append_part(&mut joined, &header, &old.parts[0]));
        assert!(parse_header(&[1, 0, 0]).is_none());
        assert!(parse_header(&[1, 0, 0, 0, 1, 2]).is_none());
    }
}
