//! What a run cost: the quantities its bundle records (fuel, wall time, memory, HTTP exchanges,
//! stored bytes), priced by a price table in an exact decimal currency. The same function
//! measures a run as it is sealed and a bundle read back, so `guild bundle cost` re-derives,
//! from the bundle alone, the figure the daemon answered with.

use crate::Bundle;
use crate::tape::{Effect, Event};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The priced quantities of one run, all from what its bundle records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantities {
    /// Fuel units burnt (`result.json`).
    pub fuel_units: u64,
    /// Wall time of the guest's call, µs (`exec.json`).
    pub wall_time_us: u64,
    /// Peak linear memory, bytes (`exec.json`).
    pub memory_bytes_peak: u64,
    /// Outgoing HTTP requests the guest made (the tape's exchanges, refused ones included).
    pub egress_requests: u64,
    /// Bytes of their request and response bodies (the tape's).
    pub egress_bytes: u64,
    /// Bytes the bundle holds: its blobs, manifest and signature.
    pub bundle_bytes: u64,
}

impl Quantities {
    /// Measure a run from what its bundle holds: `fuel_units` (`result.json`), the exec
    /// record's wall time and memory peak, its tape's events and the bundle's size.
    pub fn measure(
        fuel_units: u64,
        (wall_time_us, memory_bytes_peak): (u64, u64),
        events: &[Event],
        bundle_bytes: u64,
    ) -> Self {
        let (mut egress_requests, mut egress_bytes) = (0u64, 0u64);
        for event in events {
            if let Effect::Http { request, response, .. } = &event.effect {
                egress_requests += 1;
                egress_bytes = egress_bytes
                    .saturating_add(request.body_bytes)
                    .saturating_add(response.as_ref().map_or(0, |r| r.body_bytes));
            }
        }
        Self { fuel_units, wall_time_us, memory_bytes_peak, egress_requests, egress_bytes, bundle_bytes }
    }

    /// Measure an opened bundle whose manifest and signature take `bundle_bytes` with its blobs.
    pub fn of(bundle: &Bundle, bundle_bytes: u64) -> Self {
        let exec = |field: &str| bundle.exec[field].as_u64().unwrap_or(0);
        Self::measure(
            bundle.result.fuel_used_units,
            (exec("wall_time_us"), exec("memory_bytes_peak")),
            bundle.tape.events(),
            bundle_bytes,
        )
    }
}

/// A price table: what each quantity costs, in one currency. Prices are decimal strings in the
/// configuration (`"0.000002"`), never floats, and apply per the unit their name ends in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// ISO 4217 code, three capital letters (`USD`, `EUR`), or a unit of the operator's own
    /// (`CREDIT`): letters only, 3 to 8.
    pub currency: String,
    /// Per million fuel units.
    #[serde(default)]
    pub fuel_per_million: Price,
    /// Per second of wall time a run held its slot.
    #[serde(default)]
    pub wall_second: Price,
    /// Per MiB of peak linear memory held for one second.
    #[serde(default)]
    pub memory_mib_second: Price,
    /// Per outgoing HTTP request.
    #[serde(default)]
    pub egress_request: Price,
    /// Per MiB of outgoing request and response bodies.
    #[serde(default)]
    pub egress_mib: Price,
    /// Per MiB of bundle stored.
    #[serde(default)]
    pub bundle_mib: Price,
}

/// A non-negative exact decimal price, written as a string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price(pub Decimal);

impl Serialize for Price {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.normalize().to_string())
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Price::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Price {
    /// Parse a decimal string: digits with at most one point, not negative, at most 28 digits.
    ///
    /// # Errors
    /// A message saying what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = Decimal::from_str_exact(text.trim())
            .map_err(|e| format!("{text:?} is not a decimal price ({e}); write it as a string such as \"0.000002\""))?;
        if value.is_sign_negative() {
            return Err(format!("{text:?} is negative; a price is 0 or more"));
        }
        Ok(Self(value))
    }
}

/// One priced quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostLine {
    /// `fuel`, `wall_time`, `memory`, `egress_requests`, `egress_bytes`, `bundle_bytes`.
    pub resource: String,
    /// How much, in `unit`.
    pub quantity: Price,
    /// `million fuel units`, `s`, `MiB·s`, `requests`, `MiB`.
    pub unit: String,
    /// The table's price per `unit`.
    pub unit_price: Price,
    /// `quantity × unit_price`, exact.
    pub amount: Price,
}

