//! Real-time analytics: tumbling event-time windows with allowed lateness.
//!
//! Events are placed in the window of their event time (`occurred_at`), `[start, start +
//! width)`. Each source (a topic partition: Kafka orders records within one only) tracks
//! the latest event time it has delivered; the watermark is the least of those minus the
//! allowed lateness, so a partition read ahead of another (a catch-up, a rebuild) does not
//! make the other's events late. A tracked source that has delivered nothing yet holds the
//! watermark where it is (at the start: no watermark at all); a source that is idle (read to
//! its end) does not hold it back.
//! The watermark never goes back: a partition that was idle and has records again holds
//! back what is still open, but a window once final stays final (before, marking such a
//! partition busy before a flush dropped the watermark to its latest event, reopening final
//! windows whose event ids were already forgotten, so a copy of an event counted twice).
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
    /// The highest watermark the sources have given: windows ending at or before it are final.
    mark: Option<i64>,
}

impl TumblingWindows {
    pub fn new(width_ms: i64, lateness_ms: i64) -> Self {
        assert!(width_ms > 0 && lateness_ms >= 0, "invalid window spec");
        TumblingWindows {
            width_ms,
            lateness_ms,
            sources: BTreeMap::new(),
            windows: BTreeMap::new(),
            mark: None,
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

    /// Event time below which windows are final (`None` before every source has delivered
    /// an event or been idle). It never goes back.
    pub fn watermark(&self) -> Option<i64> {
        self.mark
    }

    /// The watermark the sources give now (which may be behind [`Self::watermark`]: a source
    /// idle a while that has records again).
    fn given(&self) -> Option<i64> {
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

    /// Takes the watermark up to what the sources give, never back.
    fn advance(&mut self) {
        self.mark = self.mark.max(self.given());
    }

    /// Declares a source (a partition assigned): until it delivers an event or is idle, it
    /// holds the watermark back.
    pub fn track(&mut self, source: i32) {
        self.sources.entry(source).or_default();
    }

    /// Whether `source` is read to its end (then it does not hold the watermark back). Only
    /// for a source tracked or delivered from: a partition the topic gained while the view
    /// runs is not read until a restart, and must not hold the watermark back meanwhile.
    pub fn set_idle(&mut self, source: i32, idle: bool) {
        if let Some(s) = self.sources.get_mut(&source) {
            s.idle = idle;
            self.advance();
        }
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
        self.advance();
        Admitted::Counted
    }

    /// What the watermark knows of each source, in partition order.
    pub fn sources(&self) -> impl Iterator<Item = SourceRow> + '_ {
        self.sources.iter().map(|(p, s)| SourceRow {
            partition: *p,
            latest_event_at: s.latest,
            idle: s.idle,
            watermark: self.mark,
        })
    }

    /// Every window: (start, end, figures, final?), in time order.
    pub fn rows(&self) -> impl Iterator<Item = (i64, i64, Window, bool)> + '_ {
        self.windows
            .iter()
            .map(|(s, w)| (*s, s.saturating_add(self.width_ms), *w, self.is_final(*s)))
    }
}

/// One row of `orders_per_minute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRow {
    pub window_start: i64,
    pub window_end: i64,
    pub orders_placed: i64,
    pub orders_confirmed: i64,
    pub orders_cancelled: i64,
    pub revenue_cents: i64,
    pub late_events: i64,
    pub is_final: bool,
    /// The ids of the events counted in an open window, sorted (a copy counts once); empty
    /// once final (nothing can change its figures).
    pub event_ids: Vec<String>,
}

/// One row of `orders_per_minute_sources`: what the watermark knows of one partition of
/// `orders.events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRow {
    pub partition: i32,
    /// Latest event time it has delivered.
    pub latest_event_at: Option<i64>,
    /// Read to its end when the rows were written.
    pub idle: bool,
    /// The view's watermark (the same in every row).
    pub watermark: Option<i64>,
}

