use std::path::PathBuf;

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

/// Why the store could not be opened, read or written. Every variant names
/// the file, so an operator knows which disk to look at.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The file exists but is not a usable redb database (empty, truncated,
    /// overwritten or otherwise damaged).
    #[error("{path}: corrupt store: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The file is a redb database but not one that bulwark wrote.
    #[error("{path}: not a bulwark store ({reason})")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What was missing or different.
        reason: String,
    },
    /// The file belongs to another facility.
    #[error("{path}: store belongs to facility {found:?}, not {expected:?}")]
    WrongFacility {
        /// The file.
        path: PathBuf,
        /// The facility that tried to open it.
        expected: String,
        /// The facility recorded in it.
        found: String,
    },
    /// The file belongs to another cluster.
    #[error("{path}: this store belongs to cluster {found}, the configuration names cluster {expected}: it is another cluster's data (restore this cluster's, or start on an empty data dir to rejoin as a new store)")]
    WrongCluster {
        /// The file.
        path: PathBuf,
        /// The cluster the configuration names (hex).
        expected: String,
        /// The cluster recorded in it (hex).
        found: String,
    },
    /// Another process (or this one) already has the file open.
    #[error("{path}: store is already open")]
    AlreadyOpen {
        /// The file.
        path: PathBuf,
    },
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// redb reported an error during a transaction.
    #[error("{path}: {source}")]
    Redb {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<redb::Error>,
    },
    /// An injected disk fault refused a write ([`crate::DiskFaults`]). It
    /// was refused before a transaction began: nothing was written and the
    /// file is as it was, so the store stays usable.
    #[error("{path}: write refused by an injected disk fault")]
    Injected {
        /// The file.
        path: PathBuf,
    },
    /// Writes staged on the store ([`crate::Store::stage`]) were dropped
    /// unwritten (one was refused, or the store was told to drop them):
    /// their writer must rebuild its state from what is written.
    #[error("{path}: staged writes were dropped unwritten")]
    StagedDropped {
        /// The file.
        path: PathBuf,
    },
    /// A stored value did not decode.
    #[error("{path}: value at {table}/{key} does not decode: {source}")]
    Codec {
        /// The file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The key, rendered for humans.
        key: String,
        /// The codec's complaint.
        #[source]
        source: CodecError,
    },
}

impl StorageError {
    /// True for a write an injected disk fault refused
    /// ([`StorageError::Injected`]): nothing was written, and the store is
    /// intact and usable.
    pub fn is_injected(&self) -> bool {
        matches!(self, StorageError::Injected { .. })
    }
}
