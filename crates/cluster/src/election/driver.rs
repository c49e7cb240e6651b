//! The async driver: runs an [`Elector`] against a [`LeaseBackend`] on tokio time.

use std::future::Future;
use std::time::{Instant, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::backend::LeaseBackend;
use super::config::ElectionConfig;
use super::elector::{Action, Elector, Leadership};
use super::error::LeaseError;

/// Starts an elector for `identity` on `backend` as a tokio task (call within a runtime).
///
/// Fails only if `config` does not validate or `identity` is empty. Retry jitter is seeded
/// from the identity; use [`spawn_elector_with`] to choose the seed.
pub fn spawn_elector<B>(
    backend: B,
    identity: impl Into<String>,
    config: ElectionConfig,
) -> Result<ElectorHandle, LeaseError>
where
    B: LeaseBackend + 'static,
{
    Ok(spawn_elector_with(backend, Elector::new(identity, config)?))
}

/// Starts a prepared elector (e.g. [`Elector::with_seed`]) on `backend` as a tokio task.
///
/// The task uses tokio's clock (`tokio::time::Instant`, so paused test time works), bounds
/// every backend call by [`Elector::io_deadline`], and publishes [`Leadership`] whenever it
/// changes, including the moment leadership lapses at the renew deadline.
pub fn spawn_elector_with<B>(backend: B, elector: Elector) -> ElectorHandle
where
    B: LeaseBackend + 'static,
{
    let now = mono_now();
    let identity = elector.identity().to_owned();
    let (tx, rx) = watch::channel(elector.leadership(now));
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(backend, elector, tx, stop_rx));
    ElectorHandle {
        identity,
        leadership: rx,
        stop: Some(stop_tx),
        task: Some(task),
    }
}

/// Control of a running elector task.
///
/// Dropping the handle also stops the task: it steps down and releases the lease in the
/// background (best effort: not if the runtime shuts down first). Prefer
/// [`shutdown`](Self::shutdown), which waits for the release.
#[derive(Debug)]
pub struct ElectorHandle {
    identity: String,
    leadership: watch::Receiver<Leadership>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ElectorHandle {
    /// The elector's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// A receiver of leadership changes. After the elector stops, the last value has
    /// `is_leader == false` and `changed()` returns an error.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// The current leadership value.
    pub fn current(&self) -> Leadership {
        self.leadership.borrow().clone()
    }

    /// Stops being leader at once, releases the lease if held (so a standby takes over at its
    /// next poll instead of after `lease_duration`), and waits for the task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(identity = %self.identity, error = %e, "elector task failed");
            }
        }
    }
}

impl Drop for ElectorHandle {
    fn drop(&mut self) {
        // Dropping the sender wakes the task, which releases and ends on its own.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn mono_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn call<T>(
    deadline: Instant,
    fut: impl Future<Output = Result<T, LeaseError>>,
) -> Result<T, LeaseError> {
    let started = mono_now();
    match tokio::time::timeout_at(deadline.into(), fut).await {
        Ok(result) => result,
        Err(_) => Err(LeaseError::Timeout(
            mono_now().saturating_duration_since(started),
        )),
    }
}

async fn run<B: LeaseBackend>(
    backend: B,
    mut elector: Elector,
    tx: watch::Sender<Leadership>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut stopping = false;
    loop {
        // `Err(Empty)` means no request yet; a sent value or a dropped handle means stop.
        if !stopping && !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            stopping = true;
            elector.shutdown();
        }
        let now = mono_now();
        let action = elector.poll(now, SystemTime::now());
        publish(&tx, elector.leadership(now), elector.identity());
        match action {
            Action::Stopped => break,
            Action::SleepUntil(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = &mut stop, if !stopping => {
                        stopping = true;
                        elector.shutdown();
                    }
                }
            }
            Action::Read => {
                let result = call(elector.io_deadline(now), backend.get()).await;
                elector.on_read(mono_now(), result);
            }
            Action::Create(record) => {
                let result = call(elector.io_deadline(now), backend.create(record)).await;
                elector.on_write(mono_now(), result);
            }
            Action::Update { record, expected } => {
                let result =
                    call(elector.io_deadline(now), backend.update(record, &expected)).await;
                elector.on_write(mono_now(), result);
            }
        }
    }
    publish(&tx, elector.leadership(mono_now()), elector.identity());
}

fn publish(tx: &watch::Sender<Leadership>, next: Leadership, identity: &str) {
    tx.send_if_modified(|current| {
        if *current == next {
            return false;
        }
        if current.leader != next.leader || current.epoch != next.epoch {
            tracing::info!(
                identity,
                leader = next.leader.as_deref().unwrap_or("<none>"),
                epoch = next.epoch,
                is_leader = next.is_leader,
                "lease leader changed"
            );
        }
        *current = next;
        true
    });
}
