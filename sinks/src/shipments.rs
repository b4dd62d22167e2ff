//! The shipping service's `shipments` view: one row per shipment the carriers have reported
//! on (`shipping.tracking`, external events), with where it is, when it was picked up and
//! delivered, and how many delivery attempts failed. Sorted by shipment id, so a point lookup
//! reads one range of one row group.
//!
//! `carrier_performance` is derived from it (see [`crate::derived`]).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::{Result, table::batch};

pub const VIEW: &str = "shipments";

/// Where a shipment stands.
pub mod status {
    /// Picked up; not delivered; its latest scan is not a failed attempt.
    pub const IN_TRANSIT: &str = "in_transit";
    /// Its latest scan is a failed delivery attempt.
    pub const ATTEMPT_FAILED: &str = "attempt_failed";
    /// Delivered (final, whatever scans arrive later).
    pub const DELIVERED: &str = "delivered";
}

/// One shipment, as its carrier reported it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShipmentRow {
    pub shipment_id: String,
    pub carrier: String,
    /// One of [`status`].
    pub status: &'static str,
    pub picked_up_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub received_by: Option<String>,
    pub failed_attempts: i64,
    /// Reason of the latest failed attempt.
    pub last_failure: Option<String>,
    pub last_location: String,
    pub last_scan_at: i64,
    /// Distinct scans (by event id) folded.
    pub scans: i64,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("shipment_id", DataType::Utf8, false),
        Field::new("carrier", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("picked_up_at", ts(), true),
        Field::new("delivered_at", ts(), true),
        Field::new("transit_ms", DataType::Int64, true),
        Field::new("received_by", DataType::Utf8, true),
        Field::new("failed_attempts", DataType::Int64, false),
        Field::new("last_failure", DataType::Utf8, true),
        Field::new("last_location", DataType::Utf8, false),
        Field::new("last_scan_at", ts(), false),
        Field::new("scans", DataType::Int64, false),
    ]))
});

/// The `shipments` batch, sorted by shipment id.
pub fn to_batch<'a>(rows: impl IntoIterator<Item = &'a ShipmentRow>) -> Result<RecordBatch> {
    let mut r: Vec<&ShipmentRow> = rows.into_iter().collect();
    r.sort_by(|a, b| a.shipment_id.cmp(&b.shipment_id));
    let s = |f: fn(&ShipmentRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(r.iter().map(|x| f(x))))
    };
    let o = |f: fn(&ShipmentRow) -> Option<&str>| -> ArrayRef {
        Arc::new(StringArray::from_iter(r.iter().map(|x| f(x))))
    };
    let i = |f: fn(&ShipmentRow) -> Option<i64>| -> ArrayRef {
        Arc::new(Int64Array::from_iter(r.iter().map(|x| f(x))))
    };
    let t = |f: fn(&ShipmentRow) -> Option<i64>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from_iter(r.iter().map(|x| f(x))).with_timezone("UTC"))
    };
    batch(
        SCHEMA.clone(),
        vec![
            s(|x| &x.shipment_id),
            s(|x| &x.carrier),
            s(|x| x.status),
            t(|x| x.picked_up_at),
            t(|x| x.delivered_at),
            i(|x| Some(x.delivered_at? - x.picked_up_at?)),
            o(|x| x.received_by.as_deref()),
            i(|x| Some(x.failed_attempts)),
            o(|x| x.last_failure.as_deref()),
            s(|x| &x.last_location),
            t(|x| Some(x.last_scan_at)),
            i(|x| Some(x.scans)),
        ],
    )
}
