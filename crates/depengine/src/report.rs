//! [`EngineReport`]: a snapshot of an engine and every manifold in it, as
//! data (serde) and as a Graphviz graph ([`EngineReport::to_dot`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A snapshot of an engine, from [`Engine::report`](crate::Engine::report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineReport {
    /// Whether the engine is running or stopping.
    pub state: EngineState,
    /// Every installed manifold, by name.
    pub manifolds: Vec<ManifoldReport>,
}

/// The engine's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EngineState {
    /// Starting and supervising workers.
    Running,
    /// Stopping every worker; nothing new starts.
    Stopping,
}

/// One manifold in an [`EngineReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifoldReport {
    /// The manifold's name.
    pub name: String,
    /// What its worker is doing.
    pub state: ManifoldState,
    /// Its declared inputs, in declaration order.
    pub inputs: Vec<InputReport>,
    /// How many times a worker of this manifold has started.
    pub start_count: u64,
    /// The engine-wide generation of its running worker; every worker start
    /// gets a new one. `None` while no worker is running.
    pub generation: Option<u64>,
    /// The last error its worker or start function failed with.
    pub last_error: Option<String>,
    /// Failures since it last ran stably, which set the backoff.
    pub consecutive_failures: u32,
    /// How long its current worker has been running: also while it is
    /// stopping, until it has ended.
    pub running_for: Option<Duration>,
    /// The worker's own report, when it offers one (also while it is
    /// stopping: a worker slow to stop is the one an operator asks about);
    /// `{"error": …}` when it did not answer within the report deadline.
    pub worker: Option<serde_json::Value>,
}

/// What a manifold's worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ManifoldState {
    /// Its start function is running.
    Starting,
    /// Its worker is running.
    Started,
    /// Its worker has been asked to stop and has not ended yet.
    Stopping,
    /// No worker is running, for the reason given.
    Stopped {
        /// Why.
        reason: StoppedReason,
    },
}

impl ManifoldState {
    /// Whether a worker is running.
    pub fn is_started(&self) -> bool {
        matches!(self, ManifoldState::Started)
    }

    fn label(&self) -> String {
        match self {
            ManifoldState::Starting => "starting".to_owned(),
            ManifoldState::Started => "started".to_owned(),
            ManifoldState::Stopping => "stopping".to_owned(),
            ManifoldState::Stopped { reason } => match reason {
                StoppedReason::WaitingForInputs => "stopped: waiting for inputs".to_owned(),
                StoppedReason::Exited => "stopped: exited".to_owned(),
                StoppedReason::BackingOff { remaining } => {
                    format!("stopped: restarts in {remaining:?}")
                }
                StoppedReason::Parked => "stopped: parked".to_owned(),
                StoppedReason::Completed => "stopped: completed".to_owned(),
                StoppedReason::Shutdown => "stopped: shut down".to_owned(),
            },
        }
    }

    fn colour(&self) -> &'static str {
        match self {
            ManifoldState::Started => "palegreen",
            ManifoldState::Starting | ManifoldState::Stopping => "khaki",
            ManifoldState::Stopped {
                reason: StoppedReason::Parked | StoppedReason::BackingOff { .. },
            } => "salmon",
            ManifoldState::Stopped { .. } => "lightgrey",
        }
    }
}

/// Why a manifold has no running worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StoppedReason {
    /// A required input is not running.
    WaitingForInputs,
    /// Its worker exited cleanly, or found an input missing; it starts again
    /// when an input changes.
    Exited,
    /// It failed or asked to be bounced, and restarts after this delay.
    BackingOff {
        /// The time left until it restarts.
        remaining: Duration,
    },
    /// It exceeded its restart limit; it starts again when an input changes.
    Parked,
    /// Its [`Transient`](crate::RestartPolicy::Transient) worker exited
    /// cleanly: it is finished and does not start again.
    Completed,
    /// The engine is stopping.
    Shutdown,
}

/// One declared input in a [`ManifoldReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputReport {
    /// The input's name.
    pub name: String,
    /// Whether it is required (or optional).
    pub required: bool,
    /// Whether a manifold of that name is installed.
    pub installed: bool,
    /// The generation of the input's running worker, if one runs.
    pub generation: Option<u64>,
    /// The generation the dependent's current worker (or start) was given,
    /// if one is starting or running and the input was running then.
    pub snapshot_generation: Option<u64>,
}

