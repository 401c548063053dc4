//! Tests against a parser shaped like the real ones: global args, switches, numbers, a custom
//! parser, an enum, repeatable args and a conflict.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use proptest::prelude::*;

use super::*;

#[derive(Debug, Parser, PartialEq)]
#[command(name = "demo")]
struct Cli {
    /// A global dir.
    #[arg(long, global = true, env = "DEMO_TEST_DIR", default_value = "/default/dir")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Node,
    Storage,
}

#[derive(Debug, Subcommand, PartialEq)]
enum Cmd {
    /// Runs.
    Run {
        /// Addresses.
        #[arg(long, env = "DEMO_TEST_LISTEN", default_value = "0.0.0.0:0", value_delimiter = ',')]
        listen: Vec<String>,
        /// A rate.
        #[arg(long, env = "DEMO_TEST_LIMIT", value_parser = rate)]
        limit: Option<u64>,
        /// A count.
        #[arg(long, env = "DEMO_TEST_TTL", default_value_t = 10)]
        ttl: u64,
        /// A probability.
        #[arg(long, env = "DEMO_TEST_P", default_value_t = 0.0)]
        p: f64,
        /// A switch.
        #[arg(long, env = "DEMO_TEST_DANGER")]
        danger: bool,
        /// A role.
        #[arg(long, env = "DEMO_TEST_ROLE", value_enum, default_value = "node")]
        role: Role,
        /// Repeatable ids.
        #[arg(long = "admit", env = "DEMO_TEST_ADMIT", value_delimiter = ',')]
        admits: Vec<String>,
        /// Conflicts with --other.
        #[arg(long, env = "DEMO_TEST_ONE", conflicts_with = "other")]
        one: Option<String>,
        /// Conflicts with --one.
        #[arg(long, env = "DEMO_TEST_OTHER")]
        other: Option<String>,
        /// Set from the environment by one test only.
        #[arg(long, env = "DEMO_TEST_NOTE")]
        note: Option<String>,
    },
    /// Does something else.
    Other,
}

/// A value parser that refuses what is not `NkB`.
fn rate(s: &str) -> Result<u64, String> {
    s.strip_suffix("kB")
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| n * 1000)
        .ok_or_else(|| format!("{s:?} is not a rate like 20kB"))
}

const SPEC: Spec = Spec { subcommand: "run", config_env: "DEMO_TEST_CONFIG" };

fn run_with(file: Option<&str>, args: &[&str]) -> Result<Parsed<Cli>, Error> {
    let dir = tempfile::tempdir().unwrap();
    let mut argv = vec!["demo".to_string(), "run".to_string()];
    if let Some(text) = file {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        argv.push(format!("--config={}", path.display()));
    }
    argv.extend(args.iter().map(|s| s.to_string()));
    parse_from::<Cli, _, _>(&SPEC, argv)
}

fn cli(file: Option<&str>, args: &[&str]) -> Cli {
    match run_with(file, args) {
        Ok(Parsed::Run(c)) => c,
        other => panic!("expected a run, got {other:?}"),
    }
}

