//! Issue #6, item 7. The plan loader (parser and analyzer, with the diagnostics it renders and the dry run of
//! what it accepts) never panics, whatever the input: proptest feeds it arbitrary bytes and
//! text, and structured mutations of the real plans, their includes, vars file and manifests
//! (lines deleted, duplicated, swapped, replaced by lines of other files; tokens, text and
//! raw bytes inserted; bytes replaced; files cut short).
//!
//! The files live in a mirror of the repository's plans/, manifests/, testbed/versions.env
//! and tests/plans/ in a temporary folder, so includes, globs and vars files resolve as they do
//! for users. Each case writes one mutated file, loads the plan that reads it, and puts the
//! file back.
//!
//! `BOOKINFO_UP_FUZZ_SECS` sets how long the ignored test runs (default 600: the ten
//! minutes), `BOOKINFO_UP_FUZZ_SEED` its seed (default: from the clock, printed). A failure
//! prints the shrunk input and the seed; a hang (one case over 30 s) or a crash that kills the
//! process leaves the input in the mirror, whose path is printed first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::harness::repo;

/// What the mirror holds: files by relative path.
struct Mirror {
    root: tempfile::TempDir,
    /// (file to mutate, plan to load), relative to the root.
    targets: Vec<(PathBuf, PathBuf)>,
    /// The original text of every target.
    originals: Vec<Vec<u8>>,
    /// Lines of every file, donors for replacements.
    donors: Vec<String>,
    /// The first `real` targets are the shipped plans, their includes and manifests; the
    /// rest are tests/plans.
    real: usize,
}

fn copy_tree(from: &Path, to: &Path, files: &mut Vec<PathBuf>, base: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst, files, base);
        } else {
            std::fs::copy(&src, &dst).unwrap();
            files.push(dst.strip_prefix(base).unwrap().to_path_buf());
        }
    }
}

impl Mirror {
    fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("bookinfo-up-fuzz-")
            .tempdir()
            .unwrap();
        let base = root.path().to_path_buf();
        let mut files = Vec::new();
        for d in ["plans", "manifests", "tests/plans"] {
            copy_tree(&repo().join(d), &base.join(d), &mut files, &base);
        }
        std::fs::create_dir_all(base.join("testbed")).unwrap();
        std::fs::copy(
            repo().join("testbed/versions.env"),
            base.join("testbed/versions.env"),
        )
        .unwrap();
        files.push("testbed/versions.env".into());

        let sim = PathBuf::from("plans/sim.toml");
        let mut targets: Vec<(PathBuf, PathBuf)> = vec![
            (sim.clone(), sim.clone()),
            ("plans/bookinfo.toml".into(), "plans/bookinfo.toml".into()),
            ("plans/shared/bookinfo-flow.toml".into(), sim.clone()),
            ("testbed/versions.env".into(), sim.clone()),
            ("plans/fresh.toml".into(), "plans/fresh.toml".into()),
        ];
        for f in &files {
            if f.starts_with("manifests") {
                targets.push((f.clone(), sim.clone()));
            }
        }
        let real = targets.len();
        for f in &files {
            let s = f.to_string_lossy();
            if s.starts_with("manifests/") {
                continue;
            } else if s.starts_with("tests/plans/")
                && s.ends_with(".toml")
                && !s.contains("/includes/")
            {
                targets.push((f.clone(), f.clone()));
            } else if s.starts_with("tests/plans/") && (s.ends_with(".yaml") || s.ends_with(".env"))
            {
                // Read by some bad plan; mutate it under the first plan of its folder.
                let dir = f.parent().unwrap();
                let plan = files
                    .iter()
                    .find(|p| {
                        p.extension().is_some_and(|e| e == "toml")
                            && p.parent().is_some_and(|d| dir.starts_with(d))
                    })
                    .cloned();
                if let Some(plan) = plan {
                    targets.push((f.clone(), plan));
                }
            }
        }
        std::fs::write(base.join("plans/fresh.toml"), "").unwrap();
        let originals = targets
            .iter()
            .map(|(t, _)| std::fs::read(base.join(t)).unwrap_or_default())
            .collect();
        let mut donors: Vec<String> = Vec::new();
        for f in &files {
            if let Ok(t) = std::fs::read_to_string(base.join(f)) {
                donors.extend(t.lines().map(str::to_string));
            }
        }
        donors.sort();
        donors.dedup();
        Self {
            root,
            targets,
            originals,
            donors,
            real,
        }
    }
}

