//! Config files, `--print-config`, the deploy/ examples, completions, man pages and the
//! tracker's JSON logs, on the real `shoal` and `shoal-tracker` binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{bin, fails, lines, ok, run, tracker_bin, wait_line, Daemon};

/// A command of `program` with no SHOAL_* variables from the caller, and HOME set so that the
/// node's default data dir is predictable.
fn clean(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("SHOAL_") {
            c.env_remove(k);
        }
    }
    c.env("HOME", home).env_remove("XDG_DATA_HOME");
    c
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The `key = value` lines of a printed config (its comments left out).
fn settings(printed: &str) -> Vec<&str> {
    printed.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect()
}

/// `shoal daemon [args] --print-config` with `env`, its stdout.
fn daemon_config(home: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = clean(bin(), home);
    c.arg("daemon").args(args).arg("--print-config").envs(env.iter().copied());
    ok(c)
}

#[test]
fn a_pull_through_cache_of_zero_is_accepted() {
    // `0` turns the cache off, as the flag's help says; a size parser for rates refused it.
    let dir = tempfile::tempdir().unwrap();
    for zero in ["0", "0B"] {
        let printed = daemon_config(dir.path(), &["--pull-through-cache", zero], &[]);
        assert!(
            settings(&printed).contains(&&*format!("pull-through-cache = \"{zero}\"")),
            "{printed}"
        );
    }
    let mut c = clean(bin(), dir.path());
    c.args(["daemon", "--pull-through-cache", "lots", "--print-config"]);
    let out = run(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad size") && err.contains("4GiB"), "{err}");
}

#[test]
fn daemon_precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "node.toml", "upload-limit = \"1MiB/s\"\n");
    let file = file.to_str().unwrap();
    let env = [("SHOAL_UPLOAD_LIMIT", "2MiB/s")];
    // (args, env, the upload-limit line printed)
    type Row<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let table: &[Row] = &[
        (&[], &[], "# upload-limit: not set"),
        (&["--config", file], &[], "upload-limit = \"1MiB/s\""),
        (&["--config", file], &env, "upload-limit = \"2MiB/s\""),
        (&["--config", file, "--upload-limit", "3MiB/s"], &env, "upload-limit = \"3MiB/s\""),
        (&["--upload-limit", "3MiB/s"], &[], "upload-limit = \"3MiB/s\""),
    ];
    for (args, env, line) in table {
        let printed = daemon_config(dir.path(), args, env);
        assert!(printed.lines().any(|l| l == *line), "{args:?} {env:?}: no {line:?} in\n{printed}");
    }
}

#[test]
fn global_flags_before_the_subcommand_beat_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "node.toml", "data-dir = \"/from-file\"\nlog-format = \"json\"\n");
    let mut c = clean(bin(), dir.path());
    c.args(["--data-dir", "/from-flag", "daemon", "--config"]).arg(&file).arg("--print-config");
    let printed = ok(c);
    assert!(settings(&printed).contains(&"data-dir = \"/from-flag\""), "{printed}");
    assert!(settings(&printed).contains(&"log-format = \"json\""), "{printed}");
}

#[test]
fn tracker_runs_with_the_settings_of_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tracker");
    let file = write(
        dir.path(),
        "tracker.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\ndata-dir = {:?}\n",
            data.to_str().unwrap()
        ),
    );
    let mut c = clean(tracker_bin(), dir.path());
    c.args(["serve", "--config"]).arg(&file).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = KillOnDrop(c.spawn().unwrap());
    let rx = lines(child.0.stdout.take().unwrap());
    let line = wait_line(&rx, "tracker start", |l| l.starts_with("shoal-tracker: node "));
    assert!(line.contains(" listening on 127.0.0.1:"), "{line}");
    assert!(line.contains("http http://127.0.0.1:"), "the file's http address: {line}");
    assert!(data.join("index").exists(), "the file's data dir is not used");
}

#[test]
fn daemon_runs_with_the_settings_of_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("storage");
    let file = write(
        dir.path(),
        "storage.toml",
        &format!(
            "role = \"storage\"\npull-through-cache = \"1GiB\"\nlog-format = \"json\"\n\
             data-dir = {:?}\n",
            data.to_str().unwrap()
        ),
    );
    // Started as the support code starts daemons (its --data-dir wins over the file's, to the
    // same directory), with the role from the file alone.
    let d = Daemon::start(&data, &["--config", file.to_str().unwrap()]);
    let status = d.status();
    assert_eq!(status["role"], "storage", "{status}");
}

