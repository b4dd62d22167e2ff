//! The shipping service's `shipments` view: one row per shipment the carriers have reported
//! on (`shipping.tracking`, external events), with where it is, when it was picked up and
//! delivered, and how many delivery attempts failed. Sorted by shipment id, so a point lookup
//! reads one range of one row group.
//!
//! `carrier_performance` is derived from it (see [`crate::derived`]).
//!
//! Each row keeps the event ids of the latest 64 scans it folded (`scan_ids`, oldest first):
//! carriers retry, and a retried scan counts once, so the rows with their ids are the view's
//! whole fold state and the view resumes from its table ([`from_batches`]).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, Int64Array, ListArray, ListBuilder, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::table::{Columns, batch, text_at, value_at};
use crate::{Error, Result};

pub const VIEW: &str = "shipments";

/// The rows and their statuses, as the projection in `processors` folds them.
pub use processors::shipping::shipments::{ShipmentRow, status};

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn id_item() -> Arc<Field> {
    Arc::new(Field::new_list_field(DataType::Utf8, false))
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
        Field::new("scan_ids", DataType::List(id_item()), false),
    ]))
});

crate::table!(ShipmentsTable, ShipmentRow, VIEW);

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
    let mut ids = ListBuilder::new(StringBuilder::new()).with_field(id_item());
    for x in &r {
        for id in &x.scan_ids {
            ids.values().append_value(id);
        }
        ids.append(true);
    }
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
            Arc::new(ids.finish()),
        ],
    )
}

/// The rows of a `shipments` table as [`to_batch`] wrote them (to resume the view from it).
pub fn from_batches(batches: &[RecordBatch]) -> Result<Vec<ShipmentRow>> {
    let mut rows = Vec::new();
    for b in batches {
        let c = Columns::new(VIEW, &SCHEMA, b)?;
        let text = |i| c.get::<StringArray>(i);
        let (id, carrier, state) = (text(0)?, text(1)?, text(2)?);
        let (received_by, last_failure, location) = (text(6)?, text(8)?, text(9)?);
        let time = |i| c.get::<TimestampMillisecondArray>(i);
        let (picked_up, delivered, last_scan) = (time(3)?, time(4)?, time(10)?);
        let (failed, scans) = (c.get::<Int64Array>(7)?, c.get::<Int64Array>(11)?);
        let scan_ids = c.get::<ListArray>(12)?;
        for i in 0..b.num_rows() {
            let status = match state.value(i) {
                status::IN_TRANSIT => status::IN_TRANSIT,
                status::ATTEMPT_FAILED => status::ATTEMPT_FAILED,
                status::DELIVERED => status::DELIVERED,
                other => {
                    return Err(Error::Layout {
                        view: VIEW.into(),
                        reason: format!("unknown status {other:?}"),
                    });
                }
            };
            let ids = scan_ids.value(i);
            let ids = ids
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| Error::Layout {
                    view: VIEW.into(),
                    reason: "column scan_ids".into(),
                })?;
            let remembered = scans
                .value(i)
                .min(processors::shipping::shipments::MAX_SCAN_IDS as i64);
            if ids.len() as i64 != remembered {
                return Err(Error::Layout {
                    view: VIEW.into(),
                    reason: format!(
                        "shipment {}: {} scans but {} scan ids",
                        id.value(i),
                        scans.value(i),
                        ids.len()
                    ),
                });
            }
            rows.push(ShipmentRow {
                shipment_id: id.value(i).to_owned(),
                carrier: carrier.value(i).to_owned(),
                status,
                picked_up_at: value_at(picked_up, i),
                delivered_at: value_at(delivered, i),
                received_by: text_at(received_by, i),
                failed_attempts: failed.value(i),
                last_failure: text_at(last_failure, i),
                last_location: location.value(i).to_owned(),
                last_scan_at: last_scan.value(i),
                scans: scans.value(i),
                scan_ids: ids.iter().flatten().map(str::to_owned).collect(),
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_as_written() {
        let rows = vec![
            ShipmentRow {
                shipment_id: "SHP-1".into(),
                carrier: "PostNL".into(),
                status: status::DELIVERED,
                picked_up_at: Some(10),
                delivered_at: Some(30),
                received_by: Some("neighbour".into()),
                failed_attempts: 1,
                last_failure: Some("nobody home".into()),
                last_location: "Amsterdam".into(),
                last_scan_at: 30,
                scans: 3,
                scan_ids: ["a", "b", "c"].map(String::from).into(),
            },
            ShipmentRow {
                shipment_id: "SHP-2".into(),
                carrier: "DHL".into(),
                status: status::IN_TRANSIT,
                picked_up_at: Some(5),
                last_location: "Utrecht".into(),
                last_scan_at: 5,
                scans: 1,
                scan_ids: ["d".to_owned()].into(),
                ..ShipmentRow::default()
            },
        ];
        let batch = to_batch(&rows).unwrap();
        assert_eq!(from_batches(std::slice::from_ref(&batch)).unwrap(), rows);
        // Through a Parquet file, as the view resumes.
        let dir = tempfile::tempdir().unwrap();
        let table = crate::SnapshotTable::open(dir.path(), VIEW).unwrap();
        table.replace(&batch, "{}").unwrap();
        let (batches, _) = table.load().unwrap().unwrap();
        assert_eq!(from_batches(&batches).unwrap(), rows);
        // A status the view does not know is a layout error, not a row.
        let mut odd = rows[1].clone();
        odd.status = "lost";
        let e = from_batches(&[to_batch([&odd]).unwrap()]).unwrap_err();
        assert!(e.to_string().contains("unknown status"), "{e}");
        // A count that disagrees with its ids: a table not written by this view.
        let mut odd = rows[0].clone();
        odd.scans = 4;
        let e = from_batches(&[to_batch([&odd]).unwrap()]).unwrap_err();
        assert!(e.to_string().contains("4 scans but 3 scan ids"), "{e}");
        // Past the ids a row remembers (64), the count goes on alone.
        let max = processors::shipping::shipments::MAX_SCAN_IDS;
        let mut busy = rows[1].clone();
        busy.scans = 1_000;
        busy.scan_ids = (0..max).map(|i| format!("s{i}")).collect();
        let busy = vec![busy];
        assert_eq!(from_batches(&[to_batch(&busy).unwrap()]).unwrap(), busy);
        let mut odd = busy[0].clone();
        odd.scan_ids.pop_back();
        let e = from_batches(&[to_batch([&odd]).unwrap()]).unwrap_err();
        assert!(e.to_string().contains("1000 scans but 63 scan ids"), "{e}");
    }
}
