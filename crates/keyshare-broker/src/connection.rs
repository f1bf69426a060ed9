//! Reading frames from a byte stream, shared by the server and the client.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use zeroize::Zeroize;

use crate::protocol::{frame_len, FrameError, HEADER_LEN};

/// Reads length-prefixed frames from `inner`, keeping partial frames between reads.
///
/// The buffer may hold secret values, so it is zeroized on drop, and the bytes of a frame are
/// zeroized as soon as the next call to [`read_frame`](Self::read_frame) begins. Bytes past
/// the ones holding data are always zero (the buffer starts zeroed, and bytes are zeroized as
/// they stop holding data), so zeroizing those holding data zeroizes the buffer: wiping the
/// whole 8 KiB, a byte at a time as zeroize writes, took ~33,000 instructions per connection
/// (callgrind). It grows with the bytes that
/// actually arrived (at most twice them), up to what the frame being read needs: the header is
/// checked before the body is buffered, and what it claims is not allocated ahead. After a
/// large frame it goes back to its usual size (8 KiB).
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of `buf` holding data.
    filled: usize,
    /// Bytes at the start of `buf` belonging to the frame returned last, dropped on the next
    /// call.
    consumed: usize,
    /// [`FrameReader::with_frame_timeout`].
    frame_timeout: Option<Duration>,
    /// When the frame being read must be complete, once the clock runs for it.
    deadline: Option<Instant>,
}