#[test]
fn bad_config_files_are_one_line_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    // (binary, subcommand, file text, what the error line holds)
    let table: &[(&Path, &str, &str, &[&str])] = &[
        (
            bin().as_ref(),
            "daemon",
            "upload-limt = \"1MiB/s\"",
            &["unknown key `upload-limt`", "did you mean `upload-limit`?"],
        ),
        (
            bin().as_ref(),
            "daemon",
            "upload-limit = \"fast\"",
            &["`upload-limit` = \"fast\"", "20MiB/s"],
        ),
        (
            bin().as_ref(),
            "daemon",
            "danger-corrupt-uploads = 2",
            &["`danger-corrupt-uploads` = \"2\"", "probability"],
        ),
        (bin().as_ref(), "daemon", "role = \"king\"", &["`role` = \"king\""]),
        (
            bin().as_ref(),
            "daemon",
            "listen = { a = 1 }",
            &["`listen` must be an array of strings", "not a table"],
        ),
        (
            bin().as_ref(),
            "daemon",
            "danger-s3-allow-http = \"yes\"",
            &["`danger-s3-allow-http` must be true or false"],
        ),
        (bin().as_ref(), "daemon", "tracker = \"a:1\"\ntestnet = \"/x\"", &["cannot be used with"]),
        (
            bin().as_ref(),
            "daemon",
            "role = \"storage\"\nrole = \"node\"",
            &["not valid TOML at line 2"],
        ),
        (
            &tracker_bin(),
            "serve",
            "node-tl = 10",
            &["unknown key `node-tl`", "did you mean `node-ttl`?"],
        ),
        (&tracker_bin(), "serve", "node-ttl = -3", &["`node-ttl` = \"-3\""]),
        (
            &tracker_bin(),
            "serve",
            "admit-storage = [[\"x\"]]",
            &["`admit-storage` must be an array of strings"],
        ),
        (&tracker_bin(), "serve", "log-format = \"xml\"", &["`log-format` = \"xml\""]),
    ];
    for (program, sub, text, wanted) in table {
        let file = write(dir.path(), "bad.toml", text);
        let mut c = clean(program, dir.path());
        c.args([*sub, "--config"]).arg(&file);
        let line = fails(c);
        assert!(line.contains(&format!("config file {}", file.display())), "{text:?}: {line}");
        for w in *wanted {
            assert!(line.contains(w), "{text:?}: {line:?} lacks {w:?}");
        }
    }
    let mut c = clean(bin(), dir.path());
    c.args(["daemon", "--config", "/nonexistent/node.toml"]);
    assert!(fails(c).contains("cannot read config file /nonexistent/node.toml"));
}

#[test]
fn print_config_round_trips_on_both_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let node_flags = [
        "--listen=127.0.0.1:0=lan,127.0.0.2:0",
        "--upload-limit=20MiB/s",
        "--role=storage",
        "--grant=12D3KooWExample=10GiB",
        "--danger-corrupt-uploads=0.25",
        "--offline-allow-private",
        "--data-dir=/var/lib/shoal \"quoted\"",
    ];
    let tracker_flags = [
        "--listen=127.0.0.1:0",
        "--node-ttl=30",
        "--admit-storage=a,b",
        "--region=10.0.0.0/8=eu",
        "--allow-stated-region",
        "--log-format=json",
    ];
    for (program, sub, flags) in [
        (PathBuf::from(bin()), "daemon", &node_flags[..]),
        (tracker_bin(), "serve", &tracker_flags[..]),
    ] {
        let mut c = clean(&program, dir.path());
        c.arg(sub).args(flags).arg("--print-config");
        let first = ok(c);
        for f in flags {
            let key = f.trim_start_matches('-').split('=').next().unwrap();
            assert!(
                settings(&first).iter().any(|l| l.starts_with(&format!("{key} = "))),
                "{key} missing from\n{first}"
            );
        }
        let file = write(dir.path(), "printed.toml", &first);
        let mut c = clean(&program, dir.path());
        c.arg(sub).arg("--config").arg(&file).arg("--print-config");
        assert_eq!(ok(c), first, "{sub}: the printed config does not read back the same");
    }
}

#[test]
fn config_path_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let node = write(dir.path(), "node.toml", "region = \"eu-west\"\n");
    let tracker = write(dir.path(), "tracker.toml", "query-rate = 7\n");
    let mut c = clean(bin(), dir.path());
    c.args(["daemon", "--print-config"]).env("SHOAL_CONFIG", &node);
    assert!(settings(&ok(c)).contains(&"region = \"eu-west\""));
    let mut c = clean(tracker_bin(), dir.path());
    c.args(["serve", "--print-config"]).env("SHOAL_TRACKER_CONFIG", &tracker);
    assert!(settings(&ok(c)).contains(&"query-rate = 7"));
}

/// The keys of a subcommand: those its --print-config writes, set or not.
fn keys(printed: &str) -> Vec<String> {
    printed
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("# ").unwrap_or(l);
            let key = l.split([' ', ':']).next()?;
            let rest = &l[key.len()..];
            (rest.starts_with(" = ") || rest == ": not set").then(|| key.to_string())
        })
        .collect()
}

