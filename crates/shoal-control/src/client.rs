//! A blocking client of the control API, for the CLI, the testnet and scripts.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::{AddBody, AddReply, ControlInfo, GetBody, LsEntry, PushBody, PushReport};
use crate::fetch::{FetchReport, Progress};
use crate::jobs::{JobBody, JobStarted, JobStatus, RmBody, RmReply};
use crate::offline::{
    FollowBody, FollowReport, OfflineAddBody, OfflineAddReply, SpaceReply, SpaceRmBody, TaskBody,
    TaskStatus,
};
use crate::status::Status;
use crate::CONTROL_FILE;

/// What can go wrong talking to a daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `control.json` exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadInfo {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `control.json` is not what a daemon writes.
    #[error("{} is corrupt: remove it if no daemon runs ({source})", path.display())]
    CorruptInfo {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// Nobody answers at the API's address (the daemon stopped?).
    #[error("cannot reach the daemon: {0} (is `shoal daemon` running?)")]
    Unreachable(Box<ureq::Transport>),
    /// The daemon refused the request, with its reason.
    #[error("{0}")]
    Refused(String),
    /// A download through the daemon failed, with the daemon's reason.
    #[error("{0}")]
    Failed(String),
    /// The daemon's answer could not be read or decoded.
    #[error("cannot read the daemon's answer: {0}")]
    Answer(#[from] std::io::Error),
    /// The daemon's answer was not the JSON the API promises (a daemon of another version?).
    #[error(
        "cannot decode the daemon's answer: {0} (are the daemon and this client the same version?)"
    )]
    Decode(#[from] serde_json::Error),
    /// The answer ended before the fetch finished (the daemon stopped).
    #[error("the daemon stopped before the fetch finished")]
    Stopped,
}

impl From<ureq::Error> for Error {
    fn from(e: ureq::Error) -> Self {
        match e {
            ureq::Error::Status(_, r) => {
                let v: serde_json::Value = r.into_json().unwrap_or_default();
                let why = v["error"].as_str().unwrap_or("the daemon refused the request");
                Error::Refused(why.to_string())
            }
            ureq::Error::Transport(t) => Error::Unreachable(Box::new(t)),
        }
    }
}

/// What an offline task fetches: a URL, or a resource id its tracker knows.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A URL.
    Url(&'a str),
    /// An id the tracker maps to a URL.
    Id(&'a str),
}

impl Source<'_> {
    fn parts(&self) -> (String, Option<String>) {
        match self {
            Source::Url(u) => (u.to_string(), None),
            Source::Id(id) => (String::new(), Some(id.to_string())),
        }
    }
}

