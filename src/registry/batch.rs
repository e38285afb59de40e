//! Dynamic batching: concurrent requests for one model are merged along dim 0
//! into one ONNX Runtime run, and the outputs are split back per request.
//!
//! One batcher task per loaded model version owns a bounded queue. It waits
//! for a free session first, then gathers what is queued (up to `max_batch`
//! rows, waiting until `max_delay` after the first request arrived when that
//! is not zero, the default), so batches
//! grow when the sessions are busy and stay small when they are not. Only
//! requests whose dims beyond 0 agree are merged. The run itself happens on
//! the blocking pool. A merged run that fails is retried request by request,
//! so one bad request never fails its neighbours.

use super::engine::{Engine, InferError};
use super::tensor::Tensor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Most rows in one run, and the largest dim 0 one request may have.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub max_delay: Duration,
    /// Requests queued per model before new ones are refused (503).
    pub queue: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_batch: 64,
            // Batches still form while every session is busy (the batcher
            // waits for a session first); a delay only adds latency when the
            // model is idle. bench/serve_bench.py measured both (BENCHMARKS.md).
            max_delay: Duration::ZERO,
            queue: 1024,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<Tensor>, InferError>>;

/// One queued request: validated inputs in manifest order.
pub(crate) struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    reply: Reply,
}

impl Job {
    pub(crate) fn new(inputs: Vec<Tensor>, reply: Reply) -> Job {
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(1);
        Job {
            inputs,
            rows,
            reply,
        }
    }

    /// The dims beyond 0 of every input: only jobs with equal keys merge.
    fn key(&self) -> Vec<&[usize]> {
        self.inputs
            .iter()
            .map(|t| t.shape.get(1..).unwrap_or(&[]))
            .collect()
    }
}

/// Which jobs run together, as indices into `jobs` (`(key, rows)` in arrival
/// order): equal keys only, at most `max_batch` rows per run (a job larger
/// than that runs alone), arrival order kept within each run.
pub(crate) fn plan<K: PartialEq>(jobs: &[(K, usize)], max_batch: usize) -> Vec<Vec<usize>> {
    let mut runs: Vec<(usize, Vec<usize>, usize)> = Vec::new(); // (key's job, members, rows)
    for (i, (key, rows)) in jobs.iter().enumerate() {
        let open = runs
            .iter_mut()
            .find(|(k, _, r)| jobs[*k].0 == *key && r + rows <= max_batch);
        match open {
            Some((_, members, r)) => {
                members.push(i);
                *r += rows;
            }
            None => runs.push((i, vec![i], *rows)),
        }
    }
    runs.into_iter().map(|(_, members, _)| members).collect()
}

/// The batcher task of one model version; ends when the model is dropped
/// (its queue's sender goes away) and the queue is drained.
pub(crate) async fn run_batcher(
    engine: Arc<Engine>,
    mut rx: mpsc::Receiver<Job>,
    opts: BatchOptions,
) {
    let max_batch = opts.max_batch.max(1);
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let deadline = tokio::time::Instant::now() + opts.max_delay;
        let Some(permit) = engine.acquire().await else {
            let _ = first
                .reply
                .send(Err(InferError::Unavailable(engine.name.clone())));
            return;
        };
        let mut rows = first.rows;
        let mut jobs = vec![first];
        while rows < max_batch {
            // What queued while we waited for a session is taken without
            // waiting; only then, and only with a non-zero `max_delay`, wait
            // for company (a zero-length timer would still round up to 1 ms).
            let next = match rx.try_recv() {
                Ok(job) => Ok(Some(job)),
                Err(mpsc::error::TryRecvError::Disconnected) => Ok(None),
                Err(mpsc::error::TryRecvError::Empty) if opts.max_delay.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv()).await
                }
            };
            match next {
                Ok(Some(job)) if rows + job.rows > max_batch => {
                    carry = Some(job);
                    break;
                }
                Ok(Some(job)) => {
                    rows += job.rows;
                    jobs.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            run_jobs(&engine, jobs, max_batch);
        });
    }
}

