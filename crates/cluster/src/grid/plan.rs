//! Migration planning: which partitions a node must receive when the table changes (and from
//! whom), which it releases, and which it must push when it leaves. Pure functions of tables.

use super::table::PartitionTable;

/// A partition to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The partition.
    pub partition: u32,
    /// Whom to pull it from, in order: the previous owner, the previous backups (those still
    /// members), then the other current replicas (they may have it already). Reads of the
    /// partition fall through to these while it migrates.
    pub sources: Vec<String>,
    /// Leaving members that held it when no live previous holder did: they push it.
    pub push_from: Vec<String>,
}

/// What a node does when its table changes from `old` to `new`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationPlan {
    /// Partitions it now holds and did not hold.
    pub pull: Vec<Transfer>,
    /// Partitions it held and no longer holds (kept for a grace period, serving stragglers and
    /// pullers, then dropped).
    pub released: Vec<u32>,
}

/// A partition a leaving node must push, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The partition.
    pub partition: u32,
    /// Its replicas in the next table.
    pub targets: Vec<String>,
}

/// The plan of node `me` for the change `old` → `new` (`old` is `None` for a node that had no
/// table yet: everything it holds in `new` is to be received, from the other replicas).
pub fn plan_migration(
    old: Option<&PartitionTable>,
    new: &PartitionTable,
    me: &str,
) -> MigrationPlan {
    let mut plan = MigrationPlan::default();
    for p in 0..new.partitions() {
        let had = old.is_some_and(|o| o.is_replica(p, me));
        if new.is_replica(p, me) {
            if had {
                continue;
            }
            let previous: &[String] = old.map_or(&[], |o| o.replicas(p));
            let mut sources: Vec<String> = previous
                .iter()
                .filter(|id| *id != me && new.is_member(id))
                .cloned()
                .collect();
            let push_from = if sources.is_empty() {
                previous
                    .iter()
                    .filter(|id| new.leaving.iter().any(|l| &l.id == *id))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            for id in new.replicas(p) {
                if id != me && !sources.contains(id) {
                    sources.push(id.clone());
                }
            }
            plan.pull.push(Transfer {
                partition: p,
                sources,
                push_from,
            });
        } else if had {
            plan.released.push(p);
        }
    }
    plan
}

/// What leaving node `me` pushes when the table goes from `current` (with it) to `next`
/// (without it): every partition it holds that no other member of `next` held in `current` —
/// its only live copy. Partitions with a surviving replica are re-replicated by pulls from it.
pub fn plan_leave(current: &PartitionTable, next: &PartitionTable, me: &str) -> Vec<Push> {
    (0..current.partitions().min(next.partitions()))
        .filter(|p| current.is_replica(*p, me))
        .filter(|p| {
            !current
                .replicas(*p)
                .iter()
                .any(|id| id != me && next.is_member(id))
        })
        .map(|p| Push {
            partition: p,
            targets: next.replicas(p).to_vec(),
        })
        .filter(|push| !push.targets.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeInfo;

    fn nodes(ids: &[&str]) -> Vec<NodeInfo> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                NodeInfo::new(id.to_string(), ([127, 0, 0, 1], 7000 + i as u16).into(), 1)
            })
            .collect()
    }

    fn table(ids: &[&str], prev: Option<&PartitionTable>, backups: u32) -> PartitionTable {
        PartitionTable::compute(
            &nodes(ids),
            prev,
            271,
            backups,
            prev.map_or(1, |p| p.version + 1),
            0,
        )
    }

    /// Rule: a joining node pulls exactly the partitions it now holds, from the previous owner
    /// first, then a previous backup; the others pull only the backups they newly hold.
    #[test]
    fn a_join_pulls_from_the_previous_owner_then_a_backup() {
        let old = table(&["a", "b", "c"], None, 1);
        let new = table(&["a", "b", "c", "d"], Some(&old), 1);
        let plan = plan_migration(Some(&old), &new, "d");
        let held: Vec<u32> = (0..271).filter(|p| new.is_replica(*p, "d")).collect();
        assert_eq!(
            plan.pull.iter().map(|t| t.partition).collect::<Vec<_>>(),
            held
        );
        for t in &plan.pull {
            assert_eq!(
                &t.sources[..2],
                old.replicas(t.partition),
                "previous owner, then backup"
            );
            assert!(t.push_from.is_empty());
        }
        assert!(plan.released.is_empty());
        // An old node releases what it lost and pulls only what it newly holds.
        for me in ["a", "b", "c"] {
            let plan = plan_migration(Some(&old), &new, me);
            for p in &plan.released {
                assert!(old.is_replica(*p, me) && !new.is_replica(*p, me));
            }
            for t in &plan.pull {
                assert!(!old.is_replica(t.partition, me));
            }
        }
    }

    /// Rule: when a member dies, the surviving replica is the source; nothing is pushed.
    #[test]
    fn a_dead_members_partitions_come_from_the_survivors() {
        let old = table(&["a", "b", "c"], None, 1);
        let new = table(&["a", "b"], Some(&old), 1);
        for me in ["a", "b"] {
            for t in plan_migration(Some(&old), &new, me).pull {
                assert!(old.is_replica(t.partition, "c"));
                let survivor: Vec<&String> = old
                    .replicas(t.partition)
                    .iter()
                    .filter(|x| *x != "c")
                    .collect();
                assert_eq!(t.sources.first(), survivor.first().copied());
            }
        }
    }

    /// Rule: a leaving node pushes only what it alone holds; receivers then await its push.
    #[test]
    fn leave_pushes_only_sole_copies() {
        let old = table(&["a", "b", "c"], None, 1);
        let mut next = table(&["a", "b"], Some(&old), 1);
        // With a backup everywhere, nothing is only on "c".
        assert!(plan_leave(&old, &next, "c").is_empty());
        // Without backups, all of c's partitions are pushed to their next owners.
        let old0 = table(&["a", "b", "c"], None, 0);
        let mut next0 = table(&["a", "b"], Some(&old0), 0);
        next0.leaving = nodes(&["c"]);
        let pushes = plan_leave(&old0, &next0, "c");
        assert_eq!(pushes.len(), old0.owned_by("c"));
        for push in &pushes {
            assert_eq!(push.targets, next0.replicas(push.partition));
        }
        // ... and the receivers expect the push from "c".
        for me in ["a", "b"] {
            for t in plan_migration(Some(&old0), &next0, me).pull {
                assert!(pushes.iter().any(|p| p.partition == t.partition));
                assert_eq!(t.push_from, vec!["c".to_string()]);
            }
        }
        // A fresh node (no old table) pulls from the other current replicas.
        next.leaving.clear();
        let plan = plan_migration(None, &next, "a");
        assert_eq!(plan.pull.len(), next.owned_by("a") + next.backed_up_by("a"));
        for t in plan.pull {
            assert_eq!(t.sources.len(), 1);
        }
    }
}
