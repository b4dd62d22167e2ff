//! Real-time analytics: tumbling event-time windows with allowed lateness.
//!
//! Events are placed in the window of their event time (`occurred_at`), `[start, start +
//! width)`. Each source (a topic partition: Kafka orders records within one only) tracks
//! the latest event time it has delivered; the watermark is the least of those minus the
//! allowed lateness, so a partition read ahead of another (a catch-up, a rebuild) does not
//! make the other's events late. A tracked source that has delivered nothing yet holds the
//! watermark back entirely; a source that is idle (read to its end) does not hold it back.
//! A window whose end the watermark has passed is final, and
//! an event that would land in a final window is late: it is counted (per window, in
//! `late_events`) and not added, so a final window's figures never change.

use std::collections::BTreeMap;

/// Figures of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub placed: i64,
    pub confirmed: i64,
    pub cancelled: i64,
    /// Totals of the orders confirmed in the window.
    pub revenue_cents: i64,
    /// Events that came after the window was final, left out of the figures above.
    pub late_events: i64,
}

/// What happened to an order, as the windows count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderFact {
    Placed,
    Confirmed { total_cents: i64 },
    Cancelled,
}

/// Whether an event was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Counted,
    /// Its window was final already.
    Late,
}

/// What the watermark knows of one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Source {
    /// Latest event time delivered.
    latest: Option<i64>,
    /// Read to its end: it does not hold the watermark back.
    idle: bool,
}

/// Tumbling windows of `width_ms`, accepting events up to `lateness_ms` behind the latest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TumblingWindows {
    width_ms: i64,
    lateness_ms: i64,
    sources: BTreeMap<i32, Source>,
    windows: BTreeMap<i64, Window>,
}

impl TumblingWindows {
    pub fn new(width_ms: i64, lateness_ms: i64) -> Self {
        assert!(width_ms > 0 && lateness_ms >= 0, "invalid window spec");
        TumblingWindows {
            width_ms,
            lateness_ms,
            sources: BTreeMap::new(),
            windows: BTreeMap::new(),
        }
    }

    /// Start of the window holding `t`.
    pub fn start_of(&self, t: i64) -> i64 {
        t.div_euclid(self.width_ms) * self.width_ms
    }

    /// Width of each window.
    pub fn width_ms(&self) -> i64 {
        self.width_ms
    }

    /// Event time below which windows are final (`None` before any event).
    pub fn watermark(&self) -> Option<i64> {
        let mut active = self.sources.values().filter(|s| !s.idle).peekable();
        let at = if active.peek().is_none() {
            // Every source is read to its end: nothing pending anywhere.
            self.sources.values().filter_map(|s| s.latest).max()
        } else {
            // A source that has not delivered yet may hold anything: `None`.
            active.map(|s| s.latest).min().flatten()
        };
        at.map(|m| m.saturating_sub(self.lateness_ms))
    }

    /// Declares a source (a partition assigned): until it delivers an event or is idle, it
    /// holds the watermark back.
    pub fn track(&mut self, source: i32) {
        self.sources.entry(source).or_default();
    }

    /// Whether `source` is read to its end (then it does not hold the watermark back).
    pub fn set_idle(&mut self, source: i32, idle: bool) {
        self.sources.entry(source).or_default().idle = idle;
    }

    /// Whether the window starting at `start` is final.
    pub fn is_final(&self, start: i64) -> bool {
        self.final_under(self.watermark(), start)
    }

    /// Whether the window starting at `start` is final under watermark `w`.
    fn final_under(&self, w: Option<i64>, start: i64) -> bool {
        w.is_some_and(|w| w >= start.saturating_add(self.width_ms))
    }

    /// Counts `fact` at event time `t` from `source`, unless its window is final.
    pub fn add(&mut self, source: i32, t: i64, fact: OrderFact) -> Admitted {
        let start = self.start_of(t);
        if self.is_final(start) {
            self.windows.entry(start).or_default().late_events += 1;
            return Admitted::Late;
        }
        let w = self.windows.entry(start).or_default();
        match fact {
            OrderFact::Placed => w.placed += 1,
            OrderFact::Confirmed { total_cents } => {
                w.confirmed += 1;
                w.revenue_cents = w.revenue_cents.saturating_add(total_cents);
            }
            OrderFact::Cancelled => w.cancelled += 1,
        }
        let s = self.sources.entry(source).or_default();
        s.latest = Some(s.latest.map_or(t, |l| l.max(t)));
        s.idle = false;
        Admitted::Counted
    }

    /// Every window: (start, end, figures, final?), in time order.
    pub fn rows(&self) -> impl Iterator<Item = (i64, i64, Window, bool)> + '_ {
        self.windows
            .iter()
            .map(|(s, w)| (*s, s.saturating_add(self.width_ms), *w, self.is_final(*s)))
    }
}

