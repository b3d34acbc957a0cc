//! `bulwark sim`: runs many seeds of [`run_seed`], reports progress on
//! stderr, every failure with the command that replays it, and a summary.
//!
//! Seeds run in worker processes (this binary again, `sim --worker`), in
//! chunks of `--chunk` seeds, `--jobs` at once: ractor's registry is global
//! to a process, and a worker that ends after its chunk bounds the memory a
//! long run holds. A worker runs its seeds one after another on a
//! current-thread tokio runtime with paused time, and prints one JSON line
//! per seed. A worker that dies fails the seed it was on (with the end of
//! its stderr); the seeds after it go to a new worker.
//!
//! A replay (`bulwark sim --first S --seeds 1`) runs the same seed the same
//! way: the run depends on the seed alone.
//!
//! `--plant NAME` runs every seed with one planted bug
//! ([`bulwark_actors::plant`]; binaries built with `--features plant`), to
//! show the checkers catch it; `--plant list` names them all.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bulwark_actors::plant::{self, Bug};
use serde::{Deserialize, Serialize};

use super::run::{run_seed, FaultKind, SeedReport, SimPlan};

/// Lines of a dead worker's stderr kept for its failure report.
pub const STDERR_TAIL_LINES: usize = 40;

/// Wall time between two progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `bulwark sim`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Worker processes at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Seeds per worker process.
    #[arg(long, default_value_t = 50)]
    pub chunk: u64,
    /// Steps of each seed's safety phase (default: the standard plan's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Also draw the faults that reach a known, unfixed bug
    /// (`bulwark::sim::run::KNOWN_BUG_KILLS`).
    #[arg(long)]
    pub known_bugs: bool,
    /// Where the workers keep the facilities' stores (their TMPDIR).
    /// Default: `/dev/shm` when it exists (a RAM disk: a run measures the
    /// system, not the disk's fsyncs), else the system's temp directory.
    #[arg(long)]
    pub tmpdir: Option<std::path::PathBuf>,
    /// Print every seed's report (JSON) on stdout.
    #[arg(long)]
    pub verbose: bool,
    /// Run every seed with this planted bug (test-only: needs a binary
    /// built with `--features plant`); `list` prints every name and what it
    /// breaks.
    #[arg(long, value_name = "NAME")]
    pub plant: Option<String>,
    /// Dispatch no seed after the first failure, and stop the workers still
    /// running; the failure is reported as usual.
    #[arg(long)]
    pub stop_at_first_failure: bool,
    /// Run the seeds in this process, one JSON line per seed (the workers'
    /// mode).
    #[arg(long, hide = true)]
    pub worker: bool,
}

impl SimArgs {
    fn plan(&self) -> SimPlan {
        let mut plan = SimPlan::default();
        if let Some(s) = self.steps {
            plan.steps = s;
        }
        plan.known_bugs = self.known_bugs;
        plan
    }
}

/// One seed's outcome, as a worker prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedLine {
    /// It kept every invariant.
    Report(Box<SeedReport>),
    /// It broke one.
    Failure {
        /// The seed.
        seed: u64,
        /// Where: `step N` or `end`, and what broke.
        reason: String,
    },
}

impl SeedLine {
    fn seed(&self) -> u64 {
        match self {
            SeedLine::Report(r) => r.seed,
            SeedLine::Failure { seed, .. } => *seed,
        }
    }
}

/// Exit code of a refused `--plant`.
const EXIT_USAGE: u8 = 2;

