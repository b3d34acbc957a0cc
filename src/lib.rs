//! bulwark: the facility binary's library — config, HTTP surface, QUIC
//! assembly and the demo. The `bulwark` binary is a thin CLI over it.

pub mod archive;
pub mod backup;
pub mod chaos;
pub mod client;
pub mod commands;
pub mod config;
pub mod demo;
pub mod facility;
pub mod http;
pub mod import;
pub mod init;
pub mod sim;