/// What a run cost: its priced lines and their exact sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cost {
    /// The table's currency.
    pub currency: String,
    /// The sum of the lines' amounts.
    pub total: Price,
    /// One line per resource the table prices (a zero price makes no line).
    pub lines: Vec<CostLine>,
}

/// One MiB, in bytes.
const MIB: u64 = 1 << 20;

impl PriceTable {
    /// Check the table.
    ///
    /// # Errors
    /// A message naming the currency when it is not 3 to 8 capital letters.
    pub fn validate(&self) -> Result<(), String> {
        let ok = (3..=8).contains(&self.currency.len()) && self.currency.bytes().all(|b| b.is_ascii_uppercase());
        if !ok {
            return Err(format!(
                "currency {:?} is not 3 to 8 capital letters (an ISO 4217 code such as USD)",
                self.currency
            ));
        }
        Ok(())
    }

    /// What `quantities` cost under this table.
    pub fn price(&self, q: &Quantities) -> Cost {
        let ratio = |n: u64, d: u64| Decimal::from(n) / Decimal::from(d);
        let seconds = ratio(q.wall_time_us, 1_000_000);
        let candidates = [
            ("fuel", ratio(q.fuel_units, 1_000_000), "million fuel units", self.fuel_per_million),
            ("wall_time", seconds, "s", self.wall_second),
            ("memory", ratio(q.memory_bytes_peak, MIB) * seconds, "MiB·s", self.memory_mib_second),
            ("egress_requests", Decimal::from(q.egress_requests), "requests", self.egress_request),
            ("egress_bytes", ratio(q.egress_bytes, MIB), "MiB", self.egress_mib),
            ("bundle_bytes", ratio(q.bundle_bytes, MIB), "MiB", self.bundle_mib),
        ];
        let lines: Vec<CostLine> = candidates
            .into_iter()
            .filter(|(_, _, _, price)| !price.0.is_zero())
            .map(|(resource, quantity, unit, unit_price)| CostLine {
                resource: resource.to_string(),
                quantity: Price(quantity),
                unit: unit.to_string(),
                unit_price,
                amount: Price(quantity.checked_mul(unit_price.0).unwrap_or(Decimal::MAX)),
            })
            .collect();
        let total =
            lines.iter().fold(Decimal::ZERO, |sum, line| sum.checked_add(line.amount.0).unwrap_or(Decimal::MAX));
        Cost { currency: self.currency.clone(), total: Price(total), lines }
    }
}

impl FromStr for Price {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Price::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        toml_like(
            r#"{"currency": "USD", "fuel_per_million": "0.00002", "wall_second": "0.0001", "egress_request": "0.000001"}"#,
        )
    }

    fn toml_like(json: &str) -> PriceTable {
        serde_json::from_str(json).expect("a table")
    }

    #[test]
    fn ten_thousand_tiny_charges_sum_exactly() {
        let table = PriceTable { egress_request: Price::parse("0.0000001").expect("price"), ..table() };
        let one = table.price(&Quantities { egress_requests: 1, ..Quantities::default() });
        let mut sum = Decimal::ZERO;
        for _ in 0..10_000 {
            sum += one.total.0;
        }
        assert_eq!(sum, Decimal::from_str_exact("0.001").expect("decimal"), "no float ever rounded it");
        assert_eq!(serde_json::to_value(one.total).expect("json"), "0.0000001");
    }

    #[test]
    fn each_line_is_quantity_times_price_and_zero_prices_make_no_line() {
        let quantities =
            Quantities { fuel_units: 3_000_000, wall_time_us: 250_000, egress_requests: 2, ..Quantities::default() };
        let cost = table().price(&quantities);
        let amounts: Vec<(&str, String)> =
            cost.lines.iter().map(|l| (l.resource.as_str(), l.amount.0.normalize().to_string())).collect();
        assert_eq!(
            amounts,
            [("fuel", "0.00006".into()), ("wall_time", "0.000025".into()), ("egress_requests", "0.000002".into())]
        );
        assert_eq!(cost.total.0.normalize().to_string(), "0.000087");
    }

    #[test]
    fn prices_are_strings_not_floats_and_never_negative() {
        assert!(serde_json::from_str::<PriceTable>(r#"{"currency": "USD", "wall_second": 0.1}"#).is_err(), "a float");
        let negative = serde_json::from_str::<PriceTable>(r#"{"currency": "USD", "wall_second": "-1"}"#);
        assert!(negative.expect_err("negative").to_string().contains("negative"));
        assert!(toml_like(r#"{"currency": "usd"}"#).validate().is_err());
        assert!(toml_like(r#"{"currency": "CREDIT"}"#).validate().is_ok());
    }
}
