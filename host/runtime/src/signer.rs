//! The batch signer a host's runs share. Each sealed run submits its bundle id and waits; ids
//! that queue while a signature is being computed are signed together with one ed25519
//! signature over their Merkle root (group commit, [`HostKey::sign_batch`]), so a busy host
//! pays one signature per batch instead of one per run, and each bundle still verifies alone.
//!
//! A run that finds the signer idle and nothing queued signs at once, in its own task: a lone
//! run waits for nothing and wakes nobody. Only what queues behind a signature goes to the
//! signer's thread, which wakes once per batch. The wait is an async one on a channel the
//! thread answers, so it never blocks a runtime's thread, current-thread runtimes included.

use guild_replay::{BundleSignature, Digest, HostKey};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Default most bundle ids one signature covers. The inclusion path of each grows with its
/// logarithm: 10 hashes (~670 bytes of the signature document) at 1024.
pub const SIGN_BATCH_LEAVES_MAX_DEFAULT: usize = 1024;

/// Default time, in microseconds, the signer's thread waits for more ids after the first one
/// that queued before it signs: none, so batching adds no latency (a batch is what queued while
/// the previous signature was computed).
pub const SIGN_BATCH_WAIT_US_DEFAULT: u64 = 0;

/// Largest `wait_us` accepted, in microseconds: a run's bundle never waits longer than this
/// (plus two signatures) to be signed.
pub const SIGN_BATCH_WAIT_US_MAX: u64 = 10_000;

/// Bounds on a signing batch; the daemon's `[signing]` config section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignBatchLimits {
    /// Most bundle ids one signature covers, at least 1; more waiting are the next batch's.
    /// Default [`SIGN_BATCH_LEAVES_MAX_DEFAULT`].
    pub leaves_max: usize,
    /// Microseconds the signer waits for a batch to fill once an id has queued behind a
    /// signature, clamped to [`SIGN_BATCH_WAIT_US_MAX`]. Default [`SIGN_BATCH_WAIT_US_DEFAULT`]
    /// (0: never waits).
    pub wait_us: u64,
}

impl Default for SignBatchLimits {
    fn default() -> Self {
        Self { leaves_max: SIGN_BATCH_LEAVES_MAX_DEFAULT, wait_us: SIGN_BATCH_WAIT_US_DEFAULT }
    }
}

/// The signer stopped before it answered (its thread panicked): the bundle is left unsigned.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the bundle signer stopped before signing bundle {0}; restart the host")]
pub struct SignerStopped(pub Digest);

/// Signs the bundles of a host's runs, batching those sealed at about the same moment. Shared
/// by every run of a host ([`crate::RecordingConfig::batched`]); its thread ends when it is
/// dropped, after signing what is queued.
pub struct BatchSigner {
    key: Arc<HostKey>,
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the thread has something to do: an id queued, a signature ended with ids
    /// queued, a batch filled while it lingers, the signer dropped.
    ready: Condvar,
    limits: SignBatchLimits,
}

/// What the signer's thread is asleep for, so that a submission wakes it only when that
/// changes: once per batch, not once per run.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Asleep {
    /// Awake (or already woken).
    #[default]
    No,
    /// For an id to queue, or the signature in progress to end.
    ForWork,
    /// For the batch to fill, during `wait_us`.
    ForFullBatch,
}

/// At most one submission per run being sealed: bounded by how many runs the host runs at once.
#[derive(Default)]
struct Queue {
    pending: Vec<Submission>,
    /// A signature is being computed, by a run or by the thread.
    signing: bool,
    /// What the thread waits on `ready` for.
    asleep: Asleep,
    /// The signer was dropped, or its thread ended: nothing more will be signed.
    closed: bool,
}

impl Queue {
    /// Wake the thread if it sleeps for what is now there (under the lock).
    fn wake_if_due(&mut self, shared: &Shared) {
        let due = match self.asleep {
            Asleep::No => false,
            Asleep::ForWork => !self.signing && !self.pending.is_empty(),
            Asleep::ForFullBatch => self.pending.len() >= shared.limits.leaves_max,
        };
        if due {
            self.asleep = Asleep::No;
            shared.ready.notify_one();
        }
    }
}

