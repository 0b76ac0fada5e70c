//! Egress limits and throttles a fleet shares, under the queue's hash tag: `gate:t:KEY`, each
//! limit's theoretical arrival time (µs since the epoch by Redis's own clock, expiring once
//! past), and `gate:x:UPSTREAM`, an upstream's throttle (expiring with it). One script checks a
//! request against every limit that applies and takes its room in all of them, or in none.
//! `gate:c:KEY` is a concurrency limit's places in flight: a sorted set of holders scored by when
//! each hold lapses (ms, Redis's clock), renewed by its holder, so one that died frees its place.

use super::{QueueError, RedisQueue, from_redis};
use crate::gate::{Checked, EgressLimit};
use redis::Script;
use std::sync::LazyLock;

/// KEYS throttle, then each limit's arrival key; ARGV (interval µs, tolerance µs, wait max µs)
/// per limit. Answers `{kind, index, amount}`: kind 0 go after `amount` µs, 1 throttled for
/// `amount` ms, 2 limit `index` (from 0) would wait `amount` µs.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local throttled = redis.call('PTTL', KEYS[1])
if throttled > 0 then return {1, 0, throttled} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait, tats = 0, {}
for i = 2, #KEYS do
  local at = 3 * (i - 2)
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local delay = tat - now - tonumber(ARGV[at + 2])
  if delay < 0 then delay = 0 end
  if delay > tonumber(ARGV[at + 3]) then return {2, i - 2, delay} end
  if delay > wait then wait = delay end
  tats[i] = tat
end
for i = 2, #KEYS do
  local next_at = tats[i] + tonumber(ARGV[3 * (i - 2) + 1])
  redis.call('SET', KEYS[i], string.format('%.0f', next_at), 'PX', math.ceil((next_at - now) / 1000) + 1000)
end
return {0, 0, wait}
",
    )
});

/// Give back: KEYS each limit's arrival key; ARGV each one's interval, µs.
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or 'x')
  if tat then
    local back = tat - tonumber(ARGV[i])
    if back < now then back = now end
    redis.call('SET', KEYS[i], string.format('%.0f', back), 'KEEPTTL')
  end
end
return 0
",
    )
});

/// Hold: KEYS each limit's places; ARGV holder, lease ms, then each limit's most in flight.
/// Answers 0 when a place was taken in every one, else the (1-based) first that is full.
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[i + 2]) then return i end
end
local lease = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], lease)
end
return 0
",
    )
});

/// Renew: KEYS a holder's places; ARGV holder, lease ms. Only a place still held is renewed.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', now + lease, ARGV[1]) == 1 then
    redis.call('PEXPIRE', KEYS[i], lease)
  end
end
return 0
",
    )
});

impl RedisQueue {
    /// Take a place under each of `keys` (at most `maxes` in flight) for `holder`, in all or
    /// none: `None` when taken, else the index of the first full one.
    pub(crate) async fn gate_hold(
        &self,
        keys: &[String],
        maxes: &[u32],
        holder: &str,
    ) -> Result<Option<usize>, QueueError> {
        let mut script = HOLD.prepare_invoke();
        script.arg(holder).arg(crate::gate::GATE_HOLD_LEASE_MS);
        for (key, max) in keys.iter().zip(maxes) {
            script.key(self.gate_key("c", key)).arg(*max);
        }
        let full: usize =
            self.guarded(async { script.invoke_async(&mut self.conn()).await.map_err(from_redis) }).await?;
        Ok(full.checked_sub(1))
    }

    /// Renew `holder`'s places under `keys` for another lease.
    pub(crate) async fn gate_renew(&self, keys: &[String], holder: &str) -> Result<(), QueueError> {
        let mut script = RENEW.prepare_invoke();
        script.arg(holder).arg(crate::gate::GATE_HOLD_LEASE_MS);
        for key in keys {
            script.key(self.gate_key("c", key));
        }
        script.invoke_async::<()>(&mut self.conn()).await.map_err(from_redis)
    }

    /// Give back `holder`'s places under `keys`.
    pub(crate) async fn gate_release(&self, keys: &[String], holder: &str) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("ZREM").arg(self.gate_key("c", key)).arg(holder).ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await.map_err(from_redis)
    }

    fn gate_key(&self, kind: &str, key: &str) -> String {
        self.inner.keys.key(&format!("gate:{kind}:{key}"))
    }

    pub(crate) async fn gate_check(&self, upstream: &str, limits: &[&EgressLimit]) -> Result<Checked, QueueError> {
        let mut script = CHECK.key(self.gate_key("x", upstream));
        for limit in limits {
            script.key(self.gate_key("t", &limit.state_key()));
            script.arg(limit.interval_us()).arg(limit.tolerance_us()).arg(limit.wait_ms_max.saturating_mul(1000));
        }
        let (kind, index, amount): (u8, usize, u64) =
            self.guarded(async { script.invoke_async(&mut self.conn()).await.map_err(from_redis) }).await?;
        Ok(match kind {
            0 => Checked::Go(amount),
            1 => Checked::Throttled(amount),
            _ => Checked::Refused(index, amount),
        })
    }

    /// Give back room a request took and never used: each key's arrival time moves back by its
    /// interval (never before now).
    pub(crate) async fn gate_give_back(&self, keys: &[(String, u64)]) -> Result<(), QueueError> {
        let mut script = GIVE_BACK.prepare_invoke();
        for (key, interval) in keys {
            script.key(self.gate_key("t", key)).arg(*interval);
        }
        self.guarded(async { script.invoke_async::<()>(&mut self.conn()).await.map_err(from_redis) }).await
    }

    pub(crate) async fn gate_throttle(&self, upstream: &str, ms: u64) -> Result<(), QueueError> {
        let key = self.gate_key("x", upstream);
        self.guarded(async {
            // Never shortened by a later, nearer Retry-After.
            redis::Script::new(
                "local left = redis.call('PTTL', KEYS[1]) \
                 if left < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end return 0",
            )
            .key(&key)
            .arg(ms.max(1))
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(from_redis)
        })
        .await
    }
}