/// Pieces of syntax that tend to matter to a TOML/YAML/variable parser.
const TOKENS: &[&str] = &[
    "${",
    "$${",
    "}",
    "${env.",
    "${env.HOME:-",
    ":-",
    "${x}",
    "${istio_chart_prefix}",
    "[[step]]",
    "[step.wait]",
    "[step.apply]",
    "[step.helm]",
    "[step.patch]",
    "[cluster.kwok]",
    "[vars]",
    "[plan]",
    "needs = [\"istio-base\"]",
    "needs = [\"bookinfo-pods\"]",
    "id = \"istio-base\"",
    "\"",
    "'''",
    "\"\"\"",
    "=",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "\r\n",
    "\t",
    " ",
    "#",
    "é",
    "\u{0}",
    "\u{202e}",
    "\u{feff}",
    "🦀",
    "0x7f",
    "-1",
    "0",
    "18446744073709551616",
    "99999999999999999999",
    "1e400",
    "inf",
    "nan",
    "true",
    "\"1h\"",
    "\"0s\"",
    "\"99999999999999999h\"",
    "\"1ms\"",
    "\"5 m\"",
    "include = [\"sim.toml\"]",
    "include = [\"../plans/sim.toml\"]",
    "include = [\"shared/bookinfo-flow.toml\"]",
    "vars_files = [\"sim.toml\"]",
    "files = [\"*.toml\"]",
    "files = [\"../manifests/**/*.yaml\"]",
    "template = true",
    "sha256 = \"",
    "url = \"https://x/",
    "url = \"file://",
    "---\n",
    "- ",
    ": ",
    "&a ",
    "*a",
    "!!binary ",
    "? ",
    "|\n",
    ">-\n",
    "kind: ",
    "apiVersion: v1",
    "metadata:\n  name: ",
    "{{",
    "%",
    "\\",
    "\\u0000",
    "\\U0010FFFF",
    "\\x",
    "'",
    "@",
    "~",
];

#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    ReplaceLine(usize, usize),
    InsertToken(usize, usize),
    InsertText(usize, String),
    InsertBytes(usize, Vec<u8>),
    ReplaceByte(usize, u8),
    Truncate(usize),
}