/// Blocking: run the gathered jobs in as few runs as their shapes allow.
fn run_jobs(engine: &Engine, jobs: Vec<Job>, max_batch: usize) {
    // A request that timed out is not worth a run.
    let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    let keyed: Vec<(Vec<&[usize]>, usize)> = jobs.iter().map(|j| (j.key(), j.rows)).collect();
    let runs = plan(&keyed, max_batch);
    drop(keyed);
    let mut slots: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
    for run in runs {
        let group: Vec<Job> = run.iter().filter_map(|&i| slots[i].take()).collect();
        run_group(engine, group);
    }
}

fn run_alone(engine: &Engine, job: Job) {
    engine.observe_batch(&job.inputs, 1);
    let result = engine
        .with_session(|s| engine.run(s, &job.inputs))
        .and_then(|r| r);
    let _ = job.reply.send(result);
}

fn run_group(engine: &Engine, mut group: Vec<Job>) {
    if group.len() == 1 || !engine.batching() {
        group.into_iter().for_each(|j| run_alone(engine, j));
        return;
    }
    let merged: Result<Vec<Tensor>, String> = (0..group[0].inputs.len())
        .map(|i| Tensor::concat(&group.iter().map(|j| &j.inputs[i]).collect::<Vec<_>>()))
        .collect();
    let rows: Vec<usize> = group.iter().map(|j| j.rows).collect();
    let outputs = merged.ok().and_then(|inputs| {
        engine.observe_batch(&inputs, group.len());
        engine.with_session(|s| engine.run(s, &inputs)).ok()?.ok()
    });
    let Some(outputs) = outputs else {
        // Someone's inputs broke the run: each request gets its own answer.
        group.into_iter().for_each(|j| run_alone(engine, j));
        return;
    };
    match split(outputs, &rows) {
        Ok(per_job) => {
            for (job, out) in group.drain(..).zip(per_job) {
                let _ = job.reply.send(Ok(out));
            }
        }
        Err(why) => {
            engine.disable_batching(&why);
            group.into_iter().for_each(|j| run_alone(engine, j));
        }
    }
}

/// Split every output along dim 0 by `rows`; transposed to per-request outputs.
pub(crate) fn split(outputs: Vec<Tensor>, rows: &[usize]) -> Result<Vec<Vec<Tensor>>, String> {
    let mut per_job: Vec<Vec<Tensor>> = (0..rows.len()).map(|_| Vec::new()).collect();
    for out in outputs {
        let parts = out
            .split_rows(rows)
            .map_err(|e| format!("an output does not follow the batch: {e}"))?;
        for (job, part) in per_job.iter_mut().zip(parts) {
            job.push(part);
        }
    }
    Ok(per_job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tensor::Data;

    #[test]
    fn plan_merges_equal_shapes_up_to_max_batch() {
        let jobs = [("a", 3), ("b", 1), ("a", 2), ("a", 4), ("b", 2), ("a", 1)];
        assert_eq!(
            plan(&jobs, 6),
            vec![vec![0, 2, 5], vec![1, 4], vec![3]],
            "a: 3+2+1 fill one run, 4 does not fit and opens another"
        );
        assert_eq!(plan(&jobs, 1).len(), 6);
        let big = [("a", 10), ("a", 1)];
        assert_eq!(plan(&big, 4), vec![vec![0], vec![1]]);
    }

    #[test]
    fn split_gives_each_request_its_rows_of_every_output() {
        let score = Tensor::new(vec![3], Data::F32(vec![0.1, 0.2, 0.3])).unwrap();
        let ids = Tensor::new(vec![3, 2], Data::I64(vec![1, 2, 3, 4, 5, 6])).unwrap();
        let per_job = split(vec![score, ids], &[1, 2]).unwrap();
        assert_eq!(per_job[0][0].data, Data::F32(vec![0.1]));
        assert_eq!(per_job[0][1].data, Data::I64(vec![1, 2]));
        assert_eq!(per_job[1][0].data, Data::F32(vec![0.2, 0.3]));
        assert_eq!(per_job[1][1].shape, vec![2, 2]);
        assert_eq!(per_job[1][1].data, Data::I64(vec![3, 4, 5, 6]));
    }

    #[test]
    fn split_refuses_an_output_that_is_not_batched() {
        let heads = Tensor::new(vec![4, 2], Data::F32(vec![0.0; 8])).unwrap();
        assert!(split(vec![heads], &[1, 2]).is_err());
    }
}