/// A connection to a running daemon.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// The daemon of `data_dir`, if one is running there (`None` without `control.json`, or
    /// when a stale one names an address nobody answers at).
    pub fn find(data_dir: &Path) -> Result<Option<Self>, Error> {
        let path = data_dir.join(CONTROL_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::ReadInfo { path, source }),
        };
        let info: ControlInfo = serde_json::from_slice(&bytes)
            .map_err(|source| Error::CorruptInfo { path: path.clone(), source })?;
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(2)).build();
        let client = Self { base: format!("http://{}", info.addr), token: info.token, agent };
        match client.status() {
            Ok(_) => Ok(Some(client)),
            // A stale file from a daemon that was killed: nobody answers.
            Err(Error::Unreachable(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn request(&self, method: &str, route: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{route}", self.base))
            .set("authorization", &format!("Bearer {}", self.token))
    }

    fn call<T: DeserializeOwned>(
        &self,
        req: ureq::Request,
        body: Option<serde_json::Value>,
    ) -> Result<T, Error> {
        let resp = match body {
            Some(b) => req.send_json(b)?,
            None => req.call()?,
        };
        Ok(resp.into_json()?)
    }

    /// Counters and identity (`GET /v1/status`).
    pub fn status(&self) -> Result<Status, Error> {
        self.call(self.request("GET", "/v1/status"), None)
    }

    /// What the node holds (`GET /v1/ls`).
    pub fn ls(&self) -> Result<Vec<LsEntry>, Error> {
        self.call(self.request("GET", "/v1/ls"), None)
    }

    /// Shares a file (`POST /v1/add`).
    pub fn add(&self, path: &Path) -> Result<AddReply, Error> {
        let body = serde_json::to_value(AddBody { path: path.to_path_buf() })?;
        self.call(self.request("POST", "/v1/add"), Some(body))
    }

    /// Pushes a file (added first) or a content id into storage (`POST /v1/push`).
    pub fn push(&self, target: &str) -> Result<PushReport, Error> {
        let body = serde_json::to_value(PushBody { target: target.to_string() })?;
        self.call(self.request("POST", "/v1/push"), Some(body))
    }

    /// Fetches through the daemon (`POST /v1/get`), calling `on_progress` as it goes.
    pub fn get(
        &self,
        body: &GetBody,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<FetchReport, Error> {
        let resp = self.request("POST", "/v1/get").send_json(serde_json::to_value(body)?)?;
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let v: serde_json::Value = serde_json::from_str(&line?)?;
            if let Some(p) = v.get("progress") {
                on_progress(&serde_json::from_value(p.clone())?);
            } else if let Some(d) = v.get("done") {
                return Ok(serde_json::from_value(d.clone())?);
            } else if let Some(e) = v.get("error") {
                return Err(Error::Failed(e.as_str().unwrap_or("fetch failed").to_string()));
            }
        }
        Err(Error::Stopped)
    }

    /// Hands a download to the daemon as a job and returns at once (`POST /v1/jobs`).
    pub fn start_job(&self, body: &GetBody) -> Result<JobStarted, Error> {
        self.call(self.request("POST", "/v1/jobs"), Some(serde_json::to_value(body)?))
    }

    /// The daemon's jobs, running and recently finished (`GET /v1/jobs`).
    pub fn jobs(&self) -> Result<Vec<JobStatus>, Error> {
        self.call(self.request("GET", "/v1/jobs"), None)
    }

    /// Cancels a running job (`POST /v1/jobs/cancel`): its partial file is deleted.
    pub fn cancel_job(&self, job: &str) -> Result<JobStatus, Error> {
        let body = serde_json::to_value(JobBody { job: job.into() })?;
        self.call(self.request("POST", "/v1/jobs/cancel"), Some(body))
    }

    /// Stops holding and seeding a content, deleting what the node stored for it with
    /// `delete` (`POST /v1/rm`).
    pub fn rm(&self, body: &RmBody) -> Result<RmReply, Error> {
        self.call(self.request("POST", "/v1/rm"), Some(serde_json::to_value(body)?))
    }

    /// Reads NDJSON lines: each `{"event": ..}` goes to `on_event`; returns the value under
    /// `done`, or the event that ends a task when `ends` says so.
    fn lines<T: DeserializeOwned>(
        &self,
        resp: ureq::Response,
        mut on_event: impl FnMut(&serde_json::Value),
        ends: impl Fn(&serde_json::Value) -> Option<T>,
    ) -> Result<T, Error> {
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let v: serde_json::Value = serde_json::from_str(&line?)?;
            if v.get("event").is_some() {
                on_event(&v);
                if let Some(end) = ends(&v) {
                    return Ok(end);
                }
            } else if let Some(d) = v.get("done") {
                return Ok(serde_json::from_value(d.clone())?);
            } else if let Some(e) = v.get("error") {
                return Err(Error::Failed(e.as_str().unwrap_or("failed").to_string()));
            }
        }
        Err(Error::Stopped)
    }

    /// Hands a URL (or a resource id) to storage (`POST /v1/offline/add`).
    pub fn offline_add(
        &self,
        source: &Source<'_>,
        name: Option<&str>,
    ) -> Result<OfflineAddReply, Error> {
        let (url, id) = source.parts();
        let body = OfflineAddBody { url, id, name: name.map(str::to_string), follow: None };
        self.call(self.request("POST", "/v1/offline/add"), Some(serde_json::to_value(body)?))
    }

    /// Hands a URL to storage and follows the task into `output` (absolute), passing each
    /// event to `on_event`.
    pub fn offline_follow(
        &self,
        source: &Source<'_>,
        name: Option<&str>,
        output: &Path,
        on_event: impl FnMut(&serde_json::Value),
    ) -> Result<FollowReport, Error> {
        let (url, id) = source.parts();
        let body = OfflineAddBody {
            url,
            id,
            name: name.map(str::to_string),
            follow: Some(output.to_path_buf()),
        };
        let resp =
            self.request("POST", "/v1/offline/add").send_json(serde_json::to_value(body)?)?;
        self.lines(resp, on_event, |_| None)
    }

    /// Follows a task already added into `output` (absolute), passing each event to
    /// `on_event` (`POST /v1/offline/follow`).
    pub fn offline_follow_task(
        &self,
        task: &str,
        output: &Path,
        on_event: impl FnMut(&serde_json::Value),
    ) -> Result<FollowReport, Error> {
        let body = FollowBody { task: task.into(), output: output.to_path_buf() };
        let resp =
            self.request("POST", "/v1/offline/follow").send_json(serde_json::to_value(body)?)?;
        self.lines(resp, on_event, |_| None)
    }

    /// Streams a task's events (`POST /v1/offline/watch`) until it ends; the last event.
    pub fn offline_watch(
        &self,
        task: &str,
        on_event: impl FnMut(&serde_json::Value),
    ) -> Result<serde_json::Value, Error> {
        let body = serde_json::to_value(TaskBody { task: task.into() })?;
        let resp = self.request("POST", "/v1/offline/watch").send_json(body)?;
        self.lines(resp, on_event, |v| {
            matches!(v["event"].as_str(), Some("done" | "failed")).then(|| v.clone())
        })
    }

    /// The user's tasks (`GET /v1/offline/ls`).
    pub fn offline_ls(&self) -> Result<Vec<TaskStatus>, Error> {
        self.call(self.request("GET", "/v1/offline/ls"), None)
    }

    /// Cancels a task (`POST /v1/offline/cancel`).
    pub fn offline_cancel(&self, task: &str) -> Result<(), Error> {
        let body = serde_json::to_value(TaskBody { task: task.into() })?;
        let _: serde_json::Value =
            self.call(self.request("POST", "/v1/offline/cancel"), Some(body))?;
        Ok(())
    }

    /// The user's space (`GET /v1/space/ls`).
    pub fn space_ls(&self) -> Result<SpaceReply, Error> {
        self.call(self.request("GET", "/v1/space/ls"), None)
    }

    /// Removes an entry of the user's space (`POST /v1/space/rm`).
    pub fn space_rm(&self, name: &str) -> Result<(), Error> {
        let body = serde_json::to_value(SpaceRmBody { name: name.into() })?;
        let _: serde_json::Value = self.call(self.request("POST", "/v1/space/rm"), Some(body))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_control_file_is_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Client::find(dir.path()).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_control_file_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONTROL_FILE), b"{not json").unwrap();
        let e = Client::find(dir.path()).unwrap_err();
        assert!(matches!(e, Error::CorruptInfo { .. }), "{e:?}");
        assert!(e.to_string().contains("remove it if no daemon runs"), "{e}");
    }

    #[test]
    fn a_stale_control_file_is_no_daemon() {
        // A port nobody listens on: bind one, note it, and let it go.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let info = ControlInfo { addr, token: "00".into(), pid: 1 };
        std::fs::write(dir.path().join(CONTROL_FILE), serde_json::to_vec(&info).unwrap()).unwrap();
        assert!(Client::find(dir.path()).unwrap().is_none());
    }
}
