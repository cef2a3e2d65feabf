//! Issue #6, item 3. Idempotence: three consecutive `up` runs on one cluster give identical dumps (and the
//! same dump as the reference run on another cluster); runs 2 and 3 report zero changes.

use crate::dump::{Dump, assert_same};
use crate::harness::{Sim, live_slot, testbed};
use crate::reference;

#[test]
#[ignore = "slow: `just reliability`"]
fn three_runs_one_dump_and_no_changes_after_the_first() {
    let Some(tb) = testbed() else { return };
    let _slot = live_slot();
    let reference = reference(&tb);
    let sim = Sim::new(&tb, "idempotence");
    let mut dumps = Vec::new();
    for n in 1..=3 {
        let run = sim.up(&[]);
        assert_eq!(run.code, 0, "run {n} failed:\n{}", run.stderr);
        if n > 1 {
            let changed = run.changed();
            assert!(changed.is_empty(), "run {n} changed: {changed:?}");
        }
        let dump = Dump::take(&sim);
        eprintln!(
            "idempotence: run {n}: {}; dump: {}",
            run.brief(),
            dump.summary()
        );
        dumps.push(dump);
    }
    assert_same(&dumps[0], &dumps[1], "idempotence run 2");
    assert_same(&dumps[0], &dumps[2], "idempotence run 3");
    assert_same(
        &reference.dump,
        &dumps[0],
        "idempotence run 1 against the reference",
    );
    eprintln!("idempotence: the three dumps are identical, and equal to the reference");
}
