//! Real `bulwark node` processes on loopback, made from config files
//! written by `bulwark keygen`, driven only over HTTP.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_bulwark");
pub const TOKEN: &str = "test-token-0123456789";

/// One facility's files and addresses.
pub struct Site {
    pub id: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub proc: Option<Child>,
}

impl Site {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Starts `bulwark node --config` (stderr to `<dir>/node.log`).
    pub fn start(&mut self) {
        self.start_bin(BIN);
    }

    /// Starts `bin node --config` (another build of bulwark).
    pub fn start_bin(&mut self, bin: &str) {
        assert!(self.proc.is_none(), "{} already runs", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        let child = Command::new(bin)
            .args(["node", "--config"])
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("BULWARK_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(child);
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the running process.
    pub fn signal(&self, signal: &str) {
        let pid = self.proc.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.proc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a planned stop), then waits for the process to exit;
    /// returns whether it exited with status 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.proc.take() else {
            return false;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            let _ = c.kill();
        }
        c.wait().is_ok_and(|s| s.success())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback address (UDP or TCP).
pub fn free_addr(udp: bool) -> SocketAddr {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }
}

/// Runs `bulwark` with `args`; panics with its output unless it exits 0.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bulwark {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The quoted value of the line of `out` starting with `key`.
pub fn quoted(out: &str, key: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in {out}"));
    line.split('"').nth(1).unwrap().to_string()
}

/// Three facilities' keys and configs under `root` (nothing started).
/// `extra` is appended to every config.
pub fn sites(root: &Path, names: &[&str], extra: &str) -> Vec<Site> {
    let mut keys = Vec::new();
    for n in names {
        let dir = root.join(n);
        std::fs::create_dir_all(&dir).unwrap();
        let out = run(&["keygen", "--id", n, "--out", dir.to_str().unwrap()]);
        keys.push((quoted(&out, "pin"), quoted(&out, "vote_key")));
    }
    let addrs: Vec<(SocketAddr, SocketAddr)> = names
        .iter()
        .map(|_| (free_addr(true), free_addr(false)))
        .collect();
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let dir = root.join(n);
        let mut text = format!(
            "[facility]\nid = \"{n}\"\ndata_dir = \"data\"\nquic_listen = \"{}\"\nhttp_listen = \"{}\"\n\
             key = \"facility.key\"\ncert = \"facility.crt\"\nvote_key = \"vote.key\"\n\n",
            addrs[i].0, addrs[i].1
        );
        for (j, m) in names.iter().enumerate() {
            if j != i {
                text += &format!(
                    "[[peer]]\nid = \"{m}\"\naddr = \"{}\"\npin = \"{}\"\nvote_key = \"{}\"\n\n",
                    addrs[j].0, keys[j].0, keys[j].1
                );
            }
        }
        text += &format!("[api]\ntoken = \"{TOKEN}\"\n\n{extra}");
        let config = dir.join("facility.toml");
        std::fs::write(&config, text).unwrap();
        out.push(Site {
            id: n.to_string(),
            dir,
            config,
            http: addrs[i].1,
            quic: addrs[i].0,
            proc: None,
        });
    }
    out
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        // A fresh connection per request: the server may close one it
        // answered early (413) while the client would reuse it.
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// GET `url`: status and JSON (Null if the body is not JSON, or the
/// request failed: status 0).
pub async fn get(c: &reqwest::Client, url: &str) -> (u16, Value) {
    match c.get(url).bearer_auth(TOKEN).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// POST a JSON write with the token and `key`.
pub async fn post(c: &reqwest::Client, url: &str, key: &str, body: &Value) -> (u16, Value) {
    post_raw(c, url, Some(TOKEN), Some(key), body.to_string()).await
}

pub async fn post_raw(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: String,
) -> (u16, Value) {
    let mut r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    match r.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Polls `f` every 100 ms until it returns `Some`, at most `limit`.
pub async fn until<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts every site and waits until the first knows a leader; returns
/// the leader's index in `s`.
pub async fn start_all(c: &reqwest::Client, s: &mut [Site]) -> usize {
    for x in s.iter_mut() {
        x.start();
    }
    let lead = leader(c, &s[0]).await;
    s.iter()
        .position(|x| x.id == lead)
        .expect("the leader is one of the sites")
}

/// Waits until `site` knows a leader; returns the leader's id.
pub async fn leader(c: &reqwest::Client, site: &Site) -> String {
    until(Duration::from_secs(60), "a leader", || async {
        let (s, v) = get(c, &site.url("/v1/cluster")).await;
        (s == 200)
            .then(|| v["leader"].as_str().map(str::to_string))
            .flatten()
    })
    .await
}

/// Writes until the write is answered with a final status (not 503/0),
/// retrying with the same key; returns the status and body.
pub async fn write_until_final(
    c: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> (u16, Value) {
    until(Duration::from_secs(60), "a final answer", || async {
        let (s, v) = post(c, url, key, body).await;
        (s != 503 && s != 0 && s != 429).then_some((s, v))
    })
    .await
}

/// A person and a block for write `i`: each block takes one person.
pub fn setup_bodies(i: usize) -> (Value, Value) {
    (
        json!({"id": format!("p{i}"), "name": format!("Person {i}"), "role": "resident", "pgy": 2}),
        json!({"id": format!("b{i}"), "day": i as u32 * 2, "start_min": 480, "duration_min": 600, "pool": "clinic", "required": 1}),
    )
}

/// Who is on each block, by a linearizable read at `site`.
pub async fn assignments(
    c: &reqwest::Client,
    site: &Site,
) -> Option<(String, Vec<(String, String)>)> {
    let (s, v) = get(c, &site.url("/v1/schedule?consistency=linearizable")).await;
    if s != 200 {
        return None;
    }
    let mut out = Vec::new();
    for b in v["blocks"].as_array()? {
        for a in b["assigned"].as_array()? {
            out.push((
                b["id"].as_str()?.to_string(),
                a["person"].as_str()?.to_string(),
            ));
        }
    }
    Some((v["digest"].as_str()?.to_string(), out))
}

/// Asserts that no facility of `s` holds evidence against any other.
pub async fn no_evidence(c: &reqwest::Client, s: &[Site]) {
    for x in s {
        let (st, v) = get(c, &x.url("/v1/evidence")).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v.as_array().map(Vec::len),
            Some(0),
            "{} holds evidence: {v}",
            x.id
        );
    }
}

/// Runs the `bulwark` CLI against `site` with `token`: exit code, stdout,
/// stderr.
pub fn cli(site: &Site, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("BULWARK_URL", site.url(""))
        .env("BULWARK_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `site`'s `/metrics` text (`None`: no answer).
pub async fn metrics_text(c: &reqwest::Client, site: &Site) -> Option<String> {
    c.get(site.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// One unlabelled gauge or counter of `site`'s `/metrics` (the first
/// series of `name`; 0 when not exported yet).
pub async fn metric(c: &reqwest::Client, site: &Site, name: &str) -> f64 {
    let text = metrics_text(c, site).await.expect("metrics answer");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

/// A client that writes people one at a time through the URLs in `via`
/// (which may change while it runs), each write retried under its key
/// (another URL each attempt, up to 200) until acknowledged, keeping its
/// own record of acknowledged writes.
pub struct Writer {
    pub via: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts writing people `<prefix>0`, `<prefix>1`, … through `via`.
    pub fn spawn(c: &reqwest::Client, via: Vec<String>, prefix: &str) -> Writer {
        use std::sync::atomic::Ordering;
        let via = std::sync::Arc::new(std::sync::Mutex::new(via));
        let acked: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let stop: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
        let task = {
            let (via, acked, stop, c) = (via.clone(), acked.clone(), stop.clone(), c.clone());
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{prefix}{n}");
                    let body =
                        json!({"id": id, "name": format!("Dr Written {n}"), "role": "faculty"});
                    for attempt in 0..200usize {
                        let url = {
                            let v = via.lock().unwrap();
                            v[(n + attempt) % v.len()].clone()
                        };
                        let (st, v) = post(&c, &url, &id, &body).await;
                        if st == 200 {
                            acked.lock().unwrap().push(id.clone());
                            break;
                        }
                        assert!(matches!(st, 0 | 429 | 500 | 503), "{id} at {url}: {st} {v}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    n += 1;
                }
            })
        };
        Writer {
            via,
            acked,
            stop,
            task,
        }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `k` more writes are acknowledged (at most 60 s; the
    /// writer must keep running).
    pub async fn more(&self, k: usize, what: &str) {
        let from = self.acked();
        until(Duration::from_secs(60), what, || async {
            assert!(!self.task.is_finished(), "the writer stopped");
            (self.acked() >= from + k).then_some(())
        })
        .await;
    }

    /// Stops the writer; the writes it saw acknowledged, in order.
    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}
