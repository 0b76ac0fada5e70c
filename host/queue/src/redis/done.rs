//! The done stream: every finished attempt, read by API nodes' audit writers, acknowledged once
//! audited, and an entry that cannot be read buried in the dead-letter stream.

use super::jobs::parse_result;
use super::{AUDIT_GROUP, QueueError, RedisQueue, from_redis};
use crate::job::JobResult;
use crate::job::now_unix_ms;
use guild_vocab::AttemptEnd;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use std::time::Duration;

/// How often the audit writer looks for done entries left pending (its own after a failed
/// write, or a dead node's), ms.
const DONE_CLAIM_EVERY_MS: u64 = 1_000;

/// Bytes of a corrupt done entry kept in the dead-letter stream, for a person to look at.
const CORRUPT_RAW_BYTES_KEPT: usize = 4096;

/// At most `bytes` of `text`, on a character boundary.
fn clip(text: &str, bytes: usize) -> String {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// What a finished-job notice listener ([`RedisQueue::listen_finished`]) tells its caller
/// besides the notices.
#[derive(Debug, Default)]
pub struct NoticeState {
    /// True while the subscription stands: notices are arriving.
    pub subscribed: std::sync::atomic::AtomicBool,
    /// Set when a notice may have been missed (one was dropped, or the subscription was made
    /// again); the caller clears it once it has looked at every awaited job.
    pub missed: std::sync::atomic::AtomicBool,
}

/// One entry of the done stream: a finished attempt, or one that cannot be read.
#[derive(Debug, Clone, PartialEq)]
pub enum DoneRead {
    /// A finished attempt.
    Entry(Box<DoneEntry>),
    /// An entry whose result does not parse (written by another version, or damaged).
    Corrupt {
        /// The stream entry.
        entry: String,
        /// Why it cannot be read.
        reason: String,
        /// The start of what it holds.
        raw: String,
    },
}

/// A finished attempt read from the done stream by an API node's audit writer.
#[derive(Debug, Clone, PartialEq)]
pub struct DoneEntry {
    /// The stream entry; pass it to [`RedisQueue::ack_done`] once audited.
    pub entry: String,
    /// How the attempt ended.
    pub kind: AttemptEnd,
    /// The attempt's result.
    pub result: JobResult,
}

impl RedisQueue {
    /// Finished attempts for this API node's audit log: first its own unacknowledged ones
    /// (after a restart), those another node left for `idle` (it died), then new ones.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached, or under `ack_durability =
    /// "replica"` (`"aof"`) when no replica (fsync) confirmed the entries read within
    /// `ack_timeout_ms` (they are read again later); [`QueueError::Settings`] when this Redis
    /// cannot do `aof`; [`QueueError::Redis`] when it refuses a read (`NOGROUP` when the `audit`
    /// group is missing: [`RedisQueue::ensure_groups`] makes it). An entry whose result does not
    /// parse is returned as [`DoneRead::Corrupt`], not an error.
    pub async fn read_done(&self, consumer: &str, count: usize, block: Duration) -> Result<Vec<DoneRead>, QueueError> {
        let stream = self.inner.keys.key("done");
        // Audited means it survives the master: under `replica` (`aof`) a record is written only
        // for an attempt a replica (the append-only file) has, with the job's settlement written
        // before it, or a failover could bring the job back unsettled, to be run and audited a
        // second time. The read is a write (the entries become this node's pending ones), so a
        // wait sent after it in the same request, on the same connection, covers all that.
        let wait = self.durability_wait();
        let read = |command: redis::Cmd| {
            let mut pipe = redis::pipe();
            pipe.add_command(command);
            if let Some(wait) = &wait {
                // Should a read that blocked, and was woken by another client's write, leave
                // this connection's replication offset where it was when it began to block (as
                // reported for some Redis versions; 7.0.15 here moves it), the next command on it
                // brings the offset up to date, so the wait covers that write all the same.
                pipe.cmd("PING");
                pipe.add_command(wait.clone());
            }
            pipe
        };
        let mut blocking = self.inner.blocking.clone();
        let mut claim = redis::cmd("XAUTOCLAIM");
        claim.arg(&stream).arg(AUDIT_GROUP).arg(consumer).arg(self.inner.settings.lease_ms).arg("0-0");
        claim.arg("COUNT").arg(count);
        // Entries left pending come back only after `lease_ms` idle: looking for them once per
        // `DONE_CLAIM_EVERY_MS` is enough, not before every read.
        let now = crate::job::now_unix_ms();
        let last = self.inner.done_claimed_ms.load(std::sync::atomic::Ordering::Relaxed);
        let claiming = now.saturating_sub(last) >= DONE_CLAIM_EVERY_MS;
        let mut replies = if claiming {
            let replies = blocking.pipeline_at(&read(claim), &stream).await.map_err(|e| self.durability_error(e))?;
            self.inner.done_claimed_ms.store(now, std::sync::atomic::Ordering::Relaxed);
            replies
        } else {
            Vec::new()
        };
        let corrupt = |e: redis::ParsingError| QueueError::Corrupt(format!("the done stream's read: {e}"));
        // The wait's reply, last in the request, when there is a wait.
        let durable = |replies: &mut Vec<redis::Value>| {
            if wait.is_none() {
                return Ok(true);
            }
            match replies.pop() {
                Some(reply) => self.durable_reply(reply),
                None => Err(QueueError::Corrupt("no reply to the durability wait".into())),
            }
        };
        let mut confirmed = if claiming { durable(&mut replies)? } else { true };
        // The read's reply comes first (then the `PING`'s, whose reply is dropped).
        let mut entries = match replies.into_iter().next() {
            None | Some(redis::Value::Nil) => Vec::new(),
            Some(reply) => redis::from_redis_value::<StreamAutoClaimReply>(reply).map_err(corrupt)?.claimed,
        };
        if claiming && entries.len() >= count {
            // A full batch: there may be more left pending; look again on the next read.
            self.inner.done_claimed_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        if entries.is_empty() {
            let mut group = redis::cmd("XREADGROUP");
            group.arg("GROUP").arg(AUDIT_GROUP).arg(consumer).arg("COUNT").arg(count);
            group.arg("BLOCK").arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX));
            group.arg("STREAMS").arg(&stream).arg(">");
            let mut replies =
                blocking.pipeline_at(&read(group), &stream).await.map_err(|e| self.durability_error(e))?;
            confirmed = durable(&mut replies)?;
            let reply: Option<StreamReadReply> =
                redis::from_redis_value(replies.into_iter().next().unwrap_or(redis::Value::Nil)).map_err(corrupt)?;
            entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        }
        if !entries.is_empty() && !confirmed {
            let durability = self.inner.settings.ack_durability;
            return Err(QueueError::Unavailable {
                error: format!(
                    "{} finished jobs are not audited yet: {} within {} ms (redis.ack_durability = {:?})",
                    entries.len(),
                    durability.unconfirmed(),
                    self.inner.settings.ack_timeout_ms,
                    durability.name(),
                ),
                retry_after_s: 1,
            });
        }
        Ok(entries
            .into_iter()
            .map(|entry| {
                let text: String = entry.get("result").unwrap_or_default();
                let kind: String = entry.get("kind").unwrap_or_default();
                let read = parse_result(&text).and_then(|result| match AttemptEnd::parse(&kind) {
                    Some(kind) => Ok((kind, result)),
                    None => Err(QueueError::Corrupt(format!("done entry: unknown kind {kind:?}"))),
                });
                match read {
                    Ok((kind, result)) => DoneRead::Entry(Box::new(DoneEntry { kind, result, entry: entry.id })),
                    Err(e) => DoneRead::Corrupt {
                        entry: entry.id,
                        reason: e.to_string(),
                        raw: clip(&text, CORRUPT_RAW_BYTES_KEPT),
                    },
                }
            })
            .collect())
    }

    /// Move a done-stream entry that cannot be read to the dead-letter stream (with why, and
    /// the start of what it held) and acknowledge it, so the audit writer goes on.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the transaction.
    pub async fn bury_done(&self, entry: &str, reason: &str, raw: &str) -> Result<(), QueueError> {
        let keys = &self.inner.keys;
        let done = keys.key("done");
        let error = guild_vocab::Failure::host(guild_vocab::FailureCode::CorruptDoneEntry, reason);
        let error = serde_json::to_string(&error).expect("a failure is plain data");
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XADD")
            .arg(keys.key("dead"))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.inner.settings.dead_kept_max)
            .arg("*")
            .arg(&[("job", entry), ("kind", "corrupt_done_entry"), ("error", error.as_str()), ("raw", raw)])
            .arg(&[("time", now_unix_ms())])
            .ignore();
        pipe.cmd("XACK").arg(&done).arg(AUDIT_GROUP).arg(entry).ignore();
        pipe.cmd("XDEL").arg(&done).arg(entry).ignore();
        let () = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(())
    }

    /// The audit records of these entries are on disk: acknowledge and remove them.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses a command.
    pub async fn ack_done(&self, entries: &[String]) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        let stream = self.inner.keys.key("done");
        let mut pipe = redis::pipe();
        pipe.cmd("XACK").arg(&stream).arg(AUDIT_GROUP).arg(entries).ignore();
        pipe.cmd("XDEL").arg(&stream).arg(entries).ignore();
        let () = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(())
    }

    /// Send the id of every job that gets its result (completed or dead) to `notices`, until
    /// the connection drops (then an error: subscribe again, and look for what was missed).
    /// `state.subscribed` is true exactly while the subscription stands; a notice that does not
    /// fit in `notices` is dropped, and `state.missed` set (as it is once the subscription is
    /// made: notices published before it went nowhere): the caller's sweep of all awaited
    /// results then finds those jobs.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the subscription cannot be made or is dropped;
    /// [`QueueError::Redis`] when Redis refuses it. When `notices` is closed it returns `Ok`.
    pub async fn listen_finished(
        &self,
        notices: &tokio::sync::mpsc::Sender<String>,
        state: &NoticeState,
    ) -> Result<(), QueueError> {
        use futures_util::StreamExt;
        use std::sync::atomic::Ordering;
        /// Clears `subscribed` however the listening ends.
        struct Subscribed<'a>(&'a NoticeState);
        impl Drop for Subscribed<'_> {
            fn drop(&mut self) {
                self.0.subscribed.store(false, Ordering::Release);
            }
        }
        let mut pubsub = self.inner.topology.pubsub().await.map_err(from_redis)?;
        pubsub.subscribe(self.inner.keys.key("finished")).await.map_err(from_redis)?;
        let _subscribed = Subscribed(state);
        state.subscribed.store(true, Ordering::Release);
        // Notices published before this subscription went nowhere.
        state.missed.store(true, Ordering::Release);
        let missed = &state.missed;
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            if let Ok(id) = message.get_payload::<String>() {
                match notices.try_send(id) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => missed.store(true, Ordering::Release),
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                }
            }
        }
        Err(QueueError::Unavailable { error: "the notice subscription was dropped".into(), retry_after_s: 1 })
    }
}
