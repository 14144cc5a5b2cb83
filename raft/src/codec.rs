//! Binary encoding of everything Berth persists or sends between
//! controllers: log entries, votes, Raft messages, stored values.
//!
//! postcard is compact and fast, but not self-describing: a change to an
//! encoded type is a change of the on-disk and on-wire format.

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("could not decode {what}: {source}")]
pub struct DecodeError {
    what: &'static str,
    source: postcard::Error,
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_stdvec(value).expect("postcard serialization into a Vec")
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(bytes).map_err(|source| DecodeError { what, source })
}

pub fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
