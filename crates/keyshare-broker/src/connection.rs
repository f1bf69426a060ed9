//! Reading frames from a byte stream, shared by the server and the client.

use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroizing;

use crate::protocol::{frame_len, FrameError, HEADER_LEN};

/// Reads length-prefixed frames from `inner`, keeping partial frames between reads.
///
/// The buffer may hold secret values, so it is zeroized on drop; it grows only as far as the
/// frame being read needs (the header is checked before the body is buffered).
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Zeroizing<Vec<u8>>,
    /// Bytes of `buf` holding data.
    filled: usize,
    /// Bytes at the start of `buf` belonging to the frame returned last, dropped on the next
    /// call.
    consumed: usize,
}

const INITIAL_CAPACITY: usize = 8 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Zeroizing::new(vec![0; INITIAL_CAPACITY]),
            filled: 0,
            consumed: 0,
        }
    }

    /// The next frame's body; `Ok(None)` at a clean end of stream (between frames).
    ///
    /// Cancel safe: a partially read frame stays buffered for the next call.
    pub async fn read_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        if self.consumed > 0 {
            self.buf.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
        loop {
            if let Some(total) = frame_len(&self.buf[..self.filled])? {
                self.consumed = total;
                return Ok(Some(&self.buf[HEADER_LEN..total]));
            }
            let wanted = match self
                .buf
                .get(..HEADER_LEN)
                .filter(|_| self.filled >= HEADER_LEN)
            {
                Some(h) => HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize,
                None => HEADER_LEN,
            };
            if self.buf.len() < wanted {
                // Grow to exactly what this frame needs: `frame_len` has capped `wanted`. The
                // old buffer is zeroized when the new one replaces it.
                let mut bigger = Zeroizing::new(vec![
                    0;
                    wanted.max(self.buf.len() * 2).min(
                        HEADER_LEN + crate::protocol::MAX_FRAME_LEN,
                    )
                ]);
                bigger[..self.filled].copy_from_slice(&self.buf[..self.filled]);
                self.buf = bigger;
            }
            let n = self.inner.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                if self.filled == 0 {
                    return Ok(None);
                }
                return Err(FrameError::Truncated {
                    expected: wanted,
                    got: self.filled,
                });
            }
            self.filled += n;
        }
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(bytes: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let (mut tx, rx) = tokio::io::duplex(64);
        let data = bytes.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in data.chunks(chunk.max(1)) {
                if tx.write_all(piece).await.is_err() {
                    break;
                }
            }
        });
        let mut reader = FrameReader::new(rx);
        let mut out = Vec::new();
        let result = loop {
            match reader.read_frame().await {
                Ok(Some(body)) => out.push(body.to_vec()),
                Ok(None) => break Ok(out),
                Err(e) => break Err(e),
            }
        };
        drop(reader);
        let _ = writer.await;
        result
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[tokio::test]
    async fn frames_split_anywhere_reassemble() {
        let big = vec![b'x'; 20_000];
        let mut stream = frame(b"{}");
        stream.extend(frame(b""));
        stream.extend(frame(&big));
        stream.extend(frame(b"[1]"));
        for chunk in [1, 3, 4, 5, 7, 4096, 100_000] {
            let got = frames(&stream, chunk).await.unwrap();
            assert_eq!(got.len(), 4, "chunk {chunk}");
            assert_eq!(got[0], b"{}");
            assert!(got[1].is_empty());
            assert_eq!(got[2], big);
            assert_eq!(got[3], b"[1]");
        }
    }

    #[tokio::test]
    async fn truncated_and_oversized_frames_are_errors() {
        let mut partial = frame(b"{\"id\":1}");
        partial.truncate(7);
        assert!(matches!(
            frames(&partial, 2).await,
            Err(FrameError::Truncated {
                expected: 12,
                got: 7
            })
        ));
        assert!(matches!(
            frames(&[0, 0], 1).await,
            Err(FrameError::Truncated { .. })
        ));
        let oversized = ((crate::protocol::MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(
            frames(&oversized, 4).await,
            Err(FrameError::TooLarge { .. })
        ));
    }
}
