//! Load coalescing: claims at the coordinator, and `get_or_compute_many` (the protocol is
//! described in the grid's module docs).

use super::*;

/// The distinct keys in first-seen order, and for each input position the index of its key.
fn dedup_keys<K: GridKey>(keys: &[K]) -> (Vec<K>, Vec<usize>) {
    let mut unique: Vec<K> = Vec::new();
    let mut slot = Vec::with_capacity(keys.len());
    let mut seen: HashMap<&K, usize> = HashMap::new();
    for k in keys {
        let i = *seen.entry(k).or_insert_with(|| {
            unique.push(k.clone());
            unique.len() - 1
        });
        slot.push(i);
    }
    (unique, slot)
}

/// What phase 1 of coalescing found: values (`out`, by key index), the keys this node
/// claimed (with their coordinator; `None`: nobody coordinates them) and the keys another
/// member claimed (with the coordinator to wait at).
struct Phase1<V> {
    out: Vec<Option<V>>,
    local_hits: u64,
    remote_hits: u64,
    to_compute: Vec<(usize, Option<String>)>,
    to_wait: Vec<(usize, String)>,
}

impl<K: GridKey, V: GridValue> Inner<K, V> {
    // -----------------------------------------------------------------------------------------
    // Load coalescing
    // -----------------------------------------------------------------------------------------

    /// Serves `claim`: per key, its value, or a new claim for the caller, or `Pending` when
    /// another caller's claim is live.
    pub(super) async fn serve_claim(&self, keys: Vec<K>, claimant: String) -> Vec<ClaimAnswer<V>> {
        let values = self.serve_get(keys.clone(), true).await;
        let now = Instant::now();
        let mut claims = self.claims.lock();
        keys.into_iter()
            .zip(values)
            .map(|(k, v)| match v {
                Some(v) => ClaimAnswer::Hit(v),
                None => match claims.get(&k) {
                    Some(c) if c.deadline > now => ClaimAnswer::Pending,
                    _ => {
                        let (done, _) = watch::channel(false);
                        let deadline = now + self.config.claim_timeout;
                        claims.insert(
                            k,
                            ClaimSlot {
                                deadline,
                                done,
                                claimant: claimant.clone(),
                                since: now,
                            },
                        );
                        ClaimAnswer::Claimed
                    }
                },
            })
            .collect()
    }

    /// Serves `wait`: per key, its value once the claimant put it, or `None` when the claim
    /// ends without one (released, expired).
    pub(super) async fn serve_wait(&self, keys: Vec<K>) -> Vec<Option<V>> {
        let waits = keys.into_iter().map(|k| {
            let slot = {
                let claims = self.claims.lock();
                claims.get(&k).map(|c| (c.done.subscribe(), c.deadline))
            };
            async move {
                if let Some((mut rx, deadline)) = slot {
                    let _ = tokio::time::timeout_at(deadline, rx.wait_for(|d| *d)).await;
                }
                self.serve_get(vec![k], false).await.pop().flatten()
            }
        });
        join_all(waits).await
    }

    pub(super) fn serve_release(&self, keys: Vec<K>) {
        let mut claims = self.claims.lock();
        for k in keys {
            if let Some(c) = claims.remove(&k) {
                let _ = c.done.send(true);
            }
        }
    }

