//! [`EngineReport`]: a snapshot of an engine and every manifold in it, as
//! data (serde), as a table for people (`Display`) and as a Graphviz graph
//! ([`EngineReport::to_dot`]).
//!
//! The JSON is meant for tools as much as for Rust: states are plain
//! strings (`"started"`, `"backing_off"`, …, see [`ManifoldState::as_str`])
//! and durations whole milliseconds in fields whose names end in `_ms`.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
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
///
/// In JSON: `{"name", "state", "restarts_in_ms" (while backing off),
/// "inputs", "start_count", "generation", "last_error",
/// "consecutive_failures", "running_for_ms", "worker"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ManifoldJson", try_from = "ManifoldJson")]
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

    /// The state as one word, as the JSON report writes it: `starting`,
    /// `started`, `stopping`, `waiting_for_inputs`, `exited`,
    /// `backing_off`, `parked`, `completed` or `shut_down`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ManifoldState::Starting => "starting",
            ManifoldState::Started => "started",
            ManifoldState::Stopping => "stopping",
            ManifoldState::Stopped { reason } => match reason {
                StoppedReason::WaitingForInputs => "waiting_for_inputs",
                StoppedReason::Exited => "exited",
                StoppedReason::BackingOff { .. } => "backing_off",
                StoppedReason::Parked => "parked",
                StoppedReason::Completed => "completed",
                StoppedReason::Shutdown => "shut_down",
            },
        }
    }

    /// The state named by [`as_str`](Self::as_str), with `restarts_in` for
    /// `backing_off`.
    fn from_str(state: &str, restarts_in: Duration) -> Option<Self> {
        let stopped = |reason| Some(ManifoldState::Stopped { reason });
        match state {
            "starting" => Some(ManifoldState::Starting),
            "started" => Some(ManifoldState::Started),
            "stopping" => Some(ManifoldState::Stopping),
            "waiting_for_inputs" => stopped(StoppedReason::WaitingForInputs),
            "exited" => stopped(StoppedReason::Exited),
            "backing_off" => stopped(StoppedReason::BackingOff {
                remaining: restarts_in,
            }),
            "parked" => stopped(StoppedReason::Parked),
            "completed" => stopped(StoppedReason::Completed),
            "shut_down" => stopped(StoppedReason::Shutdown),
            _ => None,
        }
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
                    format!("stopped: restarts in {}", Millis(*remaining))
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

/// A table, one manifold a line: name, state, starts, how long it has run,
/// the last error.
///
/// ```text
/// engine running, 2 manifolds
/// manifold  state                        starts  running for  last error
/// api       stopped: restarts in 2.9 s   3       -            connection refused
/// config    started                      1       12.0 s       -
/// ```
impl fmt::Display for EngineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            EngineState::Running => "running",
            EngineState::Stopping => "stopping",
        };
        writeln!(f, "engine {state}, {} manifolds", self.manifolds.len())?;
        let rows: Vec<[String; 5]> = self
            .manifolds
            .iter()
            .map(|manifold| {
                [
                    manifold.name.clone(),
                    manifold.state.label(),
                    manifold.start_count.to_string(),
                    manifold
                        .running_for
                        .map_or_else(|| "-".to_owned(), |ran| Millis(ran).to_string()),
                    manifold
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "-".to_owned()),
                ]
            })
            .collect();
        let header = ["manifold", "state", "starts", "running for", "last error"].map(String::from);
        let mut widths = header.clone().map(|title| title.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (index, (cell, width)) in row.iter().zip(widths).enumerate() {
                if index + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A duration as people read it: milliseconds under a second, else seconds
/// with one decimal.
struct Millis(Duration);

/// `duration` as people read it (`250 ms`, `3.0 s`), for messages.
pub(crate) fn human(duration: Duration) -> String {
    Millis(duration).to_string()
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < Duration::from_secs(1) {
            write!(f, "{} ms", self.0.as_millis())
        } else {
            write!(f, "{:.1} s", self.0.as_secs_f64())
        }
    }
}

/// A [`ManifoldReport`] as JSON writes it.
#[derive(Serialize, Deserialize)]
struct ManifoldJson {
    name: String,
    state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restarts_in_ms: Option<u64>,
    inputs: Vec<InputReport>,
    start_count: u64,
    generation: Option<u64>,
    last_error: Option<String>,
    consecutive_failures: u32,
    running_for_ms: Option<u64>,
    worker: Option<serde_json::Value>,
}

fn whole_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl From<ManifoldReport> for ManifoldJson {
    fn from(report: ManifoldReport) -> Self {
        let restarts_in_ms = match report.state {
            ManifoldState::Stopped {
                reason: StoppedReason::BackingOff { remaining },
            } => Some(whole_millis(remaining)),
            _ => None,
        };
        ManifoldJson {
            name: report.name,
            state: report.state.as_str().to_owned(),
            restarts_in_ms,
            inputs: report.inputs,
            start_count: report.start_count,
            generation: report.generation,
            last_error: report.last_error,
            consecutive_failures: report.consecutive_failures,
            running_for_ms: report.running_for.map(whole_millis),
            worker: report.worker,
        }
    }
}

impl TryFrom<ManifoldJson> for ManifoldReport {
    type Error = String;

    fn try_from(json: ManifoldJson) -> Result<Self, String> {
        let restarts_in = Duration::from_millis(json.restarts_in_ms.unwrap_or(0));
        let state = ManifoldState::from_str(&json.state, restarts_in)
            .ok_or_else(|| format!("unknown manifold state {:?}", json.state))?;
        Ok(ManifoldReport {
            name: json.name,
            state,
            inputs: json.inputs,
            start_count: json.start_count,
            generation: json.generation,
            last_error: json.last_error,
            consecutive_failures: json.consecutive_failures,
            running_for: json.running_for_ms.map(Duration::from_millis),
            worker: json.worker,
        })
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
        let mut db = manifold(
            "db",
            ManifoldState::Stopped {
                reason: StoppedReason::BackingOff {
                    remaining: Duration::from_millis(1500),
                },
            },
            &[("x", true)],
        );
        db.running_for = Some(Duration::from_millis(250));
        let report = EngineReport {
            state: EngineState::Stopping,
            manifolds: vec![db],
        };
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(json["state"], "stopping");
        assert_eq!(json["manifolds"][0]["state"], "backing_off");
        assert_eq!(json["manifolds"][0]["restarts_in_ms"], 1500);
        assert_eq!(json["manifolds"][0]["running_for_ms"], 250);
        let back: EngineReport = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, report);
    }

    #[test]
    fn every_state_round_trips_as_a_plain_string() {
        let states = [
            ManifoldState::Starting,
            ManifoldState::Started,
            ManifoldState::Stopping,
            ManifoldState::Stopped {
                reason: StoppedReason::WaitingForInputs,
            },
            ManifoldState::Stopped {
                reason: StoppedReason::Exited,
            },
            ManifoldState::Stopped {
                reason: StoppedReason::BackingOff {
                    remaining: Duration::from_millis(7),
                },
            },
            ManifoldState::Stopped {
                reason: StoppedReason::Parked,
            },
            ManifoldState::Stopped {
                reason: StoppedReason::Completed,
            },
            ManifoldState::Stopped {
                reason: StoppedReason::Shutdown,
            },
        ];
        for state in states {
            let report = manifold("m", state, &[]);
            let json = serde_json::to_value(&report).expect("serialises");
            assert_eq!(json["state"], state.as_str());
            let back: ManifoldReport = serde_json::from_value(json).expect("deserialises");
            assert_eq!(back.state, state);
        }
        let mut bad =
            serde_json::to_value(manifold("m", ManifoldState::Started, &[])).expect("json");
        bad["state"] = serde_json::json!("dancing");
        let error = serde_json::from_value::<ManifoldReport>(bad).expect_err("unknown state");
        assert!(
            error
                .to_string()
                .contains("unknown manifold state \"dancing\""),
            "{error}"
        );
    }

    #[test]
    fn display_is_a_table_for_people() {
        let mut api = manifold(
            "api",
            ManifoldState::Stopped {
                reason: StoppedReason::BackingOff {
                    remaining: Duration::from_millis(2_900),
                },
            },
            &[("config", true)],
        );
        api.start_count = 3;
        api.last_error = Some("connection refused".to_owned());
        let mut config = manifold("config", ManifoldState::Started, &[]);
        config.running_for = Some(Duration::from_secs(12));
        let report = EngineReport {
            state: EngineState::Running,
            manifolds: vec![api, config],
        };
        let expected = "\
engine running, 2 manifolds
manifold  state                       starts  running for  last error
api       stopped: restarts in 2.9 s  3       -            connection refused
config    started                     1       12.0 s       -
";
        assert_eq!(report.to_string(), expected);
    }
}
