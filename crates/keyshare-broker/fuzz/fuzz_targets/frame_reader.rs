//! The broker's incremental frame reader (`FrameReader`), fed a byte stream in pieces of
//! fuzzer-chosen sizes, with reads that sometimes wait (and the caller then gives up, as a
//! `select!` does): it must return exactly the frames, and end with exactly the error, that
//! slicing the whole stream with `frame_len` gives, and never panic.
//!
//! Input: the first byte picks the piece sizes and where reads wait; the rest is the stream.
//! Run with `-max_len` above 8 KiB so that the buffer's growth and shrinking are reached.

#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use keyshare_broker::connection::FrameReader;
use keyshare_broker::protocol::{frame_len, FrameError, HEADER_LEN};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out `stream` in pieces; every so often a read waits once before it is served.
struct Pieces<'a> {
    stream: &'a [u8],
    sizes: [usize; 4],
    turn: usize,
    wait_every: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.turn += 1;
        if self.wait_every > 0 && self.turn.is_multiple_of(self.wait_every) {
            // Nothing wakes this task: the caller drops the read and starts another one.
            return Poll::Pending;
        }
        let size = self.sizes[self.turn % self.sizes.len()];
        let n = size.min(buf.remaining()).min(self.stream.len());
        let (piece, rest) = self.stream.split_at(n);
        buf.put_slice(piece);
        self.stream = rest;
        Poll::Ready(Ok(()))
    }
}

/// How slicing the whole stream ends.
#[derive(Debug, PartialEq)]
enum End {
    Clean,
    Truncated { expected: usize, got: usize },
    TooLarge { len: usize },
}

fn expected(mut stream: &[u8]) -> (Vec<&[u8]>, End) {
    let mut frames = Vec::new();
    loop {
        match frame_len(stream) {
            Ok(Some(total)) => {
                frames.push(&stream[HEADER_LEN..total]);
                stream = &stream[total..];
            }
            Ok(None) if stream.is_empty() => return (frames, End::Clean),
            Ok(None) => {
                let expected = match stream.first_chunk::<HEADER_LEN>() {
                    Some(header) => HEADER_LEN + u32::from_be_bytes(*header) as usize,
                    None => HEADER_LEN,
                };
                let got = stream.len();
                return (frames, End::Truncated { expected, got });
            }
            Err(FrameError::TooLarge { len }) => return (frames, End::TooLarge { len }),
            Err(other) => panic!("frame_len failed with {other}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, stream)) = data.split_first() else {
        return;
    };
    // Piece sizes from 1 byte to more than the reader's initial 8 KiB buffer.
    const SIZES: [usize; 8] = [1, 2, 3, 5, 64, 4096, 9000, 1 << 20];
    let sizes = [
        SIZES[usize::from(shape & 7)],
        SIZES[usize::from((shape >> 3) & 7)],
        SIZES[usize::from(shape >> 5)],
        SIZES[usize::from(shape.rotate_left(2) & 7)],
    ];
    // Every 2nd, 3rd or 4th read waits, or none does.
    let wait_every = match shape % 5 {
        0 | 1 => 0,
        n => usize::from(n),
    };
    let (want_frames, want_end) = expected(stream);

    let mut reader = FrameReader::new(Pieces {
        stream,
        sizes,
        turn: 0,
        wait_every,
    });
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = 0;
    let end = loop {
        // A read that waits is dropped, as a caller's `select!` drops it: what it read so far
        // must stay buffered for the next call.
        let result = loop {
            let mut read = pin!(reader.read_frame());
            if let Poll::Ready(result) = read.as_mut().poll(&mut cx) {
                break result.map(|frame| frame.map(<[u8]>::to_vec));
            }
        };
        match result {
            Ok(Some(frame)) => {
                assert!(got < want_frames.len(), "a frame past the last one");
                assert_eq!(frame, want_frames[got], "frame {got} differs");
                got += 1;
            }
            Ok(None) => break End::Clean,
            Err(FrameError::Truncated { expected, got }) => break End::Truncated { expected, got },
            Err(FrameError::TooLarge { len }) => break End::TooLarge { len },
            Err(other) => panic!("unexpected error: {other}"),
        }
    };
    assert_eq!(got, want_frames.len(), "frames missing");
    assert_eq!(end, want_end);
});
