//! The chaos drill over real QUIC: three facilities on loopback (mutual
//! TLS), their HTTP APIs on loopback TCP with chaos enabled; the agent
//! partitions a facility, kills the leader and spikes the load, prints each
//! report and writes it with its health heatmap (SVG) to
//! `chaos-drill-report/` (or the directory given as the first argument).
//!
//! ```text
//! cargo run --release --example chaos_drill [OUT_DIR]
//! ```

use bulwark_actors::chaos::report::Verdict;
use std::path::PathBuf;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chaos-drill-report"));
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("chaos_drill: temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    match bulwark::chaos::drill::run(dir.path(), &out).await {
        Ok(reports) => {
            for r in &reports {
                let verdict = match &r.verdict {
                    Verdict::Passed => "passed".to_string(),
                    Verdict::WeaknessesFound => format!("{} weaknesses", r.weaknesses.len()),
                    Verdict::RolledBack(why) => format!("rolled back: {why}"),
                    Verdict::Refused(why) => format!("refused: {why}"),
                };
                println!("{:<20} {verdict}", r.name);
            }
            println!("reports and heatmaps in {}", out.display());
            if reports
                .iter()
                .any(|r| matches!(r.verdict, Verdict::Refused(_)))
            {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("chaos_drill: {e}");
            ExitCode::FAILURE
        }
    }
}
