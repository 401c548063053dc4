//! The client of the control API, for the CLI. Blocking.

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;

use crate::control::{AddBody, AddReply, ControlInfo, GetBody, LsEntry, CONTROL_FILE};
use crate::fetch::{FetchReport, Progress};
use crate::node::Status;

/// A connection to a running daemon.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// The daemon of `data_dir`, if one is running there.
    pub fn find(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = data_dir.join(CONTROL_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let info: ControlInfo = serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is corrupt: remove it if no daemon runs", path.display())
        })?;
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(2)).build();
        let client = Self { base: format!("http://{}", info.addr), token: info.token, agent };
        match client.status() {
            Ok(_) => Ok(Some(client)),
            // A stale file from a daemon that was killed: nobody answers.
            Err(e)
                if e.downcast_ref::<ureq::Error>()
                    .is_some_and(|e| matches!(e, ureq::Error::Transport(_))) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn call<T: DeserializeOwned>(
        &self,
        req: ureq::Request,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let req = req.set("authorization", &format!("Bearer {}", self.token));
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) => Ok(r.into_json()?),
            Err(ureq::Error::Status(_, r)) => {
                let v: serde_json::Value = r.into_json().unwrap_or_default();
                bail!("{}", v["error"].as_str().unwrap_or("the daemon refused the request"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Counters and identity.
    pub fn status(&self) -> anyhow::Result<Status> {
        self.call(self.agent.get(&format!("{}/v1/status", self.base)), None)
    }

    /// What the node holds.
    pub fn ls(&self) -> anyhow::Result<Vec<LsEntry>> {
        self.call(self.agent.get(&format!("{}/v1/ls", self.base)), None)
    }

    /// Shares a file.
    pub fn add(&self, path: &Path) -> anyhow::Result<AddReply> {
        let body = serde_json::to_value(AddBody { path: path.to_path_buf() })?;
        self.call(self.agent.post(&format!("{}/v1/add", self.base)), Some(body))
    }

    /// Pushes a file (added first) or a content id into storage.
    pub fn push(&self, target: &str) -> anyhow::Result<crate::push::PushReport> {
        let body = serde_json::to_value(crate::control::PushBody { target: target.to_string() })?;
        self.call(self.agent.post(&format!("{}/v1/push", self.base)), Some(body))
    }

    /// Fetches through the daemon, calling `on_progress` as it goes.
    pub fn get(
        &self,
        body: &GetBody,
        mut on_progress: impl FnMut(&Progress),
    ) -> anyhow::Result<FetchReport> {
        let resp = self
            .agent
            .post(&format!("{}/v1/get", self.base))
            .set("authorization", &format!("Bearer {}", self.token))
            .send_json(serde_json::to_value(body)?);
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => {
                let v: serde_json::Value = r.into_json().unwrap_or_default();
                bail!("{}", v["error"].as_str().unwrap_or("the daemon refused the request"));
            }
            Err(e) => return Err(e.into()),
        };
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let v: serde_json::Value =
                serde_json::from_str(&line.context("reading from the daemon")?)?;
            if let Some(p) = v.get("progress") {
                on_progress(&serde_json::from_value(p.clone())?);
            } else if let Some(d) = v.get("done") {
                return Ok(serde_json::from_value(d.clone())?);
            } else if let Some(e) = v.get("error") {
                bail!("{}", e.as_str().unwrap_or("fetch failed"));
            }
        }
        bail!("the daemon stopped before the fetch finished")
    }
}
