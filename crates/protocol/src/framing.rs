//! Framing: each message travels as a 4-byte big-endian length followed by its postcard body.
//!
//! The length is checked against [`MAX_FRAME_LEN`] before any body byte is read, so a hostile
//! peer cannot make the other end allocate more than that.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;

/// The largest frame body either end accepts: 32 MiB, room for a module or an input of 16 MiB
/// (the coordinator's blob limit) plus the message around it.
pub const MAX_FRAME_LEN: usize = 32 * 1024 * 1024;

/// Why a frame could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge { len: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes `message` as one frame: header and body.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; HEADER_LEN];
    let mut frame = postcard::to_extend(message, std::mem::take(&mut frame))?;
    let len = frame.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let len_bytes = u32::try_from(len)
        .map_err(|_| FrameError::TooLarge { len })?
        .to_be_bytes();
    frame[..HEADER_LEN].copy_from_slice(&len_bytes);
    Ok(frame)
}

/// Reads a frame header and returns the body length it announces, refusing one over the limit.
pub fn decode_header(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// Decodes a frame body. Trailing bytes after the message are refused: they mean the two ends
/// disagree on the format.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (message, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(
            postcard::Error::DeserializeBadEncoding,
        ));
    }
    Ok(message)
}
