//! One connection's frame state, with no I/O: the codec, the bytes read and not yet decoded, the
//! items encoded and not yet written, and whether delivery waits for the write queue.
//!
//! The accumulation buffer costs no copy in the common case: when it is empty (every frame of
//! the last read was whole), the next read's buffer becomes it as it is. Only when a read ends in
//! the middle of a frame is the next read appended to what is left of it: that copy is the price
//! of a frame cut by the network, paid once per such read, and bounded by the maximum frame
//! length.

use std::any::Any;
use std::io;

use bytes::BytesMut;
use tokio_util::codec::{
    AnyDelimiterCodecError, Decoder, LengthDelimitedCodecError, LinesCodecError,
};

use super::FrameError;

/// What one step of decoding gave.
#[derive(Debug)]
pub(crate) enum Step<T, E> {
    /// A whole item.
    Frame(T),
    /// No whole item in what was read: read more.
    NeedMore,
    /// The connection ends with this.
    Failed(FrameError<E>),
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct FrameState<C> {
    pub(crate) codec: C,
    /// Bytes read and not decoded yet.
    input: BytesMut,
    /// Where an item is encoded before it is staged on the connection (see
    /// [`Connection::stage`](crate::Connection::stage)).
    pub(crate) scratch: BytesMut,
    /// Bytes staged since the last flush (an upper bound: a write of another path queues them
    /// too), so that a flush with nothing fed takes no lock.
    pub(crate) unflushed: usize,
    /// Delivery stopped because the write queue was high; it resumes when the queue drains.
    pub(crate) paused: bool,
    /// Decoding ended (an error, or the end of the stream): nothing more is delivered.
    done: bool,
    /// Bytes the decoder took from the buffer since its last item without giving one.
    eaten: usize,
    /// `input` is a read's buffer as it came, which shares its memory with the reads around it
    /// (see [`ServerBuilder::read_buffer_size`](crate::ServerBuilder::read_buffer_size)).
    borrowed: bool,
}

impl<C: Decoder> FrameState<C>
where
    C::Error: 'static,
{
    pub(crate) fn new(codec: C) -> Self {
        FrameState {
            codec,
            input: BytesMut::new(),
            scratch: BytesMut::new(),
            unflushed: 0,
            paused: false,
            done: false,
            eaten: 0,
            borrowed: false,
        }
    }

    /// Takes a read's bytes: as the buffer itself when nothing is left over, appended otherwise.
    pub(crate) fn push(&mut self, data: BytesMut) {
        if self.input.is_empty() {
            self.input = data;
            self.borrowed = true;
        } else {
            self.input.extend_from_slice(&data);
            self.borrowed = false;
        }
    }

    /// Bytes read and not decoded yet.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.input.len()
    }

    /// Decodes the next item from what was read. More than `max` bytes of one item without
    /// its end is [`FrameError::TooLong`].
    pub(crate) fn next(&mut self, max: usize) -> Step<C::Item, C::Error> {
        if self.done {
            return Step::NeedMore;
        }
        let before = self.input.len();
        let decoded = self.codec.decode(&mut self.input);
        let pending = self.pending(before);
        let step = match decoded {
            Ok(Some(item)) => Step::Frame(item),
            Ok(None) if pending > max => Step::Failed(FrameError::TooLong {
                buffered: pending,
                max,
            }),
            Ok(None) => Step::NeedMore,
            Err(error) => Step::Failed(FrameError::Decode(error)),
        };
        self.settle(&step);
        step
    }

    /// Decodes what is left once the peer has sent FIN ([`Decoder::decode_eof`]): the items a
    /// codec can finish at the end of the stream (a last line without its newline), then
    /// `NeedMore` once nothing is left, or [`FrameError::Partial`] for bytes that make no whole
    /// item.
    pub(crate) fn next_at_eof(&mut self) -> Step<C::Item, C::Error> {
        if self.done {
            return Step::NeedMore;
        }
        let before = self.input.len();
        let decoded = self.codec.decode_eof(&mut self.input);
        let pending = self.pending(before);
        let step = match decoded {
            Ok(Some(item)) => Step::Frame(item),
            // `decode_eof`'s default says "bytes remaining on stream" with an error: the same
            // partial item as a decoder that leaves them, or took some, without giving one.
            Ok(None) | Err(_) if pending > 0 => {
                Step::Failed(FrameError::Partial { remaining: pending })
            }
            Ok(None) => Step::NeedMore,
            Err(error) => Step::Failed(FrameError::Decode(error)),
        };
        if matches!(step, Step::NeedMore) {
            self.done = true;
        }
        self.settle(&step);
        step
    }

