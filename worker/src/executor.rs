//! The executor: runs a batch of deliveries that the runner read (or the rescuer took
//! back), each batch a task of the runner's one task tracker; and jobs the relay started
//! and handed over (`spawn_started`, see `relay`), which skip the start statement.
//!
//! It records the attempts of the whole batch in one statement *before* running anything (so
//! a job that crashes its worker still reaches its dead letter), groups the started jobs by
//! kind (a kind that runs in batches gets one handler call for all its jobs), runs each
//! handler call in a task of its own under the job timeout (a panic or a timeout fails that
//! call's jobs only, as retryable), decides each job's [`Outcome`] and hands it to the
//! completer. Each delivery's slot is freed when its job is settled.
//!
//! When the runner stops jobs (a shutdown's grace ran out), a running handler call is aborted
//! and awaited until it has stopped; its jobs are left unsettled and held, for the runner to
//! hand back. So nothing is handed back while it still runs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use reviews_db::jobs::{self, Attempt, StartedJob};
use reviews_db::Db;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::completer::Completer;
use crate::jobs::{JobContext, JobError, JobRegistry};
use crate::outcome::{outcome, RunResult};
use crate::queue::Delivery;
use crate::retry::{RetryPolicies, RetryPolicy};
use crate::stats::RunnerStats;

/// A delivery a runner holds, with the attempt that started its job (once started).
#[derive(Debug, Clone)]
pub struct HeldDelivery {
    pub delivery: Delivery,
    pub attempt: Option<Attempt>,
}

/// The deliveries a runner holds (read or taken back, not yet settled), by stream entry id:
/// the heartbeat renews their leases, and a shutdown hands back what is left.
#[derive(Clone, Default)]
pub struct Held(Arc<Mutex<HashMap<String, HeldDelivery>>>);

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldDelivery>> {
        self.0.lock().expect("held deliveries lock poisoned")
    }

    /// Holds deliveries not started yet (read, or taken back).
    pub fn insert(&self, deliveries: &[Delivery]) {
        let mut held = self.lock();
        for delivery in deliveries {
            let entry = HeldDelivery {
                delivery: delivery.clone(),
                attempt: None,
            };
            held.insert(delivery.entry_id.clone(), entry);
        }
    }

    /// Holds deliveries whose jobs started already (handed over by the relay).
    fn insert_started(&self, started: &[StartedDelivery]) {
        let mut held = self.lock();
        for (delivery, job, _) in started {
            let entry = HeldDelivery {
                delivery: delivery.clone(),
                attempt: Some(job.fencing()),
            };
            held.insert(delivery.entry_id.clone(), entry);
        }
    }

    fn started(&self, delivery: &Delivery, attempt: Attempt) {
        if let Some(held) = self.lock().get_mut(&delivery.entry_id) {
            held.attempt = Some(attempt);
        }
    }

    pub fn release(&self, deliveries: &[Delivery]) {
        let mut held = self.lock();
        for delivery in deliveries {
            held.remove(&delivery.entry_id);
        }
    }

    /// Stops holding these entries: their leases went to another runner.
    pub fn forget(&self, entry_ids: &[String]) {
        let mut held = self.lock();
        for entry_id in entry_ids {
            held.remove(entry_id);
        }
    }

    /// The stream entries held now.
    pub fn entry_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Empties the set, returning what it held.
    pub fn drain(&self) -> Vec<HeldDelivery> {
        self.lock().drain().map(|(_, held)| held).collect()
    }
}

/// A delivery whose job started, with its slot.
type StartedDelivery = (Delivery, StartedJob, OwnedSemaphorePermit);

/// How a handler call ended.
enum CallResult {
    /// One result per job.
    Ran(Vec<RunResult>),
    /// The runner stopped its jobs first: nothing to settle.
    Aborted,
}

#[derive(Clone)]
pub struct Executor {
    pub db: Db,
    pub registry: JobRegistry,
    pub policies: RetryPolicies,
    pub completer: Completer,
    pub job_timeout: Duration,
    pub stats: Arc<RunnerStats>,
    pub held: Held,
    /// Every batch runs as a task of this tracker, whoever read it.
    pub tasks: TaskTracker,
    /// Cancelled when running handler calls must stop (a shutdown's grace ran out).
    pub stop_jobs: CancellationToken,
}

impl Executor {
    /// Starts a batch of deliveries as a task of the tracker; see the module docs.
    pub fn spawn_batch(&self, deliveries: Vec<Delivery>, permits: Vec<OwnedSemaphorePermit>) {
        debug_assert_eq!(deliveries.len(), permits.len());
        self.held.insert(&deliveries);
        let executor = self.clone();
        self.tasks
            .spawn(async move { executor.run_batch(deliveries, permits).await });
    }

