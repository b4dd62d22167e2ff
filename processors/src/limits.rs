//! The documented limits of what a command may ask for, shared by every service.
//!
//! Caller-controlled numbers and strings are checked here before any rule does arithmetic
//! on them, so an impossible quantity, price, time or id is an invalid command (dead-lettered
//! with the reason, or a 400 at the API), never a panic, a wrap or an unbounded allocation.
//! Totals that grow over many commands (stock on hand, money captured) are bounded by the
//! rules themselves ([`MAX_ON_HAND`], [`MAX_ORDER_TOTAL_CENTS`]) and refused as business
//! rejections when a command would pass them. The limits are far above any real supply
//! chain's numbers and far enough below `i64::MAX` that sums of a few of them cannot overflow.
//!
//! | limit | value |
//! |---|---|
//! | units in one command ([`MAX_QUANTITY`]) | 1,000,000,000 |
//! | units on hand at one warehouse ([`MAX_ON_HAND`]) | 10^15 |
//! | unit price ([`MAX_UNIT_PRICE_CENTS`]) | 10^12 cents |
//! | order total ([`MAX_ORDER_TOTAL_CENTS`]) | 10^15 cents |
//! | lines in one order ([`MAX_ORDER_LINES`]) | 1,000 |
//! | an id (sku, warehouse, order, reservation, event, tenant…) ([`MAX_ID_BYTES`]) | 256 bytes, no control characters |
//! | a free text (reason, address…) ([`MAX_TEXT_BYTES`]) | 4,096 bytes |
//! | a time ([`MAX_TIME_MS`]) | 0 to 9999-12-31T23:59:59.999Z, in ms |
//!
//! Horizons of what a rule remembers, so state does not grow with history: a sku's spent
//! reservation ids ([`crate::inventory::MAX_SPENT_IDS`] = 10,000, within
//! [`crate::inventory::SPENT_ID_RETENTION_MS`] = 24 h of the newest), a sku's idempotency
//! keys (64, `schemas::inventory::REMEMBERED_KEYS`).

use std::fmt::Display;

use schemas::Metadata;

use crate::InvalidCommand;

/// Units one command may receive, reserve, move, adjust by or count.
pub const MAX_QUANTITY: i64 = 1_000_000_000;
/// Units one warehouse may hold of one sku; receipts and transfers past it are rejected.
pub const MAX_ON_HAND: i64 = 1_000_000_000_000_000;
/// Price of one unit, in cents.
pub const MAX_UNIT_PRICE_CENTS: i64 = 1_000_000_000_000;
/// Total of one order (and so of one payment, refund or invoice), in cents.
pub const MAX_ORDER_TOTAL_CENTS: i64 = 1_000_000_000_000_000;
/// Lines of one order.
pub const MAX_ORDER_LINES: usize = 1_000;
/// Bytes of one id.
pub const MAX_ID_BYTES: usize = 256;
/// Bytes of one free text.
pub const MAX_TEXT_BYTES: usize = 4_096;
/// The latest time a record may carry: 9999-12-31T23:59:59.999Z. Times are never negative.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// Checks of one command's fields; each failure names the command and the field. A field
/// is named by anything displayable (`format_args!("lines[{i}].sku")`), formatted only
/// when a check fails: checking 1,000 lines allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// Record name of the command.
    pub command: &'static str,
}

impl Check {
    pub fn new(command: &'static str) -> Self {
        Check { command }
    }

    /// An invalid-command error naming this command.
    pub fn invalid(self, reason: String) -> InvalidCommand {
        InvalidCommand {
            command: self.command,
            reason,
        }
    }

    /// `Ok` if `ok`, else the error `reason()` describes.
    pub fn require(self, ok: bool, reason: impl FnOnce() -> String) -> Result<(), InvalidCommand> {
        if ok {
            Ok(())
        } else {
            Err(self.invalid(reason()))
        }
    }

    /// A quantity of 1 to [`MAX_QUANTITY`] units.
    pub fn quantity(self, field: impl Display + Copy, v: i64) -> Result<(), InvalidCommand> {
        self.require(v > 0, || format!("field {field} must be positive, got {v}"))?;
        self.at_most(field, v, MAX_QUANTITY)
    }

    /// A non-negative number of at most `max`.
    pub fn in_range(
        self,
        field: impl Display + Copy,
        v: i64,
        max: i64,
    ) -> Result<(), InvalidCommand> {
        self.require(v >= 0, || {
            format!("field {field} must not be negative, got {v}")
        })?;
        self.at_most(field, v, max)
    }

    /// A number of at most `max`.
    pub fn at_most(
        self,
        field: impl Display + Copy,
        v: i64,
        max: i64,
    ) -> Result<(), InvalidCommand> {
        self.require(v <= max, || {
            format!("field {field} is {v}, more than the limit of {max}")
        })
    }

