//! The usage ledger a fleet shares, under the queue's hash tag: one hash per hour and tenant,
//! `usage:HOUR:LEN:TENANT` (the hour's start, seconds since the Unix epoch), whose fields are a
//! row's key (its caller's JSON, which never holds a newline) and, after a newline, `runs` (a
//! count), `total` or `r:RESOURCE` (exact decimal strings, added by `lua/decimal.lua`); the field
//! `\nrows` counts the hour's rows. A tenant's rows never crowd another's out, and a question
//! about one tenant reads only its hashes. Hours expire once no longer kept.

use super::{QueueError, RedisQueue, from_redis};
use redis::Script;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::LazyLock;

/// Add one run: KEYS the hour's hash; ARGV row, fallback row, rows_max, ttl_s, total, then
/// (resource, amount) pairs. A new row past `rows_max` rows is counted in the fallback row (its
/// tenant's). Answers the row used.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/decimal.lua"),
        r"
local row = ARGV[1]
if redis.call('HEXISTS', KEYS[1], row .. '\nruns') == 0 then
  if tonumber(redis.call('HGET', KEYS[1], '\nrows') or '0') >= tonumber(ARGV[3]) then row = ARGV[2] end
  if redis.call('HEXISTS', KEYS[1], row .. '\nruns') == 0 then redis.call('HINCRBY', KEYS[1], '\nrows', 1) end
end
redis.call('HINCRBY', KEYS[1], row .. '\nruns', 1)
hadd_dec(KEYS[1], row .. '\ntotal', ARGV[5])
for i = 6, #ARGV, 2 do hadd_dec(KEYS[1], row .. '\nr:' .. ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return row
"
    ))
});

/// Most fields one row of an hour has: runs, total and one per priced resource.
const USAGE_FIELDS_PER_ROW_MAX: u64 = 24;

/// One row of an hour as Redis holds it: its runs, total and amounts by resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageSums {
    /// Runs counted.
    pub runs: u64,
    /// What they cost.
    pub total: Decimal,
    /// By resource.
    pub by_resource: HashMap<String, Decimal>,
}

impl RedisQueue {
    fn usage_key(&self, hour_unix_s: u64, tenant: &str) -> String {
        self.inner.keys.key(&format!("usage:{hour_unix_s}:{}:{tenant}", tenant.len()))
    }

    /// Add a run that cost `total` (`by_resource`) to `tenant`'s `row` of the hour starting at
    /// `hour_unix_s`; past `rows_max` of its rows in that hour a new row's runs go to `fallback`.
    /// The hour is kept `ttl_s` seconds after its last run. Returns the row used.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the script.
    pub async fn usage_add(
        &self,
        (hour_unix_s, tenant): (u64, &str),
        (row, fallback): (&str, &str),
        (rows_max, ttl_s): (u64, u64),
        total: Decimal,
        by_resource: &[(String, Decimal)],
    ) -> Result<String, QueueError> {
        let pairs: Vec<String> = by_resource
            .iter()
            .flat_map(|(resource, amount)| [resource.clone(), (*amount).max(Decimal::ZERO).normalize().to_string()])
            .collect();
        self.guarded(async {
            ADD.key(self.usage_key(hour_unix_s, tenant))
                .arg(row)
                .arg(fallback)
                .arg(rows_max)
                .arg(ttl_s)
                .arg(total.max(Decimal::ZERO).normalize().to_string())
                .arg(pairs)
                .invoke_async(&mut self.conn())
                .await
                .map_err(from_redis)
        })
        .await
    }

    /// `tenant`'s rows of the hour starting at `hour_unix_s`, by row key, when it holds at most
    /// `rows_max` rows (plus the fallback row).
    ///
    /// # Errors
    /// As [`RedisQueue::usage_add`]; [`QueueError::Corrupt`] for a field that does not parse, or
    /// an hour with more fields than `rows_max` rows can have (it is not read).
    pub async fn usage_hour(
        &self,
        (hour_unix_s, tenant): (u64, &str),
        rows_max: usize,
    ) -> Result<HashMap<String, UsageSums>, QueueError> {
        let key = self.usage_key(hour_unix_s, tenant);
        let fields_max = (rows_max as u64).saturating_mul(2).saturating_mul(USAGE_FIELDS_PER_ROW_MAX);
        let fields: Option<HashMap<String, String>> = self
            .guarded(async {
                let (count, fields): (u64, Option<HashMap<String, String>>) = redis::Script::new(
                    "local n = redis.call('HLEN', KEYS[1]) if n > tonumber(ARGV[1]) then return {n, false} end \
                     return {n, redis.call('HGETALL', KEYS[1])}",
                )
                .key(&key)
                .arg(fields_max)
                .invoke_async(&mut self.conn())
                .await
                .map_err(from_redis)?;
                Ok(fields.or_else(|| (count == 0).then(HashMap::new)))
            })
            .await?;
        let Some(fields) = fields else {
            return Err(QueueError::Corrupt(format!(
                "usage hour {hour_unix_s} holds more than {fields_max} fields: more than its rows can have; not read"
            )));
        };
        let corrupt = |field: &str| QueueError::Corrupt(format!("usage hour {hour_unix_s}: field {field:?}"));
        let mut rows: HashMap<String, UsageSums> = HashMap::new();
        for (field, value) in fields {
            let Some((row, name)) = field.rsplit_once('\n') else { return Err(corrupt(&field)) };
            if row.is_empty() {
                continue; // the hour's row count
            }
            let sums = rows.entry(row.to_string()).or_default();
            let amount = || value.parse::<Decimal>().map_err(|_| corrupt(&field));
            match name {
                "runs" => sums.runs = value.parse().map_err(|_| corrupt(&field))?,
                "total" => sums.total = amount()?,
                _ => match name.strip_prefix("r:") {
                    Some(resource) => {
                        sums.by_resource.insert(resource.to_string(), amount()?);
                    }
                    None => return Err(corrupt(&field)),
                },
            }
        }
        Ok(rows)
    }
}
