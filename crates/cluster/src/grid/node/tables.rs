//! Partition tables: applying them, the leader's computation and publication, and the
//! followers' pulls.

use super::*;

impl<K: GridKey, V: GridValue> Inner<K, V> {
    // -----------------------------------------------------------------------------------------
    // Tables
    // -----------------------------------------------------------------------------------------

    /// Accepts `t` if its epoch passes the fence and it supersedes the current table; then
    /// starts the migrations it implies. `Ok(false)`: not newer, ignored.
    pub(super) fn apply_table(self: &Arc<Self>, t: PartitionTable) -> Result<bool, StaleEpoch> {
        if let Err(stale) = self.cluster.fence().check(t.epoch) {
            GridStats::add(&self.stats.stale_tables_rejected, 1);
            tracing::warn!(node = %self.me.id, %stale, version = t.version, "rejected a partition table from a deposed leader");
            return Err(stale);
        }
        if t.partitions() != self.config.partitions {
            tracing::error!(
                node = %self.me.id,
                theirs = t.partitions(),
                ours = self.config.partitions,
                "ignored a partition table with another partition count (mixed configurations?)"
            );
            return Ok(false);
        }
        let mut started = Vec::new();
        {
            let mut r = self.routing.write();
            if r.table.as_ref().is_some_and(|cur| !t.supersedes(cur)) {
                return Ok(false);
            }
            let old = r.table.clone();
            let fresh = old.is_none();
            let plan = plan_migration(old.as_deref(), &t, &self.me.id);
            let grace = Instant::now() + self.config.handoff_grace;
            let mut transfers: HashMap<u32, (Vec<String>, Vec<String>)> = plan
                .pull
                .into_iter()
                .map(|x| (x.partition, (x.sources, x.push_from)))
                .collect();
            let early = std::mem::take(&mut r.early_pushes);
            let mut drop_data = Vec::new();
            for p in 0..t.partitions() {
                let i = p as usize;
                let replica = t.is_replica(p, &self.me.id);
                let next = match (&r.states[i], replica) {
                    (PartState::Held | PartState::Retained { .. }, true) => PartState::Held,
                    (PartState::Migrating(m), true) => PartState::Migrating(m.clone()),
                    (PartState::Absent, true) => {
                        let (sources, push_from) = transfers.remove(&p).unwrap_or_else(|| {
                            let others = t
                                .replicas(p)
                                .iter()
                                .filter(|id| **id != self.me.id)
                                .cloned()
                                .collect();
                            (others, Vec::new())
                        });
                        let mut sources = sources;
                        if fresh {
                            // Without a previous table this node does not know who held the
                            // partition before: after its peers, ask every member (a holder
                            // that lost it keeps it for `handoff_grace`).
                            for m in &t.members {
                                if m.id != self.me.id && !sources.contains(&m.id) {
                                    sources.push(m.id.clone());
                                }
                            }
                        }
                        if !push_from.is_empty() && early.contains(&p) {
                            GridStats::add(&self.stats.migrations_done, 1);
                            PartState::Held
                        } else {
                            let m = Arc::new(Migration {
                                token: self.next_token.fetch_add(1, Ordering::Relaxed),
                                fresh,
                                sources,
                                push_from,
                            });
                            started.push((p, m.clone()));
                            PartState::Migrating(m)
                        }
                    }
                    (PartState::Held, false) => PartState::Retained { until: grace },
                    (PartState::Retained { until }, false) => PartState::Retained { until: *until },
                    (PartState::Migrating(_), false) => {
                        drop_data.push(p);
                        PartState::Absent
                    }
                    (PartState::Absent, false) => PartState::Absent,
                };
                r.states[i] = next;
            }
            if !drop_data.is_empty() {
                let mut store = self.store.lock();
                for p in drop_data {
                    store.drop_partition(p);
                }
            }
            tracing::info!(
                node = %self.me.id,
                version = t.version,
                epoch = t.epoch,
                owned = t.owned_by(&self.me.id),
                backups = t.backed_up_by(&self.me.id),
                receiving = started.len(),
                "applied partition table"
            );
            r.table = Some(Arc::new(t));
        }
        GridStats::add(&self.stats.tables_applied, 1);
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        for (p, m) in started {
            tasks.push(tokio::spawn(self.clone().migrate(p, m)));
        }
        drop(tasks);
        self.update_safe(&self.cluster.state());
        Ok(true)
    }

