//! The shipping service's `shipments` projection over `shipping.tracking`, the carriers'
//! events: one row per shipment, with where it is, when it was picked up and delivered, and
//! how many delivery attempts failed.
//!
//! Carriers retry and scan out of order, so the fold is idempotent and order-tolerant: a scan
//! counts once per event id; delivered is final; otherwise the latest scan (by its own time,
//! not arrival) says where the parcel is. Each row keeps the event ids of its latest
//! [`MAX_SCAN_IDS`] scans, so the rows are the whole state and the view resumes from its
//! table.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use schemas::shipping::TrackingEvent;

use crate::{Projection, Source};

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
    /// The event ids of the latest [`MAX_SCAN_IDS`] scans, oldest first (a carrier's retry
    /// of a scan is the same scan).
    pub scan_ids: VecDeque<String>,
}

/// Scan ids a shipment remembers to recognise a carrier's retry: a parcel has a handful of
/// scans and a retry follows its original closely, while carriers are unauthenticated
/// (until issue 17) and one that sent endless distinct ids for a shipment grew its row, and
/// the `shipments` file, without bound. A retry of a scan older than the last 64 of its
/// shipment counts again (`scans`, `failed_attempts`).
pub const MAX_SCAN_IDS: usize = 64;

/// Every shipment a carrier reported on.
#[derive(Debug, Default)]
pub struct Shipments {
    rows: BTreeMap<String, Tracked>,
}

#[derive(Debug, Default)]
struct Tracked {
    /// The row, with the event ids folded.
    row: ShipmentRow,
    /// Whether the latest scan by time is a failed attempt (what the status says, until
    /// the parcel is delivered; after that it no longer matters).
    latest_failed: bool,
}

impl Projection for Shipments {
    type Event = TrackingEvent;
    type Row = ShipmentRow;
    const RESUMES: bool = true;

    fn apply(&mut self, _at: Source<'_>, e: &TrackingEvent) {
        let meta = e.metadata();
        let t = self.rows.entry(e.shipment_id().to_owned()).or_default();
        if t.row.scan_ids.contains(&meta.event_id) {
            return;
        }
        if t.row.scan_ids.len() == MAX_SCAN_IDS {
            t.row.scan_ids.pop_front();
        }
        t.row.scan_ids.push_back(meta.event_id.clone());
        let at = meta.occurred_at;
        let row = &mut t.row;
        if row.scans == 0 {
            row.shipment_id = e.shipment_id().to_owned();
            row.last_scan_at = i64::MIN;
        }
        row.scans += 1;
        if at >= row.last_scan_at {
            row.last_scan_at = at;
            row.last_location = e.location().to_owned();
            row.carrier = e.carrier().to_owned();
            t.latest_failed = matches!(e, TrackingEvent::DeliveryAttemptFailed(_));
        }
        match e {
            TrackingEvent::ParcelPickedUp(_) => {
                row.picked_up_at = Some(row.picked_up_at.map_or(at, |p| p.min(at)));
            }
            TrackingEvent::DeliveryAttemptFailed(f) => {
                row.failed_attempts += 1;
                if at >= row.last_scan_at {
                    row.last_failure = Some(f.reason.clone());
                }
            }
            TrackingEvent::ParcelDelivered(d) => {
                if row.delivered_at.is_none() {
                    row.delivered_at = Some(at);
                    row.received_by = d.received_by.clone();
                }
            }
        }
        row.status = if row.delivered_at.is_some() {
            status::DELIVERED
        } else if t.latest_failed {
            status::ATTEMPT_FAILED
        } else {
            status::IN_TRANSIT
        };
    }

    fn rows(&self) -> Vec<Cow<'_, ShipmentRow>> {
        self.rows.values().map(|t| Cow::Borrowed(&t.row)).collect()
    }

    fn restore(rows: Vec<ShipmentRow>) -> Option<Self> {
        let rows = rows
            .into_iter()
            .map(|row| {
                let latest_failed = row.status == status::ATTEMPT_FAILED;
                (row.shipment_id.clone(), Tracked { row, latest_failed })
            })
            .collect();
        Some(Shipments { rows })
    }
}

