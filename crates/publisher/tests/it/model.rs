//! A proptest model of the publisher: random sequences of adds and removes
//! of names and servers, backend outages, failing unmounts, table resets and
//! steps of (paused) time. The model is two sets; once the backend is
//! healthy and the publisher has had time to settle, the table must hold
//! exactly their cross product, and after a stop, nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_core_types::Worker;
use flotilla_publisher::{MountState, Publisher};
use proptest::prelude::*;

use crate::harness::{Flaky, config, name, resolved, server, settle};

const NAMES: [&str; 3] = ["n0", "n1", "n2/deep"];
const PORTS: [u16; 3] = [1, 2, 3];

#[derive(Debug, Clone)]
enum Step {
    AddName(usize),
    RemoveName(usize),
    AddServer(usize),
    RemoveServer(usize),
    Down(bool),
    FailUnmounts(bool),
    Reset,
    Wait(Duration),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..NAMES.len()).prop_map(Step::AddName),
        2 => (0..NAMES.len()).prop_map(Step::RemoveName),
        3 => (0..PORTS.len()).prop_map(Step::AddServer),
        2 => (0..PORTS.len()).prop_map(Step::RemoveServer),
        1 => any::<bool>().prop_map(Step::Down),
        1 => any::<bool>().prop_map(Step::FailUnmounts),
        1 => Just(Step::Reset),
        3 => (0u64..200_000).prop_map(|ms| Step::Wait(Duration::from_millis(ms))),
    ]
}

/// Long enough for every backoff (30 s at most) to run out, for a refresh
/// to find a reset table, and for the re-mounts that follow.
const SETTLE_TIME: Duration = Duration::from_secs(150);

fn check(steps: &[Step]) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let flaky = Flaky::new();
        // A slack far longer than the settling time, so that a mount the
        // publisher forgets to remove cannot hide by expiring.
        let config = config().with_period(Duration::from_secs(60), Duration::from_secs(600));
        let publisher = Publisher::start(flaky.clone(), config).expect("valid config");
        let mut names = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for step in steps {
            match step {
                Step::AddName(i) => {
                    publisher.add_name(name(NAMES[*i])).await.expect("running");
                    names.insert(NAMES[*i]);
                }
                Step::RemoveName(i) => {
                    publisher
                        .remove_name(name(NAMES[*i]))
                        .await
                        .expect("running");
                    names.remove(NAMES[*i]);
                }
                Step::AddServer(i) => {
                    publisher
                        .add_server(server(PORTS[*i]))
                        .await
                        .expect("running");
                    ports.insert(PORTS[*i]);
                }
                Step::RemoveServer(i) => {
                    publisher
                        .remove_server(server(PORTS[*i]))
                        .await
                        .expect("running");
                    ports.remove(&PORTS[*i]);
                }
                Step::Down(down) => flaky.set_down(*down),
                Step::FailUnmounts(fail) => flaky.set_fail_unmounts(*fail),
                Step::Reset => flaky.table.reset(),
                Step::Wait(duration) => tokio::time::sleep(*duration).await,
            }
            settle().await;
        }

        flaky.set_down(false);
        flaky.set_fail_unmounts(false);
        tokio::time::sleep(SETTLE_TIME).await;
        let expected: Vec<_> = ports.iter().map(|port| server(*port)).collect();
        for text in NAMES {
            let want = if names.contains(text) {
                expected.clone()
            } else {
                Vec::new()
            };
            let have = resolved(&flaky.table, &name(text)).await;
            prop_assert_eq!(have, want, "servers under {}", text);
        }
        prop_assert_eq!(flaky.table.entry_count(), names.len() * ports.len());
        let status = publisher.status().await.expect("running");
        prop_assert_eq!(status.mounts.len(), names.len() * ports.len());
        prop_assert!(
            status
                .mounts
                .iter()
                .all(|m| m.observed == MountState::Mounted)
        );

        publisher.stop().await;
        prop_assert!(publisher.wait().await.is_ok());
        prop_assert_eq!(flaky.table.entry_count(), 0, "stop unmounted everything");
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn at_quiescence_the_backend_holds_exactly_the_cross_product(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        check(&steps)?;
    }
}

#[test]
fn a_pair_removed_during_an_outage_is_unmounted_once_the_backend_returns() {
    let steps = [
        Step::AddName(0),
        Step::AddServer(0),
        Step::Down(true),
        Step::Wait(Duration::from_secs(70)),
        Step::RemoveServer(0),
    ];
    check(&steps).expect("the model holds");
}
