//! The `returns` view: one row per return (sorted by order, then return id), declared by its
//! columns.

pub const VIEW: &str = "returns";

/// The rows, as the projection in `processors` folds them.
pub use processors::returns::view::ReturnRow;

crate::columns! {
    ReturnsTable, ReturnRow, VIEW, order: |r| (&r.order_id, &r.return_id),
    order_id: Text,
    return_id: Text,
    status: Text,
    reason: OptText,
    units: Int,
    sellable: Int,
    damaged: Int,
    refund_cents: Int,
    decided_at: Time,
    received_at: OptTime,
    warehouse: OptText,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_as_written() {
        let rows: Vec<ReturnRow> = (0..4)
            .map(|i| ReturnRow {
                order_id: format!("O-{i}"),
                return_id: format!("R-{i}"),
                status: if i == 1 { "Rejected" } else { "Received" }.into(),
                reason: (i == 1).then(|| "late".into()),
                units: i,
                sellable: i / 2,
                damaged: i % 2,
                refund_cents: 100 * i,
                decided_at: 1_700_000_000_000 + i,
                received_at: (i != 1).then_some(1_700_000_100_000 + i),
                warehouse: (i != 1).then(|| "RTM".into()),
            })
            .collect();
        crate::table::round_trip::<ReturnsTable>(rows);
    }
}