/// A carrier's scan, checked before the API writes it: ids and texts of bounded length and
/// a time in range (scans come from outside, unauthenticated until issue 17).
impl crate::Validate for TrackingEvent {
    fn validate(&self) -> Result<(), crate::InvalidCommand> {
        use schemas::record::RecordUnion;
        let check = crate::limits::Check::new(self.record_name());
        check.metadata(self.metadata())?;
        check.id("shipment_id", self.shipment_id())?;
        check.id("carrier", self.carrier())?;
        check.text("location", self.location())?;
        match self {
            TrackingEvent::DeliveryAttemptFailed(e) => check.text("reason", &e.reason),
            TrackingEvent::ParcelDelivered(e) => {
                check.text("received_by", e.received_by.as_deref().unwrap_or_default())
            }
            TrackingEvent::ParcelPickedUp(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use schemas::Metadata;
    use schemas::shipping::{DeliveryAttemptFailed, ParcelDelivered, ParcelPickedUp};

    use super::*;

    fn meta(id: &str, at: i64) -> Metadata {
        Metadata::command(id, "SHP-1", at)
    }
    fn picked(id: &str, at: i64) -> TrackingEvent {
        ParcelPickedUp {
            metadata: meta(id, at),
            shipment_id: "SHP-1".into(),
            carrier: "PostNL".into(),
            location: "Utrecht".into(),
        }
        .into()
    }
    fn failed(id: &str, at: i64) -> TrackingEvent {
        DeliveryAttemptFailed {
            metadata: meta(id, at),
            shipment_id: "SHP-1".into(),
            carrier: "PostNL".into(),
            location: "Amsterdam".into(),
            reason: "nobody home".into(),
        }
        .into()
    }
    fn delivered(id: &str, at: i64) -> TrackingEvent {
        ParcelDelivered {
            metadata: meta(id, at),
            shipment_id: "SHP-1".into(),
            carrier: "PostNL".into(),
            location: "Amsterdam".into(),
            received_by: Some("neighbour".into()),
        }
        .into()
    }

    const AT: Source<'static> = Source {
        topic: "shipping.tracking",
        partition: 0,
        offset: 0,
    };

    fn fold(events: &[TrackingEvent]) -> ShipmentRow {
        let mut v = Shipments::default();
        for e in events {
            v.apply(AT, e);
        }
        v.rows["SHP-1"].row.clone()
    }

    fn rows(v: &Shipments) -> Vec<ShipmentRow> {
        v.rows().into_iter().map(Cow::into_owned).collect()
    }

    #[test]
    fn a_shipment_is_tracked_to_its_delivery() {
        let row = fold(&[picked("a", 10), failed("b", 20)]);
        assert_eq!(row.status, status::ATTEMPT_FAILED);
        assert_eq!(row.failed_attempts, 1);
        assert_eq!(row.last_failure.as_deref(), Some("nobody home"));
        let row = fold(&[picked("a", 10), failed("b", 20), delivered("c", 30)]);
        assert_eq!(row.status, status::DELIVERED);
        assert_eq!((row.picked_up_at, row.delivered_at), (Some(10), Some(30)));
        assert_eq!(row.received_by.as_deref(), Some("neighbour"));
        assert_eq!((row.scans, row.last_scan_at), (3, 30));
    }

    /// A view resumed from its table at any point of a stream (retries and late scans
    /// included) ends with the table of one run over the whole stream.
    #[test]
    fn a_resumed_view_folds_on_as_one_run_would() {
        let stream = [
            picked("a", 10),
            failed("b", 20),
            failed("b", 20),
            picked("a", 10),
            failed("c", 25),
            delivered("d", 30),
            failed("c", 25),
            picked("e", 5),
            delivered("d", 30),
        ];
        let mut whole = Shipments::default();
        stream.iter().for_each(|e| whole.apply(AT, e));
        let want = rows(&whole);
        for cut in 0..=stream.len() {
            let mut first = Shipments::default();
            stream[..cut].iter().for_each(|e| first.apply(AT, e));
            let mut resumed = Shipments::restore(rows(&first)).unwrap();
            stream[cut..].iter().for_each(|e| resumed.apply(AT, e));
            assert_eq!(rows(&resumed), want, "resumed after {cut} events");
        }
    }

    #[test]
    fn retries_count_once_and_late_scans_do_not_move_it_back() {
        // The same scan posted twice (a carrier's retry) is one scan.
        let row = fold(&[picked("a", 10), failed("b", 20), failed("b", 20)]);
        assert_eq!((row.scans, row.failed_attempts), (2, 1));
        // Delivered is final; a pick-up scan that arrives after it does not undo it, and the
        // latest scan by time (not arrival) gives the location.
        let row = fold(&[delivered("c", 30), picked("a", 10)]);
        assert_eq!(row.status, status::DELIVERED);
        assert_eq!(row.picked_up_at, Some(10));
        assert_eq!(row.last_scan_at, 30);
        // A failed attempt that arrives after a later pick-up is not the latest scan.
        let row = fold(&[picked("a", 40), failed("b", 20)]);
        assert_eq!(row.status, status::IN_TRANSIT);
        assert_eq!(row.failed_attempts, 1);
        // Endless distinct scans of one shipment: it remembers the latest 64 ids, counts all.
        let flood: Vec<TrackingEvent> = (0..1_000).map(|i| failed(&format!("f{i}"), i)).collect();
        let row = fold(&flood);
        assert_eq!((row.scans, row.scan_ids.len()), (1_000, MAX_SCAN_IDS));
        assert_eq!(row.scan_ids.front().map(String::as_str), Some("f936"));
    }
}