/// The orders service's real-time view `orders_per_minute`: tumbling windows of event time
/// over `orders.events`, with late events accepted up to the lateness. An event published
/// twice counts once. Its rows (with the open windows' event ids) and its sources are its
/// whole state: it resumes from them ([`OrdersPerMinute::restore`]).
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

    /// Counts event `event_id` (`fact` at event time `t`, read from `partition`) in its
    /// window, once, unless the window is final (then it is a late event).
    pub fn count(&mut self, partition: i32, event_id: &str, t: i64, fact: OrderFact) {
        let start = self.windows.start_of(t);
        let watermark = self.windows.watermark();
        let open = !self.windows.final_under(watermark, start);
        if !open
            || self
                .seen
                .entry(start)
                .or_default()
                .insert(event_id.to_owned())
        {
            self.windows.add(partition, t, fact);
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

    /// Its windows' width and allowed lateness, in ms (what [`Self::restore`] takes).
    pub fn settings(&self) -> (i64, i64) {
        (self.windows.width_ms, self.windows.lateness_ms)
    }

    /// What the watermark knows of each partition (the `orders_per_minute_sources` rows).
    pub fn sources(&self) -> Vec<SourceRow> {
        self.windows.sources().collect()
    }

    /// The view its rows and sources describe, as [`crate::Projection::rows`] and
    /// [`Self::sources`] gave them, under windows of `width_ms` and `lateness_ms` (which may
    /// differ from when they were written: the stored watermark holds, and a lower lateness
    /// makes more windows final). An error says why they cannot be taken back (windows of
    /// another width, a window final or open against the stored watermark, event ids that
    /// do not match the counts): the view then rebuilds.
    pub fn restore(
        width_ms: i64,
        lateness_ms: i64,
        rows: Vec<WindowRow>,
        sources: Vec<SourceRow>,
    ) -> Result<Self, String> {
        let mut view = OrdersPerMinute::new(width_ms, lateness_ms);
        let w = &mut view.windows;
        let mut marks = sources.iter().map(|s| s.watermark);
        let mark = marks.next().flatten();
        if marks.any(|m| m != mark) {
            return Err("its sources disagree on the watermark".into());
        }
        for s in &sources {
            let had = w.sources.insert(
                s.partition,
                Source {
                    latest: s.latest_event_at,
                    idle: s.idle,
                },
            );
            if had.is_some() {
                return Err(format!("partition {} appears twice", s.partition));
            }
        }
        w.mark = mark;
        for r in rows {
            let start = r.window_start;
            if w.start_of(start) != start || r.window_end != start.saturating_add(width_ms) {
                return Err(format!(
                    "window [{start}, {}) is not one of {width_ms} ms",
                    r.window_end
                ));
            }
            if w.final_under(mark, start) != r.is_final {
                return Err(format!(
                    "window {start} was written {} under the watermark it stored",
                    if r.is_final { "final" } else { "open" }
                ));
            }
            let figures = Window {
                placed: r.orders_placed,
                confirmed: r.orders_confirmed,
                cancelled: r.orders_cancelled,
                revenue_cents: r.revenue_cents,
                late_events: r.late_events,
            };
            if w.windows.insert(start, figures).is_some() {
                return Err(format!("window {start} appears twice"));
            }
            let counted = r
                .orders_placed
                .saturating_add(r.orders_confirmed)
                .saturating_add(r.orders_cancelled);
            let ids: std::collections::HashSet<String> = r.event_ids.into_iter().collect();
            let expected = if r.is_final { 0 } else { counted };
            if i64::try_from(ids.len()) != Ok(expected) {
                return Err(format!(
                    "window {start} has {} distinct event ids for {expected} events",
                    ids.len()
                ));
            }
            if !r.is_final {
                view.seen.insert(start, ids);
            }
        }
        // A lateness lowered since: more may be final now.
        view.windows.advance();
        Ok(view)
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
        let m = e.metadata();
        self.count(at.partition, &m.event_id, m.occurred_at, fact);
    }

    /// A partition read to its end does not hold the watermark back.
    fn idle(&mut self, partition: i32, idle: bool) {
        self.windows.set_idle(partition, idle);
    }

    fn rows(&self) -> Vec<std::borrow::Cow<'_, WindowRow>> {
        self.windows
            .rows()
            .map(|(start, end, w, is_final)| {
                let mut event_ids: Vec<String> = match self.seen.get(&start) {
                    Some(ids) if !is_final => ids.iter().cloned().collect(),
                    _ => Vec::new(),
                };
                event_ids.sort_unstable();
                std::borrow::Cow::Owned(WindowRow {
                    window_start: start,
                    window_end: end,
                    orders_placed: w.placed,
                    orders_confirmed: w.confirmed,
                    orders_cancelled: w.cancelled,
                    revenue_cents: w.revenue_cents,
                    late_events: w.late_events,
                    is_final,
                    event_ids,
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
    fn a_partition_not_read_does_not_hold_the_watermark_back() {
        let mut w = TumblingWindows::new(MIN, 0);
        w.track(0);
        w.add(0, 5 * MIN, OrderFact::Placed);
        // The topic grew a partition the view does not read (until a restart): the loop
        // reports it busy (its end is past 0); it is not a source of this view.
        w.set_idle(1, false);
        assert_eq!(w.watermark(), Some(5 * MIN));
        w.add(0, 6 * MIN, OrderFact::Placed);
        assert_eq!(w.watermark(), Some(6 * MIN), "the watermark still moves");
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

    /// Steps of a view's life: an event read from a partition, or a write of its tables
    /// (before which the loop says which partitions are read to their end).
    #[derive(Clone)]
    enum Step {
        Event(i32, &'static str, i64, OrderFact),
        Flush(&'static [(i32, bool)]),
    }

    fn run(view: &mut OrdersPerMinute, steps: &[Step]) {
        use crate::Projection;
        for step in steps {
            match step {
                Step::Event(p, id, t, fact) => view.count(*p, id, *t, *fact),
                Step::Flush(idle) => idle.iter().for_each(|(p, i)| view.idle(*p, *i)),
            }
        }
    }

    fn table(view: &OrdersPerMinute) -> (Vec<WindowRow>, Vec<SourceRow>) {
        use crate::Projection;
        let rows = view.rows().into_iter().map(|r| r.into_owned()).collect();
        (rows, view.sources())
    }

    /// Three partitions: copies of events, a late one, a partition idle a while that has
    /// records again, a window made final by all being idle.
    fn stream() -> Vec<Step> {
        use OrderFact::*;
        let c = |total_cents| Confirmed { total_cents };
        vec![
            Step::Event(0, "a", 1_000, Placed),
            Step::Event(1, "b", 2_000, Placed),
            Step::Flush(&[(0, true), (1, true), (2, true)]),
            Step::Event(2, "c", 3_000, c(500)),
            Step::Event(0, "a", 1_000, Placed),
            Step::Event(0, "d", MIN + 1_000, Cancelled),
            Step::Flush(&[(0, true), (1, false), (2, true)]),
            Step::Event(1, "e", MIN + 2_000, c(700)),
            Step::Event(1, "b", 2_000, Placed),
            Step::Event(2, "f", 2 * MIN + 9_000, Placed),
            Step::Flush(&[(0, true), (1, true), (2, true)]),
            Step::Event(0, "g", 500, c(100)),
            Step::Event(1, "e", MIN + 2_000, c(700)),
            Step::Flush(&[(0, false), (1, true), (2, true)]),
            Step::Event(0, "h", 3 * MIN, Placed),
            Step::Event(0, "d", MIN + 1_000, Cancelled),
            Step::Flush(&[(0, true), (1, true), (2, true)]),
        ]
    }

    /// The table written at any flush of a stream, taken back, folds the rest of the
    /// stream into the table of one run over all of it: the open windows' ids and the
    /// sources' progress are in it.
    #[test]
    fn a_resumed_view_folds_on_as_one_run_would() {
        use crate::Projection;
        let steps = stream();
        let mut whole = OrdersPerMinute::new(MIN, 5_000);
        whole.assigned(&[0, 1, 2]);
        run(&mut whole, &steps);
        let want = table(&whole);
        assert!(want.0.iter().any(|r| r.late_events > 0), "a late event");
        assert!(want.0.iter().any(|r| !r.is_final), "an open window");
        let flushes = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Step::Flush(_)));
        for (at, _) in flushes {
            let mut first = OrdersPerMinute::new(MIN, 5_000);
            first.assigned(&[0, 1, 2]);
            run(&mut first, &steps[..=at]);
            let (rows, sources) = table(&first);
            let mut resumed = OrdersPerMinute::restore(MIN, 5_000, rows, sources).unwrap();
            resumed.assigned(&[0, 1, 2]);
            // The view loop tells a resumed view the ends before its first record (here, the
            // same as at the write: step `at` again).
            run(&mut resumed, &steps[at..]);
            assert_eq!(table(&resumed), want, "resumed after step {at}");
        }
    }

    #[test]
    fn tables_that_cannot_be_the_views_state_are_refused() {
        use crate::Projection;
        let mut view = OrdersPerMinute::new(MIN, 5_000);
        view.assigned(&[0, 1, 2]);
        run(&mut view, &stream());
        let (rows, sources) = table(&view);
        let restore = |rows: Vec<WindowRow>, sources: Vec<SourceRow>| {
            OrdersPerMinute::restore(MIN, 5_000, rows, sources)
                .err()
                .unwrap_or_default()
        };
        let open = rows.iter().position(|r| !r.is_final).unwrap();
        let mut lost = rows.clone();
        lost[open].event_ids.pop();
        assert!(restore(lost, sources.clone()).contains("distinct event ids"));
        let mut wider = rows.clone();
        wider[0].window_end += 1;
        assert!(restore(wider, sources.clone()).contains("not one of"));
        let mut behind = sources.clone();
        behind.iter_mut().for_each(|s| s.watermark = None);
        assert!(restore(rows.clone(), behind).contains("written final"));
        // A longer lateness does not reopen a final window (whose ids are gone): the
        // stored watermark holds. A shorter one makes more final.
        assert!(
            OrdersPerMinute::restore(MIN, 60 * MIN, rows.clone(), sources.clone()).is_ok(),
            "the stored watermark holds"
        );
        let finals = |rows: &[WindowRow]| rows.iter().filter(|r| r.is_final).count();
        let before = finals(&rows);
        let shorter = OrdersPerMinute::restore(MIN, 0, rows, sources).unwrap();
        assert_eq!(finals(&table(&shorter).0), before + 1);
    }

    /// A partition read to its end a while, that has records again, holds back what is
    /// still open but does not reopen a final window (whose ids are forgotten: a copy of
    /// one of its events would count twice).
    #[test]
    fn a_final_window_stays_final_when_an_idle_partition_has_records_again() {
        use crate::Projection;
        let mut view = OrdersPerMinute::new(MIN, 0);
        view.assigned(&[0, 1]);
        run(
            &mut view,
            &[
                Step::Event(1, "early", 1_000, OrderFact::Placed),
                Step::Event(0, "a", 1_000, OrderFact::Placed),
                Step::Event(0, "b", 5 * MIN, OrderFact::Placed),
                Step::Flush(&[(0, true), (1, true)]),
            ],
        );
        assert!(view.windows.is_final(0), "both idle: window 0 is final");
        // Partition 1 has records again: the loop says so before a flush.
        view.idle(1, false);
        assert!(view.windows.is_final(0), "final stays final");
        run(&mut view, &[Step::Event(0, "a", 1_000, OrderFact::Placed)]);
        let first = &view.rows()[0];
        assert_eq!((first.orders_placed, first.late_events), (2, 1));
    }
}
