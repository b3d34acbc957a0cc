//! The bulwark facility binary.
//!
//! The commands of docs (`keygen`, `node`, `demo`, ...) arrive with the
//! foundation issue; until a command is built it says so and exits non-zero.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    match cmd.as_str() {
        "version" | "--version" => {
            println!("bulwark {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("bulwark: command {other:?} is not built yet (see README.md, Status)");
            ExitCode::from(2)
        }
    }
}