/// One row of `orders_per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRow {
    pub window_start: i64,
    pub window_end: i64,
    pub orders_placed: i64,
    pub orders_confirmed: i64,
    pub orders_cancelled: i64,
    pub revenue_cents: i64,
    pub late_events: i64,
    pub is_final: bool,
}

/// The orders service's real-time view `orders_per_minute`: tumbling windows of event time
/// over `orders.events`, with late events accepted up to the lateness. An event published
/// twice counts once. Rebuilt from its topic on every start (the event ids seen are not in
/// its rows).
///
/// The event ids are remembered per open window only: once a window is final nothing can
/// change its figures, so its ids are dropped (before, every id ever seen was kept, growing
/// with the topic). A copy of an event whose window is final counts as a late event.
#[derive(Debug)]
pub struct OrdersPerMinute {
    windows: TumblingWindows,
    /// Event ids counted, by the start of their window; open windows only.
    seen: BTreeMap<i64, std::collections::HashSet<String>>,
}

impl OrdersPerMinute {
    pub fn new(width_ms: i64, lateness_ms: i64) -> Self {
        OrdersPerMinute {
            windows: TumblingWindows::new(width_ms, lateness_ms),
            seen: Default::default(),
        }
    }
}

impl crate::Projection for OrdersPerMinute {
    type Event = schemas::orders::OrderEvent;
    type Row = WindowRow;

