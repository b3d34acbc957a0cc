//! bulwark-actors