/// Runs `bulwark sim`.
pub fn main(args: SimArgs) -> ExitCode {
    if args.plant.as_deref() == Some("list") {
        list_plants();
        return ExitCode::SUCCESS;
    }
    let bug = match chosen_plant(&args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bulwark sim: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.worker {
        return worker(&args);
    }
    if let Some(b) = bug {
        eprintln!("bulwark sim: planted bug {}: {}", b.name(), b.what());
    } else if plant::enabled() && std::env::var_os(plant::ENV_VAR).is_some() {
        eprintln!(
            "bulwark sim: {} is ignored here (use --plant NAME); no planted bug",
            plant::ENV_VAR
        );
    }
    match Parent::new(&args).run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bulwark sim: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints every planted bug's name and what it breaks.
fn list_plants() {
    if !plant::enabled() {
        eprintln!("bulwark sim: this binary was built without `--features plant`; it can plant none of these");
    }
    for b in plant::ALL {
        println!("{}\t{}", b.name(), b.what());
    }
}

/// The bug `--plant` names, chosen for this process (`None`: no flag, and
/// none is chosen, whatever the environment says). `Err` says why the
/// flag is refused.
fn chosen_plant(args: &SimArgs) -> Result<Option<Bug>, String> {
    let Some(name) = args.plant.as_deref() else {
        if plant::enabled() {
            plant::set(None).map_err(|e| e.to_string())?;
        }
        return Ok(None);
    };
    if !plant::enabled() {
        return Err(format!(
            "--plant {name}: this binary was built without `--features plant` \
             (build it with `cargo build --release --features plant`)"
        ));
    }
    let Some(bug) = Bug::from_name(name) else {
        let names: Vec<&str> = plant::ALL.iter().map(|b| b.name()).collect();
        return Err(format!(
            "--plant {name}: no such planted bug; the names are: {} (or `list`)",
            names.join(", ")
        ));
    };
    plant::set(Some(bug)).map_err(|e| e.to_string())?;
    Ok(Some(bug))
}

/// The command that replays `seed` as this run ran it.
fn replay(args: &SimArgs, seed: u64) -> String {
    let mut cmd = format!("bulwark sim --first {seed} --seeds 1");
    if let Some(p) = &args.plant {
        cmd.push_str(&format!(" --plant {p}"));
    }
    if args.known_bugs {
        cmd.push_str(" --known-bugs");
    }
    if let Some(s) = args.steps {
        cmd.push_str(&format!(" --steps {s}"));
    }
    cmd
}

/// The workers' mode: every seed in this process, one line each.
fn worker(args: &SimArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bulwark sim: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = args.plan();
    let mut out = std::io::stdout().lock();
    for seed in args.first..args.first.saturating_add(args.seeds) {
        let line = match rt.block_on(run_seed(seed, &plan)) {
            Ok(r) => SeedLine::Report(Box::new(r)),
            Err(f) => SeedLine::Failure {
                seed,
                reason: format!(
                    "{f}\n  recent faults:\n    {}",
                    f.recent_faults.join("\n    ")
                ),
            },
        };
        let text = serde_json::to_string(&line).expect("a seed line encodes");
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// What a worker thread tells the parent.
enum Event {
    Line(usize, SeedLine),
    Stderr(usize, String),
    Exited(usize),
}

struct Running {
    child: Child,
    /// Seeds not reported yet, in order.
    left: VecDeque<u64>,
    stderr: VecDeque<String>,
    open_streams: u8,
    exit: Option<String>,
}

/// The totals of a run.
#[derive(Default)]
struct Totals {
    done: u64,
    failed: Vec<(u64, String)>,
    faults: BTreeMap<FaultKind, u64>,
    virtual_ms: u64,
    ops: u64,
    committed: u64,
    provisional: u64,
    by_size: BTreeMap<usize, u64>,
    /// Runs longer than the plan's steps, and their seeds (first few).
    long: (u64, Vec<u64>),
    liars: BTreeMap<String, u64>,
    networks: BTreeMap<String, u64>,
    answers: BTreeMap<String, u64>,
    height: u64,
    snapshot_installs: u64,
    votes_checked: u64,
    grants_checked: u64,
    forwards_checked: u64,
    checkpoints_checked: u64,
    rotations: u64,
    replaced: u64,
    promoted: u64,
}

struct Parent<'a> {
    args: &'a SimArgs,
    queue: VecDeque<(u64, u64)>,
    workers: BTreeMap<usize, Running>,
    next_id: usize,
    totals: Totals,
    start: Instant,
    last_progress: Instant,
    /// `--stop-at-first-failure` and a seed failed: nothing new runs, and
    /// the workers still running were stopped.
    stopped: bool,
}

impl<'a> Parent<'a> {
    fn new(args: &'a SimArgs) -> Parent<'a> {
        let mut queue = VecDeque::new();
        let end = args.first.saturating_add(args.seeds);
        let mut s = args.first;
        while s < end {
            let k = args.chunk.max(1).min(end - s);
            queue.push_back((s, k));
            s += k;
        }
        Parent {
            args,
            queue,
            workers: BTreeMap::new(),
            next_id: 0,
            totals: Totals::default(),
            start: Instant::now(),
            last_progress: Instant::now(),
            stopped: false,
        }
    }

    /// The workers' temp directory.
    fn tmpdir(&self) -> std::path::PathBuf {
        let shm = std::path::Path::new("/dev/shm");
        match &self.args.tmpdir {
            Some(d) => d.clone(),
            None if shm.is_dir() => shm.to_path_buf(),
            None => std::env::temp_dir(),
        }
    }

    fn run(mut self) -> Result<ExitCode, Box<dyn std::error::Error>> {
        eprintln!(
            "bulwark sim: seeds {}..{} ({}), {} jobs, {} steps each (some runs long), stores in {}",
            self.args.first,
            self.args.first.saturating_add(self.args.seeds),
            self.args.seeds,
            self.args.jobs.max(1),
            self.args.plan().steps,
            self.tmpdir().display()
        );
        let (tx, rx) = mpsc::channel();
        while !self.queue.is_empty() || !self.workers.is_empty() {
            while self.workers.len() < self.args.jobs.max(1) {
                let Some((first, n)) = self.queue.pop_front() else {
                    break;
                };
                self.spawn(first, n, &tx)?;
            }
            let ev = rx.recv()?;
            self.on_event(ev);
            if self.args.stop_at_first_failure && !self.totals.failed.is_empty() && !self.stopped {
                self.stop();
            }
            if self.last_progress.elapsed() >= PROGRESS_EVERY {
                self.progress();
            }
        }
        self.progress();
        self.summary();
        Ok(if self.totals.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    fn spawn(&mut self, first: u64, n: u64, tx: &mpsc::Sender<Event>) -> std::io::Result<()> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["sim", "--worker", "--first"])
            .arg(first.to_string())
            .arg("--seeds")
            .arg(n.to_string());
        if let Some(s) = self.args.steps {
            cmd.arg("--steps").arg(s.to_string());
        }
        if self.args.known_bugs {
            cmd.arg("--known-bugs");
        }
        if let Some(p) = &self.args.plant {
            cmd.arg("--plant").arg(p);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "error");
        }
        cmd.env("TMPDIR", self.tmpdir());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let id = self.next_id;
        self.next_id += 1;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let t = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<SeedLine>(&line) {
                    Ok(l) => {
                        let _ = t.send(Event::Line(id, l));
                    }
                    Err(_) => {
                        let _ = t.send(Event::Stderr(id, format!("stdout: {line}")));
                    }
                }
            }
            let _ = t.send(Event::Exited(id));
        });
        let t = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = t.send(Event::Stderr(id, line));
            }
            let _ = t.send(Event::Exited(id));
        });
        self.workers.insert(
            id,
            Running {
                child,
                left: (first..first + n).collect(),
                stderr: VecDeque::new(),
                open_streams: 2,
                exit: None,
            },
        );
        Ok(())
    }

    /// Stops after the first failure: drops the seeds not dispatched and
    /// kills the workers still running (their unreported seeds are not
    /// failures).
    fn stop(&mut self) {
        self.stopped = true;
        self.queue.clear();
        for w in self.workers.values_mut() {
            let _ = w.child.kill();
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Line(id, line) => {
                if let Some(w) = self.workers.get_mut(&id) {
                    w.left.retain(|&s| s != line.seed());
                }
                self.record(line);
            }
            Event::Stderr(id, line) => {
                if let Some(w) = self.workers.get_mut(&id) {
                    if w.stderr.len() == STDERR_TAIL_LINES {
                        w.stderr.pop_front();
                    }
                    w.stderr.push_back(line);
                }
            }
            Event::Exited(id) => self.on_stream_closed(id),
        }
    }

    /// Both of a worker's streams closed: it ended. Seeds it did not
    /// report: the first failed (it died on it), the rest run again.
    fn on_stream_closed(&mut self, id: usize) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.open_streams -= 1;
        if w.open_streams > 0 {
            return;
        }
        let status = w.child.wait();
        w.exit = Some(format!("{status:?}"));
        let mut w = self.workers.remove(&id).expect("worker present");
        if self.stopped {
            return;
        }
        if let Some(seed) = w.left.pop_front() {
            let tail: Vec<String> = w.stderr.drain(..).collect();
            let reason = format!(
                "the worker died ({}); its stderr ends:\n{}",
                w.exit.unwrap_or_default(),
                tail.join("\n")
            );
            self.record(SeedLine::Failure { seed, reason });
            if let (Some(&first), n) = (w.left.front(), w.left.len() as u64) {
                self.queue.push_front((first, n));
            }
        }
    }

    fn record(&mut self, line: SeedLine) {
        self.totals.done += 1;
        match line {
            SeedLine::Report(r) => {
                if self.args.verbose {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                }
                let t = &mut self.totals;
                for (k, v) in &r.faults {
                    *t.faults.entry(*k).or_insert(0) += v;
                }
                t.virtual_ms += r.virtual_ms;
                t.ops += r.ops;
                t.committed += r.committed;
                t.provisional += r.provisional;
                t.height += r.height;
                t.snapshot_installs += r.snapshot_installs;
                t.votes_checked += r.votes_checked;
                t.grants_checked += r.grants_checked;
                t.forwards_checked += r.forwards_checked;
                t.checkpoints_checked += r.checkpoints_checked;
                t.rotations += r.rotations;
                t.replaced += r.replaced;
                t.promoted += r.promoted;
                *t.by_size.entry(r.facilities).or_insert(0) += 1;
                if r.steps > self.args.plan().steps {
                    t.long.0 += 1;
                    if t.long.1.len() < 8 {
                        t.long.1.push(r.seed);
                    }
                }
                *t.networks.entry(format!("{:?}", r.network)).or_insert(0) += 1;
                for (k, v) in &r.answers {
                    *t.answers.entry(k.clone()).or_insert(0) += v;
                }
                if let Some(l) = r.liar {
                    let lie = l.split(' ').nth(1).unwrap_or_default().to_string();
                    *t.liars.entry(lie).or_insert(0) += 1;
                }
            }
            SeedLine::Failure { seed, reason } => {
                println!("SEED={seed}: {reason}");
                println!("  replay: {}", replay(self.args, seed));
                self.totals.failed.push((seed, reason));
            }
        }
    }

    fn progress(&mut self) {
        self.last_progress = Instant::now();
        let elapsed = self.start.elapsed().as_secs_f64();
        eprintln!(
            "sim: {}/{} done, {} failed, {:.1} s elapsed, {:.2} seeds/s",
            self.totals.done,
            self.args.seeds,
            self.totals.failed.len(),
            elapsed,
            self.totals.done as f64 / elapsed.max(1e-9)
        );
    }

    fn summary(&self) {
        let t = &self.totals;
        let ok = (t.done - t.failed.len() as u64).max(1) as f64;
        let elapsed = self.start.elapsed().as_secs_f64();
        println!("== bulwark sim summary ==");
        println!(
            "seeds {} ({}..{}), failures {}",
            t.done,
            self.args.first,
            self.args.first.saturating_add(self.args.seeds),
            t.failed.len()
        );
        for (seed, _) in &t.failed {
            println!(
                "  failed: SEED={seed} (replay: {})",
                replay(self.args, *seed)
            );
        }
        if self.stopped {
            println!("  stopped at the first failure (--stop-at-first-failure)");
        }
        if let Some(p) = &self.args.plant {
            println!("planted bug: {p}");
        }
        println!(
            "wall {:.1} s ({:.2} seeds/s, {} jobs); virtual {:.1} s in all, {:.1} s per seed",
            elapsed,
            t.done as f64 / elapsed.max(1e-9),
            self.args.jobs.max(1),
            t.virtual_ms as f64 / 1000.0,
            t.virtual_ms as f64 / 1000.0 / ok
        );
        let sizes: Vec<String> = t
            .by_size
            .iter()
            .map(|(n, k)| format!("{k} of {n}"))
            .collect();
        let liars: Vec<String> = t.liars.iter().map(|(l, k)| format!("{l} {k}")).collect();
        println!(
            "clusters: {}; Byzantine validators: {}; long runs: {} (seeds {:?})",
            sizes.join(", "),
            liars.join(", "),
            t.long.0,
            t.long.1
        );
        println!(
            "per seed: {:.1} requests, {:.1} committed, {:.1} provisional, final height {:.1}, {:.2} snapshot installs, checked on the wire: {:.1} own BFT votes, {:.1} Raft vote grants, {:.1} forward deadlines; {:.2} checkpoint backups; {:.2} validator epochs final (key rotations, removals, additions); membership: {} replaced, {} promoted (by the leader asked)",
            t.ops as f64 / ok,
            t.committed as f64 / ok,
            t.provisional as f64 / ok,
            t.height as f64 / ok,
            t.snapshot_installs as f64 / ok,
            t.votes_checked as f64 / ok,
            t.grants_checked as f64 / ok,
            t.forwards_checked as f64 / ok,
            t.checkpoints_checked as f64 / ok,
            t.rotations as f64 / ok,
            t.replaced,
            t.promoted
        );
        let nets: Vec<String> = t.networks.iter().map(|(n, k)| format!("{n} {k}")).collect();
        println!("networks: {}", nets.join(", "));
        println!("answers per seed, by status (total):");
        for (k, v) in &t.answers {
            println!("  {:<28} {:>7.2}  ({v})", k, *v as f64 / ok);
        }
        println!("faults per seed, by kind (total):");
        for (k, v) in &t.faults {
            println!("  {:<18} {:>6.2}  ({v})", format!("{k:?}"), *v as f64 / ok);
        }
        let all: u64 = t.faults.values().sum();
        println!("  {:<18} {:>6.2}  ({all})", "all", all as f64 / ok);
    }
}