    fn assigned(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.windows.track(*p);
        }
    }

    fn apply(&mut self, at: crate::Source<'_>, e: &schemas::orders::OrderEvent) {
        use schemas::orders::OrderEvent;
        let fact = match e {
            OrderEvent::OrderPlaced(_) => OrderFact::Placed,
            OrderEvent::OrderConfirmed(c) => OrderFact::Confirmed {
                total_cents: c.total_cents,
            },
            OrderEvent::OrderCancelled(_) => OrderFact::Cancelled,
            _ => return,
        };
        let t = e.metadata().occurred_at;
        let start = self.windows.start_of(t);
        let watermark = self.windows.watermark();
        let open = !self.windows.final_under(watermark, start);
        if !open
            || self
                .seen
                .entry(start)
                .or_default()
                .insert(e.metadata().event_id.clone())
        {
            self.windows.add(at.partition, t, fact);
        }
        // The watermark before this event: windows it closes are pruned with the next one.
        if let Some(w) = watermark {
            // Windows starting at or before this are final.
            let last_final = w.saturating_sub(self.windows.width_ms());
            if self
                .seen
                .first_key_value()
                .is_some_and(|(s, _)| *s <= last_final)
            {
                self.seen = self.seen.split_off(&last_final.saturating_add(1));
            }
        }
    }

    /// A partition read to its end does not hold the watermark back.
    fn idle(&mut self, partition: i32, idle: bool) {
        self.windows.set_idle(partition, idle);
    }

    fn rows(&self) -> Vec<std::borrow::Cow<'_, WindowRow>> {
        self.windows
            .rows()
            .map(|(start, end, w, is_final)| {
                std::borrow::Cow::Owned(WindowRow {
                    window_start: start,
                    window_end: end,
                    orders_placed: w.placed,
                    orders_confirmed: w.confirmed,
                    orders_cancelled: w.cancelled,
                    revenue_cents: w.revenue_cents,
                    late_events: w.late_events,
                    is_final,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn events_fall_into_the_window_of_their_event_time() {
        let mut w = TumblingWindows::new(MIN, 5_000);
        w.add(0, 10, OrderFact::Placed);
        w.add(0, MIN - 1, OrderFact::Confirmed { total_cents: 300 });
        w.add(0, MIN, OrderFact::Confirmed { total_cents: 200 });
        let rows: Vec<_> = w.rows().collect();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0, rows[0].1), (0, MIN));
        assert_eq!(rows[0].2.placed, 1);
        assert_eq!(rows[0].2.revenue_cents, 300);
        assert_eq!(rows[1].2.revenue_cents, 200);
    }

    #[test]
    fn late_events_within_the_lateness_still_count() {
        let mut w = TumblingWindows::new(MIN, 5_000);
        w.add(0, MIN + 4_000, OrderFact::Placed); // watermark MIN - 1000: window 0 still open
        assert_eq!(w.add(0, MIN - 10, OrderFact::Cancelled), Admitted::Counted);
        assert!(!w.is_final(0));
        assert_eq!(w.rows().next().unwrap().2.cancelled, 1);
    }

    #[test]
    fn events_past_the_lateness_are_counted_as_late_and_change_nothing() {
        let mut w = TumblingWindows::new(MIN, 5_000);
        w.add(0, 10, OrderFact::Confirmed { total_cents: 100 });
        w.add(0, MIN + 5_000, OrderFact::Placed); // watermark = MIN: window 0 final
        assert!(w.is_final(0));
        assert_eq!(
            w.add(0, 20, OrderFact::Confirmed { total_cents: 999 }),
            Admitted::Late
        );
        let first = w.rows().next().unwrap();
        assert_eq!(first.2.revenue_cents, 100);
        assert_eq!(first.2.late_events, 1);
        assert!(first.3);
        // A late event does not move the watermark either.
        assert_eq!(w.watermark(), Some(MIN));
    }

    #[test]
    fn a_partition_read_ahead_does_not_make_another_late() {
        let mut w = TumblingWindows::new(MIN, 5_000);
        w.add(0, 10, OrderFact::Placed);
        w.add(1, 5, OrderFact::Placed);
        // Partition 0 is read ten minutes ahead (a catch-up): partition 1 holds the
        // watermark back, and its next event, still in window 0, counts.
        w.add(0, 10 * MIN, OrderFact::Placed);
        assert!(!w.is_final(0));
        assert_eq!(w.add(1, 30, OrderFact::Placed), Admitted::Counted);
        assert_eq!(w.rows().next().unwrap().2.placed, 3);
        // Once partition 1 moves on too, window 0 is final.
        w.add(1, 10 * MIN, OrderFact::Placed);
        assert!(w.is_final(0));
    }

    #[test]
    fn a_partition_not_read_yet_holds_the_watermark_back_until_it_is_idle() {
        let mut w = TumblingWindows::new(MIN, 5_000);
        for p in 0..3 {
            w.track(p);
        }
        // A rebuild reads partition 0 to its end first.
        w.add(0, 10, OrderFact::Placed);
        w.add(0, 10 * MIN, OrderFact::Placed);
        w.set_idle(0, true);
        assert_eq!(w.watermark(), None, "partitions 1 and 2 may hold anything");
        assert_eq!(w.add(1, 20, OrderFact::Placed), Admitted::Counted);
        w.set_idle(1, true);
        w.set_idle(2, true); // empty
        assert!(
            w.is_final(0),
            "all read: the watermark is the latest event time"
        );
        assert_eq!(w.rows().next().unwrap().2.placed, 2);
    }

    #[test]
    fn negative_times_have_windows_too() {
        let w = TumblingWindows::new(MIN, 0);
        assert_eq!(w.start_of(-1), -MIN);
    }

    #[test]
    fn an_order_event_published_twice_counts_once_in_its_window() {
        use crate::Projection;
        use schemas::Metadata;
        use schemas::orders::{OrderCancelled, OrderEvent};

        let cancelled = |id: &str, at: i64| -> OrderEvent {
            OrderCancelled {
                metadata: Metadata::command(id, "O-1", at),
                order_id: "O-1".into(),
                customer_id: "C-1".into(),
                reason: "customer asked".into(),
                compensations: Vec::new(),
            }
            .into()
        };
        let at = crate::Source {
            topic: "orders.events",
            partition: 0,
            offset: 0,
        };
        let mut view = OrdersPerMinute::new(60_000, 0);
        view.assigned(&[0]);
        view.apply(at, &cancelled("e1", 1_000));
        view.apply(at, &cancelled("e1", 1_000));
        view.apply(at, &cancelled("e2", 2_000));
        let rows = view.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].window_start, rows[0].orders_cancelled), (0, 2));
    }

    #[test]
    fn the_ids_of_final_windows_are_forgotten() {
        use crate::Projection;
        use schemas::Metadata;
        use schemas::orders::{OrderCancelled, OrderEvent};
        let mut view = OrdersPerMinute::new(MIN, 5_000);
        let at = crate::Source {
            topic: "orders.events",
            partition: 0,
            offset: 0,
        };
        // 100 minutes of events, 100 per minute.
        for i in 0..10_000i64 {
            let e: OrderEvent = OrderCancelled {
                metadata: Metadata::command(&format!("e-{i}"), "O-1", i * 600),
                order_id: "O-1".into(),
                customer_id: "C-1".into(),
                reason: "r".into(),
                compensations: Vec::new(),
            }
            .into();
            view.apply(at, &e);
            view.apply(at, &e); // every event twice
        }
        let remembered: usize = view.seen.values().map(|ids| ids.len()).sum();
        assert!(
            remembered <= 200,
            "{remembered} ids kept for 2 open windows at most"
        );
        let counted: i64 = view.rows().iter().map(|r| r.orders_cancelled).sum();
        assert_eq!(counted, 10_000, "each counted once");
        // A hostile total cannot overflow a window's revenue.
        let mut w = TumblingWindows::new(MIN, 0);
        for _ in 0..3 {
            w.add(
                0,
                i64::MAX,
                OrderFact::Confirmed {
                    total_cents: i64::MAX,
                },
            );
        }
        assert_eq!(w.rows().next().unwrap().2.revenue_cents, i64::MAX);
    }
}