    pub(super) fn desired_members(
        &self,
        st: &ClusterState,
        leaving: &HashMap<String, NodeInfo>,
    ) -> Vec<NodeInfo> {
        let mut m: Vec<NodeInfo> = st
            .members
            .members
            .iter()
            .map(|m| m.info.clone())
            .filter(|i| leaving.get(&i.id) != Some(i))
            .collect();
        m.sort_by(|a, b| a.id.cmp(&b.id));
        m
    }

    /// Leader: computes the next table from `members` and the current one, applies and
    /// publishes it.
    pub(super) fn publish(
        self: &Arc<Self>,
        members: Vec<NodeInfo>,
        epoch: u64,
        leader: &mut LeaderState,
    ) -> Option<PartitionTable> {
        let current = self.routing.read().table.clone();
        let version = current.as_ref().map_or(0, |t| t.version) + 1;
        let mut t = PartitionTable::compute(
            &members,
            current.as_deref(),
            self.config.partitions,
            self.config.backup_count,
            version,
            epoch,
        );
        t.leaving = leader.leaving.values().cloned().collect();
        t.leaving.sort_by(|a, b| a.id.cmp(&b.id));
        match self.apply_table(t.clone()) {
            Ok(true) => {}
            _ => return None,
        }
        tracing::info!(
            node = %self.me.id,
            version,
            epoch,
            members = ?t.members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            "published a new partition table"
        );
        leader.acked.clear();
        leader.acked.insert(self.me.id.clone(), (epoch, version));
        leader.last_resend = Some(Instant::now());
        self.send_table(&t, &leader.acked);
        Some(t)
    }

    /// Sends `t` to every node of it that has not acknowledged it (in the background).
    pub(super) fn send_table(
        self: &Arc<Self>,
        t: &PartitionTable,
        acked: &HashMap<String, (u64, u64)>,
    ) {
        let t = Arc::new(t.clone());
        for n in t.members.iter().chain(&t.leaving) {
            if acked.get(&n.id) == Some(&(t.epoch, t.version)) || n.id == self.me.id {
                continue;
            }
            let (inner, t, n) = (Arc::downgrade(self), t.clone(), n.clone());
            tokio::spawn(async move {
                let Some(inner) = inner.upgrade() else { return };
                let r: Result<TableAck, _> = inner
                    .call(
                        n.addr,
                        &inner.methods.table,
                        &*t,
                        inner.config.rpc_timeout,
                        false,
                    )
                    .await;
                if r.is_ok() {
                    inner.leader.lock().acked.insert(n.id, (t.epoch, t.version));
                }
            });
        }
    }

