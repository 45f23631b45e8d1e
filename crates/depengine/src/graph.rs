//! Graph searches over manifold ids, kept apart from the engine's state so
//! they can be tested on plain adjacency lists.

use std::collections::HashMap;

/// Index of a node in the engine's node table.
pub(crate) type NodeId = usize;

/// Finds a path from `start` to any node in `targets`, following
/// `dependents_of` (edges from a node to the nodes that depend on it).
///
/// Installing a manifold at `start` whose inputs are `targets` closes a cycle
/// exactly when such a path exists: the input depends, through the path, on
/// the manifold that would depend on it. Returns the cycle in "depends on"
/// order: `start`, the target reached, then back along the path to `start`.
///
/// Runs in time linear in the part of the graph below `start`, so the usual
/// install order (inputs first, nobody depending on the newcomer yet) costs
/// nothing.
pub(crate) fn find_cycle<'a>(
    start: NodeId,
    targets: &[NodeId],
    dependents_of: impl Fn(NodeId) -> &'a [NodeId],
) -> Option<Vec<NodeId>> {
    if targets.contains(&start) {
        return Some(vec![start, start]);
    }
    // How each visited node was reached: node -> the node it depends on.
    let mut reached_from: HashMap<NodeId, NodeId> = HashMap::new();
    let mut stack = vec![start];
    while let Some(node) = stack.pop() {
        for &dependent in dependents_of(node) {
            if dependent == start || reached_from.contains_key(&dependent) {
                continue;
            }
            reached_from.insert(dependent, node);
            if targets.contains(&dependent) {
                let mut cycle = vec![start, dependent];
                let mut current = dependent;
                while let Some(&previous) = reached_from.get(&current) {
                    cycle.push(previous);
                    current = previous;
                }
                return Some(cycle);
            }
            stack.push(dependent);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `edges[i]` lists the dependents of node `i`.
    fn check(edges: &[&[NodeId]], start: NodeId, targets: &[NodeId], expected: Option<&[NodeId]>) {
        let found = find_cycle(start, targets, |node| edges[node]);
        assert_eq!(
            found.as_deref(),
            expected,
            "start {start}, targets {targets:?}"
        );
    }

    #[test]
    fn cycles() {
        // 0 <- 1 <- 2 (1 depends on 0, 2 depends on 1), and 3 alone.
        let chain: &[&[NodeId]] = &[&[1], &[2], &[], &[]];
        check(chain, 0, &[2], Some(&[0, 2, 1, 0]));
        check(chain, 0, &[1], Some(&[0, 1, 0]));
        check(chain, 0, &[3], None);
        check(chain, 2, &[0], None);
        check(chain, 3, &[3], Some(&[3, 3]));
        check(chain, 3, &[], None);
        // A diamond below 0 reaching 4 twice still finds one path.
        let diamond: &[&[NodeId]] = &[&[1, 2], &[3], &[3], &[4], &[]];
        let found = find_cycle(0, &[4], |node| diamond[node]).expect("cycle");
        assert_eq!(found.first(), Some(&0));
        assert_eq!(found.last(), Some(&0));
        assert_eq!(found.len(), 5);
    }
}