struct Submission {
    id: Digest,
    reply: oneshot::Sender<BundleSignature>,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

impl BatchSigner {
    /// A signer with `key` and its thread.
    ///
    /// # Errors
    /// The operating system's error when the thread cannot be started.
    pub fn start(key: Arc<HostKey>, limits: SignBatchLimits) -> std::io::Result<Self> {
        let limits = SignBatchLimits {
            leaves_max: limits.leaves_max.max(1),
            wait_us: limits.wait_us.min(SIGN_BATCH_WAIT_US_MAX),
        };
        let shared = Arc::new(Shared { queue: Mutex::new(Queue::default()), ready: Condvar::new(), limits });
        let (thread_shared, thread_key) = (shared.clone(), key.clone());
        std::thread::Builder::new().name("guild-signer".into()).spawn(move || serve(&thread_shared, &thread_key))?;
        Ok(Self { key, shared })
    }

    /// The signature document for bundle `id`: signed at once and alone when nothing else is
    /// being signed, else with whatever queued behind the signature in progress.
    ///
    /// # Errors
    /// [`SignerStopped`] when the signer's thread is gone.
    pub async fn sign(&self, id: Digest) -> Result<BundleSignature, SignerStopped> {
        let reply = {
            let mut queue = lock(&self.shared.queue);
            if queue.closed {
                return Err(SignerStopped(id));
            }
            if !queue.signing && queue.pending.is_empty() {
                queue.signing = true;
                None
            } else {
                let (reply, answer) = oneshot::channel();
                queue.pending.push(Submission { id, reply });
                queue.wake_if_due(&self.shared);
                Some(answer)
            }
        };
        let Some(answer) = reply else {
            let signature = self.key.sign(&id);
            let mut queue = lock(&self.shared.queue);
            queue.signing = false;
            queue.wake_if_due(&self.shared);
            return Ok(signature);
        };
        answer.await.map_err(|_| SignerStopped(id))
    }
}

impl Drop for BatchSigner {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_one();
    }
}

/// Closes the queue when the signer's thread ends, however it ends: a run waiting, or one that
/// comes later, is told the signer stopped instead of waiting for ever.
struct Closing<'a>(&'a Shared);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        let mut queue = lock(&self.0.queue);
        queue.closed = true;
        queue.signing = false;
        // Dropping their reply channels tells the waiting runs.
        queue.pending.clear();
    }
}

