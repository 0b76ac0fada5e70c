//! The result cache a fleet shares: each tool's entries under the queue's hash tag —
//! `cache:TOOL:e:KEY` (the entry, expiring with its TTL), `cache:TOOL:lru` (keys by last use),
//! `cache:TOOL:sizes` (each key's output bytes) and `cache:TOOL:bytes` (their sum) — kept within
//! the tool's entry and byte bounds by the scripts that write them, least recently used first;
//! `cache:TOOL:f:KEY` marks an identical call in flight on some worker; `cache:tools` names the
//! tools that have entries.

use super::{QueueError, RedisQueue, from_redis};
use crate::cache::{CacheKey, CachedValue, JobCache};
use redis::Script;
use std::sync::LazyLock;

/// Largest entry read back from Redis, bytes: an output is bounded by the tool's
/// `output_bytes_max` (1 MiB by default); a larger value is refused as corrupt.
pub const CACHE_VALUE_BYTES_MAX: usize = 16 << 20;

/// Keep an entry and bound the tool's entries: KEYS entry, lru, sizes, bytes, tools; ARGV key,
/// value, ttl_s, now_ms, entries_max, bytes_max, tool.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local size = string.len(ARGV[2])
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old then redis.call('DECRBY', KEYS[4], tonumber(old)) end
redis.call('HSET', KEYS[3], ARGV[1], size)
redis.call('INCRBY', KEYS[4], size)
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[1])
redis.call('SADD', KEYS[5], ARGV[7])
local prefix = string.sub(KEYS[1], 1, string.len(KEYS[1]) - string.len(ARGV[1]))
local evicted = 0
while redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[5])
  or tonumber(redis.call('GET', KEYS[4]) or '0') > tonumber(ARGV[6]) do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not oldest then break end
  redis.call('ZREM', KEYS[2], oldest)
  redis.call('DEL', prefix .. oldest)
  local gone = redis.call('HGET', KEYS[3], oldest)
  if gone then redis.call('DECRBY', KEYS[4], tonumber(gone)) end
  redis.call('HDEL', KEYS[3], oldest)
  evicted = evicted + 1
end
return evicted
",
    )
});

/// Read an entry and mark it used; an expired one is forgotten; one larger than ARGV bytes_max
/// answers only its size (an integer), so it never travels whole: KEYS entry, lru, sizes, bytes;
/// ARGV key, now_ms, bytes_max.
static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local size = redis.call('STRLEN', KEYS[1])
if size > tonumber(ARGV[3]) then
  return size
end
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
  return value
end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  local gone = redis.call('HGET', KEYS[3], ARGV[1])
  if gone then redis.call('DECRBY', KEYS[4], tonumber(gone)) end
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return false
",
    )
});

/// Drop every entry of a tool: KEYS lru, sizes, bytes, tools; ARGV entry prefix, tool.
static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, key in ipairs(keys) do redis.call('DEL', ARGV[1] .. key) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[2])
return #keys
",
    )
});

/// Land a flight only if this job leads it: KEYS flight; ARGV job id.
static LAND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// One tool's shared entries, for `guild cache stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCacheStats {
    /// The tool's name.
    pub tool: String,
    /// Entries held (expired ones not yet looked up included).
    pub entries: u64,
    /// Bytes of entries held.
    pub bytes: u64,
}

impl RedisQueue {
    fn cache_key(&self, tool: &str, part: &str) -> String {
        self.inner.keys.key(&format!("cache:{tool}:{part}"))
    }