    async fn run_batch(self, deliveries: Vec<Delivery>, permits: Vec<OwnedSemaphorePermit>) {
        let fallback_max = RetryPolicy::FALLBACK.max_attempts;
        let ids: Vec<i64> = deliveries.iter().map(|d| d.job_id).collect();
        self.stats.start_batches.fetch_add(1, Ordering::Relaxed);
        let started = async {
            let conn = self.db.conn().await?;
            anyhow::Ok(jobs::start_jobs(&conn, &ids, fallback_max).await?)
        };
        let mut started: HashMap<i64, StartedJob> = match started.await {
            Ok(jobs) => jobs.into_iter().map(|job| (job.id, job)).collect(),
            Err(error) => {
                // The deliveries stay leased; when the leases expire they are taken back and
                // tried again, so nothing is lost.
                tracing::warn!(
                    jobs = ids.len(),
                    error = format!("{error:#}"),
                    "could not start jobs; they will be retried after their lease"
                );
                self.held.release(&deliveries);
                return;
            }
        };
        let mut unstartable = Vec::new();
        let mut startable = Vec::new();
        for (delivery, permit) in deliveries.into_iter().zip(permits) {
            match started.remove(&delivery.job_id) {
                Some(job) => startable.push((delivery, job, permit)),
                None => unstartable.push((delivery, permit)),
            }
        }
        self.run_started(startable, unstartable).await;
    }

    /// Runs jobs the relay started and handed to this runner (their deliveries are leased to
    /// it already), as a task of the tracker: the batch's work after its start statement.
    pub fn spawn_started(
        &self,
        started: Vec<(Delivery, StartedJob)>,
        permits: Vec<OwnedSemaphorePermit>,
    ) {
        debug_assert_eq!(started.len(), permits.len());
        let started: Vec<StartedDelivery> = started
            .into_iter()
            .zip(permits)
            .map(|((delivery, job), permit)| (delivery, job, permit))
            .collect();
        self.held.insert_started(&started);
        self.stats
            .handed_over
            .fetch_add(started.len() as u64, Ordering::Relaxed);
        metrics::counter!("jobs_handed_over_total").increment(started.len() as u64);
        let executor = self.clone();
        self.tasks
            .spawn(async move { executor.run_started(started, Vec::new()).await });
    }

    /// Runs started jobs, and settles those that could not start.
    async fn run_started(
        &self,
        startable: Vec<StartedDelivery>,
        unstartable: Vec<(Delivery, OwnedSemaphorePermit)>,
    ) {
        let fallback_max = RetryPolicy::FALLBACK.max_attempts;
        // Jobs of batched kinds run together, one handler call per kind; other jobs are
        // groups of one. Each settles on its own.
        let mut groups: Vec<Vec<StartedDelivery>> = Vec::new();
        let mut group_of_kind: HashMap<String, usize> = HashMap::new();
        for (delivery, job, permit) in startable {
            self.held.started(&delivery, job.fencing());
            let batched = self.registry.runs_in_batches(&job.kind);
            match group_of_kind.get(&job.kind) {
                Some(&group) if batched => groups[group].push((delivery, job, permit)),
                _ => {
                    if batched {
                        group_of_kind.insert(job.kind.clone(), groups.len());
                    }
                    groups.push(vec![(delivery, job, permit)]);
                }
            }
        }
        let unstartable_runs = unstartable.into_iter().map(|(delivery, permit)| {
            let executor = self.clone();
            async move {
                executor.stats.skipped.fetch_add(1, Ordering::Relaxed);
                let settled = executor
                    .completer
                    .settle_unstartable(&delivery, fallback_max)
                    .await;
                executor.let_go(&delivery, settled, permit);
            }
            .boxed()
        });
        let group_runs = groups.into_iter().map(|group| {
            let executor = self.clone();
            async move { executor.run_group(group).await }.boxed()
        });
        futures::future::join_all(unstartable_runs.chain(group_runs)).await;
    }

    /// Done with a delivery: settled, or (on error) left to its lease.
    fn let_go(
        &self,
        delivery: &Delivery,
        settled: anyhow::Result<()>,
        permit: OwnedSemaphorePermit,
    ) {
        if let Err(error) = settled {
            // The delivery stays leased; when the lease expires it is taken back and tried
            // again, so nothing is lost.
            tracing::warn!(
                job.id = delivery.job_id,
                error = format!("{error:#}"),
                "could not record a job's outcome; it will be retried after its lease"
            );
        }
        self.held.release(std::slice::from_ref(delivery));
        drop(permit);
    }