    pub(super) async fn get_or_compute_many<F, Fut>(&self, keys: &[K], compute: F) -> Vec<Option<V>>
    where
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Vec<Option<V>>>,
    {
        let (unique_keys, slot) = dedup_keys(keys);
        let unique: &[K] = &unique_keys;
        let table = self.routing.read().table.clone();
        let Phase1 {
            mut out,
            local_hits,
            remote_hits,
            to_compute,
            to_wait,
        } = self.claim_phase(unique, table.as_deref()).await;
        GridStats::add(&self.stats.hits_local, local_hits);
        GridStats::add(&self.stats.hits_remote, remote_hits);
        GridStats::add(&self.stats.misses, to_compute.len() as u64);

        // Phase 2: compute what we claimed while waiting for what others claimed.
        let computing = async {
            if to_compute.is_empty() {
                return Vec::new();
            }
            let ks: Vec<K> = to_compute.iter().map(|(i, _)| unique[*i].clone()).collect();
            GridStats::add(&self.stats.computations, ks.len() as u64);
            let values = compute(ks).await;
            let mut puts = Vec::new();
            let mut release: Vec<(&str, &K)> = Vec::new();
            let mut results = Vec::new();
            for (j, (i, coord)) in to_compute.iter().enumerate() {
                let v = values.get(j).cloned().flatten();
                match &v {
                    Some(v) => puts.push((unique[*i].clone(), v.clone())),
                    None => {
                        if let Some(c) = coord {
                            release.push((c.as_str(), &unique[*i]));
                        }
                    }
                }
                results.push((*i, v));
            }
            self.put_with_ttl(puts).await;
            self.release(table.as_deref(), release).await;
            results
        };
        let waiting = async {
            let Some(table) = &table else {
                return Vec::new();
            };
            let groups = group(to_wait.iter().map(|(i, c)| (*i, c.as_str())));
            let calls = groups.into_iter().map(|(id, idx)| async move {
                let ks: Vec<&K> = idx.iter().map(|i| &unique[*i]).collect();
                let r: Vec<Option<V>> = if id == self.me.id {
                    self.serve_wait(ks.into_iter().cloned().collect()).await
                } else {
                    let timeout = self.config.claim_timeout + self.config.rpc_timeout;
                    match Self::addr_of(table, id) {
                        Some(a) => self
                            .call(a, &self.methods.wait, &KeysReq { keys: ks }, timeout, true)
                            .await
                            .unwrap_or_default(),
                        None => Vec::new(),
                    }
                };
                (idx, r)
            });
            join_all(calls).await
        };
        let (computed, waited) = tokio::join!(computing, waiting);
        for (i, v) in computed {
            out[i] = v;
        }
        let mut leftovers = Vec::new();
        for (idx, vals) in waited {
            for (j, i) in idx.into_iter().enumerate() {
                match vals.get(j).cloned().flatten() {
                    Some(v) => {
                        out[i] = Some(v);
                        GridStats::add(&self.stats.coalesced_waits, 1);
                    }
                    None => leftovers.push(i),
                }
            }
        }
        // Phase 3: the claimant did not deliver in time: compute ourselves.
        if !leftovers.is_empty() {
            GridStats::add(&self.stats.coalesce_fallbacks, leftovers.len() as u64);
            GridStats::add(&self.stats.computations, leftovers.len() as u64);
            let ks: Vec<K> = leftovers.iter().map(|i| unique[*i].clone()).collect();
            let values = compute(ks).await;
            let mut puts = Vec::new();
            for (j, i) in leftovers.iter().enumerate() {
                if let Some(v) = values.get(j).cloned().flatten() {
                    puts.push((unique[*i].clone(), v.clone()));
                    out[*i] = Some(v);
                }
            }
            self.put_with_ttl(puts).await;
        }
        slot.into_iter().map(|i| out[i].clone()).collect()
    }