    /// A non-empty id of at most [`MAX_ID_BYTES`].
    pub fn id(self, field: impl Display + Copy, v: &str) -> Result<(), InvalidCommand> {
        self.require(!v.is_empty(), || format!("field {field} is empty"))?;
        self.optional_id(field, v)
    }

    /// A sku: an id without `/`, which joins a sku and a reservation id in inventory's
    /// changelog keys (`<sku>/<reservation>`): a sku `A/B` would meet reservation `B` of sku
    /// `A` there, one record deleting or superseding the other's.
    pub fn sku(self, field: impl Display + Copy, v: &str) -> Result<(), InvalidCommand> {
        self.id(field, v)?;
        self.require(!v.contains('/'), || {
            format!("field {field} contains '/', which skus may not: {v:?}")
        })
    }

    /// An id that may be empty, of at most [`MAX_ID_BYTES`], without control characters
    /// (changelog keys join ids with one).
    pub fn optional_id(self, field: impl Display + Copy, v: &str) -> Result<(), InvalidCommand> {
        self.require(v.len() <= MAX_ID_BYTES, || {
            format!(
                "field {field} is {} bytes, more than the limit of {MAX_ID_BYTES}",
                v.len()
            )
        })?;
        self.require(!v.chars().any(char::is_control), || {
            format!("field {field} contains a control character: {v:?}")
        })
    }

    /// A free text of at most [`MAX_TEXT_BYTES`].
    pub fn text(self, field: impl Display + Copy, v: &str) -> Result<(), InvalidCommand> {
        self.require(v.len() <= MAX_TEXT_BYTES, || {
            format!(
                "field {field} is {} bytes, more than the limit of {MAX_TEXT_BYTES}",
                v.len()
            )
        })
    }

    /// A time from 0 to [`MAX_TIME_MS`].
    pub fn time(self, field: impl Display + Copy, v: i64) -> Result<(), InvalidCommand> {
        self.require((0..=MAX_TIME_MS).contains(&v), || {
            format!("field {field} is {v}, outside 0 to {MAX_TIME_MS} (9999-12-31) ms")
        })
    }

    /// The metadata every command carries: a non-empty event id, ids of bounded length and
    /// a time in range.
    pub fn metadata(self, m: &Metadata) -> Result<(), InvalidCommand> {
        self.id("metadata.event_id", &m.event_id)?;
        self.optional_id("metadata.aggregate_id", &m.aggregate_id)?;
        self.optional_id("metadata.correlation_id", &m.correlation_id)?;
        if let Some(id) = &m.causation_id {
            self.optional_id("metadata.causation_id", id)?;
        }
        if let Some(id) = &m.saga_id {
            self.optional_id("metadata.saga_id", id)?;
        }
        self.optional_id("metadata.tenant_id", &m.tenant_id)?;
        self.optional_id("metadata.region", &m.region)?;
        self.time("metadata.occurred_at", m.occurred_at)
    }
}

/// Numbers a hostile producer would try (i64's bounds, 0, -1, each limit and one past it),
/// and ordinary ones: what the property tests feed the rules.
#[cfg(test)]
pub(crate) fn hostile_numbers() -> impl proptest::strategy::Strategy<Value = i64> {
    use proptest::prelude::*;
    prop_oneof![
        prop::sample::select(vec![
            i64::MIN,
            i64::MAX,
            0,
            -1,
            MAX_QUANTITY,
            MAX_QUANTITY + 1,
            MAX_ON_HAND,
            MAX_ON_HAND + 1,
            MAX_UNIT_PRICE_CENTS,
            MAX_UNIT_PRICE_CENTS + 1,
        ]),
        1..1_000i64,
        any::<i64>(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_of_a_few_limits_cannot_overflow() {
        assert!(MAX_ON_HAND.checked_add(MAX_QUANTITY).is_some());
        assert!(MAX_ON_HAND.checked_mul(4).is_some());
        assert!(MAX_ORDER_TOTAL_CENTS.checked_mul(4).is_some());
        assert!(MAX_TIME_MS.checked_add(100 * 365 * 86_400_000).is_some());
    }

    #[test]
    fn each_refusal_names_the_field_and_the_limit() {
        let c = Check::new("supplychain.Test");
        let e = c.quantity("quantity", i64::MAX).unwrap_err();
        assert_eq!(e.command, "supplychain.Test");
        assert!(e.reason.contains("field quantity") && e.reason.contains("1000000000"));
        assert!(c.quantity("quantity", 0).is_err());
        assert!(c.quantity("quantity", MAX_QUANTITY).is_ok());
        let e = c.id("sku", &"x".repeat(MAX_ID_BYTES + 1)).unwrap_err();
        assert!(e.reason.contains("257 bytes"), "{e}");
        let e = c.sku("sku", "A/B").unwrap_err();
        assert!(e.reason.contains("contains '/'"), "{e}");
        assert!(c.sku("sku", "SKU-00001").is_ok());
        assert!(c.time("at", -1).is_err() && c.time("at", i64::MAX).is_err());
        assert!(c.time("at", 0).is_ok());
    }
}
