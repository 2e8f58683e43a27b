//! Reading and writing frames on QUIC streams.

use quinn::{RecvStream, SendStream};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::proto::wire::{decode_envelope, frame_len, Envelope, FrameError};

/// Reads one frame: the length is checked against `max` before the
/// payload buffer is allocated.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Envelope<T>, FrameError> {
    read_frame_counted(recv, max).await.map(|(env, _)| env)
}

/// [`read_frame`], also returning the frame's size in bytes (prefix
/// included).
pub async fn read_frame_counted<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<(Envelope<T>, usize), FrameError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| FrameError::Truncated(format!("length prefix: {e}")))?;
    let n = frame_len(prefix, max)?;
    let mut payload = vec![0u8; n];
    recv.read_exact(&mut payload)
        .await
        .map_err(|e| FrameError::Truncated(format!("payload: {e}")))?;
    Ok((decode_envelope(&payload)?, 4 + n))
}

/// Writes one frame and finishes the stream.
pub async fn write_frame<T: Serialize>(
    send: &mut SendStream,
    env: &Envelope<T>,
) -> Result<(), FrameError> {
    let frame = env.to_frame()?;
    send.write_all(&frame)
        .await
        .map_err(|e| FrameError::Truncated(format!("write: {e}")))?;
    send.finish()
        .map_err(|e| FrameError::Truncated(format!("finish: {e}")))?;
    Ok(())
}
