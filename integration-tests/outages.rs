//! Outages of the real stack while the engine runs: PostgreSQL stopped and
//! started, the Kafka broker stopped and started, mid-stream and before
//! start-up. The engine must ride them through with nothing lost or doubled
//! and the features of a fault-free run, keep `/healthz` at 200 (restarting
//! it would not help), and say on `/readyz` why it is not ready meanwhile.
//!
//! These tests stop the shared local stack (`scripts/stack`): run them alone
//! (`--test-threads=1`, no other integration test at the same time). A
//! [`StackGuard`] brings the stack back up however a test ends.

use crate::common::{admin_url, repo_root, Engine, World};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ------------------------------------------------------------ the stack --

/// `scripts/stack up`: starts whatever is down; idempotent.
pub fn stack_up() -> Result<(), String> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/stack"))
        .arg("up")
        .output()
        .map_err(|e| format!("cannot run scripts/stack up: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scripts/stack up failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Brings the stack back up when dropped, unless [`StackGuard::restore`]
/// already did: a failing test must not leave the others without a stack.
pub struct StackGuard {
    restored: bool,
}

impl StackGuard {
    pub fn new() -> StackGuard {
        StackGuard { restored: false }
    }

    /// End the outage now.
    pub fn restore(&mut self) {
        stack_up().unwrap();
        self.restored = true;
    }
}

impl Drop for StackGuard {
    fn drop(&mut self) {
        if !self.restored {
            if let Err(e) = stack_up() {
                eprintln!("{e}");
            }
        }
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The stack's PostgreSQL server, found by asking it where it lives (the
/// data directory moves with `RISKSTREAM_PG_DIR` and the checkout path).
pub struct PgServer {
    data_dir: String,
    pg_ctl: PathBuf,
    /// The OS user the server runs as, when we are root (postgres refuses root).
    run_as: Option<String>,
}

impl PgServer {
    pub async fn locate() -> PgServer {
        let admin = PgPool::connect(&admin_url())
            .await
            .expect("postgres is up (make stack-up)");
        let data_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
            .fetch_one(&admin)
            .await
            .unwrap();
        let version: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
            .fetch_one(&admin)
            .await
            .unwrap();
        admin.close().await;
        let major = version.parse::<u32>().unwrap() / 10_000;
        let pg_ctl = [
            std::env::var("RISKSTREAM_PG_BIN")
                .map(|b| PathBuf::from(b).join("pg_ctl"))
                .ok(),
            Some(PathBuf::from(format!(
                "/usr/lib/postgresql/{major}/bin/pg_ctl"
            ))),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("pg_ctl"));
        let run_as = running_as_root().then(|| {
            let uid = std::fs::metadata(&data_dir).unwrap().uid();
            let out = Command::new("id")
                .args(["-nu", &uid.to_string()])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        });
        PgServer {
            data_dir,
            pg_ctl,
            run_as,
        }
    }

    /// `pg_ctl stop -m fast`, as `scripts/stack down` does: every session is
    /// cut, the server is gone when this returns.
    pub fn stop(&self) {
        let args = [
            "-D",
            self.data_dir.as_str(),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "stop",
        ];
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&self.pg_ctl).args(args);
                c
            }
            None => {
                let mut c = Command::new(&self.pg_ctl);
                c.args(args);
                c
            }
        };
        // postgres tools getcwd() at start-up.
        let out = cmd.current_dir("/").output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The pid of the stack's broker, if it runs: the pid file of
/// `scripts/stack`, and only while that pid is still a `kafka.Kafka` JVM.
fn broker_pid() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(repo_root().join(".stack/kafka/kafka.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .replace('\0', " ")
        .contains("kafka.Kafka ")
        .then_some(pid)
}

/// SIGTERM to the broker (a controlled shutdown), and wait until it exited.
pub fn stop_broker() {
    let pid = broker_pid().expect("the stack's Kafka broker runs (make stack-up)");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
    let deadline = Instant::now() + Duration::from_secs(90);
    while broker_pid() == Some(pid) {
        assert!(
            Instant::now() < deadline,
            "the broker (pid {pid}) did not stop within 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ------------------------------------------------------------ HTTP probes --

/// A free TCP port on 127.0.0.1 (free when this returns; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port: (status, body), or `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Rewrite the world's config so the engine serves `/healthz`, `/readyz`
/// and `/metrics` on a free port; returns the port.
pub fn serve_health(world: &World, partitions: i32) -> u16 {
    let port = free_port();
    let text = world.config_text(partitions, "");
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    let with_listen = text.replacen("listen = \"\"", &listen, 1);
    assert!(
        with_listen.contains(&listen),
        "config_text has a [server] listen line"
    );
    std::fs::write(&world.config_path, with_listen).unwrap();
    port
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub live: Option<u16>,
    pub ready: Option<(u16, String)>,
}

/// Polls `/healthz` and `/readyz` every 250 ms on its own thread until
/// [`Prober::finish`], so the answers are seen whatever the test awaits.
pub struct Prober {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    pub fn start(port: u16) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                let live = http_get(port, "/healthz").map(|(status, _)| status);
                let ready = http_get(port, "/readyz");
                out.lock().unwrap().push(Sample { at, live, ready });
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Prober {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Wait until `/readyz` says 200; its last answer otherwise.
async fn wait_ready(port: u16, engine: &mut Engine, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let answer = http_get(port, "/readyz");
        if matches!(answer, Some((200, _))) {
            return Ok(());
        }
        if let Some(status) = engine.child.try_wait().unwrap() {
            return Err(format!("engine exited ({status}):\n{}", engine.log_tail()));
        }
        if started.elapsed() > timeout {
            return Err(format!("/readyz after {timeout:?}: {answer:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A new pool for the world: Postgres ended every session when it stopped,
/// and a pooled connection may hand that error to the next query.
pub async fn reconnect(world: &mut World) {
    world.pool.close().await;
    world.pool = PgPool::connect(&world.db_url).await.unwrap();
}

/// The engine is still running; otherwise fail with its log.
fn assert_running(engine: &mut Engine, when: &str) {
    if let Some(status) = engine.child.try_wait().unwrap() {
        panic!(
            "the engine exited {when} ({status}) instead of riding it through:\n{}",
            engine.log_tail()
        );
    }
}

/// `/healthz` answered 200 every time from the first answer on.
fn assert_always_live(samples: &[Sample]) {
    let from = samples
        .iter()
        .position(|s| s.live.is_some())
        .expect("the health server answered");
    let bad: Vec<_> = samples[from..]
        .iter()
        .filter(|s| s.live != Some(200))
        .map(|s| (s.at.duration_since(samples[from].at), s.live))
        .collect();
    assert!(
        bad.is_empty(),
        "/healthz must stay 200 through an outage; it answered {bad:?}"
    );
}

/// The `/readyz` answers between `from` and `to`.
fn readiness_between(samples: &[Sample], from: Instant, to: Instant) -> Vec<(u16, String)> {
    samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .filter_map(|s| s.ready.clone())
        .collect()
}

fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").expect("/metrics answers");
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ------------------------------------------------ mid-stream outages --

const N: usize = 20_000;
const SEED: u64 = 23;
const PARTITIONS: i32 = 2;
const DONE_TIMEOUT: Duration = Duration::from_secs(600);

/// Features of a fault-free run over the same input, computed once.
static BASELINE: Mutex<Option<BTreeMap<String, String>>> = Mutex::new(None);

async fn baseline() -> BTreeMap<String, String> {
    if let Some(b) = BASELINE.lock().unwrap().clone() {
        return b;
    }
    let world = World::new("outclean", PARTITIONS).await;
    let (produced, _) = world.produce_simulated(N, SEED);
    let mut engine = world.start_engine("clean");
    world
        .wait_until_done(&mut [&mut engine], DONE_TIMEOUT)
        .await;
    assert!(engine.terminate().success(), "{}", engine.log_tail());
    world.assert_exactly_once(produced).await;
    let b = world.features().await;
    world.tear_down().await;
    *BASELINE.lock().unwrap() = Some(b.clone());
    b
}

fn assert_same_features(run: &BTreeMap<String, String>, clean: &BTreeMap<String, String>) {
    assert_eq!(
        run.len(),
        clean.len(),
        "as many decisions as the fault-free run"
    );
    let differing: Vec<_> = clean
        .iter()
        .filter(|(k, v)| run.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        differing.is_empty(),
        "{} decisions have other features than in the fault-free run, e.g. {:?}",
        differing.len(),
        &differing[..differing.len().min(3)]
    );
}

/// What to stop in a mid-stream outage.
#[derive(Debug, Clone, Copy)]
enum Outage {
    Postgres,
    Broker,
}

/// The shared scenario: start, wait for decisions, take `what` down for
/// `down`, bring it back, finish; check liveness, readiness (503 with a
/// reason containing `reason` during the outage, 200 after), exactly-once
/// and the fault-free features.
async fn ride_through(test: &str, what: Outage, down: Duration, reason: &[&str]) {
    let clean = baseline().await;
    let mut world = World::new(test, PARTITIONS).await;
    let port = serve_health(&world, PARTITIONS);
    let (produced, _) = world.produce_simulated(N, SEED);
    let pg = PgServer::locate().await;
    let mut engine = world.start_engine(test);
    let prober = Prober::start(port);
    wait_ready(port, &mut engine, Duration::from_secs(120))
        .await
        .unwrap();
    world
        .wait_for_decisions(&mut engine, 1_000, Duration::from_secs(120))
        .await;

    let decided_before = world.count("SELECT count(*) FROM risk_decisions").await;
    let mut guard = StackGuard::new();
    let stopped_at = Instant::now();
    match what {
        Outage::Postgres => pg.stop(),
        Outage::Broker => stop_broker(),
    }
    while stopped_at.elapsed() < down {
        assert_running(&mut engine, &format!("during the {what:?} outage"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let restarting_at = Instant::now();
    guard.restore();
    let restored_at = Instant::now();
    reconnect(&mut world).await;
    assert_running(&mut engine, &format!("after the {what:?} outage"));
    world
        .wait_until_done(&mut [&mut engine], DONE_TIMEOUT)
        .await;
    wait_ready(port, &mut engine, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("/readyz is back to 200 after the outage: {e}"));
    let retries = metric(port, "riskstream_postgres_retries_total");
    let samples = prober.finish();

    assert_always_live(&samples);
    let during = readiness_between(&samples, stopped_at, restarting_at);
    assert!(!during.is_empty(), "readiness was probed during the outage");
    let told = during
        .iter()
        .rev()
        .find(|(status, body)| *status == 503 && reason.iter().any(|r| body.contains(r)));
    assert!(
        told.is_some(),
        "/readyz turns 503 naming {reason:?} during the {what:?} outage; it said {:?}",
        during
            .iter()
            .map(|(s, b)| format!("{s} {b}"))
            .collect::<Vec<_>>()
    );
    println!(
        "{test}: {:?} down {:.1} s (restart took {:.1} s), {decided_before} of {produced} decided when it went down; /readyz said {:?}; {retries} Postgres retries",
        what,
        restarting_at.duration_since(stopped_at).as_secs_f64(),
        restored_at.duration_since(restarting_at).as_secs_f64(),
        told.unwrap().1.trim(),
    );
    assert!(
        decided_before < produced as i64,
        "the outage must happen mid-stream ({decided_before} of {produced} decided)"
    );
    // Whichever stage met the outage retried (the sink's transaction when
    // a batch was on its way to Postgres, else featurize's reads of card or
    // terminal state, which then hold every batch back): asserting the
    // sink's own counter made this test depend on where the batches were
    // at the instant Postgres stopped.
    if matches!(what, Outage::Postgres) {
        assert!(retries > 0.0, "Postgres work was retried while it was down");
    }
    let status = engine.terminate();
    assert!(
        status.success(),
        "graceful exit, got {status}:\n{}",
        engine.log_tail()
    );
    world.assert_exactly_once(produced).await;
    assert_same_features(&world.features().await, &clean);
    world.tear_down().await;
}

/// Seen: a 30 s Postgres outage ridden through with nothing lost or doubled
/// while `/healthz` said 200 throughout. Now `/readyz` must also tell the
/// truth: 503 naming the failing sink (or the stall) while Postgres is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_stream() {
    ride_through(
        "pgout",
        Outage::Postgres,
        Duration::from_secs(25),
        &["sink failing", "stalled"],
    )
    .await;
}

/// The broker stopped for 20 s mid-stream: librdkafka reconnects, the
/// group rebalances, nothing is lost or doubled, and `/readyz` says no
/// broker is reachable meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_mid_stream() {
    ride_through(
        "kafkaout",
        Outage::Broker,
        Duration::from_secs(20),
        &["no Kafka broker reachable"],
    )
    .await;
}

// ------------------------------------------------------------ start-up --

/// Start the engine while `what` is down; it must wait (alive, `/healthz`
/// 200, `/readyz` 503 `starting`), then decide the whole stream once it is
/// up. With `logged`, the wait must also be in the log within the 15 s
/// down, naming that dependency.
async fn waits_at_start_up(test: &str, what: Outage, logged: Option<&str>) {
    let mut world = World::new(test, 1).await;
    let port = serve_health(&world, 1);
    let (produced, _) = world.produce_simulated(3_000, SEED + 1);
    let pg = PgServer::locate().await;
    let mut guard = StackGuard::new();
    match what {
        Outage::Postgres => pg.stop(),
        Outage::Broker => stop_broker(),
    }
    let mut engine = world.start_engine(test);
    let started_at = Instant::now();
    let prober = Prober::start(port);
    while started_at.elapsed() < Duration::from_secs(15) {
        assert_running(&mut engine, &format!("while {what:?} was not up yet"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let restarting_at = Instant::now();
    guard.restore();
    reconnect(&mut world).await;
    world
        .wait_until_done(&mut [&mut engine], Duration::from_secs(300))
        .await;
    wait_ready(port, &mut engine, Duration::from_secs(60))
        .await
        .unwrap();
    let samples = prober.finish();

    assert_always_live(&samples);
    let during = readiness_between(&samples, started_at, restarting_at);
    assert!(
        during.iter().any(|(_, b)| b.contains("starting")),
        "/readyz says the engine is starting while {what:?} is down: {during:?}"
    );
    assert!(
        during.iter().all(|(status, _)| *status == 503),
        "never ready while {what:?} is down: {during:?}"
    );
    if let Some(dependency) = logged {
        let log = std::fs::read_to_string(&engine.log).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("not reachable yet; retrying") && l.contains(dependency)),
            "the wait is logged:\n{}",
            engine.log_tail()
        );
    }
    println!(
        "{test}: {what:?} down for {:.1} s at start-up, /readyz said {:?}; all decided {:.1} s after it was back",
        restarting_at.duration_since(started_at).as_secs_f64(),
        during.last().map(|(s, b)| format!("{s} {}", b.trim())),
        restarting_at.elapsed().as_secs_f64()
    );
    assert!(engine.terminate().success(), "{}", engine.log_tail());
    world.assert_exactly_once(produced).await;
    world.tear_down().await;
}

/// Start-up retries with backoff while Postgres is not up yet, instead of
/// failing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_postgres() {
    waits_at_start_up("pgstart", Outage::Postgres, Some("postgres")).await;
}

/// The same for the broker: Postgres is up, Kafka is not yet. The log is
/// not checked: creating the topics blocks in librdkafka's admin request
/// (up to its request timeout, 60 s by default) before `until_up` sees an
/// error to log and retry, so the first minute of the wait is silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_kafka() {
    waits_at_start_up("kafkastart", Outage::Broker, None).await;
}
