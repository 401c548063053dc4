//! Jobs: downloads the daemon runs on its own (`shoal get --detach`), listed by `shoal jobs`
//! and stopped by `shoal cancel`.
//!
//! Bounded: at most [`MAX_RUNNING`] run at once (more are refused with a line saying so), one
//! per content; finished ones are listed for [`KEEP_FINISHED`], at most [`MAX_FINISHED`] of
//! them, and dropped when the list is next read or written. Jobs live as long as the daemon:
//! after a restart the same `shoal get` resumes from what was verified.
//!
//! Cancelling stops the fetch, waits for its last writes, then deletes its partial file and
//! forgets the content (the tracker is told), so nothing half-written is left beside the
//! output and nothing is recorded as held. The output path only ever holds a complete file
//! (see `shoal_store::Download::finish`): a job that finished just before the cancel keeps its
//! file and is reported done.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use shoal_control::api::GetBody;
use shoal_control::jobs::{JobBody, JobStarted, JobStatus};
use shoal_core::ContentId;
use shoal_store::{ContentRecord, Removal, Source};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinError, JoinHandle};

use super::{fetch_request, internal, Api, ApiError};
use crate::fetch::{fetch, Progress};
use crate::node::Node;

/// Jobs that may run at once.
pub(crate) const MAX_RUNNING: usize = 16;
/// Finished jobs listed at most; the oldest go first.
const MAX_FINISHED: usize = 64;
/// How long a finished job is listed.
const KEEP_FINISHED: Duration = Duration::from_secs(600);
/// How long a cancel waits for the fetch's last writes to end.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
enum JobState {
    Running,
    Done,
    Failed(String),
    Cancelled,
}

impl JobState {
    fn name(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed(_) => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug)]
struct Job {
    content: ContentId,
    output: PathBuf,
    started: Instant,
    ended: Option<Instant>,
    state: JobState,
    progress: watch::Receiver<Progress>,
    /// The fetch task (to abort) and the task that records how it ended (to wait for), until
    /// a cancel takes them.
    task: Option<(AbortHandle, JoinHandle<()>)>,
}

/// The daemon's jobs. A std mutex, held only for map access, never across an await.
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    jobs: Mutex<HashMap<String, Job>>,
}

fn refuse(status: StatusCode, why: String) -> ApiError {
    ApiError(status, why)
}

impl Jobs {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Job>> {
        // A panic under the lock leaves at worst a job in a stale state.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the jobs that finished [`KEEP_FINISHED`] before `now`, and the oldest finished
    /// ones past [`MAX_FINISHED`].
    fn prune(jobs: &mut HashMap<String, Job>, now: Instant) {
        jobs.retain(|_, j| {
            j.ended.is_none_or(|t| now.saturating_duration_since(t) < KEEP_FINISHED)
        });
        let mut ended: Vec<(Instant, String)> =
            jobs.iter().filter_map(|(id, j)| Some((j.ended?, id.clone()))).collect();
        if ended.len() > MAX_FINISHED {
            ended.sort();
            for (_, id) in ended.iter().take(ended.len() - MAX_FINISHED) {
                jobs.remove(id);
            }
        }
    }

    /// The running job that fetches `content`, if any.
    pub(crate) fn running_for(&self, content: ContentId) -> Option<String> {
        let jobs = self.lock();
        jobs.iter()
            .find(|(_, j)| j.content == content && j.state == JobState::Running)
            .map(|(id, _)| id.clone())
    }

