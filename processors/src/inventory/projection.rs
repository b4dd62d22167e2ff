//! The `stock_levels` read model: positions per (sku, warehouse), folded from events.
//!
//! Unlike the aggregate it keeps no reservations: every event carries the warehouse and
//! quantity it moves, so positions alone are enough to fold, and the projection can be
//! restored from the rows of its own view.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemas::inventory::InventoryEvent;

use super::{Position, aggregate::for_each_effect};
use crate::{Projection, Source};

/// One row of `stock_levels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLevel {
    pub sku: String,
    pub warehouse: String,
    pub on_hand: i64,
    pub reserved: i64,
    /// Aggregate version of the sku after the last event that changed this row.
    pub version: i64,
    /// When the last event that changed this row occurred (ms since epoch, UTC).
    pub updated_at: i64,
}

/// One row of the projection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectedPosition {
    pub position: Position,
    /// Aggregate version after the last event that changed this row.
    pub version: i64,
    /// `occurred_at` of that event.
    pub updated_at: i64,
}

/// Positions of every (sku, warehouse) seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockLevelsProjection {
    rows: BTreeMap<(String, String), ProjectedPosition>,
}

impl StockLevelsProjection {
    /// Folds one event.
    pub fn apply(&mut self, event: &InventoryEvent) {
        let m = event.metadata();
        let sku = event.sku();
        for_each_effect(event, |warehouse, effect| {
            let row = self
                .rows
                .entry((sku.to_owned(), warehouse.to_owned()))
                .or_default();
            row.position.apply(effect);
            row.version = m.aggregate_version;
            row.updated_at = m.occurred_at;
        });
    }

    /// Restores one row (from the view's stored table).
    pub fn restore_row(&mut self, sku: String, warehouse: String, row: ProjectedPosition) {
        self.rows.insert((sku, warehouse), row);
    }

    /// All positions, ordered by (sku, warehouse).
    pub fn positions(&self) -> impl Iterator<Item = (&str, &str, &ProjectedPosition)> {
        self.rows
            .iter()
            .map(|((s, w), r)| (s.as_str(), w.as_str(), r))
    }
}

impl Projection for StockLevelsProjection {
    type Event = InventoryEvent;
    type Row = StockLevel;
    /// Every event carries what it moves: the positions are the whole state.
    const RESUMES: bool = true;

    fn apply(&mut self, _at: Source<'_>, event: &InventoryEvent) {
        StockLevelsProjection::apply(self, event);
    }

    fn rows(&self) -> Vec<Cow<'_, StockLevel>> {
        self.positions()
            .map(|(sku, warehouse, r)| {
                Cow::Owned(StockLevel {
                    sku: sku.to_owned(),
                    warehouse: warehouse.to_owned(),
                    on_hand: r.position.on_hand,
                    reserved: r.position.reserved,
                    version: r.version,
                    updated_at: r.updated_at,
                })
            })
            .collect()
    }

    fn restore(rows: Vec<StockLevel>) -> Option<Self> {
        let mut projection = StockLevelsProjection::default();
        for row in rows {
            let position = Position {
                on_hand: row.on_hand,
                reserved: row.reserved,
            };
            projection.restore_row(
                row.sku,
                row.warehouse,
                ProjectedPosition {
                    position,
                    version: row.version,
                    updated_at: row.updated_at,
                },
            );
        }
        Some(projection)
    }
}

#[cfg(test)]
mod tests {
    use schemas::inventory::*;

    use super::*;
    use crate::Aggregate;
    use crate::inventory::SkuInventory;

    #[test]
    fn the_projection_agrees_with_the_aggregate() {
        let mut agg = SkuInventory::new("S");
        let mut view = StockLevelsProjection::default();
        let m = |id: &str| Metadata::command(id, "S", 7);
        let commands: Vec<InventoryCommand> = vec![
            ReceiveStock {
                metadata: m("1"),
                sku: "S".into(),
                warehouse: "A".into(),
                quantity: 9,
            }
            .into(),
            ReserveStock {
                metadata: m("2"),
                reservation_id: "R".into(),
                sku: "S".into(),
                warehouse: "A".into(),
                quantity: 4,
            }
            .into(),
            TransferStock {
                metadata: m("3"),
                sku: "S".into(),
                from_warehouse: "A".into(),
                to_warehouse: "B".into(),
                quantity: 5,
            }
            .into(),
            ReleaseReservation {
                metadata: m("4"),
                reservation_id: "R".into(),
                sku: "S".into(),
            }
            .into(),
            AuditStock {
                metadata: m("5"),
                sku: "S".into(),
                warehouse: "B".into(),
                counted: 3,
            }
            .into(),
            AdjustStock {
                metadata: m("6"),
                sku: "S".into(),
                warehouse: "A".into(),
                delta: -1,
                reason: "x".into(),
            }
            .into(),
        ];
        for c in &commands {
            for e in agg.handle(c).unwrap() {
                agg.apply(&e);
                view.apply(&e);
            }
        }
        let rows: Vec<_> = view
            .positions()
            .map(|(s, w, r)| (s.to_owned(), w.to_owned(), r.position))
            .collect();
        let expected: Vec<_> = agg
            .positions()
            .map(|(w, p)| ("S".to_owned(), w.to_owned(), p))
            .collect();
        assert_eq!(rows, expected);
        assert_eq!(
            rows[0].2,
            Position {
                on_hand: 3,
                reserved: 0
            }
        );
        assert_eq!(view.positions().next().unwrap().2.version, agg.version());
    }
}
