//! Frames: a u32 big-endian length, then a bincode-encoded envelope (tokio-util's
//! `LengthDelimitedCodec` framing). Decoding never panics: a garbage, truncated or oversize frame is
//! an `io::Error` of kind `InvalidData`, which closes only that connection.

use std::io;
use std::marker::PhantomData;

use bytes::{BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Default maximum frame size: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// Largest frame size a node may be configured with. bincode reserves a declared string or byte
/// length before it finds the input short, so its limit is what a garbage length inside a small
/// frame can make us allocate; no legitimate field is longer than a frame.
pub const MAX_FRAME_LIMIT: usize = 64 << 20;
const DECODE_LIMIT: usize = MAX_FRAME_LIMIT;

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
#[derive(Debug)]
pub struct FrameCodec<D> {
    inner: LengthDelimitedCodec,
    max_frame: usize,
    _decodes: PhantomData<fn() -> D>,
}

impl<D> FrameCodec<D> {
    /// `max_frame` is clamped to [`MAX_FRAME_LIMIT`].
    pub fn new(max_frame: usize) -> Self {
        let max_frame = max_frame.min(MAX_FRAME_LIMIT);
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_type::<u32>()
                .big_endian()
                .max_frame_length(max_frame)
                .new_codec(),
            max_frame,
            _decodes: PhantomData,
        }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
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
        let Some(frame) = self
            .inner
            .decode(src)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        else {
            return Ok(None);
        };
        decode(&frame)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad frame: {e}")))
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