    fn start(
        self: &Arc<Self>,
        node: Arc<Node>,
        req: crate::fetch::FetchRequest,
    ) -> Result<JobStarted, ApiError> {
        let content = req.ticket.content;
        let mut jobs = self.lock();
        Self::prune(&mut jobs, Instant::now());
        let running = jobs.values().filter(|j| j.state == JobState::Running).count();
        if running >= MAX_RUNNING {
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the daemon runs {MAX_RUNNING} jobs already, its most: wait for one to end \
                     or cancel one (`shoal jobs`, `shoal cancel JOB`)"
                ),
            ));
        }
        if let Some((id, _)) =
            jobs.iter().find(|(_, j)| j.content == content && j.state == JobState::Running)
        {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("content {content} is being fetched by job {id} already (`shoal jobs`)"),
            ));
        }
        let id = loop {
            let id = format!("{:08x}", fastrand::u32(..));
            if !jobs.contains_key(&id) {
                break id;
            }
        };
        let (ptx, prx) = watch::channel(Progress::default());
        let output = req.output.clone();
        let task = self.run(id.clone(), async move { fetch(node, req, ptx).await.map(|_| ()) });
        let job = Job {
            content,
            output,
            started: Instant::now(),
            ended: None,
            state: JobState::Running,
            progress: prx,
            task: Some(task),
        };
        jobs.insert(id.clone(), job);
        tracing::info!(job = %id, content = %content.fmt_short(), "job started");
        Ok(JobStarted { job: id, content_id: content.to_string() })
    }

    /// Runs job `id`'s work as a task, and records how it ended in a second one: done, failed
    /// with its error, or failed if it panicked (the job's place is given back either way; a
    /// panic inside one task would otherwise leave it running for ever). A cancelled task is
    /// left to `cancel` to record.
    fn run<F>(self: &Arc<Self>, id: String, work: F) -> (AbortHandle, JoinHandle<()>)
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let work = tokio::spawn(work);
        let abort = work.abort_handle();
        let me = self.clone();
        let recorder = tokio::spawn(async move { me.ended(&id, work.await) });
        (abort, recorder)
    }

    fn ended(&self, id: &str, result: Result<anyhow::Result<()>, JoinError>) {
        let state = match result {
            Ok(Ok(())) => JobState::Done,
            Ok(Err(e)) => JobState::Failed(format!("{e:#}")),
            Err(e) if e.is_panic() => {
                tracing::error!(job = %id, "the job's fetch panicked");
                JobState::Failed(
                    "the fetch stopped on an internal error (a bug; the daemon's log says more): \
                     run the same command again to resume from what was verified"
                        .into(),
                )
            }
            Err(_) => return,
        };
        let mut jobs = self.lock();
        if let Some(j) = jobs.get_mut(id).filter(|j| j.state == JobState::Running) {
            j.state = state;
            j.ended = Some(Instant::now());
        }
    }

    fn list(&self) -> Vec<JobStatus> {
        let mut jobs = self.lock();
        Self::prune(&mut jobs, Instant::now());
        let mut out: Vec<(Instant, JobStatus)> =
            jobs.iter().map(|(id, j)| (j.started, status(id, j))).collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, s)| s).collect()
    }

    fn status_of(&self, id: &str) -> Option<JobStatus> {
        self.lock().get(id).map(|j| status(id, j))
    }

    /// Stops a running job and removes what it wrote; its status afterwards.
    async fn cancel(self: &Arc<Self>, node: &Arc<Node>, id: &str) -> Result<JobStatus, ApiError> {
        let (task, content, output) = {
            let mut jobs = self.lock();
            Self::prune(&mut jobs, Instant::now());
            let Some(j) = jobs.get_mut(id) else {
                return Err(refuse(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no job {id:?} in this daemon: `shoal jobs` lists them (finished ones \
                         for {} minutes)",
                        KEEP_FINISHED.as_secs() / 60
                    ),
                ));
            };
            if j.state != JobState::Running {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    format!("job {id} has already ended ({}): nothing to cancel", j.state.name()),
                ));
            }
            let Some(task) = j.task.take() else {
                return Err(refuse(StatusCode::CONFLICT, format!("job {id} is being cancelled")));
            };
            (task, j.content, j.output.clone())
        };
        // The rest runs as its own task: a client that stops waiting (its request dropped)
        // must not leave the job taken from its task and running for ever.
        let (me, node, id) = (self.clone(), node.clone(), id.to_string());
        tokio::spawn(async move { me.stop(&node, &id, task, content, output).await })
            .await
            .map_err(|e| internal(e.into()))?
    }

    /// Stops job `id`'s fetch, waits for its last writes, removes what it wrote, and records
    /// the job as cancelled (done, if the fetch had finished; failed, if the removal failed).
    async fn stop(
        &self,
        node: &Arc<Node>,
        id: &str,
        task: (AbortHandle, JoinHandle<()>),
        content: ContentId,
        output: PathBuf,
    ) -> Result<JobStatus, ApiError> {
        let (abort, recorder) = task;
        abort.abort();
        let _ = recorder.await;
        // Writes already on blocking threads (a piece, or the final rename) hold the download
        // until they end; what they leave is then read from the store.
        let store = node.contents.store().clone();
        let end = Instant::now() + SETTLE;
        while store.is_downloading(content) && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let outcome = tokio::task::spawn_blocking(move || forget_partial(&store, content, &output))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        node.stats.content_changed();
        if matches!(outcome, Ok(false)) {
            super::rm::tell_tracker_forgotten(node, content).await;
        }
        let mut jobs = self.lock();
        if let Some(j) = jobs.get_mut(id) {
            if j.state == JobState::Running {
                j.state = match &outcome {
                    Ok(true) => JobState::Done,
                    Ok(false) => JobState::Cancelled,
                    Err(e) => JobState::Failed(format!("cancelled, but {e:#}")),
                };
            }
            j.ended.get_or_insert_with(Instant::now);
        }
        drop(jobs);
        let finished = outcome.map_err(internal)?;
        tracing::info!(job = %id, content = %content.fmt_short(), finished, "job cancelled");
        self.status_of(id).ok_or_else(|| internal(anyhow::anyhow!("job {id} vanished")))
    }
}

