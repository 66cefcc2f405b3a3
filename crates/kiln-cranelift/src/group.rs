//! Which definitions of a finalize batch become one kiln unit, and in which order the units are
//! linked.
//!
//! One unit per definition is what makes freeing one function cheap, and kiln binds a new unit
//! to units already linked. So definitions are linked one by one, each after what it refers to.
//! Definitions that refer to each other (mutual recursion, a function and a table that points
//! back at it) cannot come one after the other: each strongly connected component of the
//! batch's reference graph becomes one unit. Components come out of Tarjan's algorithm with
//! every component after the ones it refers to, which is the link order.

/// The units of a batch of `n` definitions, in link order: `refs[i]` lists the definitions of
/// the batch that definition `i` refers to (itself included or not).
pub(crate) fn link_order(refs: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: u32 = u32::MAX;
    let n = refs.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut next = 0u32;
    let mut groups = Vec::new();
    // Explicit call stack of (node, next edge to look at): batches may hold 100,000 definitions
    // in one chain, too deep for recursion.
    let mut calls: Vec<(usize, usize)> = Vec::new();
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        calls.push((root, 0));
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut edge)) = calls.last_mut() {
            if let Some(&w) = refs[v].get(*edge) {
                *edge += 1;
                if index[w] == UNSEEN {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut group = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    group.push(w);
                    if w == v {
                        break;
                    }
                }
                // Definition order inside a unit, so that its layout follows the source.
                group.sort_unstable();
                groups.push(group);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::link_order;

    #[test]
    fn chains_come_dependencies_first() {
        // 0 -> 1 -> 2
        let g = link_order(&[vec![1], vec![2], vec![]]);
        assert_eq!(g, vec![vec![2], vec![1], vec![0]]);
    }

    #[test]
    fn cycles_share_a_unit_and_self_references_do_not_merge() {
        // 0 <-> 1, 2 -> 0, 3 -> 3
        let g = link_order(&[vec![1], vec![0], vec![0], vec![3]]);
        assert_eq!(g, vec![vec![0, 1], vec![2], vec![3]]);
    }

    #[test]
    fn a_long_chain_does_not_recurse() {
        let n = 200_000;
        let refs: Vec<Vec<usize>> = (0..n)
            .map(|i| if i + 1 < n { vec![i + 1] } else { vec![] })
            .collect();
        let g = link_order(&refs);
        assert_eq!(g.len(), n);
        assert_eq!(g[0], vec![n - 1]);
    }
}
