//! Budgets a fleet shares, under the queue's hash tag: per tenant and period a hash
//! `budget:LEN:TENANT:START` (fields `m:KEY`, the money spent and reserved as an exact decimal
//! string, and `t:KEY`, the tokens used) and a set `budget:LEN:TENANT:START:agents` of the agent
//! labels spent under; both expire a period after theirs ends. Money is added and compared by
//! `lua/decimal.lua` on decimal strings, never as Lua numbers.

use super::{QueueError, RedisQueue, from_redis};
use crate::budget::{BudgetPlan, BudgetStore, Exhausted, period_start};
use guild_replay::cost::MeterFuture;
use redis::Script;
use rust_decimal::Decimal;
use std::sync::LazyLock;

macro_rules! money_script {
    ($body:literal) => {
        Script::new(concat!(include_str!("lua/decimal.lua"), $body))
    };
}

/// Reserve: KEYS period hash, agents set; ARGV reserved, agent ('' for none), agents_max, ttl_s,
/// then (key, money limit or '', token limit or '') for each budget. Answers `{kind, key}`:
/// `ok`, `money`, `tokens` or `agents`.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    money_script!(
        r"
local reserved, agent = ARGV[1], ARGV[2]
if agent ~= '' and redis.call('SISMEMBER', KEYS[2], agent) == 0
  and redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return {'agents', ''}
end
local n = (#ARGV - 4) / 3
for i = 0, n - 1 do
  local key, money, tokens = ARGV[5 + 3 * i], ARGV[6 + 3 * i], ARGV[7 + 3 * i]
  if money ~= '' and dec_cmp(dec_add(redis.call('HGET', KEYS[1], 'm:' .. key) or '0', reserved), money) > 0 then
    return {'money', key}
  end
  if tokens ~= '' and tonumber(redis.call('HGET', KEYS[1], 't:' .. key) or '0') >= tonumber(tokens) then
    return {'tokens', key}
  end
end
for i = 0, n - 1 do hadd_dec(KEYS[1], 'm:' .. ARGV[5 + 3 * i], reserved) end
if agent ~= '' then redis.call('SADD', KEYS[2], agent) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {'ok', ''}
"
    )
});

/// Check: KEYS period hash; ARGV (key, money limit or '', token limit or '') for each budget.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    money_script!(
        r"
for i = 0, #ARGV / 3 - 1 do
  local key, money, tokens = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  if money ~= '' and dec_cmp(redis.call('HGET', KEYS[1], 'm:' .. key) or '0', money) > 0 then
    return {'money', key}
  end
  if tokens ~= '' and tonumber(redis.call('HGET', KEYS[1], 't:' .. key) or '0') >= tonumber(tokens) then
    return {'tokens', key}
  end
end
return {'ok', ''}
"
    )
});

/// Settle: KEYS the reservation's period hash, the current one; ARGV reserved, spent, ttl_s,
/// then each budget's key. A reservation's period that is gone took its reservation with it.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    money_script!(
        r"
local held = redis.call('EXISTS', KEYS[1]) == 1
for i = 4, #ARGV do
  local field = 'm:' .. ARGV[i]
  if held then
    redis.call('HSET', KEYS[1], field, dec_sub(redis.call('HGET', KEYS[1], field) or '0', ARGV[1]))
  end
  if ARGV[2] ~= '0' then hadd_dec(KEYS[2], field, ARGV[2]) end
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return 0
"
    )
});