impl EngineReport {
    /// The report for the manifold called `name`.
    pub fn manifold(&self, name: &str) -> Option<&ManifoldReport> {
        self.manifolds.iter().find(|manifold| manifold.name == name)
    }

    /// The engine's graph in Graphviz DOT: a node per manifold coloured by
    /// state (inputs that are not installed drawn dashed), an edge from each
    /// input to its dependent (dotted when optional).
    ///
    /// Render it with `dot -Tsvg`.
    pub fn to_dot(&self) -> String {
        let mut dot =
            String::from("digraph engine {\n  rankdir=LR;\n  node [shape=box, style=filled];\n");
        let installed: BTreeSet<&str> = self.manifolds.iter().map(|m| m.name.as_str()).collect();
        let mut absent = BTreeSet::new();
        for manifold in &self.manifolds {
            // Names hold no quote or backslash (see flotilla_core_types::Name),
            // so quoting them is enough.
            let _ = writeln!(
                dot,
                "  \"{}\" [label=\"{}\\n{}\", fillcolor={}];",
                manifold.name,
                manifold.name,
                manifold.state.label(),
                manifold.state.colour()
            );
            for input in &manifold.inputs {
                let style = if input.required { "solid" } else { "dotted" };
                let _ = writeln!(
                    dot,
                    "  \"{}\" -> \"{}\" [style={style}];",
                    input.name, manifold.name
                );
                if !installed.contains(input.name.as_str()) {
                    absent.insert(input.name.as_str());
                }
            }
        }
        for name in absent {
            let _ = writeln!(
                dot,
                "  \"{name}\" [label=\"{name}\\nnot installed\", style=dashed, fillcolor=white];"
            );
        }
        dot.push_str("}\n");
        dot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifold(name: &str, state: ManifoldState, inputs: &[(&str, bool)]) -> ManifoldReport {
        ManifoldReport {
            name: name.to_owned(),
            state,
            inputs: inputs
                .iter()
                .map(|&(input, required)| InputReport {
                    name: input.to_owned(),
                    required,
                    installed: input != "ghost",
                    generation: None,
                    snapshot_generation: None,
                })
                .collect(),
            start_count: 1,
            generation: Some(1),
            last_error: None,
            consecutive_failures: 0,
            running_for: None,
            worker: None,
        }
    }

    #[test]
    fn dot_shows_states_edges_and_missing_inputs() {
        let report = EngineReport {
            state: EngineState::Running,
            manifolds: vec![
                manifold("db", ManifoldState::Started, &[]),
                manifold(
                    "api",
                    ManifoldState::Stopped {
                        reason: StoppedReason::Parked,
                    },
                    &[("db", true), ("ghost", false)],
                ),
            ],
        };
        let dot = report.to_dot();
        assert!(dot.starts_with("digraph engine {"), "{dot}");
        assert!(
            dot.contains("\"db\" [label=\"db\\nstarted\", fillcolor=palegreen];"),
            "{dot}"
        );
        assert!(
            dot.contains("\"api\" [label=\"api\\nstopped: parked\", fillcolor=salmon];"),
            "{dot}"
        );
        assert!(dot.contains("\"db\" -> \"api\" [style=solid];"), "{dot}");
        assert!(
            dot.contains("\"ghost\" -> \"api\" [style=dotted];"),
            "{dot}"
        );
        assert!(
            dot.contains("\"ghost\" [label=\"ghost\\nnot installed\", style=dashed"),
            "{dot}"
        );
        assert!(dot.trim_end().ends_with('}'));
    }

    #[test]
    fn reports_round_trip_through_json() {
        let report = EngineReport {
            state: EngineState::Stopping,
            manifolds: vec![manifold(
                "db",
                ManifoldState::Stopped {
                    reason: StoppedReason::BackingOff {
                        remaining: Duration::from_millis(1500),
                    },
                },
                &[("x", true)],
            )],
        };
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(json["manifolds"][0]["state"]["state"], "stopped");
        assert_eq!(
            json["manifolds"][0]["state"]["reason"]["kind"],
            "backing_off"
        );
        let back: EngineReport = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, report);
    }
}
