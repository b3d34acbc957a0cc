use thiserror::Error;

/// Why a value could not be encoded or decoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input is longer than the codec accepts; nothing was decoded.
    #[error("input of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length of the offered input.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A valid value was followed by bytes that belong to nothing.
    #[error("{trailing} trailing bytes after a valid value")]
    TrailingBytes {
        /// How many bytes were left over.
        trailing: usize,
    },
    /// The value could not be encoded (for example it exceeds the limit).
    #[error("cannot encode: {0}")]
    Encode(String),
}