/// Spend: KEYS the current period hash; ARGV tokens, money, ttl_s, then each budget's key.
static SPEND: LazyLock<Script> = LazyLock::new(|| {
    money_script!(
        r"
for i = 4, #ARGV do
  redis.call('HINCRBY', KEYS[1], 't:' .. ARGV[i], ARGV[1])
  hadd_dec(KEYS[1], 'm:' .. ARGV[i], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 0
"
    )
});

/// A decimal as the scripts read it: plain digits, never an exponent.
fn decimal_arg(value: Decimal) -> String {
    value.max(Decimal::ZERO).normalize().to_string()
}

impl RedisQueue {
    fn budget_key(&self, tenant: &str, start: u64) -> String {
        self.inner.keys.key(&format!("budget:{}:{tenant}:{start}", tenant.len()))
    }

    fn limits(plan: &BudgetPlan) -> Vec<String> {
        plan.lines
            .iter()
            .flat_map(|line| {
                [
                    line.key.clone(),
                    line.money.map(|m| decimal_arg(m.0)).unwrap_or_default(),
                    line.tokens.map(|t| t.to_string()).unwrap_or_default(),
                ]
            })
            .collect()
    }

    fn answer(plan: &BudgetPlan, (kind, key): (String, String)) -> Result<(), Exhausted> {
        if kind == "ok" {
            return Ok(());
        }
        let spent = plan.spent_of(&kind, &key);
        Err(Exhausted { spent, retry_after_s: plan.retry_after_s(crate::budget::now_unix_s()) })
    }

    async fn reserve_shared(&self, plan: &BudgetPlan) -> Result<Result<(), Exhausted>, QueueError> {
        let hash = self.budget_key(&plan.tenant, plan.period_start_unix_s);
        let answer: (String, String) = self
            .guarded(async {
                RESERVE
                    .key(&hash)
                    .key(format!("{hash}:agents"))
                    .arg(decimal_arg(plan.reserved.0))
                    .arg(plan.agent.as_deref().unwrap_or(""))
                    .arg(plan.agents_max)
                    .arg(plan.ttl_s())
                    .arg(Self::limits(plan))
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(from_redis)
            })
            .await?;
        Ok(Self::answer(plan, answer))
    }

    async fn check_shared(&self, plan: &BudgetPlan) -> Result<Result<(), Exhausted>, QueueError> {
        let current = period_start(crate::budget::now_unix_s(), plan.period_s);
        let answer: (String, String) = self
            .guarded(async {
                CHECK
                    .key(self.budget_key(&plan.tenant, current))
                    .arg(Self::limits(plan))
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(from_redis)
            })
            .await?;
        Ok(Self::answer(plan, answer))
    }

    async fn settle_shared(&self, plan: &BudgetPlan, spent: Decimal) -> Result<(), QueueError> {
        let current = period_start(crate::budget::now_unix_s(), plan.period_s);
        let keys: Vec<&str> = plan.lines.iter().map(|l| l.key.as_str()).collect();
        self.guarded(async {
            SETTLE
                .key(self.budget_key(&plan.tenant, plan.period_start_unix_s))
                .key(self.budget_key(&plan.tenant, current))
                .arg(decimal_arg(plan.reserved.0))
                .arg(decimal_arg(spent))
                .arg(plan.ttl_s())
                .arg(keys)
                .invoke_async(&mut self.conn())
                .await
                .map_err(from_redis)
        })
        .await
    }

    async fn spend_shared(&self, plan: &BudgetPlan, tokens: u64, money: Decimal) -> Result<(), QueueError> {
        let current = period_start(crate::budget::now_unix_s(), plan.period_s);
        let keys: Vec<&str> = plan.lines.iter().map(|l| l.key.as_str()).collect();
        self.guarded(async {
            SPEND
                .key(self.budget_key(&plan.tenant, current))
                .arg(tokens)
                .arg(decimal_arg(money))
                .arg(plan.ttl_s())
                .arg(keys)
                .invoke_async(&mut self.conn())
                .await
                .map_err(from_redis)
        })
        .await
    }
}

impl BudgetStore for RedisQueue {
    fn reserve<'a>(&'a self, plan: &'a BudgetPlan) -> MeterFuture<'a, Result<Result<(), Exhausted>, QueueError>> {
        Box::pin(self.reserve_shared(plan))
    }

    fn settle<'a>(&'a self, plan: &'a BudgetPlan, spent: Decimal) -> MeterFuture<'a, Result<(), QueueError>> {
        Box::pin(self.settle_shared(plan, spent))
    }

    fn spend<'a>(
        &'a self,
        plan: &'a BudgetPlan,
        tokens: u64,
        money: Decimal,
    ) -> MeterFuture<'a, Result<(), QueueError>> {
        Box::pin(self.spend_shared(plan, tokens, money))
    }

    fn check<'a>(&'a self, plan: &'a BudgetPlan) -> MeterFuture<'a, Result<Result<(), Exhausted>, QueueError>> {
        Box::pin(self.check_shared(plan))
    }
}
