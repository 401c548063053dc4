//! A headless Chromium driven through chromedriver's W3C WebDriver HTTP API: just what the
//! dashboard tests need (open a page, run a script in it, read what it returns). Chromium runs
//! with a fresh profile and no network but loopback; both processes end when the `Browser`
//! is dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{lines, wait_line, DEADLINE};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A browser session, ended (with chromedriver) when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a port it picks and a headless Chromium session; `None` (with a
    /// printed line) when either is not installed, unless `SHOAL_REQUIRE_CHROMIUM` is set.
    pub fn start() -> Option<Browser> {
        let missing: Vec<&str> =
            [CHROMIUM, CHROMEDRIVER].into_iter().filter(|p| !Path::new(p).exists()).collect();
        if !missing.is_empty() {
            assert!(
                std::env::var_os("SHOAL_REQUIRE_CHROMIUM").is_none(),
                "SHOAL_REQUIRE_CHROMIUM is set but {missing:?} is missing \
                 (apt-get install chromium chromium-driver)"
            );
            println!("skipping the dashboard in Chromium: {missing:?} not installed");
            return None;
        }
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let rx = lines(driver.stdout.take().unwrap());
        // "ChromeDriver was started successfully on port 46149."
        let line = wait_line(&rx, "chromedriver start", |l| l.contains("started successfully"));
        let port: u16 = line.trim_end_matches('.').rsplit(' ').next().unwrap().parse().unwrap();
        // chromedriver logs nothing more to stdout we need; keep the pipe drained.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = serde_json::json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            }}
        });
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser { driver, base, session: String::new(), _profile: profile };
        let reply = b.call("POST", "/session", Some(caps));
        b.session = reply["sessionId"].as_str().expect("a session id").to_string();
        Some(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let url = format!("{}{path}", self.base);
        let req = ureq::request(method, &url).timeout(DEADLINE);
        let r = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match r {
            Ok(r) => r.into_json::<serde_json::Value>().unwrap()["value"].clone(),
            Err(ureq::Error::Status(code, r)) => {
                panic!("webdriver {method} {path}: {code} {}", r.into_string().unwrap_or_default())
            }
            Err(e) => panic!("webdriver {method} {path}: {e}"),
        }
    }

    /// Opens `url` in the session's window.
    pub fn goto(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        self.call("POST", &path, Some(serde_json::json!({ "url": url })));
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> serde_json::Value {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call("POST", &path, Some(serde_json::json!({ "script": script, "args": [] })))
    }

    /// Polls `script` until `done` accepts what it returns (every 100 ms, within
    /// [`DEADLINE`]); returns that value.
    pub fn wait_for(
        &self,
        what: &str,
        script: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let v = self.eval(script);
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < end, "the page never showed {what}: last saw {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("{}/session/{}", self.base, self.session);
            let _ = ureq::delete(&path).timeout(Duration::from_secs(10)).call();
        }
        self.driver.kill().ok();
        self.driver.wait().ok();
    }
}
