//! Views derived from the materialized ones by SQL: analytics that are a GROUP BY away from
//! a table a service already keeps (`revenue` and `sales_by_day` from the billing ledger,
//! `order_funnel` and `orders_current` from the saga views, `supplier_performance` from
//! `purchase_orders`, `carrier_performance` from `shipments`). They are registered in every
//! query context as SQL views over those tables, so they are always exactly as fresh as their
//! base tables and cost nothing to keep; their SQL is plain enough to run unchanged on DuckDB
//! over the same Parquet files (the integration suite does, through a CTE of the same text).
//!
//! A derived view is materialized only if a query over it becomes too slow to answer from its
//! base table; none is today (its base tables are sorted by the keys these views group by).

/// A view defined by SQL over materialized views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerivedView {
    pub name: &'static str,
    /// The materialized views its SQL reads (its freshness is theirs).
    pub from: &'static [&'static str],
    pub sql: &'static str,
    pub about: &'static str,
}

/// Every derived view.
pub const DERIVED: &[DerivedView] = &[
    DerivedView {
        name: "revenue",
        from: &["ledger"],
        about: "Per order: captured, refunded and recognized revenue (cents), from the ledger. \
                Once an order's saga has ended, revenue_cents = captured_cents - refunded_cents.",
        sql: "SELECT order_id, \
              sum(CASE WHEN account = 'cash' THEN debit_cents ELSE 0 END) AS captured_cents, \
              sum(CASE WHEN account = 'cash' THEN credit_cents ELSE 0 END) AS refunded_cents, \
              sum(CASE WHEN account = 'revenue' THEN credit_cents - debit_cents ELSE 0 END) AS revenue_cents \
              FROM ledger GROUP BY order_id",
    },
    DerivedView {
        name: "sales_by_day",
        from: &["ledger"],
        about: "Per UTC day: invoices issued, revenue invoiced, refunds paid (cents).",
        sql: "SELECT CAST(occurred_at AS DATE) AS day, \
              count(DISTINCT CASE WHEN entry = 'InvoiceIssued' THEN document END) AS invoices, \
              sum(CASE WHEN account = 'revenue' THEN credit_cents - debit_cents ELSE 0 END) AS revenue_cents, \
              sum(CASE WHEN entry = 'CreditNoteIssued' AND account = 'cash' THEN credit_cents ELSE 0 END) AS refunded_cents \
              FROM ledger GROUP BY CAST(occurred_at AS DATE)",
    },
    DerivedView {
        name: "order_funnel",
        from: &["saga_steps"],
        about: "How many orders reached each step of fulfilment, and how many ended each way.",
        sql: "SELECT count(DISTINCT saga_id) AS placed, \
              count(DISTINCT CASE WHEN step = 'StockReserved' THEN saga_id END) AS reserved, \
              count(DISTINCT CASE WHEN step = 'PaymentCaptured' THEN saga_id END) AS paid, \
              count(DISTINCT CASE WHEN step = 'ShipmentCreated' THEN saga_id END) AS shipped, \
              count(DISTINCT CASE WHEN step = 'OrderConfirmed' THEN saga_id END) AS confirmed, \
              count(DISTINCT CASE WHEN step = 'OrderCancelled' THEN saga_id END) AS cancelled \
              FROM saga_steps",
    },
    DerivedView {
        name: "orders_current",
        from: &["sagas"],
        about: "The current state of every order, one row each (a point lookup by order_id \
                reads one row group of the sorted sagas table).",
        sql: "SELECT saga_id AS order_id, customer_id, status, current_step, total_cents, \
              started_at, updated_at, outcome FROM sagas",
    },
    DerivedView {
        name: "supplier_performance",
        from: &["purchase_orders"],
        about: "Per supplier: purchase orders placed and received, units, lead times (ms).",
        sql: "SELECT supplier_id, count(*) AS purchase_orders, count(received_at) AS received, \
              sum(quantity) AS units_ordered, \
              CAST(round(avg(lead_time_ms)) AS BIGINT) AS mean_lead_time_ms, \
              max(lead_time_ms) AS max_lead_time_ms \
              FROM purchase_orders GROUP BY supplier_id",
    },
    DerivedView {
        name: "carrier_performance",
        from: &["shipments"],
        about: "Per carrier: shipments reported on, delivered, failed delivery attempts, \
                transit times from pick-up to delivery (ms).",
        sql: "SELECT carrier, count(*) AS shipments, count(delivered_at) AS delivered, \
              sum(failed_attempts) AS failed_attempts, \
              CAST(round(avg(transit_ms)) AS BIGINT) AS mean_transit_ms, \
              max(transit_ms) AS max_transit_ms \
              FROM shipments GROUP BY carrier",
    },
];

/// Whether a SQL text names `table` (identifiers compared whole, case-insensitively).
pub fn mentions(sql: &str, table: &str) -> bool {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w.eq_ignore_ascii_case(table))
}

/// The derived views a SQL text names.
pub fn named_in(sql: &str) -> impl Iterator<Item = &'static DerivedView> {
    DERIVED.iter().filter(move |d| mentions(sql, d.name))
}
