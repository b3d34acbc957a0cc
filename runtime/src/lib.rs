//! bulwark-runtime