    /// Runs started jobs of one kind in one handler call (a group of one for kinds that do
    /// not run in batches), then settles each.
    async fn run_group(&self, mut group: Vec<StartedDelivery>) {
        let Some(kind) = group.first().map(|(_, job, _)| job.kind.clone()) else {
            return;
        };
        self.stats
            .started
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        metrics::counter!("job_attempts_total", "kind" => kind.clone())
            .increment(group.len() as u64);
        // Each job's span names the request that caused it (read from the payload, so made
        // before the payload moves to the handler: a notify job's lists a relay batch's events).
        let spans: Vec<tracing::Span> = group.iter().map(|(_, job, _)| job_span(job)).collect();
        let contexts = group
            .iter_mut()
            .map(|(_, job, _)| self.context(job))
            .collect();
        // The handler logs in the job's span, or for a batch in one naming its size.
        let span = match &spans[..] {
            [span] => span.clone(),
            _ => tracing::info_span!("jobs", job.kind = %kind, jobs = group.len()),
        };
        let started_at = std::time::Instant::now();
        let results = match self.run_with_timeout(&kind, contexts, span).await {
            CallResult::Ran(results) => results,
            // Left held, unsettled, slots taken: the runner hands them back.
            CallResult::Aborted => return,
        };
        let took = started_at.elapsed().as_secs_f64();
        let policy = self.policies.for_kind(&kind);
        let completed_by_handler = self.registry.completes_itself(&kind);
        let settles = group.into_iter().zip(spans).zip(results).map(
            |(((delivery, job, permit), span), result)| {
                let policy = &policy;
                async move {
                    metrics::histogram!("job_duration_seconds", "kind" => job.kind.clone())
                        .record(took);
                    let decided = outcome(result, job.attempt, policy, rand::random::<f64>());
                    let settled = self
                        .completer
                        .settle(&delivery, &job, decided, completed_by_handler)
                        .instrument(span)
                        .await;
                    self.let_go(&delivery, settled, permit);
                }
            },
        );
        futures::future::join_all(settles).await;
    }

    /// Runs the handler in its own task: a panic or a timeout fails the jobs of this call
    /// only. One result per job, in order. A handler that is stopped (timeout, or the runner
    /// stopping its jobs) is awaited until it has: it never runs on past this call.
    async fn run_with_timeout(
        &self,
        kind: &str,
        jobs: Vec<JobContext>,
        span: tracing::Span,
    ) -> CallResult {
        let count = jobs.len();
        let all_failed = |message: String| {
            CallResult::Ran(
                (0..count)
                    .map(|_| RunResult::Failed(JobError::Retryable(anyhow::anyhow!("{message}"))))
                    .collect(),
            )
        };
        let mut task = tokio::spawn(
            self.registry
                .run(kind, self.db.clone(), jobs)
                .instrument(span),
        );
        let ended = tokio::select! {
            ended = tokio::time::timeout(self.job_timeout, &mut task) => ended,
            _ = self.stop_jobs.cancelled() => {
                task.abort();
                let _ = task.await;
                return CallResult::Aborted;
            }
        };
        match ended {
            Ok(Ok(results)) if results.len() == count => CallResult::Ran(
                results
                    .into_iter()
                    .map(|result| match result {
                        Ok(()) => RunResult::Succeeded,
                        Err(error) => RunResult::Failed(error),
                    })
                    .collect(),
            ),
            Ok(Ok(results)) => all_failed(format!(
                "the handler returned {} results for {count} jobs",
                results.len()
            )),
            Ok(Err(join_error)) => {
                all_failed(format!("job panicked: {}", panic_message(join_error)))
            }
            Err(_) => {
                task.abort();
                let _ = task.await;
                all_failed(format!("job timed out after {:?}", self.job_timeout))
            }
        }
    }

    /// The handler's view of a started job; the payload moves to it.
    fn context(&self, job: &mut StartedJob) -> JobContext {
        JobContext {
            db: self.db.clone(),
            job_id: job.id,
            attempt: job.attempt,
            payload: std::mem::take(&mut job.payload),
        }
    }
}

/// A job's span: its logs carry the job and the request and actor that caused it.
fn job_span(job: &StartedJob) -> tracing::Span {
    tracing::info_span!("job", job.id = job.id, job.kind = %job.kind,
        job.attempt = job.attempt,
        request.id = job.payload.get("request_id").and_then(|v| v.as_str()).unwrap_or(""),
        actor.id = job.payload.get("actor_id").and_then(|v| v.as_str()).unwrap_or(""))
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".into()),
        Err(error) => error.to_string(),
    }
}
