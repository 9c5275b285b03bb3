//! Frames: a u32 big-endian length, then a bincode-encoded envelope (the framing of tokio-util's
//! `LengthDelimitedCodec`, decoded here so that buffers follow the bytes that arrived). Decoding never panics: a garbage, truncated or oversize frame is
//! an `io::Error` of kind `InvalidData`, which closes only that connection.

use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};

/// Default maximum frame size: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// Largest frame size a node may be configured with. bincode reserves a declared string or byte
/// length before it finds the input short, so its limit is what a garbage length inside a small
/// frame can make us allocate; no legitimate field is longer than a frame.
pub const MAX_FRAME_LIMIT: usize = 64 << 20;
const DECODE_LIMIT: usize = MAX_FRAME_LIMIT;
/// The length prefix.
const HEADER_LEN: usize = 4;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes a message body (no frame header).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| e.to_string())
}

/// Decodes a message body; trailing bytes are an error (a frame holds exactly one message).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (v, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        ));
    }
    Ok(v)
}

/// Reads frames decoding to `D`, writes any serializable message as a frame.
///
/// The decoder never reserves room for a frame's declared length: the read buffer grows only with
/// the bytes that arrived, so a peer that declares 16 MiB and sends 10 bytes holds 10 bytes (plus
/// the reader's buffer), not 16 MiB. It also remembers when the frame now being received began,
/// so a server can close a connection that stalls inside a frame ([`FrameCodec::partial_since`]).
#[derive(Debug)]
pub struct FrameCodec<D> {
    max_frame: usize,
    /// When the first bytes of the frame still incomplete in the read buffer arrived.
    partial_since: Option<Instant>,
    _decodes: PhantomData<fn() -> D>,
}

impl<D> FrameCodec<D> {
    /// `max_frame` is clamped to [`MAX_FRAME_LIMIT`].
    pub fn new(max_frame: usize) -> Self {
        FrameCodec {
            max_frame: max_frame.min(MAX_FRAME_LIMIT),
            partial_since: None,
            _decodes: PhantomData,
        }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Changes the largest frame accepted from now on (clamped to [`MAX_FRAME_LIMIT`]).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.min(MAX_FRAME_LIMIT);
    }

    /// Since when part of a frame sits in the read buffer waiting for the rest (None: the buffer
    /// ends on a frame boundary).
    pub fn partial_since(&self) -> Option<Instant> {
        self.partial_since
    }
}

impl<D> Clone for FrameCodec<D> {
    fn clone(&self) -> Self {
        Self::new(self.max_frame)
    }
}

impl<D: DeserializeOwned> Decoder for FrameCodec<D> {
    type Item = D;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D>, io::Error> {
        if src.len() < HEADER_LEN {
            self.note_partial(!src.is_empty());
            return Ok(None);
        }
        let len = u32::from_be_bytes(src[..HEADER_LEN].try_into().expect("4 bytes")) as usize;
        if len > self.max_frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "frame of {len} bytes is larger than the maximum of {} bytes",
                    self.max_frame
                ),
            ));
        }
        if src.len() < HEADER_LEN + len {
            self.note_partial(true);
            return Ok(None);
        }
        let value = decode(&src[HEADER_LEN..HEADER_LEN + len])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad frame: {e}")));
        src.advance(HEADER_LEN + len);
        // Whatever follows is the start of the next frame, which began arriving no earlier than
        // now; counting from now errs on the lenient side.
        self.partial_since = None;
        self.note_partial(!src.is_empty());
        value.map(Some)
    }
}

impl<D> FrameCodec<D> {
    fn note_partial(&mut self, partial: bool) {
        if !partial {
            self.partial_since = None;
        } else if self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
    }
}

impl<D, T: Serialize> Encoder<&T> for FrameCodec<D> {
    type Error = io::Error;

    fn encode(&mut self, item: &T, dst: &mut BytesMut) -> Result<(), io::Error> {
        // Encode straight into the output buffer behind a length placeholder: one copy of the
        // payload per hop.
        let start = dst.len();
        dst.put_u32(0);
        let mut w = dst.writer();
        let res = bincode::serde::encode_into_std_write(item, &mut w, config());
        let dst = w.into_inner();
        let len = match res {
            Ok(n) => n,
            Err(e) => {
                dst.truncate(start);
                return Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string()));
            }
        };
        if len > self.max_frame {
            dst.truncate(start);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "frame of {len} bytes is larger than the maximum of {} bytes",
                    self.max_frame
                ),
            ));
        }
        dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}