/// After a cancelled fetch into `output`: deletes its partial file and forgets the content.
/// True if the fetch had finished (the file is whole at `output`, and kept). Blocking.
fn forget_partial(
    store: &shoal_store::Store,
    content: ContentId,
    output: &std::path::Path,
) -> anyhow::Result<bool> {
    let ours =
        |r: &ContentRecord| matches!(&r.source, Source::Download { output: o, .. } if o == output);
    match store.remove_if_idle(content, ours)? {
        Removal::Removed(ContentRecord { source: Source::Download { partial, .. }, .. }) => {
            match std::fs::remove_file(&partial) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(anyhow::Error::new(e)
                        .context(format!("cannot delete {}", partial.display())))
                }
                _ => Ok(false),
            }
        }
        Removal::Kept(ContentRecord { source: Source::Seeded { path, .. }, .. }) => {
            Ok(path == output)
        }
        Removal::Downloading => anyhow::bail!(
            "the fetch was still writing {}s after the cancel; its partial file is kept: \
             `shoal rm --delete {content}` removes it once the fetch has stopped",
            SETTLE.as_secs()
        ),
        // Cancelled before the manifest was in: nothing was written.
        _ => Ok(false),
    }
}

fn status(id: &str, j: &Job) -> JobStatus {
    let p = j.progress.borrow();
    let done = j.state == JobState::Done;
    JobStatus {
        job: id.to_string(),
        content_id: j.content.to_string(),
        name: p.name.clone(),
        output: j.output.display().to_string(),
        state: j.state.name().to_string(),
        bytes_done: if done { p.size } else { p.bytes_done },
        size: p.size,
        rate: if j.state == JobState::Running { p.rate } else { 0.0 },
        peers: if j.state == JobState::Running { p.peers } else { 0 },
        seconds: j.ended.unwrap_or_else(Instant::now).duration_since(j.started).as_secs_f64(),
        error: match &j.state {
            JobState::Failed(e) => Some(e.clone()),
            _ => None,
        },
    }
}

