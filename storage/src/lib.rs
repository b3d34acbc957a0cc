//! bulwark-storage: the one place bytes become values, and the one redb file
//! per facility where they rest.
//!
//! Every byte that crosses a facility boundary or lands on disk goes through
//! [`codec`]: bincode 2 (serde), one configuration chosen once, a hard cap on
//! the input length checked before decoding, a decode limit so a hostile length
//! prefix cannot allocate beyond it, and trailing bytes rejected.
//!
//! ```
//! use bulwark_storage::codec;
//! let bytes = codec::encode(&(7u32, "ward".to_string())).unwrap();
//! let back: (u32, String) = codec::decode(&bytes).unwrap();
//! assert_eq!(back, (7, "ward".to_string()));
//! ```
//!
//! [`Store`] wraps the facility's redb file: the tables are in [`schema`],
//! every write commits durably, and a damaged, foreign or other facility's
//! file is refused with an error that names it. Each store carries the
//! [`DiskFaults`] (latency, refused writes) tests and chaos inject into it.

pub mod codec;
mod error;
mod faults;
pub mod schema;
mod store;
pub mod stream;

pub use error::{CodecError, StorageError};
pub use faults::{DiskFaultError, DiskFaultSpec, DiskFaults, DISK_LATENCY_MS_MAX};
pub use store::{creating_path, BackupInfo, Opened, StagedWrite, Store};