    /// One step of the table duties (every 50 ms and on every cluster change).
    pub(super) fn tick(self: &Arc<Self>, st: &ClusterState) {
        let now = Instant::now();
        let table = self.routing.read().table.clone();
        let mut leader = self.leader.lock();
        if st.is_leader {
            leader.pulled_from = None;
            let ids: HashSet<&NodeInfo> = st.members.members.iter().map(|m| &m.info).collect();
            leader.leaving.retain(|_, n| ids.contains(n));
            let desired = self.desired_members(st, &leader.leaving);
            let Some(current) = table else {
                // A new leader without a table first asks the members for theirs (a restart
                // must not reshuffle the cluster), then starts afresh.
                let since = *leader.bootstrap_since.get_or_insert(now);
                let alone = st.members.members.len() <= 1;
                let patience = self.config.table_debounce * if alone { 1 } else { 3 };
                if now - since < patience {
                    let due = leader
                        .last_bootstrap_ask
                        .is_none_or(|t| now - t >= Duration::from_millis(250));
                    if due && !alone {
                        leader.last_bootstrap_ask = Some(now);
                        self.ask_for_tables(st);
                    }
                    return;
                }
                self.publish(desired, st.epoch, &mut leader);
                return;
            };
            leader.bootstrap_since = None;
            let changed = current.members != desired || current.epoch != st.epoch;
            if !changed {
                leader.pending = None;
                if leader
                    .last_resend
                    .is_none_or(|t| now - t >= Duration::from_millis(500))
                {
                    leader.last_resend = Some(now);
                    let acked = leader.acked.clone();
                    self.send_table(&current, &acked);
                }
                return;
            }
            match &leader.pending {
                Some((m, since)) if *m == desired => {
                    if now - *since >= self.config.table_debounce {
                        leader.pending = None;
                        self.publish(desired, st.epoch, &mut leader);
                    }
                }
                _ => leader.pending = Some((desired, now)),
            }
        } else {
            leader.bootstrap_since = None;
            leader.pending = None;
            let (Some(id), Some(addr)) = (st.leader.clone(), st.leader_addr) else {
                return;
            };
            if id == self.me.id {
                return;
            }
            let want = (id.clone(), st.epoch);
            let stale = table.as_ref().is_none_or(|t| t.epoch < st.epoch);
            if leader.pulled_from.as_ref() == Some(&want) && !stale {
                return;
            }
            if leader
                .last_pull
                .is_some_and(|t| now - t < Duration::from_millis(200))
            {
                return;
            }
            leader.last_pull = Some(now);
            let inner = Arc::downgrade(self);
            tokio::spawn(async move {
                let Some(inner) = inner.upgrade() else { return };
                let r: Result<Option<PartitionTable>, _> = inner
                    .call(
                        addr,
                        &inner.methods.table_get,
                        &(),
                        inner.config.rpc_timeout,
                        false,
                    )
                    .await;
                if let Ok(Some(t)) = r {
                    if t.epoch >= want.1 && inner.apply_table(t).is_ok() {
                        inner.leader.lock().pulled_from = Some(want);
                    }
                }
            });
        }
    }

    /// New leader without a table: asks every member for its table and adopts the newest.
    pub(super) fn ask_for_tables(self: &Arc<Self>, st: &ClusterState) {
        for m in st.members.members.iter().filter(|m| !m.is_self) {
            let (inner, addr) = (Arc::downgrade(self), m.info.addr);
            tokio::spawn(async move {
                let Some(inner) = inner.upgrade() else { return };
                let r: Result<Option<PartitionTable>, _> = inner
                    .call(
                        addr,
                        &inner.methods.table_get,
                        &(),
                        inner.config.rpc_timeout,
                        false,
                    )
                    .await;
                if let Ok(Some(t)) = r {
                    let _ = inner.apply_table(t);
                }
            });
        }
    }

    /// Leader: a member hands off. Excludes it at once (no debounce) and publishes.
    pub(super) fn on_leave_request(
        self: &Arc<Self>,
        node: NodeInfo,
    ) -> Result<PartitionTable, RpcError> {
        let st = self.cluster.state();
        if !st.is_leader {
            return Err(RpcError::Remote("not the leader".into()));
        }
        let mut leader = self.leader.lock();
        leader.leaving.insert(node.id.clone(), node.clone());
        let desired = self.desired_members(&st, &leader.leaving);
        if let Some(t) = self.routing.read().table.clone() {
            if t.members == desired && t.epoch == st.epoch && t.leaving.contains(&node) {
                return Ok((*t).clone());
            }
        }
        leader.pending = None;
        self.publish(desired, st.epoch, &mut leader)
            .ok_or_else(|| RpcError::Remote("could not publish a table".into()))
    }
}