/// `POST /v1/jobs`.
pub(super) async fn start(
    State(api): State<Api>,
    Json(body): Json<GetBody>,
) -> Result<Json<JobStarted>, ApiError> {
    let req = fetch_request(body)?;
    Ok(Json(api.jobs.start(api.node.clone(), req)?))
}

/// `GET /v1/jobs`.
pub(super) async fn list(State(api): State<Api>) -> Json<Vec<JobStatus>> {
    Json(api.jobs.list())
}

/// `POST /v1/jobs/cancel`.
pub(super) async fn cancel(
    State(api): State<Api>,
    Json(body): Json<JobBody>,
) -> Result<Json<JobStatus>, ApiError> {
    Ok(Json(api.jobs.cancel(&api.node, body.job.trim()).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ended: Option<Instant>) -> Job {
        let state = if ended.is_some() { JobState::Done } else { JobState::Running };
        Job {
            content: ContentId([7; 32]),
            output: PathBuf::from("/tmp/out"),
            started: Instant::now(),
            ended,
            state,
            progress: watch::channel(Progress::default()).1,
            task: None,
        }
    }

    /// A job whose work panics ends as failed and gives its place back; one that fails says
    /// why; one that is aborted is left running for `cancel` to record.
    #[tokio::test]
    async fn a_panicking_job_ends_failed_and_frees_its_place() {
        type Work = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;
        let jobs = Arc::new(Jobs::default());
        let work: [(&str, Work); 4] = [
            ("panics", Box::pin(async { panic!("a bug") })),
            ("fails", Box::pin(async { anyhow::bail!("no peer") })),
            ("works", Box::pin(async { Ok(()) })),
            ("hangs", Box::pin(std::future::pending())),
        ];
        let mut tasks = Vec::new();
        for (id, w) in work {
            // Listed before it runs, as `start` does under the lock.
            jobs.lock().insert(id.to_string(), job(None));
            let task = jobs.run(id.to_string(), w);
            tasks.push((id, task.0.clone(), task));
        }
        for (id, abort, (_, recorder)) in tasks {
            if id == "hangs" {
                abort.abort();
            }
            recorder.await.unwrap();
        }
        let state = |id: &str| jobs.lock()[id].state.clone();
        assert!(matches!(state("panics"), JobState::Failed(e) if e.contains("internal error")));
        assert_eq!(state("fails"), JobState::Failed("no peer".into()));
        assert_eq!(state("works"), JobState::Done);
        assert_eq!(state("hangs"), JobState::Running, "an abort is `cancel`'s to record");
        let running = jobs.lock().values().filter(|j| j.state == JobState::Running).count();
        assert_eq!(running, 1);
    }

    #[test]
    fn finished_jobs_are_kept_for_a_while_and_bounded_in_number() {
        let t0 = Instant::now();
        let mut jobs = HashMap::new();
        jobs.insert("running".to_string(), job(None));
        jobs.insert("fresh".to_string(), job(Some(t0)));
        Jobs::prune(&mut jobs, t0 + KEEP_FINISHED - Duration::from_secs(1));
        assert_eq!(jobs.len(), 2, "nothing is past its time yet");
        Jobs::prune(&mut jobs, t0 + KEEP_FINISHED);
        assert!(jobs.contains_key("running") && !jobs.contains_key("fresh"), "{jobs:?}");
        // Past the count, the oldest finished go; a running job never does.
        for i in 0..MAX_FINISHED + 5 {
            jobs.insert(format!("j{i}"), job(Some(t0 + Duration::from_millis(i as u64))));
        }
        Jobs::prune(&mut jobs, t0);
        assert_eq!(jobs.len(), MAX_FINISHED + 1);
        assert!(jobs.contains_key("running"));
        assert!((0..5).all(|i| !jobs.contains_key(&format!("j{i}"))), "the oldest went first");
        assert!(jobs.contains_key(&format!("j{}", MAX_FINISHED + 4)));
    }
}
