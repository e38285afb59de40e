//! Liveness and readiness: what the engine tells a supervisor or a load
//! balancer about itself.
//!
//! Liveness (`/healthz`) says the process is running its loop; it fails
//! only after a fatal error, so a supervisor restarts what cannot recover.
//! Readiness (`/readyz`) says decisions are flowing: it turns 503, naming
//! each reason, while the sink is failing, no Kafka broker is reachable,
//! the pipeline holds records but has committed nothing for longer than
//! the stall bound, or batches have been scored with incomplete terminal
//! state for longer than its bound. Stages report into it; it never
//! blocks them (atomics only, and a mutex for the last error text).
//! [`http`] serves it, with the metrics.

pub mod http;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

/// Unix time in ms; 0 means "not set".
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Start a "since when" clock unless it is running already.
fn mark_since(since: &AtomicI64) {
    let _ = since.compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
}

#[derive(Debug)]
pub struct Health {
    started: AtomicBool,
    fatal: Mutex<Option<String>>,
    /// Since when the sink's transaction keeps failing (0 = it is not).
    sink_failing_since: AtomicI64,
    sink_error: Mutex<String>,
    /// Since when no broker is up (0 = at least one is).
    kafka_down_since: AtomicI64,
    /// Last committed batch.
    last_commit: AtomicI64,
    /// Records read and not yet committed.
    in_flight: AtomicI64,
    /// Since when batches are scored with incomplete state (0 = they are not).
    incomplete_since: AtomicI64,
    stall_ms: i64,
    incomplete_ms: i64,
}

impl Health {
    pub fn new(stall_ms: i64, incomplete_ms: i64) -> Self {
        Health {
            started: AtomicBool::new(false),
            fatal: Mutex::new(None),
            sink_failing_since: AtomicI64::new(0),
            sink_error: Mutex::new(String::new()),
            kafka_down_since: AtomicI64::new(0),
            last_commit: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
            incomplete_since: AtomicI64::new(0),
            stall_ms,
            incomplete_ms,
        }
    }

    /// Connected, migrated, models loaded and consuming.
    pub fn set_started(&self, started: bool) {
        self.started.store(started, Ordering::Relaxed);
        if started {
            self.last_commit.store(now_ms(), Ordering::Relaxed);
        }
    }

    pub fn set_fatal(&self, reason: &str) {
        *self.fatal.lock().expect("health lock") = Some(reason.to_owned());
        self.started.store(false, Ordering::Relaxed);
    }

    pub fn sink_failed(&self, error: &str) {
        mark_since(&self.sink_failing_since);
        *self.sink_error.lock().expect("health lock") = error.to_owned();
    }

    pub fn committed(&self, rows: i64, state_complete: bool) {
        self.sink_failing_since.store(0, Ordering::Relaxed);
        self.last_commit.store(now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(rows, Ordering::Relaxed);
        if state_complete {
            self.incomplete_since.store(0, Ordering::Relaxed);
        } else {
            mark_since(&self.incomplete_since);
        }
    }

    pub fn read(&self, rows: i64) {
        self.in_flight.fetch_add(rows, Ordering::Relaxed);
    }

    /// Records read that this instance will not commit (a stale batch,
    /// which its partitions' owner replays).
    pub fn dropped(&self, rows: i64) {
        self.in_flight.fetch_sub(rows, Ordering::Relaxed);
    }

    /// From Kafka's statistics: is any broker up?
    pub fn brokers_up(&self, up: bool) {
        if up {
            self.kafka_down_since.store(0, Ordering::Relaxed);
        } else {
            mark_since(&self.kafka_down_since);
        }
    }

    pub fn live(&self) -> Result<(), String> {
        match self.fatal.lock().expect("health lock").as_ref() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// `Ok` when ready, else every reason it is not.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        self.ready_at(now_ms())
    }

    fn ready_at(&self, now: i64) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if let Err(reason) = self.live() {
            why.push(format!("fatal: {reason}"));
        } else if !self.started.load(Ordering::Relaxed) {
            why.push("starting: not connected to Kafka and Postgres yet".into());
        }
        let since = |a: &AtomicI64| match a.load(Ordering::Relaxed) {
            0 => None,
            t => Some((now - t).max(0) / 1000),
        };
        if let Some(secs) = since(&self.sink_failing_since) {
            let e = self.sink_error.lock().expect("health lock").clone();
            why.push(format!("sink failing for {secs} s: {e}"));
        }
        if let Some(secs) = since(&self.kafka_down_since) {
            why.push(format!("no Kafka broker reachable for {secs} s"));
        }
        let idle = now - self.last_commit.load(Ordering::Relaxed);
        if self.started.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) > 0
            && idle > self.stall_ms
        {
            why.push(format!(
                "stalled: records waiting and nothing committed for {} s",
                idle / 1000
            ));
        }
        if let Some(secs) = since(&self.incomplete_since) {
            if secs * 1000 > self.incomplete_ms {
                why.push(format!(
                    "terminal state incomplete for {secs} s (watermark behind)"
                ));
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_every_reason_and_recovers() {
        let h = Health::new(60_000, 60_000);
        assert!(h.ready().unwrap_err()[0].starts_with("starting"));
        h.set_started(true);
        assert_eq!(h.ready(), Ok(()));

        h.sink_failed("postgres: connection refused");
        h.brokers_up(false);
        let why = h.ready().unwrap_err();
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].contains("connection refused"));
        h.brokers_up(true);
        h.committed(0, true);
        assert_eq!(h.ready(), Ok(()));

        h.read(10);
        let later = now_ms() + 61_000;
        assert!(h.ready_at(later).unwrap_err()[0].starts_with("stalled"));
        h.committed(10, false);
        assert_eq!(h.ready(), Ok(()), "incomplete only beyond its bound");
        assert!(h.ready_at(now_ms() + 61_000).unwrap_err()[0].contains("incomplete"));
        h.committed(0, true);
        assert_eq!(h.ready_at(now_ms() + 61_000), Ok(()));
        // A stale batch's records leave without a commit: nothing waits.
        h.read(7);
        h.dropped(7);
        assert_eq!(h.ready_at(now_ms() + 61_000), Ok(()));

        assert_eq!(h.live(), Ok(()));
        h.set_fatal("fenced");
        assert_eq!(h.live(), Err("fenced".into()));
    }
}
