//! The `orders_per_minute` view: orders placed, confirmed and cancelled and revenue per
//! 1-minute tumbling window of event time, kept current while events flow. `final` says the
//! watermark has passed the window (its figures will not change); `late_events` counts the
//! events that came after that and were left out.

pub const ORDERS_PER_MINUTE: &str = "orders_per_minute";

/// The rows, as the projection in `processors` folds them. (The view is rebuilt from its
/// topic: the event ids seen are not in the rows.)
pub use processors::orders::windows::WindowRow;

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
            })
            .collect();
        crate::table::round_trip::<OrdersPerMinuteTable>(rows);
    }
}
