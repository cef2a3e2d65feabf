//! Reliability tests (issue #6): what a user must be able to trust, proven on the testbed
//! under faults. Slow, so every test here is `#[ignore]`d and run by `just reliability`
//! (`cargo test --test reliability -- --ignored`); the few fast unit tests of the helpers run
//! with `just test`.
//!
//! | module | acceptance item |
//! |---|---|
//! | `faults` | 1. the API server killed during an apply, a wait, a patch, a helm step, a check; helm killed mid-install |
//! | `interrupt` | 2. SIGINT at 10 seeded instants: exit 130 within 2 s, then convergence; SIGINT while the cluster phase waits for a node |
//! | `idempotence` | 3. three runs, identical dumps, runs 2 and 3 change nothing |
//! | `safety` | 4. `down` on a cluster the plan did not create, another plan's cluster, twice |
//! | `secrets` | 5. no kubeconfig key, token or certificate in -vv/trace logs or artifacts |
//! | `remote` | 6. tampered, cached and unreachable remote manifests |
//! | `fuzz` | 7. the plan loader never panics (proptest, `BOOKINFO_UP_FUZZ_SECS`) |
//!
//! `dump` defines the normalised dump runs are compared with; `harness` and `control_plane`
//! are the tools. Live tests take a slot of `harness::live_slot` (one at a time by default,
//! `BOOKINFO_UP_RELIABILITY_JOBS`) so that fault timings mean something on two cores; the
//! fuzz test needs no slot and runs alongside them.

#[path = "../common/mod.rs"]
mod common;
mod control_plane;
mod dump;
mod harness;

mod faults;
mod fuzz;
mod idempotence;
mod interrupt;
mod istiod;
mod remote;
mod safety;
mod secrets;

use std::sync::Mutex;

use dump::Dump;
use harness::{Sim, Testbed};

/// The reference: the dump and duration of one undisturbed cold run of plans/sim.toml, made
/// once per test binary on a cluster of its own.
#[derive(Clone)]
pub struct Reference {
    pub dump: Dump,
    /// From start to exit of the cold run, cluster creation included.
    pub secs: f64,
}

static REFERENCE: Mutex<Option<Reference>> = Mutex::new(None);

/// The reference, made on first use (the caller holds a live slot).
pub fn reference(tb: &Testbed) -> Reference {
    let mut guard = REFERENCE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = guard.as_ref() {
        return r.clone();
    }
    let sim = Sim::new(tb, "reference");
    let run = sim.up(&[]);
    assert_eq!(run.code, 0, "the reference run failed:\n{}", run.stderr);
    let dump = Dump::take(&sim);
    let saved =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability-dumps/reference.json");
    dump.save(&saved);
    eprintln!(
        "reference: undisturbed cold run {}; dump: {} (saved in {})",
        run.brief(),
        dump.summary(),
        saved.display()
    );
    let r = Reference {
        dump,
        secs: run.secs,
    };
    *guard = Some(r.clone());
    r
}

/// What every converged run must leave: exit 0, the reference dump, 5 ingress ports, no
/// process of the run left behind. Returns a one-line account.
pub fn assert_converged(
    sim: &Sim,
    run: &harness::Run,
    reference: &Reference,
    what: &str,
) -> String {
    assert_eq!(
        run.code, 0,
        "{what}: the run did not converge:\n{}",
        run.stderr
    );
    let strays = sim.strays_after(std::time::Duration::from_secs(2));
    assert!(
        strays.is_empty(),
        "{what}: processes left behind by the run: {strays:#?}"
    );
    let ports = sim.ingress_ports();
    assert_eq!(
        ports.len(),
        5,
        "{what}: the ingress Service has ports {ports:?}"
    );
    let dump = Dump::take(sim);
    dump::assert_same(&reference.dump, &dump, what);
    format!(
        "{}; dump equal to the reference ({}); 5 ingress ports",
        run.brief(),
        dump.summary()
    )
}