    /// The entry `key` of `tool`, marking it used; `None` when absent or expired.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the script; [`QueueError::Corrupt`] for a value past [`CACHE_VALUE_BYTES_MAX`] or
    /// that does not decode.
    pub async fn cache_get(&self, tool: &str, key: &CacheKey) -> Result<Option<CachedValue>, QueueError> {
        let hex = key.to_hex();
        self.guarded(async {
            let value: redis::Value = GET
                .key(self.cache_key(tool, &format!("e:{hex}")))
                .key(self.cache_key(tool, "lru"))
                .key(self.cache_key(tool, "sizes"))
                .key(self.cache_key(tool, "bytes"))
                .arg(&hex)
                .arg(crate::now_unix_ms())
                .arg(CACHE_VALUE_BYTES_MAX)
                .invoke_async(&mut self.conn())
                .await
                .map_err(from_redis)?;
            let bytes = match value {
                redis::Value::BulkString(bytes) => bytes,
                redis::Value::Int(size) => {
                    return Err(QueueError::Corrupt(format!(
                        "cache entry {hex} of tool {tool} is {size} bytes; at most {CACHE_VALUE_BYTES_MAX} are read"
                    )));
                }
                _ => return Ok(None),
            };
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| QueueError::Corrupt(format!("cache entry {hex} of tool {tool}: {e}")))
        })
        .await
    }

    /// Keep `value` under `key` for `bounds.ttl_s` (at most `results_ttl_s`, so an entry never
    /// outlives the bundle it names), then drop the tool's least recently used entries past its
    /// bounds. Returns how many were dropped.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the script.
    pub async fn cache_put(&self, key: &CacheKey, value: &CachedValue, bounds: JobCache) -> Result<u64, QueueError> {
        let tool = value.record.tool.as_str();
        let hex = key.to_hex();
        let text = serde_json::to_string(value).expect("a cache entry is plain data");
        let ttl_s = bounds.ttl_s.min(self.settings().results_ttl_s).max(1);
        self.guarded(async {
            PUT.key(self.cache_key(tool, &format!("e:{hex}")))
                .key(self.cache_key(tool, "lru"))
                .key(self.cache_key(tool, "sizes"))
                .key(self.cache_key(tool, "bytes"))
                .key(self.inner.keys.key("cache:tools"))
                .arg(&hex)
                .arg(text)
                .arg(ttl_s)
                .arg(crate::now_unix_ms())
                .arg(bounds.entries_max)
                .arg(bounds.bytes_max)
                .arg(tool)
                .invoke_async(&mut self.conn())
                .await
                .map_err(from_redis)
        })
        .await
    }

    /// Drop the entry `key` of `tool` (it failed its check).
    ///
    /// # Errors
    /// As [`RedisQueue::cache_get`].
    pub async fn cache_evict(&self, tool: &str, key: &CacheKey) -> Result<(), QueueError> {
        let hex = key.to_hex();
        self.guarded(async {
            redis::cmd("DEL")
                .arg(self.cache_key(tool, &format!("e:{hex}")))
                .query_async::<()>(&mut self.conn())
                .await
                .map_err(from_redis)
        })
        .await?;
        // The bookkeeping follows on the next read of the key.
        self.cache_get(tool, key).await.map(|_| ())
    }

    /// Lead the flight of `key`: true when no other job does (the mark expires after
    /// `lease_ms`, so a worker that dies leading it holds no one up for longer).
    ///
    /// # Errors
    /// As [`RedisQueue::cache_get`].
    pub async fn cache_fly(&self, tool: &str, key: &CacheKey, job: &str, lease_ms: u64) -> Result<bool, QueueError> {
        let flight = self.cache_key(tool, &format!("f:{}", key.to_hex()));
        self.guarded(async {
            let set: Option<String> = redis::cmd("SET")
                .arg(flight)
                .arg(job)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms.max(1))
                .query_async(&mut self.conn())
                .await
                .map_err(from_redis)?;
            Ok(set.is_some())
        })
        .await
    }

    /// Whether some job leads the flight of `key`.
    ///
    /// # Errors
    /// As [`RedisQueue::cache_get`].
    pub async fn cache_flying(&self, tool: &str, key: &CacheKey) -> Result<bool, QueueError> {
        let flight = self.cache_key(tool, &format!("f:{}", key.to_hex()));
        self.guarded(async {
            redis::cmd("EXISTS").arg(flight).query_async::<bool>(&mut self.conn()).await.map_err(from_redis)
        })
        .await
    }

    /// End the flight of `key` that `job` leads.
    ///
    /// # Errors
    /// As [`RedisQueue::cache_get`].
    pub async fn cache_land(&self, tool: &str, key: &CacheKey, job: &str) -> Result<(), QueueError> {
        let flight = self.cache_key(tool, &format!("f:{}", key.to_hex()));
        self.guarded(async {
            LAND.key(flight).arg(job).invoke_async::<i64>(&mut self.conn()).await.map_err(from_redis).map(|_| ())
        })
        .await
    }

    /// Entries and bytes each tool holds, by name.
    ///
    /// # Errors
    /// As [`RedisQueue::cache_get`].
    pub async fn cache_stats(&self) -> Result<Vec<SharedCacheStats>, QueueError> {
        self.guarded(async {
            let mut tools: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.inner.keys.key("cache:tools"))
                .query_async(&mut self.conn())
                .await
                .map_err(from_redis)?;
            tools.sort();
            let mut stats = Vec::with_capacity(tools.len());
            for tool in tools {
                let entries: u64 = redis::cmd("ZCARD")
                    .arg(self.cache_key(&tool, "lru"))
                    .query_async(&mut self.conn())
                    .await
                    .map_err(from_redis)?;
                let bytes: Option<u64> = redis::cmd("GET")
                    .arg(self.cache_key(&tool, "bytes"))
                    .query_async(&mut self.conn())
                    .await
                    .map_err(from_redis)?;
                stats.push(SharedCacheStats { tool, entries, bytes: bytes.unwrap_or(0) });
            }
            Ok(stats)
        })
        .await
    }

    /// Drop every entry of `tool`, or of every tool; returns how many went.
    ///
    /// # Errors
    /// As [`RedisQueue::cache_get`].
    pub async fn cache_purge(&self, tool: Option<&str>) -> Result<u64, QueueError> {
        let tools = match tool {
            Some(tool) => vec![tool.to_string()],
            None => self.cache_stats().await?.into_iter().map(|s| s.tool).collect(),
        };
        let mut purged = 0;
        for tool in tools {
            purged += self
                .guarded(async {
                    PURGE
                        .key(self.cache_key(&tool, "lru"))
                        .key(self.cache_key(&tool, "sizes"))
                        .key(self.cache_key(&tool, "bytes"))
                        .key(self.inner.keys.key("cache:tools"))
                        .arg(self.cache_key(&tool, "e:"))
                        .arg(&tool)
                        .invoke_async::<u64>(&mut self.conn())
                        .await
                        .map_err(from_redis)
                })
                .await?;
        }
        Ok(purged)
    }
}