const INITIAL_CAPACITY: usize = 8 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: vec![0; INITIAL_CAPACITY],
            filled: 0,
            consumed: 0,
            frame_timeout: None,
            deadline: None,
        }
    }

    /// Gives every frame `limit` to arrive in full once it has started: past it, `read_frame`
    /// fails with [`FrameError::Stalled`]. A peer stalled inside a frame otherwise holds its
    /// buffer (and whatever the caller keeps for it) forever. Silence between frames is not
    /// timed.
    pub fn with_frame_timeout(mut self, limit: Duration) -> Self {
        self.frame_timeout = Some(limit);
        self
    }

    /// The next frame's body; `Ok(None)` at a clean end of stream (between frames).
    ///
    /// Cancel safe: a partially read frame stays buffered for the next call.
    pub async fn read_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        if self.consumed > 0 {
            // The frame returned last is done with (its borrow ended with this call): move what
            // follows it to the front and zeroize the tail the move leaves behind, which still
            // holds that frame's bytes (a `get` reply's value on the client side, a `set`
            // request's on the broker's). Not lazily, when the next bytes arrive: a connection
            // may then stay silent for days with the secret in its buffer (found in an API
            // review). The bytes cleared are about one frame, whose reading and decoding cost
            // far more.
            let left = self.filled - self.consumed;
            self.buf.copy_within(self.consumed..self.filled, 0);
            self.buf[left..self.filled].zeroize();
            self.filled = left;
            self.consumed = 0;
            if self.buf.len() > INITIAL_CAPACITY && self.filled <= INITIAL_CAPACITY {
                // Back to the usual size once a large frame is gone: a connection that once
                // sent a big `set` (up to 1 MiB) would otherwise hold that much for as long
                // as it stays open, which for an app's connection is days.
                let mut smaller = vec![0; INITIAL_CAPACITY];
                smaller[..self.filled].copy_from_slice(&self.buf[..self.filled]);
                retire(std::mem::replace(&mut self.buf, smaller), self.filled);
            }
        }
        loop {
            if let Some(total) = frame_len(&self.buf[..self.filled])? {
                self.consumed = total;
                self.deadline = None;
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
            if self.filled == self.buf.len() {
                // Full, and the frame is not complete (so `wanted > filled`). Grow to twice what
                // arrived, never straight to the length the header claims: a header alone must
                // not make the broker hold the memory it announces, or a client could claim
                // 1 MiB on each of many connections and send nothing more. Doubling keeps the
                // copying linear in the frame's size. `frame_len` has capped `wanted`.
                let grown = (self.filled * 2).max(INITIAL_CAPACITY).min(wanted);
                let mut bigger = vec![0; grown];
                bigger[..self.filled].copy_from_slice(&self.buf[..self.filled]);
                retire(std::mem::replace(&mut self.buf, bigger), self.filled);
            }
            // The clock starts when a call first waits for the rest of a started frame, not
            // when its first bytes arrived: time the caller spends between frames (waiting for
            // room for more requests, say) is not the peer's. It then keeps running across
            // cancelled calls and bytes that trickle in: a frame has `limit` in all.
            let deadline = match self.frame_timeout {
                Some(limit) if self.filled > 0 => {
                    Some(*self.deadline.get_or_insert_with(|| Instant::now() + limit))
                }
                _ => None,
            };
            let read = self.inner.read(&mut self.buf[self.filled..]);
            let n = match deadline {
                None => read.await?,
                Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                    Ok(read) => read?,
                    Err(_) => {
                        return Err(FrameError::Stalled {
                            limit: self.frame_timeout.unwrap_or_default(),
                            expected: wanted,
                            got: self.filled,
                        })
                    }
                },
            };
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
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R> Drop for FrameReader<R> {
    fn drop(&mut self) {
        retire(std::mem::take(&mut self.buf), self.filled);
    }
}

/// Zeroizes a buffer of [`FrameReader`]'s that is let go: its first `filled` bytes, as the
/// rest is zero already (checked in debug builds, so every test that reads frames checks it).
fn retire(mut buf: Vec<u8>, filled: usize) {
    buf[..filled].zeroize();
    debug_assert!(
        buf[filled..].iter().all(|&b| b == 0),
        "FrameReader's buffer held data past its filled bytes"
    );
}

/// Never the buffer's bytes: they may be a secret value.
impl<R> std::fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("capacity", &self.buf.len())
            .field("filled", &self.filled)
            .field("consumed", &self.consumed)
            .field("frame_timeout", &self.frame_timeout)
            .finish_non_exhaustive()
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
    async fn debug_output_shows_no_buffered_bytes() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut tx, &frame(b"gho_secret_value"))
            .await
            .unwrap();
        let mut reader = FrameReader::new(rx);
        assert_eq!(
            reader.read_frame().await.unwrap(),
            Some(&b"gho_secret_value"[..])
        );
        let shown = format!("{reader:?}");
        assert!(!shown.contains("103, 104, 111"), "{shown}");
        assert!(shown.contains("filled: 20"), "{shown}");
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

    /// Polls `read_frame` until it waits for more bytes (everything written so far is read by
    /// then: the stream below is in memory); `None` if it returned instead.
    fn read_what_arrived<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Option<()> {
        use std::future::Future;
        let mut read = std::pin::pin!(reader.read_frame());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        read.as_mut().poll(&mut cx).is_pending().then_some(())
    }

    /// A header alone must not make the reader hold what it claims: a client could otherwise
    /// claim 1 MiB on each of many connections and send nothing more (found in review).
    #[tokio::test]
    async fn the_buffer_grows_with_the_bytes_that_arrived_not_with_the_claimed_length() {
        use tokio::io::AsyncWriteExt;
        let claimed = crate::protocol::MAX_FRAME_LEN;
        let (mut tx, rx) = tokio::io::duplex(2 * claimed);
        let mut reader = FrameReader::new(rx);
        tx.write_all(&(claimed as u32).to_be_bytes()).await.unwrap();
        tx.write_all(b"{\"id\"").await.unwrap();
        assert!(read_what_arrived(&mut reader).is_some());
        assert!(
            reader.buf.len() <= INITIAL_CAPACITY,
            "{} bytes buffered for a header and 5 bytes",
            reader.buf.len()
        );

        // As the body arrives, the buffer stays within twice what arrived.
        let body: Vec<u8> = (0..claimed).map(|i| b'a' + (i % 26) as u8).collect();
        let mut sent = HEADER_LEN + 5;
        for piece in [&body[5..100_000], &body[100_000..300_000]] {
            tx.write_all(piece).await.unwrap();
            sent += piece.len();
            assert!(read_what_arrived(&mut reader).is_some());
            assert!(
                reader.buf.len() <= 2 * sent,
                "{} bytes buffered for {sent} received",
                reader.buf.len()
            );
        }
        tx.write_all(&body[300_000..]).await.unwrap();
        let frame = reader.read_frame().await.unwrap().unwrap();
        assert_eq!(&frame[..5], b"{\"id\"");
        assert_eq!(&frame[5..], &body[5..]);

        // Once that frame is gone, the buffer is back to its usual size for the next one.
        tx.write_all(&[0, 0, 0, 2, b'{', b'}']).await.unwrap();
        assert_eq!(reader.read_frame().await.unwrap().unwrap(), b"{}");
        assert_eq!(reader.buf.len(), INITIAL_CAPACITY);
    }

    /// The bytes of a frame the caller is done with must not stay in the buffer for the
    /// connection's life: on the client side they are a `get` reply's value, on the broker's a
    /// `set` request's (found in an API review: the tail left behind by moving the unread
    /// bytes to the front was never cleared).
    #[tokio::test]
    async fn a_consumed_frame_leaves_none_of_its_bytes_in_the_buffer() {
        use tokio::io::AsyncWriteExt;
        let marker = b"hunter2-SECRET";
        let mut first = br#"{"type":"reply","id":1,"op":"get","value":""#.to_vec();
        first.extend(marker.repeat(40));
        first.extend_from_slice(br#""}"#);
        let holds_the_first = |buf: &[u8]| buf.windows(marker.len()).any(|w| w == marker);

        // Both frames arrive together, and then apart (the second after the first was read).
        for together in [true, false] {
            let (mut tx, rx) = tokio::io::duplex(64 * 1024);
            let mut reader = FrameReader::new(rx);
            tx.write_all(&frame(&first)).await.unwrap();
            if together {
                tx.write_all(&frame(b"{}")).await.unwrap();
            }
            assert_eq!(reader.read_frame().await.unwrap().unwrap(), &first[..]);
            if !together {
                // Waiting for the next frame, the first is already gone.
                assert!(read_what_arrived(&mut reader).is_some());
                assert!(
                    !holds_the_first(&reader.buf),
                    "waiting for the next frame, the buffer still holds the first one's bytes"
                );
                tx.write_all(&frame(b"{}")).await.unwrap();
            }
            assert_eq!(reader.read_frame().await.unwrap().unwrap(), b"{}");
            assert!(
                !holds_the_first(&reader.buf),
                "together: {together}: the buffer still holds the first frame's bytes"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_frame_must_arrive_within_the_timeout_and_silence_is_not_timed() {
        use tokio::io::AsyncWriteExt;
        let limit = Duration::from_secs(30);
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(rx).with_frame_timeout(limit);
        // Silent far longer than the limit, between frames: nothing happens.
        let silent = tokio::time::timeout(limit * 100, reader.read_frame()).await;
        assert!(silent.is_err(), "silence ended the read: {silent:?}");
        tx.write_all(&frame(b"{}")).await.unwrap();
        assert_eq!(reader.read_frame().await.unwrap().unwrap(), b"{}");
        // A frame of 1,000 bytes that starts, then trickles in, is cut off `limit` after it
        // started, however often the caller gave up and called again.
        tx.write_all(&[0, 0, 3, 232, b'{']).await.unwrap();
        let started = Instant::now();
        let err = loop {
            tx.write_all(b" ").await.unwrap();
            match tokio::time::timeout(limit / 10, reader.read_frame()).await {
                Err(_) => continue,
                Ok(result) => break result.unwrap_err(),
            }
        };
        assert!(
            matches!(err, FrameError::Stalled { expected: 1004, .. }),
            "{err}"
        );
        assert_eq!(started.elapsed(), limit);
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
