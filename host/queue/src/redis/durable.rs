//! Acknowledged means durable (`ack_durability`): a write is confirmed only by a `WAIT` (or
//! `WAITAOF`) sent on the very connection it was made on, since that is all such a wait covers.
//! Connections are replaced under us (a reconnect, a failover, a Cluster's new topology), so
//! each write carries the identity of its connection — `CLIENT INFO`'s id and addresses, asked
//! in the same request — and each wait says which connection it went on.
//!
//! Submissions share waits (a group commit): one wait covers every write answered on its
//! connection before it was sent. A write whose connection was replaced before a wait reached
//! it can never be confirmed: its caller is told so (503, "it may still run").

use super::link::Conn;
use super::{AckDurability, QueueError, RedisQueue, aof_error, from_redis};
use redis::{Pipeline, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// Connections whose waits are remembered (the newest ones; each reconnect makes one more).
const CONNECTIONS_REMEMBERED_MAX: usize = 8;

/// The submissions made on the durable connection, numbered as Redis answers them, and what
/// the waits on each connection found; one wait at a time.
#[derive(Default)]
pub(super) struct DurableAcks {
    written: AtomicU64,
    waits: std::sync::Mutex<VecDeque<Waited>>,
    turn: tokio::sync::Mutex<()>,
}

/// What the waits sent on one connection found.
#[derive(Debug, Clone, PartialEq)]
struct Waited {
    /// The connection: `CLIENT INFO`'s `id`, `addr` and `laddr`.
    connection: String,
    /// Writes numbered up to here were confirmed on it...
    confirmed: u64,
    /// ...and up to here a wait on it timed out.
    failed: u64,
    /// The highest write number answered (on any connection) before a wait on it was sent.
    sent_after: u64,
}

impl DurableAcks {
    /// Number a write Redis answered on `connection`.
    pub(super) fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether write `seq`, made on `connection`, is known confirmed (`Some(true)`) or known
    /// never to be (`Some(false)`: a wait on it timed out, or a wait sent after it went on
    /// another connection, so its own is gone); `None` until a wait says.
    fn decide(&self, seq: u64, connection: &str) -> Option<bool> {
        let waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        let mut replaced = false;
        for waited in waits.iter() {
            if waited.connection == connection {
                if waited.confirmed >= seq {
                    return Some(true);
                }
                if waited.failed >= seq {
                    return Some(false);
                }
            } else if waited.sent_after >= seq {
                replaced = true;
            }
        }
        replaced.then_some(false)
    }

    /// A wait on `connection`, sent once writes up to `sent_after` were answered, found them
    /// durable (`ok`) or not.
    fn record(&self, connection: String, sent_after: u64, ok: bool) {
        let mut waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        let at = match waits.iter().position(|w| w.connection == connection) {
            Some(at) => at,
            None => {
                if waits.len() >= CONNECTIONS_REMEMBERED_MAX {
                    waits.pop_front();
                }
                waits.push_back(Waited { connection, confirmed: 0, failed: 0, sent_after: 0 });
                waits.len() - 1
            }
        };
        let waited = &mut waits[at];
        waited.sent_after = waited.sent_after.max(sent_after);
        if ok {
            waited.confirmed = waited.confirmed.max(sent_after);
        } else {
            waited.failed = waited.failed.max(sent_after);
        }
    }
}

/// A connection's identity from `CLIENT INFO` (`id=7 addr=… laddr=… …`): its id and both ends.
pub(super) fn connection_of(info: &str) -> String {
    let field = |name: &str| {
        info.split_ascii_whitespace().find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
    };
    format!("{}@{}>{}", field("id").unwrap_or("?"), field("addr").unwrap_or("?"), field("laddr").unwrap_or("?"))
}

impl RedisQueue {
    /// The command that waits for what `ack_durability` asks (none under `local`).
    pub(super) fn durability_wait(&self) -> Option<redis::Cmd> {
        let timeout = self.inner.settings.ack_timeout_ms.max(1);
        match self.inner.settings.ack_durability {
            AckDurability::Local => None,
            AckDurability::Replica => {
                let mut wait = redis::cmd("WAIT");
                wait.arg(1).arg(timeout);
                Some(wait)
            }
            AckDurability::Aof => {
                let mut wait = redis::cmd("WAITAOF");
                wait.arg(1).arg(0).arg(timeout);
                Some(wait)
            }
        }
    }

    /// A failed request that carried [`RedisQueue::durability_wait`]'s command: under `aof`,
    /// a refused `WAITAOF` says which setting to change ([`aof_error`]); else as [`from_redis`].
    pub(super) fn durability_error(&self, e: redis::RedisError) -> QueueError {
        if self.inner.settings.ack_durability == AckDurability::Aof { aof_error(e) } else { from_redis(e) }
    }

    /// Whether a reply of [`RedisQueue::durability_wait`]'s command says the writes are durable.
    ///
    /// # Errors
    /// [`QueueError::Corrupt`] when the reply is not what the command answers.
    pub(super) fn durable_reply(&self, reply: Value) -> Result<bool, QueueError> {
        let corrupt = |e: redis::ParsingError| QueueError::Corrupt(format!("the durability wait's reply: {e}"));
        match self.inner.settings.ack_durability {
            AckDurability::Local => Ok(true),
            AckDurability::Replica => Ok(redis::from_redis_value::<i64>(reply).map_err(corrupt)? >= 1),
            AckDurability::Aof => Ok(redis::from_redis_value::<(i64, i64)>(reply).map_err(corrupt)?.0 >= 1),
        }
    }

    /// Run `pipe` (whose first command is `CLIENT INFO`) on one connection of `conn`, at the node
    /// of the queue's slot: that connection's identity, and the rest of the replies.
    ///
    /// # Errors
    /// Redis's, as they come (the caller maps them); a `CLIENT INFO` reply that is not text
    /// (a parse error).
    pub(super) async fn on_one_connection(
        &self,
        conn: &mut Conn,
        pipe: &Pipeline,
    ) -> redis::RedisResult<(String, Vec<Value>)> {
        let mut replies = conn.pipeline_at(pipe, &self.inner.keys.key("leases")).await?;
        if replies.is_empty() {
            return Err(redis::RedisError::from(std::io::Error::other("no reply to CLIENT INFO")));
        }
        let info: String = redis::from_redis_value(replies.remove(0))?;
        Ok((connection_of(&info), replies))
    }

    /// Whether write `seq`, made on the durable connection `connection`, is durable: decided by
    /// a wait already sent, or by one this call sends (one at a time; each covers every write
    /// answered on its connection before it).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the wait cannot be sent; [`QueueError::Settings`] under
    /// `aof` when this Redis cannot do it.
    pub(super) async fn confirm(&self, seq: u64, connection: &str) -> Result<bool, QueueError> {
        let acks = &self.inner.acks;
        let Some(wait) = self.durability_wait() else { return Ok(true) };
        loop {
            if let Some(durable) = acks.decide(seq, connection) {
                return Ok(durable);
            }
            let _turn = acks.turn.lock().await;
            if let Some(durable) = acks.decide(seq, connection) {
                return Ok(durable);
            }
            // Every write numbered up to here was answered before this wait is sent.
            let sent_after = acks.written.load(Ordering::Acquire);
            let mut pipe = redis::pipe();
            pipe.cmd("CLIENT").arg("INFO");
            pipe.add_command(wait.clone());
            let (waited_on, mut replies) = self
                .on_one_connection(&mut self.inner.durable.clone(), &pipe)
                .await
                .map_err(|e| self.durability_error(e))?;
            let reply = replies.pop().ok_or_else(|| QueueError::Corrupt("no reply to the durability wait".into()))?;
            let durable = self.durable_reply(reply)?;
            acks.record(waited_on, sent_after, durable);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_named_by_its_id_and_both_ends() {
        let info = "id=7 addr=127.0.0.1:51514 laddr=127.0.0.1:6379 fd=8 name= age=0 idle=0";
        assert_eq!(connection_of(info), "7@127.0.0.1:51514>127.0.0.1:6379");
    }

    #[test]
    fn only_a_wait_on_the_writes_own_connection_confirms_it() {
        let acks = DurableAcks::default();
        let (one, two) = (acks.written(), acks.written());
        assert_eq!(acks.decide(one, "a"), None, "no wait yet");
        acks.record("a".into(), 2, true);
        assert_eq!((acks.decide(one, "a"), acks.decide(two, "a")), (Some(true), Some(true)));
        let three = acks.written();
        assert_eq!(acks.decide(three, "a"), None, "made after the wait");
        // The connection was replaced: a wait on the new one says nothing of write 3 on "a",
        // which can never be confirmed now.
        acks.record("b".into(), 3, true);
        assert_eq!(acks.decide(three, "a"), Some(false));
        let four = acks.written();
        assert_eq!(acks.decide(four, "b"), None);
        acks.record("b".into(), 4, false);
        assert_eq!(acks.decide(four, "b"), Some(false), "timed out");
        assert_eq!(acks.decide(one, "a"), Some(true), "what was confirmed stays confirmed");
    }

    #[test]
    fn only_the_newest_connections_are_remembered() {
        let acks = DurableAcks::default();
        for i in 0..(CONNECTIONS_REMEMBERED_MAX as u64 + 4) {
            let seq = acks.written();
            acks.record(format!("c{i}"), seq, true);
        }
        assert_eq!(acks.waits.lock().expect("waits").len(), CONNECTIONS_REMEMBERED_MAX);
        // Forgotten, and newer waits went on other connections: never confirmed.
        assert_eq!(acks.decide(1, "c0"), Some(false));
    }
}