/// The signer's thread: sign each batch that queued, one signature each, until dropped.
fn serve(shared: &Shared, key: &HostKey) {
    let _closing = Closing(shared);
    let limits = shared.limits;
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            while queue.signing || queue.pending.is_empty() {
                if queue.closed && queue.pending.is_empty() {
                    return;
                }
                queue.asleep = Asleep::ForWork;
                queue = shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
                queue.asleep = Asleep::No;
            }
            if limits.wait_us > 0 {
                let deadline = Instant::now() + Duration::from_micros(limits.wait_us);
                while queue.pending.len() < limits.leaves_max && !queue.closed {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
                    queue.asleep = Asleep::ForFullBatch;
                    queue = shared.ready.wait_timeout(queue, left).unwrap_or_else(|p| p.into_inner()).0;
                    queue.asleep = Asleep::No;
                }
            }
            queue.signing = true;
            let count = queue.pending.len().min(limits.leaves_max);
            queue.pending.drain(..count).collect::<Vec<_>>()
        };
        let ids: Vec<Digest> = batch.iter().map(|s| s.id).collect();
        for (submission, signature) in batch.into_iter().zip(key.sign_batch(&ids)) {
            // A run dropped while waiting (cancelled) no longer wants its signature.
            let _ = submission.reply.send(signature);
        }
        lock(&shared.queue).signing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_submission_is_signed_alone_at_once_on_a_current_thread_runtime() {
        let key = Arc::new(HostKey::generate().expect("key"));
        let signer = BatchSigner::start(key.clone(), SignBatchLimits::default()).expect("signer");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("tokio");
        let id = Digest::of(b"alone");
        let signature = rt.block_on(signer.sign(id)).expect("signed");
        let batch = signature.batch.as_ref().expect("batched form");
        assert_eq!((batch.tree_size, batch.leaf_index, batch.path.len()), (1, 0, 0));
        assert_eq!(signature.verify(&id, Some(&key.public())), Ok(key.public()));
    }

    #[test]
    fn submissions_that_queue_behind_a_signature_share_the_next_one() {
        let key = Arc::new(HostKey::generate().expect("key"));
        let limits = SignBatchLimits { leaves_max: 64, wait_us: 0 };
        let signer = Arc::new(BatchSigner::start(key.clone(), limits).expect("signer"));
        // Hold the signer busy, as a run signing inline would, so the others queue.
        lock(&signer.shared.queue).signing = true;
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("tokio");
        let ids: Vec<Digest> = (0..100u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
        let signatures = rt.block_on(async {
            let waiting: Vec<_> = ids
                .iter()
                .map(|id| {
                    let (signer, id) = (signer.clone(), *id);
                    tokio::spawn(async move { signer.sign(id).await })
                })
                .collect();
            tokio::task::yield_now().await;
            while lock(&signer.shared.queue).pending.len() < ids.len() {
                tokio::task::yield_now().await;
            }
            lock(&signer.shared.queue).signing = false;
            signer.shared.ready.notify_one();
            let mut signatures = Vec::new();
            for task in waiting {
                signatures.push(task.await.expect("task").expect("signed"));
            }
            signatures
        });
        let mut distinct: Vec<&str> = signatures.iter().map(|s| s.signature.as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 2, "100 queued ids, at most 64 a batch: two signatures");
        let sizes: Vec<u64> = signatures.iter().map(|s| s.batch.as_ref().expect("batch").tree_size).collect();
        assert_eq!(sizes.iter().filter(|s| **s == 64).count(), 64, "{sizes:?}");
        assert_eq!(sizes.iter().filter(|s| **s == 36).count(), 36, "{sizes:?}");
        for (id, signature) in ids.iter().zip(&signatures) {
            assert_eq!(signature.verify(id, Some(&key.public())), Ok(key.public()));
        }
    }

    #[test]
    fn a_signer_whose_thread_ended_says_so_instead_of_waiting() {
        let key = Arc::new(HostKey::generate().expect("key"));
        let signer = BatchSigner::start(key, SignBatchLimits::default()).expect("signer");
        lock(&signer.shared.queue).closed = true;
        signer.shared.ready.notify_one();
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("tokio");
        let err = rt.block_on(signer.sign(Digest::of(b"late"))).expect_err("stopped");
        assert!(err.to_string().contains("signer stopped"), "{err}");
    }

    #[test]
    fn a_batch_waits_up_to_wait_us_to_fill_and_no_longer() {
        let key = Arc::new(HostKey::generate().expect("key"));
        let limits = SignBatchLimits { leaves_max: 4, wait_us: SIGN_BATCH_WAIT_US_MAX };
        let signer = Arc::new(BatchSigner::start(key.clone(), limits).expect("signer"));
        lock(&signer.shared.queue).signing = true;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
        let started = Instant::now();
        let signatures = rt.block_on(async {
            let ids: Vec<Digest> = (0..3u8).map(|i| Digest::of(&[i])).collect();
            let waiting: Vec<_> = ids
                .iter()
                .map(|id| {
                    let (signer, id) = (signer.clone(), *id);
                    tokio::spawn(async move { signer.sign(id).await })
                })
                .collect();
            while lock(&signer.shared.queue).pending.len() < 3 {
                tokio::task::yield_now().await;
            }
            {
                let mut queue = lock(&signer.shared.queue);
                queue.signing = false;
                queue.wake_if_due(&signer.shared);
            }
            let mut signatures = Vec::new();
            for task in waiting {
                signatures.push(task.await.expect("task").expect("signed"));
            }
            signatures
        });
        // Three of at most four queued: the thread waited for a fourth, then signed the three.
        assert!(started.elapsed() >= Duration::from_micros(SIGN_BATCH_WAIT_US_MAX), "{:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(signatures.iter().all(|s| s.batch.as_ref().expect("batch").tree_size == 3));
    }

    #[test]
    fn concurrent_runs_all_get_a_signature_that_verifies_alone() {
        let key = Arc::new(HostKey::generate().expect("key"));
        let signer = Arc::new(BatchSigner::start(key.clone(), SignBatchLimits::default()).expect("signer"));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("tokio");
        let signed: Vec<(Digest, BundleSignature)> = rt.block_on(async {
            let tasks: Vec<_> = (0..8u32)
                .map(|task| {
                    let signer = signer.clone();
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        for i in 0..50u32 {
                            let id = Digest::of(format!("{task}/{i}").as_bytes());
                            out.push((id, signer.sign(id).await.expect("signed")));
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.expect("task"));
            }
            all
        });
        assert_eq!(signed.len(), 400);
        for (id, signature) in &signed {
            assert_eq!(signature.verify(id, Some(&key.public())), Ok(key.public()));
        }
    }
}