    /// Phase 1 of coalescing: local hits, then claims at each key's coordinator (its first
    /// reachable replica; this node's own partitions are claimed in-process).
    async fn claim_phase(&self, unique: &[K], table: Option<&PartitionTable>) -> Phase1<V> {
        let n = unique.len();
        let mut out: Vec<Option<V>> = vec![None; n];
        // Phase 1: local hits; claims at each key's coordinator (its first reachable replica;
        // this node's own partitions are claimed in-process).
        let mut local_hits = 0;
        let mut remote_hits = 0;
        // (key index, coordinator: None = uncoordinated)
        let mut to_compute: Vec<(usize, Option<String>)> = Vec::new();
        let mut to_wait: Vec<(usize, String)> = Vec::new();
        if let Some(table) = table {
            let mut todo: Vec<(usize, Vec<String>)> = Vec::new();
            {
                let r = self.routing.read();
                let now = self.now_ms();
                let mut store = self.store.lock();
                for (i, k) in unique.iter().enumerate() {
                    let (_, p) = self.part(k);
                    if !matches!(r.states[p as usize], PartState::Absent) {
                        if let Some(v) = store.get(k, now) {
                            out[i] = Some(v);
                            local_hits += 1;
                            continue;
                        }
                    }
                    todo.push((i, table.replicas(p).to_vec()));
                }
            }
            let mut attempt = vec![0usize; todo.len()];
            let mut active: Vec<usize> = (0..todo.len()).collect();
            while !active.is_empty() {
                let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
                for t in &active {
                    match todo[*t].1.get(attempt[*t]) {
                        Some(c) => match groups.iter_mut().find(|(g, _)| *g == c.as_str()) {
                            Some((_, v)) => v.push(*t),
                            None => groups.push((c.as_str(), vec![*t])),
                        },
                        None => to_compute.push((todo[*t].0, None)),
                    }
                }
                let calls = groups.into_iter().map(|(id, ts)| {
                    let ks: Vec<&K> = ts.iter().map(|t| &unique[todo[*t].0]).collect();
                    async move {
                        let r: Result<Vec<ClaimAnswer<V>>, RpcError> = if id == self.me.id {
                            Ok(self
                                .serve_claim(ks.into_iter().cloned().collect(), self.me.id.clone())
                                .await)
                        } else {
                            match Self::addr_of(table, id) {
                                Some(a) => {
                                    let req = ClaimReq {
                                        keys: ks,
                                        claimant: self.me.id.clone(),
                                    };
                                    self.call(
                                        a,
                                        &self.methods.claim,
                                        &req,
                                        self.config.rpc_timeout,
                                        true,
                                    )
                                    .await
                                }
                                None => Err(RpcError::Unavailable(id.to_string())),
                            }
                        };
                        (id, ts, r)
                    }
                });
                let mut next = Vec::new();
                for (id, ts, r) in join_all(calls).await {
                    match r {
                        Ok(answers) if answers.len() == ts.len() => {
                            for (t, a) in ts.into_iter().zip(answers) {
                                let i = todo[t].0;
                                match a {
                                    ClaimAnswer::Hit(v) => {
                                        out[i] = Some(v);
                                        remote_hits += 1;
                                    }
                                    ClaimAnswer::Claimed => to_compute.push((i, Some(id.into()))),
                                    ClaimAnswer::Pending => to_wait.push((i, id.into())),
                                }
                            }
                        }
                        _ => {
                            for t in ts {
                                attempt[t] += 1;
                                next.push(t);
                            }
                        }
                    }
                }
                active = next;
            }
        } else {
            to_compute.extend((0..n).map(|i| (i, None)));
        }
        Phase1 {
            out,
            local_hits,
            remote_hits,
            to_compute,
            to_wait,
        }
    }

    pub(super) async fn claim_many(&self, keys: &[K]) -> Vec<ClaimOutcome<V>> {
        // A key given twice is claimed once; both positions get its outcome.
        let (unique, slot) = dedup_keys(keys);
        let table = self.routing.read().table.clone();
        let p = self.claim_phase(&unique, table.as_deref()).await;
        GridStats::add(&self.stats.hits_local, p.local_hits);
        GridStats::add(&self.stats.hits_remote, p.remote_hits);
        let mut outcomes: Vec<ClaimOutcome<V>> = p
            .out
            .into_iter()
            .map(|v| v.map_or(ClaimOutcome::Claimed, ClaimOutcome::Found))
            .collect();
        for (i, _) in p.to_wait {
            outcomes[i] = ClaimOutcome::Pending;
        }
        slot.into_iter().map(|i| outcomes[i].clone()).collect()
    }

    pub(super) async fn put_with_ttl(&self, entries: Vec<(K, V)>) {
        if entries.is_empty() {
            return;
        }
        let now = self.now_ms();
        let entries = entries
            .into_iter()
            .map(|(k, v)| {
                let exp = v.ttl().map(|t| now.saturating_add(t.as_millis() as u64));
                (k, v, exp)
            })
            .collect();
        self.put_many(entries).await;
    }

    pub(super) async fn release(&self, table: Option<&PartitionTable>, keys: Vec<(&str, &K)>) {
        let Some(table) = table else { return };
        let mut groups: Vec<(&str, Vec<&K>)> = Vec::new();
        for (c, k) in keys {
            match groups.iter_mut().find(|(g, _)| *g == c) {
                Some((_, v)) => v.push(k),
                None => groups.push((c, vec![k])),
            }
        }
        let calls = groups.into_iter().map(|(id, ks)| async move {
            if id == self.me.id {
                self.serve_release(ks.into_iter().cloned().collect());
            } else if let Some(a) = Self::addr_of(table, id) {
                let _: Result<(), _> = self
                    .call(
                        a,
                        &self.methods.release,
                        &KeysReq { keys: ks },
                        self.config.rpc_timeout,
                        false,
                    )
                    .await;
            }
        });
        join_all(calls).await;
    }
}