#[test]
fn deploy_examples_parse_and_document_every_key() {
    let home = tempfile::tempdir().unwrap();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for (name, program, sub) in [
        ("node.toml", PathBuf::from(bin()), "daemon"),
        ("storage.toml", PathBuf::from(bin()), "daemon"),
        ("tracker.toml", tracker_bin(), "serve"),
    ] {
        let path = deploy.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut c = clean(&program, home.path());
        c.arg(sub).arg("--config").arg(&path).arg("--print-config");
        let printed = ok(c);
        let mut c = clean(&program, home.path());
        c.args([sub, "--print-config"]);
        for key in keys(&ok(c)) {
            let documented =
                text.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = ")));
            assert!(
                documented,
                "{name} does not document `{key}` (as `{key} = ..` or `# {key} = ..`)"
            );
        }
        // Every commented example value is valid on its own too.
        for line in text.lines().filter_map(|l| l.strip_prefix("# ")) {
            let Some((key, _)) = line.split_once(" = ") else { continue };
            if key.contains(' ') {
                continue;
            }
            let one = write(home.path(), "one.toml", &format!("{line}\n"));
            let mut c = clean(&program, home.path());
            c.arg(sub).arg("--config").arg(&one).arg("--print-config");
            let o = run(c);
            assert!(
                o.status.success(),
                "{name}: `{line}` does not parse: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(printed.contains("log-format = \"json\""), "{name}: {printed}");
    }
}

#[test]
fn completions_name_subcommands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    for (program, words) in [
        (
            PathBuf::from(bin()),
            &[
                "daemon",
                "add",
                "get",
                "--upload-limit",
                "--config",
                "--print-config",
                "completions",
                "man",
            ][..],
        ),
        (
            tracker_bin(),
            &["serve", "--admit-storage", "--log-format", "--config", "--print-config"][..],
        ),
    ] {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let mut c = clean(&program, dir.path());
            c.args(["completions", shell]);
            let script = ok(c);
            for w in words {
                let w = if shell == "fish" { w.trim_start_matches('-') } else { w };
                assert!(script.contains(w), "{shell} completion of {program:?} lacks {w}");
            }
            if shell == "bash" {
                let path = write(dir.path(), "completion.bash", &script);
                let mut check = Command::new("bash");
                check.arg("-n").arg(&path);
                ok(check);
            }
        }
    }
    let mut c = clean(bin(), dir.path());
    c.args(["completions", "tcsh"]);
    let o = run(c);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid value 'tcsh'"));
}

#[test]
fn man_pages_of_both_binaries() {
    let dir = tempfile::tempdir().unwrap();
    for (program, name, sub, flag) in [
        (PathBuf::from(bin()), "shoal", "daemon", "upload\\-limit"),
        (tracker_bin(), "shoal-tracker", "serve", "admit\\-storage"),
    ] {
        let mut c = clean(&program, dir.path());
        c.arg("man");
        let roff = ok(c);
        let th = roff.lines().find(|l| l.starts_with(".TH")).expect("a .TH line");
        assert!(th.starts_with(&format!(".TH {name} 1")), "{th}");
        assert!(roff.contains(sub) && roff.contains("completions"), "{roff}");
        let out = dir.path().join(name);
        std::fs::create_dir(&out).unwrap();
        let mut c = clean(&program, dir.path());
        c.arg("man").arg(&out);
        let listed = ok(c);
        let page = out.join(format!("{name}-{sub}.1"));
        assert!(listed.lines().any(|l| Path::new(l) == page), "{listed}");
        let text = std::fs::read_to_string(&page).unwrap();
        assert!(text.contains(&format!(".TH {name}-{sub} 1")), "{text}");
        assert!(text.contains(flag) && text.contains("print\\-config"), "{text}");
    }
    let mut c = clean(bin(), dir.path());
    c.args(["man", "/nonexistent/dir"]);
    assert!(fails(c).contains("cannot write man pages into /nonexistent/dir"));
}

#[test]
fn tracker_logs_json_by_flag_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "tracker.toml", "log-format = \"json\"\n");
    type Way<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>);
    let ways: [Way; 3] = [
        (&["--log-format", "json"], None),
        (&[], Some(("SHOAL_LOG_FORMAT", "json"))),
        (&["--config", file.to_str().unwrap()], None),
    ];
    for (i, (args, env)) in ways.into_iter().enumerate() {
        let mut c = clean(tracker_bin(), dir.path());
        c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join(format!("t{i}")))
            .args(args)
            .env("SHOAL_LOG", "info")
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(c.spawn().unwrap());
        let rx = lines(child.0.stderr.take().unwrap());
        let line = wait_line(&rx, "a log line", |l| l.contains("state restored"));
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{args:?} {env:?}: not JSON ({e}): {line}"));
        assert_eq!(v["level"], "INFO", "{line}");
        assert_eq!(v["fields"]["message"], "state restored", "{line}");
    }
}

/// A child process killed when the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}
