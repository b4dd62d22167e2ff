//! Low-stock alerts: the inventory service's signal to purchasing. Not part of the sku
//! aggregate's events (the fold of `inventory.events` stays what it was): the service checks
//! each event it produces against [`LowStock`] and publishes a `StockLow` on
//! `inventory.alerts` in the same transaction.

use schemas::inventory::{InventoryEvent, Metadata, StockLow};
use uuid::Uuid;

const ALERT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x3e0b_7a51_c2d4_4f08_b1a6_5d93_e27c_0a18);

/// When a position counts as low: available stock (on hand − reserved) below `threshold`.
/// A threshold of 0 or less disables alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowStock {
    pub threshold: i64,
}

impl LowStock {
    /// The alert `event` raises for `warehouse`, whose available stock it moved from `before`
    /// to `after`: one when it crosses below the threshold (one alert per dip, not one per
    /// event while low), and one when a receipt leaves it still below (the replenishment was
    /// not enough: purchasing must order again).
    pub fn check(
        &self,
        event: &InventoryEvent,
        warehouse: &str,
        before: i64,
        after: i64,
    ) -> Option<StockLow> {
        let receipt = matches!(event, InventoryEvent::InventoryReceived(_));
        let low = self.threshold > 0 && after < self.threshold;
        if !low || !(before >= self.threshold || receipt) {
            return None;
        }
        let cause = event.metadata();
        let sku = cause.aggregate_id.clone();
        let id = format!("stock-low/{sku}/{}/{warehouse}", cause.aggregate_version);
        Some(StockLow {
            metadata: Metadata {
                event_id: Uuid::new_v5(&ALERT_ID_NAMESPACE, id.as_bytes()).to_string(),
                aggregate_id: sku.clone(),
                aggregate_version: cause.aggregate_version,
                occurred_at: cause.occurred_at,
                correlation_id: cause.correlation_id.clone(),
                causation_id: Some(cause.event_id.clone()),
                saga_id: None,
                tenant_id: cause.tenant_id.clone(),
                region: cause.region.clone(),
            },
            sku,
            warehouse: warehouse.to_owned(),
            available: after,
            threshold: self.threshold,
        })
    }
}

#[cfg(test)]
mod tests {
    use schemas::inventory::{InventoryReceived, InventoryReserved};

    use super::*;

    fn meta(version: i64) -> Metadata {
        Metadata {
            aggregate_version: version,
            ..Metadata::command("e", "SKU-1", 5)
        }
    }

    fn reserved(version: i64) -> InventoryEvent {
        InventoryReserved {
            metadata: meta(version),
            reservation_id: "R".into(),
            sku: "SKU-1".into(),
            warehouse: "AMS".into(),
            quantity: 1,
            expires_at: None,
        }
        .into()
    }

    fn received(version: i64) -> InventoryEvent {
        InventoryReceived {
            metadata: meta(version),
            sku: "SKU-1".into(),
            warehouse: "AMS".into(),
            quantity: 1,
        }
        .into()
    }

    #[test]
    fn one_alert_per_dip_and_one_per_receipt_that_leaves_it_low() {
        let rule = LowStock { threshold: 10 };
        assert_eq!(rule.check(&reserved(1), "AMS", 12, 10), None, "not below");
        let alert = rule.check(&reserved(2), "AMS", 10, 9).expect("crossing");
        assert_eq!(
            (
                alert.available,
                alert.threshold,
                alert.metadata.aggregate_version
            ),
            (9, 10, 2)
        );
        assert_eq!(alert.metadata.causation_id.as_deref(), Some("e"));
        assert_eq!(
            rule.check(&reserved(3), "AMS", 9, 8),
            None,
            "still low: no new alert"
        );
        assert!(
            rule.check(&received(4), "AMS", 8, 9).is_some(),
            "receipt left it low"
        );
        assert_eq!(rule.check(&received(5), "AMS", 9, 40), None, "lifted");
        assert_eq!(
            LowStock { threshold: 0 }.check(&reserved(6), "AMS", 5, -1),
            None
        );
        // Deterministic ids: the same event yields the same alert.
        assert_eq!(rule.check(&reserved(2), "AMS", 10, 9), Some(alert));
    }
}
