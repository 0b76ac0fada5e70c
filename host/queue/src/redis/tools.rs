//! Tool records shared by every node: each name's revisions, current and candidate revision,
//! ramp and flags, as one JSON value per name in the `tools` hash, and a `tools:generation`
//! counter that grows with every write, so a node polls one small key to learn that something
//! changed. A write names the generation it read and is refused if another node wrote since.

use super::{QueueError, RedisQueue, from_redis};
use guild_vocab::ToolRecord;
use redis::Script;
use std::sync::LazyLock;

/// Largest tool record read back from Redis, bytes (a record holds at most 256 revisions with
/// notes of at most 1 KiB); a larger one is refused as corrupt.
pub const TOOL_RECORD_BYTES_MAX: usize = 1 << 20;

/// Tool names a queue's `tools` hash may hold; more is refused as corrupt.
pub const TOOL_RECORDS_MAX: usize = 4096;

/// Write a record if the stored one is still at the generation the writer read (0: none).
static PUT_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local stored = redis.call('HGET', KEYS[1], ARGV[1])
local expected = tonumber(ARGV[3])
if stored then
  local ok, record = pcall(cjson.decode, stored)
  if not ok or tonumber(record.generation) ~= expected then return 0 end
elseif expected ~= 0 then
  return 0
elseif redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
",
    )
});

impl RedisQueue {
    /// The counter that grows with every tool record written (0 when none ever was).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the read.
    pub async fn tools_generation(&self) -> Result<u64, QueueError> {
        let key = self.inner.keys.key("tools:generation");
        self.guarded(async {
            let value: Option<u64> =
                redis::cmd("GET").arg(key).query_async(&mut self.conn()).await.map_err(from_redis)?;
            Ok(value.unwrap_or(0))
        })
        .await
    }

    /// Every tool record that reads back whole: one past [`TOOL_RECORD_BYTES_MAX`], that does
    /// not decode or does not hold together ([`ToolRecord::validate`]) is left out and logged,
    /// so one bad record cannot stop a fleet from following the others.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the read; [`QueueError::Corrupt`] for more than [`TOOL_RECORDS_MAX`] records.
    pub async fn tool_records(&self) -> Result<Vec<ToolRecord>, QueueError> {
        let key = self.inner.keys.key("tools");
        self.guarded(async {
            let count: usize = redis::cmd("HLEN").arg(&key).query_async(&mut self.conn()).await.map_err(from_redis)?;
            if count > TOOL_RECORDS_MAX {
                return Err(QueueError::Corrupt(format!(
                    "the tools hash holds {count} records; at most {TOOL_RECORDS_MAX} are read"
                )));
            }
            let all: Vec<(String, Vec<u8>)> =
                redis::cmd("HGETALL").arg(&key).query_async(&mut self.conn()).await.map_err(from_redis)?;
            Ok(all
                .into_iter()
                .filter_map(|(name, bytes)| {
                    decode(&name, &bytes)
                        .inspect_err(
                            |e| tracing::error!(tool = %name, error = %e, "a tool record in Redis is left out"),
                        )
                        .ok()
                })
                .collect())
        })
        .await
    }

    /// The record of tool `name`, if any.
    ///
    /// # Errors
    /// As [`RedisQueue::tool_records`].
    pub async fn tool_record(&self, name: &str) -> Result<Option<ToolRecord>, QueueError> {
        let key = self.inner.keys.key("tools");
        self.guarded(async {
            let bytes: Option<Vec<u8>> =
                redis::cmd("HGET").arg(&key).arg(name).query_async(&mut self.conn()).await.map_err(from_redis)?;
            bytes.map(|b| decode(name, &b)).transpose()
        })
        .await
    }

    /// Write `record` if the stored one is still at generation `read` (0: there was none).
    /// Returns whether it was written; `false` means another node wrote first: read again.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the write; [`QueueError::Settings`] for a record that does not hold together,
    /// encodes past [`TOOL_RECORD_BYTES_MAX`], or would be a name past [`TOOL_RECORDS_MAX`].
    pub async fn put_tool_record(&self, record: &ToolRecord, read: u64) -> Result<bool, QueueError> {
        record.validate().map_err(|e| QueueError::Settings(e.to_string()))?;
        let text = serde_json::to_string(record).expect("a tool record is plain data");
        if text.len() > TOOL_RECORD_BYTES_MAX {
            return Err(QueueError::Settings(format!(
                "the record of tool {:?} would be {} bytes; at most {TOOL_RECORD_BYTES_MAX} are kept",
                record.name,
                text.len()
            )));
        }
        let (tools, generation) = (self.inner.keys.key("tools"), self.inner.keys.key("tools:generation"));
        self.guarded(async {
            let written: i64 = PUT_RECORD
                .key(tools)
                .key(generation)
                .arg(&record.name)
                .arg(text)
                .arg(read)
                .arg(TOOL_RECORDS_MAX)
                .invoke_async(&mut self.conn())
                .await
                .map_err(from_redis)?;
            if written < 0 {
                return Err(QueueError::Settings(format!(
                    "the queue holds {TOOL_RECORDS_MAX} tool names, the most it keeps; no new name can be added"
                )));
            }
            Ok(written == 1)
        })
        .await
    }
}

fn decode(name: &str, bytes: &[u8]) -> Result<ToolRecord, QueueError> {
    if bytes.len() > TOOL_RECORD_BYTES_MAX {
        return Err(QueueError::Corrupt(format!(
            "the record of tool {name:?} is {} bytes; at most {TOOL_RECORD_BYTES_MAX} are read",
            bytes.len()
        )));
    }
    let record: ToolRecord = serde_json::from_slice(bytes)
        .map_err(|e| QueueError::Corrupt(format!("the record of tool {name:?} does not decode: {e}")))?;
    record.validate().map_err(|e| QueueError::Corrupt(e.to_string()))?;
    if record.name != name {
        return Err(QueueError::Corrupt(format!("the record under {name:?} names the tool {:?}", record.name)));
    }
    Ok(record)
}
