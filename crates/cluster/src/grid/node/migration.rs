//! Receiving partitions (pulls and leave pushes) and the graceful leave.

use super::*;

impl<K: GridKey, V: GridValue> Inner<K, V> {
    // -----------------------------------------------------------------------------------------
    // Migration
    // -----------------------------------------------------------------------------------------

    pub(super) fn migrating(&self, p: u32, token: u64) -> bool {
        matches!(&self.routing.read().states[p as usize], PartState::Migrating(m) if m.token == token)
    }

    pub(super) fn finish(&self, p: u32, token: u64, ok: bool) {
        let mut r = self.routing.write();
        if matches!(&r.states[p as usize], PartState::Migrating(m) if m.token == token) {
            r.states[p as usize] = PartState::Held;
            drop(r);
            if ok {
                GridStats::add(&self.stats.migrations_done, 1);
            } else {
                GridStats::add(&self.stats.migrations_failed, 1);
            }
        }
    }

    pub(super) async fn migrate(self: Arc<Self>, p: u32, m: Arc<Migration>) {
        let mut sources = m.sources.clone();
        if !m.push_from.is_empty() {
            // Await the leaving member's push; pull from it if none came in time.
            let deadline = Instant::now() + self.config.leave_timeout;
            while Instant::now() < deadline {
                if !self.migrating(p, m.token) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sources.extend(m.push_from.iter().cloned());
        }
        let mut answered = false;
        for round in 0..8u32 {
            // Sources that failed, or that are themselves receiving it: worth asking again.
            let mut retry = false;
            {
                let Ok(_permit) = self.migrations.acquire().await else {
                    return;
                };
                for src in &sources {
                    if !self.migrating(p, m.token) {
                        return;
                    }
                    let addr = self
                        .routing
                        .read()
                        .table
                        .as_ref()
                        .and_then(|t| Self::addr_of(t, src));
                    let Some(addr) = addr else {
                        retry = true;
                        continue;
                    };
                    match self.pull(addr, p, m.token).await {
                        Ok(Pulled::Done) => {
                            self.finish(p, m.token, true);
                            return;
                        }
                        Ok(Pulled::NotHeld { receiving }) => {
                            answered = true;
                            retry |= receiving;
                        }
                        Err(e) => {
                            retry = true;
                            tracing::debug!(node = %self.me.id, partition = p, from = %src, error = %e, "pull failed");
                        }
                    }
                }
            }
            if !retry {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 << round).min(Duration::from_secs(1)))
                .await;
        }
        // Nobody holds it: a new cluster (nothing to receive), or every holder died.
        self.finish(p, m.token, sources.is_empty() || answered);
    }

    /// Pulls partition `p` from `addr` chunk by chunk.
    pub(super) async fn pull(
        &self,
        addr: SocketAddr,
        p: u32,
        token: u64,
    ) -> Result<Pulled, RpcError> {
        let mut cursor: Option<Cursor> = None;
        loop {
            let req = PullReq {
                partition: p,
                cursor,
                max_entries: self.config.migration_chunk_entries,
                max_bytes: self.config.migration_chunk_bytes,
            };
            let resp: PullResp<WireEntry<K, V>> = self
                .call(
                    addr,
                    &self.methods.pull,
                    &req,
                    self.config.transfer_timeout,
                    false,
                )
                .await?;
            if !resp.held {
                return Ok(Pulled::NotHeld {
                    receiving: resp.receiving,
                });
            }
            if !self.migrating(p, token) {
                return Ok(Pulled::Done);
            }
            self.receive(resp.entries);
            match resp.next {
                Some(c) => cursor = Some(c),
                None => return Ok(Pulled::Done),
            }
        }
    }

    pub(super) fn receive(&self, entries: Vec<WireEntry<K, V>>) {
        let bytes: usize = entries
            .iter()
            .map(|(k, v, _)| k.size_bytes() + v.size_bytes() + ENTRY_OVERHEAD)
            .sum();
        GridStats::add(&self.stats.migration_entries, entries.len() as u64);
        GridStats::add(&self.stats.migration_bytes, bytes as u64);
        // Entries written since the table changed are newer than migrated ones: keep them.
        self.store_local(entries, true);
    }

    pub(super) fn serve_pull(&self, req: PullReq) -> PullResp<WireEntry<K, V>> {
        let r = self.routing.read();
        let state = r.states.get(req.partition as usize);
        if !state.is_some_and(PartState::serves_locally) {
            // Receiving from a previous holder (not merely from its peers, as new as itself).
            let receiving = matches!(state, Some(PartState::Migrating(m)) if !m.fresh || !m.push_from.is_empty());
            return PullResp {
                held: false,
                receiving,
                entries: Vec::new(),
                next: None,
            };
        }
        let (entries, next) = self.store.lock().partition_chunk(
            req.partition,
            req.cursor,
            req.max_entries.min(self.config.migration_chunk_entries),
            req.max_bytes.min(self.config.migration_chunk_bytes),
            self.now_ms(),
        );
        PullResp {
            held: true,
            receiving: false,
            entries,
            next,
        }
    }

