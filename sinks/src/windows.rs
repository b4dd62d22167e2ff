//! The `orders_per_minute` view: orders placed, confirmed and cancelled and revenue per
//! 1-minute tumbling window of event time, kept current while events flow. `final` says the
//! watermark has passed the window (its figures will not change); `late_events` counts the
//! events that came after that and were left out. `event_ids` holds the ids of the events an
//! open window counted (a copy counts once); `orders_per_minute_sources` what the watermark
//! knows of each partition. Together they are the view's whole state: it resumes from them.

pub const ORDERS_PER_MINUTE: &str = "orders_per_minute";

/// The rows, as the projection in `processors` folds them.
pub use processors::orders::windows::{SourceRow, WindowRow};

crate::columns! {
    OrdersPerMinuteTable, WindowRow, ORDERS_PER_MINUTE, order: |r| r.window_start,
    window_start: Time,
    window_end: Time,
    orders_placed: Int,
    orders_confirmed: Int,
    orders_cancelled: Int,
    revenue_cents: Int,
    late_events: Int,
    "final" => is_final: Bool,
    event_ids: TextList,
}

/// `orders_per_minute_sources`: one row per partition of `orders.events`, its latest event
/// time, whether it was read to its end, and the view's watermark (windows ending at or
/// before it are final).
pub mod sources {
    pub const ORDERS_PER_MINUTE_SOURCES: &str = "orders_per_minute_sources";

    crate::columns! {
        SourcesTable, SourceRow, ORDERS_PER_MINUTE_SOURCES, order: |r| r.partition,
        partition: Int32,
        latest_event_at: OptTime,
        idle: Bool,
        watermark: OptTime,
    }

    use super::SourceRow;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_as_written() {
        let minute = 60_000;
        let rows: Vec<WindowRow> = (0..3)
            .map(|i| WindowRow {
                window_start: i * minute,
                window_end: (i + 1) * minute,
                orders_placed: 10 + i,
                orders_confirmed: 8,
                orders_cancelled: 2 + i,
                revenue_cents: 1_000 * i,
                late_events: i % 2,
                is_final: i < 2,
                event_ids: (0..i).map(|n| format!("e-{n}")).collect(),
            })
            .collect();
        crate::table::round_trip::<OrdersPerMinuteTable>(rows);
        let sources: Vec<SourceRow> = (0..3)
            .map(|p| SourceRow {
                partition: p,
                latest_event_at: (p > 0).then_some(i64::from(p) * minute),
                idle: p == 1,
                watermark: Some(minute),
            })
            .collect();
        crate::table::round_trip::<sources::SourcesTable>(sources);
    }
}
