//! bulwark-storage: the one place bytes become values.
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

pub mod codec;
mod error;

pub use error::CodecError;
