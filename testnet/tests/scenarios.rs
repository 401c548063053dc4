//! Every shipped scenario, run once with the real binaries at the small sizes they ship with;
//! each must exit 0 (all invariants hold).

use std::path::Path;
use std::process::Command;

/// Runs the scenario `name`, asserts it passed, and returns its `report.json`.
fn run(name: &str) -> serde_json::Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(format!("{name}.toml"));
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-testnet"))
        .arg("run")
        .arg(&file)
        .arg("--dir")
        .arg(tmp.path().join(name))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let logs = log_tails(&tmp.path().join(name));
        panic!("{name}:\n{stdout}\n{}\n{logs}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(stdout.contains("all invariants hold"), "{stdout}");
    let report = std::fs::read(tmp.path().join(name).join("report.json")).unwrap();
    serde_json::from_slice(&report).unwrap()
}

/// The last lines of every log in a failed run's directory (the directory goes with the test).
fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    let mut logs: Vec<_> =
        walk(dir).into_iter().filter(|p| p.file_name().is_some_and(|n| n == "log.txt")).collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        out += &format!("--- {} (last 30 lines)\n{tail}\n", log.display());
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[test]
fn churn() {
    run("churn");
}

#[test]
fn seed_leaves() {
    run("seed-leaves");
}

#[test]
fn malicious() {
    run("malicious");
}

#[test]
fn tracker_restart() {
    run("tracker-restart");
}

#[test]
fn storage_restart() {
    run("storage-restart");
}

#[test]
fn uploader_gone() {
    run("uploader-gone");
}

#[test]
fn sybil() {
    run("sybil");
}

/// Also checks what an adversary scenario's report holds: every check and peak.
#[test]
fn squatter() {
    let report = run("squatter");
    let passes = report["passes"].as_array().unwrap();
    assert_eq!(passes.len(), 2, "a baseline pass, then the scenario");
    assert_eq!(passes[0]["kind"], "baseline");
    for p in passes {
        assert!(p["last_finish_s"].as_f64().is_some(), "{p}");
        for name in ["tracker", "storage0", "node0", "node1"] {
            assert!(p["peak_rss"][name].as_u64().is_some_and(|b| b > 0), "{name}: {p}");
        }
    }
    assert!(passes[0]["adversaries"].as_array().unwrap().is_empty());
    let squatter = passes[1]["adversaries"].as_array().unwrap();
    assert!(squatter.iter().any(|t| t["name"] == "squatter" && t["attempts"].as_u64() > Some(0)));
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["what"].as_str().unwrap().contains("within 2 ×")));
    assert!(checks.iter().any(|c| c["what"].as_str().unwrap().contains("holds only")));
    // Every check held (the run exited 0).
    assert!(checks.iter().all(|c| c["ok"] == true));
    assert_eq!(report["memory_ceiling_bytes"], 256 * 1024 * 1024);
}

#[test]
fn regions() {
    run("regions");
}

#[test]
fn flood() {
    run("flood");
}

#[test]
fn a_bad_scenario_file_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nnodes = 3\nfile_size = \"1MiB\"\nbogus = 1\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_shoal-testnet")).arg("run").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid scenario") && err.contains("bogus"), "{err}");
}

#[test]
fn churn_in_network_namespaces() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        eprintln!("skipping: --netns needs root");
        return;
    }
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join("churn.toml");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-testnet"))
        .arg("run")
        .arg(&file)
        .arg("--netns")
        .arg("--dir")
        .arg(tmp.path().join("churn"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all invariants hold"), "{stdout}");
}