#[derive(Debug, Clone)]
enum Case {
    /// Edits of target `0` (an index into the mirror's targets).
    Mutate(usize, Vec<Edit>),
    /// Arbitrary text as a whole plan.
    Text(String),
    /// Arbitrary bytes as a whole plan.
    Bytes(Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    let i = any::<usize>();
    prop_oneof![
        3 => i.prop_map(Edit::DeleteLine),
        2 => i.prop_map(Edit::DuplicateLine),
        1 => (i, i).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        3 => (i, i).prop_map(|(a, b)| Edit::ReplaceLine(a, b)),
        4 => (i, i).prop_map(|(a, b)| Edit::InsertToken(a, b)),
        1 => (i, ".{0,12}").prop_map(|(a, s)| Edit::InsertText(a, s)),
        1 => (i, prop::collection::vec(any::<u8>(), 1..6)).prop_map(|(a, b)| Edit::InsertBytes(a, b)),
        1 => (i, any::<u8>()).prop_map(|(a, b)| Edit::ReplaceByte(a, b)),
        1 => i.prop_map(Edit::Truncate),
    ]
}

fn case(real: usize, targets: usize) -> impl Strategy<Value = Case> {
    prop_oneof![
        5 => (0..real, prop::collection::vec(edit(), 1..8)).prop_map(|(t, e)| Case::Mutate(t, e)),
        3 => (0..targets, prop::collection::vec(edit(), 1..8)).prop_map(|(t, e)| Case::Mutate(t, e)),
        1 => ".{0,400}".prop_map(Case::Text),
        1 => prop::collection::vec(any::<u8>(), 0..600).prop_map(Case::Bytes),
    ]
}

fn apply_edits(original: &[u8], edits: &[Edit], donors: &[String]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = original
        .split(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::DeleteLine(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::DuplicateLine(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            Edit::ReplaceLine(i, d) if !lines.is_empty() && !donors.is_empty() => {
                lines[i % n] = donors[d % donors.len()].as_bytes().to_vec();
            }
            Edit::InsertToken(i, _)
            | Edit::InsertText(i, _)
            | Edit::InsertBytes(i, _)
            | Edit::ReplaceByte(i, _)
            | Edit::Truncate(i) => {
                let mut flat = lines.join(&b'\n');
                let at = i % (flat.len() + 1);
                match e {
                    Edit::InsertToken(_, t) => {
                        flat.splice(at..at, TOKENS[t % TOKENS.len()].bytes());
                    }
                    Edit::InsertText(_, s) => {
                        flat.splice(at..at, s.bytes());
                    }
                    Edit::InsertBytes(_, b) => {
                        flat.splice(at..at, b.iter().copied());
                    }
                    Edit::ReplaceByte(_, b) if at < flat.len() => flat[at] = *b,
                    Edit::Truncate(_) => flat.truncate(at),
                    _ => {}
                }
                lines = flat.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
            }
            _ => {}
        }
    }
    lines.join(&b'\n')
}

/// Loads `plan`, renders what the user would see; panics are what the fuzzer looks for.
fn load_and_render(plan: &Path) -> bool {
    let (sources, result) = bookinfo_up::plan::load(plan, &|name| std::env::var(name).ok());
    match result {
        Ok(plan) => {
            let _ = bookinfo_up::report::dry_run(&plan);
            true
        }
        Err(diags) => {
            let _ = diags.render(&sources);
            false
        }
    }
}

struct Stats {
    cases: u64,
    loaded: u64,
}

/// Runs the fuzzer for `secs` seconds from `seed`; returns how many cases ran.
fn fuzz(secs: f64, seed: u64) -> Stats {
    let mirror = Mirror::new();
    let root = mirror.root.path().to_path_buf();
    eprintln!(
        "fuzz: seed {seed}, {secs:.0}s, {} targets, mirror {} (the input of a crash or hang is left there)",
        mirror.targets.len(),
        root.display()
    );
    // A watchdog: one case taking over 30 s is a hang.
    let started_at = Arc::new(AtomicU64::new(0));
    let clock = Instant::now();
    {
        let started_at = started_at.clone();
        let root = root.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let s = started_at.load(Ordering::SeqCst);
                if s != 0 && clock.elapsed().as_millis() as u64 - s > 30_000 {
                    eprintln!(
                        "fuzz: a case has run for over 30 s: hang; its input is in {}",
                        root.display()
                    );
                    std::process::abort();
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut stats = Stats {
        cases: 0,
        loaded: 0,
    };
    let mut round = 0u64;
    while Instant::now() < deadline {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&round.to_le_bytes());
        let config = Config {
            cases: 64,
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
        let cases = std::cell::Cell::new(0u64);
        let loaded = std::cell::Cell::new(0u64);
        let result = runner.run(&case(mirror.real, mirror.targets.len()), |c| {
            let (target, entry, content, restore) = match &c {
                Case::Mutate(t, edits) => {
                    let (target, entry) = &mirror.targets[*t];
                    (
                        target.clone(),
                        entry.clone(),
                        apply_edits(&mirror.originals[*t], edits, &mirror.donors),
                        Some(mirror.originals[*t].clone()),
                    )
                }
                Case::Text(s) => (
                    "plans/fresh.toml".into(),
                    "plans/fresh.toml".into(),
                    s.clone().into_bytes(),
                    None,
                ),
                Case::Bytes(b) => (
                    "plans/fresh.toml".into(),
                    "plans/fresh.toml".into(),
                    b.clone(),
                    None,
                ),
            };
            std::fs::write(root.join(&target), &content).unwrap();
            started_at.store(clock.elapsed().as_millis() as u64, Ordering::SeqCst);
            let ok = load_and_render(&root.join(&entry));
            started_at.store(0, Ordering::SeqCst);
            std::fs::write(root.join(&target), restore.unwrap_or_default()).unwrap();
            cases.set(cases.get() + 1);
            loaded.set(loaded.get() + ok as u64);
            Ok(())
        });
        stats.cases += cases.get();
        stats.loaded += loaded.get();
        if let Err(e) = result {
            panic!("fuzz: the plan loader panicked (seed {seed}, round {round}):\n{e}");
        }
        round += 1;
    }
    stats
}

#[test]
#[ignore = "slow: `just reliability` (BOOKINFO_UP_FUZZ_SECS, default 600)"]
fn plan_loader_never_panics() {
    let secs: f64 = std::env::var("BOOKINFO_UP_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600.0);
    let seed: u64 = std::env::var("BOOKINFO_UP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    let t = Instant::now();
    let s = fuzz(secs, seed);
    eprintln!(
        "fuzz: {} cases in {:.0}s without a panic ({} loaded as valid plans, {} rejected with diagnostics)",
        s.cases,
        t.elapsed().as_secs_f64(),
        s.loaded,
        s.cases - s.loaded
    );
}

/// A few seconds of the same with `just test`, so that a regression shows early.
#[test]
fn plan_loader_survives_a_short_fuzz() {
    let s = fuzz(3.0, 1);
    assert!(s.cases > 20, "only {} cases ran", s.cases);
}

#[test]
fn edits_apply_as_described() {
    let donors = vec!["donor".to_string()];
    let out = |edits: &[Edit]| String::from_utf8(apply_edits(b"a\nb\nc", edits, &donors)).unwrap();
    assert_eq!(out(&[Edit::DeleteLine(1)]), "a\nc");
    assert_eq!(out(&[Edit::DuplicateLine(3)]), "a\na\nb\nc");
    assert_eq!(out(&[Edit::ReplaceLine(2, 0)]), "a\nb\ndonor");
    assert_eq!(out(&[Edit::SwapLines(0, 2)]), "c\nb\na");
    assert_eq!(out(&[Edit::Truncate(3)]), "a\nb");
    assert_eq!(out(&[Edit::InsertText(1, "x".into())]), "ax\nb\nc");
}