    pub(super) fn serve_push(&self, req: PushReq<WireEntry<K, V>>) {
        if req.partition >= self.config.partitions {
            return;
        }
        self.receive(req.entries);
        if req.done {
            let mut r = self.routing.write();
            match &r.states[req.partition as usize] {
                PartState::Migrating(_) => {
                    r.states[req.partition as usize] = PartState::Held;
                    GridStats::add(&self.stats.migrations_done, 1);
                }
                PartState::Absent => {
                    r.early_pushes.insert(req.partition);
                }
                _ => {}
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Leave
    // -----------------------------------------------------------------------------------------

    pub(super) async fn leave(self: Arc<Self>) -> LeaveReport {
        let started = Instant::now();
        let deadline = started + self.config.leave_timeout;
        self.leaving.store(true, Ordering::SeqCst);
        let mut report = LeaveReport::default();
        let Some(current) = self.routing.read().table.clone() else {
            report.completed = true;
            report.elapsed = started.elapsed();
            return report;
        };
        // 1. The leader publishes a table without us (a few tries, within half the budget).
        let ask_until = started + self.config.leave_timeout / 2;
        let mut next: Option<PartitionTable> = None;
        while next.is_none() && Instant::now() < ask_until {
            let st = self.cluster.state();
            if st.is_leader {
                next = self.on_leave_request(self.me.clone()).ok();
            } else if let Some(addr) = st.leader_addr {
                let req = LeaveReq {
                    node: self.me.clone(),
                };
                if let Ok(t) = self
                    .call::<_, PartitionTable>(
                        addr,
                        &self.methods.leave,
                        &req,
                        self.config.rpc_timeout,
                        false,
                    )
                    .await
                {
                    let _ = self.apply_table(t.clone());
                    next = Some(t);
                }
            }
            if next.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        report.leader_acknowledged = next.is_some();
        // Without the leader, push along the table it will compute once we are gone.
        let next = match next {
            Some(t) => t,
            None => {
                let st = self.cluster.state();
                let members: Vec<NodeInfo> = st
                    .members
                    .members
                    .iter()
                    .map(|m| m.info.clone())
                    .filter(|i| i.id != self.me.id)
                    .collect();
                let mut t = PartitionTable::compute(
                    &members,
                    Some(&current),
                    self.config.partitions,
                    self.config.backup_count,
                    current.version + 1,
                    current.epoch,
                );
                t.leaving = vec![self.me.clone()];
                t
            }
        };
        // 2. Push what only we hold.
        let pushes = plan_leave(&current, &next, &self.me.id);
        report.partitions_pushed = pushes.len();
        let entries_pushed = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        let limit = Arc::new(Semaphore::new(self.config.migration_parallelism));
        let work = join_all(pushes.iter().map(|push| {
            let (limit, next, entries_pushed, failed) =
                (limit.clone(), &next, &entries_pushed, &failed);
            let this = &self;
            async move {
                let Ok(_permit) = limit.acquire().await else {
                    return;
                };
                let targets: Vec<SocketAddr> = push
                    .targets
                    .iter()
                    .filter_map(|id| Self::addr_of(next, id))
                    .collect();
                if targets.len() < push.targets.len() {
                    failed.store(true, Ordering::Relaxed);
                }
                let mut cursor = None;
                loop {
                    let (entries, more) = this.store.lock().partition_chunk(
                        push.partition,
                        cursor,
                        this.config.migration_chunk_entries,
                        this.config.migration_chunk_bytes,
                        this.now_ms(),
                    );
                    let bytes: usize = entries
                        .iter()
                        .map(|(k, v, _)| k.size_bytes() + v.size_bytes() + ENTRY_OVERHEAD)
                        .sum();
                    let req = PushReq {
                        partition: push.partition,
                        entries,
                        done: more.is_none(),
                    };
                    let sends = targets.iter().map(|a| {
                        this.call::<_, ()>(
                            *a,
                            &this.methods.push,
                            &req,
                            this.config.transfer_timeout,
                            false,
                        )
                    });
                    let ok = join_all(sends).await.iter().filter(|r| r.is_ok()).count();
                    if ok < targets.len() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    entries_pushed.fetch_add((req.entries.len() * ok) as u64, Ordering::Relaxed);
                    GridStats::add(&this.stats.pushed_bytes, (bytes * ok) as u64);
                    match more {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
            }
        }));
        report.completed = tokio::time::timeout_at(deadline, work).await.is_ok()
            && !failed.load(Ordering::Relaxed);
        report.entries_pushed = entries_pushed.load(Ordering::Relaxed);
        report.elapsed = started.elapsed();
        tracing::info!(
            node = %self.me.id,
            pushed = report.partitions_pushed,
            entries = report.entries_pushed,
            completed = report.completed,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "grid hand-off finished"
        );
        report
    }
}