fn err(file: &str) -> String {
    match run_with(Some(file), &[]) {
        Err(e) => e.to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn printed(file: Option<&str>, args: &[&str]) -> String {
    let mut args = args.to_vec();
    args.push("--print-config");
    match run_with(file, &args) {
        Ok(Parsed::Print(t)) => t,
        other => panic!("expected printed config, got {other:?}"),
    }
}

#[test]
fn file_sets_every_kind_of_value() {
    let c = cli(
        Some(
            r#"
            dir = "/from/file"
            listen = ["1.2.3.4:5", "6.7.8.9:10"]
            limit = "20kB"
            ttl = 30
            p = 0.25
            danger = true
            role = "storage"
            admit = ["a", "b"]
            "#,
        ),
        &[],
    );
    assert_eq!(c.dir, Path::new("/from/file"));
    let Cmd::Run { listen, limit, ttl, p, danger, role, admits, .. } = c.command else {
        panic!("not run")
    };
    assert_eq!(listen, ["1.2.3.4:5", "6.7.8.9:10"]);
    assert_eq!(limit, Some(20_000));
    assert_eq!(ttl, 30);
    assert_eq!(p, 0.25);
    assert!(danger);
    assert_eq!(role, Role::Storage);
    assert_eq!(admits, ["a", "b"]);
}

#[test]
fn flags_beat_the_file_and_the_file_beats_defaults() {
    let file = "ttl = 30\nlimit = \"5kB\"\nadmit = [\"f\"]\n";
    let c = cli(Some(file), &["--ttl", "40", "--admit", "x"]);
    let Cmd::Run { ttl, limit, admits, p, .. } = c.command else { panic!("not run") };
    assert_eq!(ttl, 40, "flag over file");
    assert_eq!(admits, ["x"], "a flag replaces the file's list, not appends to it");
    assert_eq!(limit, Some(5000), "file over absent");
    assert_eq!(p, 0.0, "default where neither sets it");
}

#[test]
fn environment_beats_the_file() {
    // Only this test sets these variables.
    std::env::set_var("DEMO_TEST_NOTE", "from-env");
    let c = cli(Some("note = \"from-file\"\n"), &[]);
    std::env::remove_var("DEMO_TEST_NOTE");
    let Cmd::Run { note, .. } = c.command else { panic!("not run") };
    assert_eq!(note.as_deref(), Some("from-env"));
}

#[test]
fn config_path_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.toml");
    std::fs::write(&path, "one = \"from-env-file\"\n").unwrap();
    // Only this test sets DEMO_TEST_CONFIG.
    std::env::set_var("DEMO_TEST_CONFIG", &path);
    let parsed = parse_from::<Cli, _, _>(&SPEC, ["demo", "run"]);
    std::env::remove_var("DEMO_TEST_CONFIG");
    let Ok(Parsed::Run(Cli { command: Cmd::Run { one, .. }, .. })) = parsed else {
        panic!("expected a run, got {parsed:?}")
    };
    assert_eq!(one.as_deref(), Some("from-env-file"));
}

#[test]
fn false_switch_and_single_value_for_a_list() {
    let c = cli(Some("danger = false\nadmit = \"solo\"\n"), &[]);
    let Cmd::Run { danger, admits, .. } = c.command else { panic!("not run") };
    assert!(!danger);
    assert_eq!(admits, ["solo"]);
}

#[test]
fn bad_files_name_the_key_and_the_file() {
    // (file, what the one-line error must contain)
    let table: &[(&str, &[&str])] = &[
        // A typo: named, with the closest key suggested.
        ("ttll = 3", &["unknown key `ttll`", "did you mean `ttl`?", "c.toml"]),
        // Nothing close: the hint says what keys are.
        ("zzzzzzzz = 3", &["unknown key `zzzzzzzz`", "long flags"]),
        // The subcommand's own extra args are no settings.
        ("print-config = true", &["unknown key `print-config`"]),
        ("config = \"x\"", &["unknown key `config`"]),
        // Wrong TOML types.
        ("danger = 1", &["`danger` must be true or false", "not a whole number"]),
        ("danger = \"yes\"", &["`danger` must be true or false", "not a string"]),
        ("ttl = [1, 2]", &["`ttl` must be a whole number (like ttl = 10), not an array"]),
        ("admit = [[1]]", &["`admit` must be an array of strings", "not an array"]),
        ("listen = { a = 1 }", &["`listen` must be", "not a table"]),
        ("one = 1979-05-27", &["`one` must be a string", "not a date"]),
        // Scalars go to the flag's parser, which names what it refuses.
        ("p = \"x\"", &["`p` = \"x\"", "invalid float"]),
        ("ttl = true", &["`ttl` = \"true\"", "invalid digit"]),
        ("limit = 20", &["`limit` = \"20\"", "not a rate like 20kB"]),
        // Values the flag's parser refuses.
        ("limit = \"fast\"", &["`limit` = \"fast\"", "not a rate like 20kB"]),
        ("role = \"king\"", &["`role` = \"king\""]),
        ("ttl = -1", &["`ttl` = \"-1\""]),
        // Settings that conflict.
        ("one = \"a\"\nother = \"b\"", &["cannot be used with"]),
        // Not TOML at all, with the line.
        ("ttl = 3\nthis is not toml", &["not valid TOML at line 2"]),
    ];
    for (file, wanted) in table {
        let e = err(file);
        assert!(!e.contains('\n'), "{file:?}: more than one line: {e}");
        for w in *wanted {
            assert!(e.contains(w), "{file:?}: {e:?} lacks {w:?}");
        }
    }
}

#[test]
fn unreadable_and_oversized_files_are_one_line() {
    let e = match parse_from::<Cli, _, _>(&SPEC, ["demo", "run", "--config", "/no/such.toml"]) {
        Err(e) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(e.contains("cannot read config file /no/such.toml"), "{e}");
    let big = "# padding\n".repeat((file::MAX_FILE_BYTES / 10 + 1) as usize);
    assert!(err(&big).contains("larger than 1024 KiB"));
}

#[test]
fn no_config_leaves_other_subcommands_alone() {
    let parsed = parse_from::<Cli, _, _>(&SPEC, ["demo", "other"]);
    assert!(matches!(parsed, Ok(Parsed::Run(Cli { command: Cmd::Other, .. }))), "{parsed:?}");
}

#[test]
fn print_config_round_trips() {
    let text = printed(
        Some("limit = \"7kB\"\nadmit = [\"a\", \"b\"]\np = 0.5\ndanger = true\n"),
        &["--ttl", "12", "--dir", "/x y/\"quoted\""],
    );
    assert!(text.contains("ttl = 12\n"), "{text}");
    assert!(text.contains("limit = \"7kB\"\n"), "{text}");
    assert!(text.contains("admit = [\"a\", \"b\"]\n"), "{text}");
    assert!(text.contains("p = 0.5\n"), "{text}");
    assert!(text.contains("danger = true\n"), "{text}");
    assert!(text.contains("role = \"node\"\n"), "{text}");
    assert!(text.contains("# one: not set\n"), "{text}");
    assert!(text.contains("# A rate\nlimit"), "help is a comment: {text}");
    // Fed back alone, it gives the same settings and prints the same text.
    assert_eq!(printed(Some(&text), &[]), text);
    let (a, b) = (cli(Some(&text), &[]), cli(None, &["--ttl", "12", "--dir", "/x y/\"quoted\""]));
    assert_eq!(a.dir, b.dir);
}

#[test]
fn completions_and_man_come_from_the_command() {
    let Ok(Parsed::Print(bash)) = parse_from::<Cli, _, _>(&SPEC, ["demo", "completions", "bash"])
    else {
        panic!("no completions")
    };
    for word in ["run", "--listen", "--config", "--print-config", "completions", "man"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let roff = match parse_from::<Cli, _, _>(&SPEC, ["demo", "man"]) {
        Ok(Parsed::Print(roff)) => roff,
        other => panic!("no man page: {other:?}"),
    };
    assert!(roff.starts_with(".ie") || roff.starts_with(".TH"), "{roff}");
    assert!(roff.contains(".TH demo"), "{roff}");
    let dir = tempfile::tempdir().unwrap();
    let Ok(Parsed::Print(list)) =
        parse_from::<Cli, _, _>(&SPEC, ["demo".as_ref(), "man".as_ref(), dir.path().as_os_str()])
    else {
        panic!("no man pages")
    };
    for page in ["demo.1", "demo-run.1", "demo-other.1", "demo-completions.1", "demo-man.1"] {
        let path = dir.path().join(page);
        assert!(list.contains(&path.display().to_string()), "{list}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    let run = std::fs::read_to_string(dir.path().join("demo-run.1")).unwrap();
    assert!(run.contains("config") && run.contains("DEMO_TEST_TTL"), "{run}");
}

#[test]
fn closest_key() {
    let known = ["upload-limit", "download-limit", "listen", "tracker"];
    assert_eq!(file::closest("upload_limit", &known), Some("upload-limit"));
    assert_eq!(file::closest("trakcer", &known), Some("tracker"));
    assert_eq!(file::closest("color", &known), None);
}

/// A setting of the demo `run` command with a value of its type, as TOML and as a flag.
fn setting() -> impl Strategy<Value = (String, String, Vec<String>)> {
    let word = "[a-z0-9:./ _-]{0,12}";
    prop_oneof![
        prop::collection::vec(word, 1..4).prop_map(|v| {
            let toml = format!(
                "listen = {}",
                Value::Array(v.iter().cloned().map(Value::String).collect::<Vec<_>>())
            );
            ("listen".into(), toml, v.iter().map(|s| format!("--listen={s}")).collect())
        }),
        (0u64..1_000_000).prop_map(|n| (
            "limit".into(),
            format!("limit = \"{n}kB\""),
            vec![format!("--limit={n}kB")]
        )),
        // A number may be written as a string too.
        (0u64..i64::MAX as u64, any::<bool>()).prop_map(|(n, quoted)| (
            "ttl".into(),
            if quoted { format!("ttl = \"{n}\"") } else { format!("ttl = {n}") },
            vec![format!("--ttl={n}")]
        )),
        (0.0f64..1.0).prop_map(|p| ("p".into(), format!("p = {p:?}"), vec![format!("--p={p}")])),
        any::<bool>().prop_map(|b| (
            "danger".into(),
            format!("danger = {b}"),
            if b { vec!["--danger".to_string()] } else { vec![] }
        )),
        prop::sample::select(vec!["node", "storage"]).prop_map(|r| (
            "role".into(),
            format!("role = \"{r}\""),
            vec![format!("--role={r}")]
        )),
        word.prop_map(|s| (
            "one".into(),
            format!("one = {}", Value::String(s.clone())),
            vec![format!("--one={s}")]
        )),
    ]
}

use toml::Value;

proptest! {
    /// Any set of settings in a file parses to what the same settings as flags parse to, and
    /// prints back to a file that parses to the same again.
    #[test]
    fn toml_settings_equal_their_flags(settings in prop::collection::vec(setting(), 0..7)) {
        let mut seen = std::collections::HashSet::new();
        let settings: Vec<_> = settings.into_iter().filter(|s| seen.insert(s.0.clone())).collect();
        let file: String = settings.iter().map(|s| format!("{}\n", s.1)).collect();
        let flags: Vec<String> = settings.iter().flat_map(|s| s.2.clone()).collect();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let from_file = cli(Some(&file), &[]);
        let from_flags = cli(None, &flags);
        prop_assert_eq!(&from_file, &from_flags);
        let text = printed(Some(&file), &[]);
        prop_assert_eq!(cli(Some(&text), &[]), from_flags);
        prop_assert_eq!(printed(Some(&text), &[]), text);
    }
}