    /// Bytes of the item in progress, after a decode that started with `before` bytes
    /// buffered: those still buffered, and those the decoder took into its own state without
    /// giving an item (as `LengthDelimitedCodec` takes the length field) since its last item.
    fn pending(&mut self, before: usize) -> usize {
        self.eaten += before.saturating_sub(self.input.len());
        self.eaten + self.input.len()
    }

    /// After a step: an item starts the count of the next one; an error ends decoding; an empty
    /// buffer gives its memory back (the next read's buffer takes its place), so an idle
    /// connection holds none. The start of an item left in a read's own buffer is copied into
    /// one of its size: a connection waiting for the rest keeps only that, not the memory the
    /// read shares with others.
    fn settle(&mut self, step: &Step<C::Item, C::Error>) {
        if matches!(step, Step::Frame(_)) {
            self.eaten = 0;
        }
        if matches!(step, Step::Failed(_)) {
            self.done = true;
            self.input = BytesMut::new();
        } else if self.input.is_empty() {
            if self.input.capacity() > 0 {
                self.input = BytesMut::new();
            }
        } else if self.borrowed && matches!(step, Step::NeedMore) {
            self.input = BytesMut::from(&self.input[..]);
            self.borrowed = false;
        }
    }
}

/// Whether a decoder's error is tokio-util's own "frame too long" (`LinesCodec`,
/// `AnyDelimiterCodec` and `LengthDelimitedCodec` with their maximum lengths), so that it ends
/// the connection as [`ClosureReason::FrameTooLong`](crate::closure::ClosureReason::FrameTooLong).
pub(crate) fn says_too_long(error: &dyn Any) -> bool {
    if let Some(error) = error.downcast_ref::<LinesCodecError>() {
        return matches!(error, LinesCodecError::MaxLineLengthExceeded);
    }
    if let Some(error) = error.downcast_ref::<AnyDelimiterCodecError>() {
        return matches!(error, AnyDelimiterCodecError::MaxChunkLengthExceeded);
    }
    if let Some(error) = error.downcast_ref::<io::Error>() {
        return error
            .get_ref()
            .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>());
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, Bytes};
    use tokio_util::codec::{LengthDelimitedCodec, LinesCodec};

    fn frames<C: Decoder>(state: &mut FrameState<C>, max: usize) -> (Vec<C::Item>, bool)
    where
        C::Error: 'static,
    {
        let mut items = Vec::new();
        loop {
            match state.next(max) {
                Step::Frame(item) => items.push(item),
                Step::NeedMore => return (items, false),
                Step::Failed(_) => return (items, true),
            }
        }
    }

    #[test]
    fn the_start_of_an_item_left_in_a_read_is_copied_out_of_it() {
        let mut state = FrameState::new(LinesCodec::new());
        // A read's buffer, split off memory that other reads share.
        let sent = b"whole\npart-of-the-next";
        let mut shared = BytesMut::from(&b"whole\npart-of-the-next and more"[..]);
        let read = shared.split_to(sent.len());
        let read_at = read.as_ptr() as usize;
        state.push(read);
        assert!(matches!(state.next(1024), Step::Frame(line) if line == "whole"));
        assert!(matches!(state.next(1024), Step::NeedMore));
        let kept = state.input.as_ptr() as usize;
        assert!(
            kept < read_at || kept >= read_at + sent.len(),
            "the rest of the item is in a buffer of its own"
        );
        assert_eq!(&state.input[..], b"part-of-the-next");
        state.push(BytesMut::from(&b"\n"[..]));
        assert!(matches!(state.next(1024), Step::Frame(line) if line == "part-of-the-next"));
    }

    #[test]
    fn a_read_of_whole_frames_is_decoded_in_place() {
        let mut state = FrameState::new(LinesCodec::new());
        let read = BytesMut::from(&b"one\ntwo\n"[..]);
        let address = read.as_ptr();
        state.push(read);
        assert_eq!(state.input.as_ptr(), address, "taken, not copied");
        let (items, failed) = frames(&mut state, 100);
        assert_eq!(items, ["one", "two"]);
        assert!(!failed);
        assert_eq!(state.input.capacity(), 0, "an empty buffer holds no memory");
    }

    #[test]
    fn a_frame_split_at_every_byte_comes_out_whole_once() {
        let message = b"first line\nsecond\n";
        let mut state = FrameState::new(LinesCodec::new());
        let mut items = Vec::new();
        for byte in message {
            state.push(BytesMut::from(&[*byte][..]));
            items.extend(frames(&mut state, 100).0);
        }
        assert_eq!(items, ["first line", "second"]);
    }

    #[test]
    fn frames_before_an_error_come_out_then_the_error() {
        let mut state = FrameState::new(LinesCodec::new_with_max_length(8));
        state.push(BytesMut::from(
            &b"ok\nalso ok\nfar too long for it\nnever\n"[..],
        ));
        assert!(matches!(state.next(100), Step::Frame(line) if line == "ok"));
        assert!(matches!(state.next(100), Step::Frame(line) if line == "also ok"));
        match state.next(100) {
            Step::Failed(error) => assert_eq!(
                error.closure_reason(),
                crate::closure::ClosureReason::FrameTooLong,
                "LinesCodec's own limit counts as too long"
            ),
            other => panic!("expected the error, got {other:?}"),
        }
        assert!(
            matches!(state.next(100), Step::NeedMore),
            "nothing after it"
        );
    }

    #[test]
    fn more_than_the_maximum_without_a_frame_is_too_long() {
        let mut state = FrameState::new(LinesCodec::new());
        state.push(BytesMut::from(&b"0123456789"[..]));
        assert!(matches!(state.next(10), Step::NeedMore), "at the maximum");
        state.push(BytesMut::from(&b"x"[..]));
        assert!(matches!(
            state.next(10),
            Step::Failed(FrameError::TooLong {
                buffered: 11,
                max: 10
            })
        ));
    }

    #[test]
    fn length_delimited_too_long_is_recognised() {
        let mut codec = LengthDelimitedCodec::builder();
        codec.max_frame_length(4);
        let mut state = FrameState::new(codec.new_codec());
        let mut read = BytesMut::new();
        read.put_u32(5);
        read.put_slice(b"hello");
        state.push(read);
        match state.next(100) {
            Step::Failed(error) => {
                assert_eq!(
                    error.closure_reason(),
                    crate::closure::ClosureReason::FrameTooLong
                )
            }
            other => panic!("expected too long, got {other:?}"),
        }
    }

    #[test]
    fn at_the_end_a_last_line_is_finished_and_a_partial_frame_reported() {
        let mut state = FrameState::new(LinesCodec::new());
        state.push(BytesMut::from(&b"whole\nlast"[..]));
        assert!(matches!(state.next(100), Step::Frame(line) if line == "whole"));
        assert!(matches!(state.next(100), Step::NeedMore));
        assert!(matches!(state.next_at_eof(), Step::Frame(line) if line == "last"));
        assert!(matches!(state.next_at_eof(), Step::NeedMore));

        let mut state = FrameState::new(LengthDelimitedCodec::new());
        let mut read = BytesMut::new();
        read.put_u32(10);
        read.put_slice(b"abc");
        state.push(read);
        assert!(matches!(state.next(100), Step::NeedMore));
        assert!(matches!(
            state.next_at_eof(),
            Step::Failed(FrameError::Partial { remaining: 7 })
        ));

        // The length field alone: the codec took it, nothing is left in the buffer.
        let mut state = FrameState::new(LengthDelimitedCodec::new());
        state.push(BytesMut::from(&[0, 0, 0, 9][..]));
        assert!(matches!(state.next(100), Step::NeedMore));
        assert_eq!(state.buffered(), 0);
        assert!(matches!(
            state.next_at_eof(),
            Step::Failed(FrameError::Partial { remaining: 4 })
        ));

        let mut state = FrameState::new(LengthDelimitedCodec::new());
        state.push(BytesMut::from(&Bytes::from_static(&[0, 0, 0, 1, b'x'])[..]));
        assert!(matches!(state.next(100), Step::Frame(_)));
        assert!(
            matches!(state.next_at_eof(), Step::NeedMore),
            "nothing left, nothing reported"
        );
    }
}
