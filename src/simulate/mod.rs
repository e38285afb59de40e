//! Synthetic, labelled card traffic for demos, load tests and model training.
//!
//! This module owns a seeded simulator in the style of the Fraud Detection
//! Handbook (Le Borgne et al.): customers and terminals on a 100×100 map,
//! everyday spending around midday, and five injected fraud scenarios whose
//! ground truth travels with each generated transaction. It yields a single
//! time-ordered stream of [`SimEvent`]s — transactions at their `ts`, labels at
//! their `reported_at` — so that writing the events in order reproduces what a
//! live system would see; [`write_file`] folds the same stream into a training
//! file and [`kafka`] produces it. The simulator itself never touches Kafka,
//! the network, the clock or the environment: its output is a pure function of
//! the [`SimConfig`], identical on every run.
//!
//! The fraud scenarios, by the name carried in [`SimEvent::Transaction`]:
//! - `large_amount`: any amount above 220 (Handbook scenario 1); electronics,
//!   hotels and ATMs make such amounts occur naturally.
//! - `compromised_terminal`: each day about one card-present terminal in 5,000
//!   is skimmed; everything it takes for 28 days is fraud (scenario 2).
//! - `compromised_card`: each day about one card in 1,000 is stolen; for 14
//!   days a third of its transactions are fraud, at five times the amount
//!   (scenario 3).
//! - `card_testing`: about one card in 2,000 a day gets 5–12 online probes for
//!   0.50–3.00, seconds apart, at one or two merchants, then one cash-out
//!   purchase (100–800) at another merchant.
//! - `impossible_travel`: about one card in 1,000 a day is used in a far-away
//!   country within an hour of a card-present transaction at home.
//!
//! Every fraud gets one [`Label`] 1 to 10 days later (most within a week), and
//! about one legitimate transaction in 2,000 gets an `is_fraud: false` label
//! (a dispute resolved in the cardholder's disfavour), so negatives exist too.

mod file;
pub mod kafka;
mod scenarios;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::iter::FusedIterator;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use crate::event::{Label, Transaction};
use scenarios::{DraftTx, Scenario, World, CURRENCY, MEAN_DAILY_TX};

pub use file::{write_file, FileSummary};

/// The scenario names that can appear in [`SimEvent::Transaction`].
pub const SCENARIOS: [&str; 5] = [
    Scenario::LargeAmount.name(),
    Scenario::CompromisedTerminal.name(),
    Scenario::CompromisedCard.name(),
    Scenario::CardTesting.name(),
    Scenario::ImpossibleTravel.name(),
];

/// Label delay: one day of processing, plus a Gamma(2, 1.5 days) tail, capped
/// at ten days in total: four days on average, about 90% within a week.
const LABEL_MIN_DELAY_SECS: f64 = 86_400.0;
const LABEL_MAX_DELAY_SECS: f64 = 10.0 * 86_400.0;
const LABEL_DELAY_SHAPE: f64 = 2.0;
const LABEL_DELAY_SCALE_SECS: f64 = 1.5 * 86_400.0;
/// Share of legitimate transactions that are disputed and labelled not fraud.
const DISPUTED_LEGIT_RATE: f64 = 0.0005;

/// Used by [`SimConfig::for_transactions`]: 90 days lets the 28-day terminal
/// compromises reach a steady state; a small `n` shortens the period rather
/// than the population, which stays at least this many customers.
const DEFAULT_DAYS: u32 = 90;
const MIN_CUSTOMERS: usize = 100;
/// The Handbook's world: twice as many terminals as customers.
const TERMINALS_PER_CUSTOMER: usize = 2;

/// Independent ChaCha streams of the seed, so that, say, a change to the label
/// model does not reshuffle the transactions.
const PROFILE_STREAM: u64 = 0;
const ACTIVITY_STREAM: u64 = 1;
const LABEL_STREAM: u64 = 2;

/// What to simulate. The output is a pure function of this value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Seeds every random choice, and appears in every `tx_id`.
    pub seed: u64,
    /// Number of customers, each with one card.
    pub customers: usize,
    /// Shop terminals, ATMs and e-commerce merchants together (at least one of
    /// each is created, so tiny values are rounded up).
    pub terminals: usize,
    /// First simulated day; days run midnight to midnight UTC.
    pub start: NaiveDate,
    pub days: u32,
    /// Stop after this many transactions; the labels of those already emitted
    /// still follow, in order.
    pub max_transactions: Option<usize>,
}

impl SimConfig {
    /// Exactly `n` transactions (capped by `max_transactions`) over 90 days
    /// (fewer for small `n`), starting 2026-01-01, with twice as many terminals
    /// as customers as in the Handbook.
    ///
    /// Customers make two transactions a day on average, but each one's mean
    /// is drawn from `0..4`, so the population's total wanders by about
    /// `0.58 / sqrt(customers)`; the world is sized with 3.5 times that much
    /// headroom so the cap is almost always reached, in the last days of the period.
    pub fn for_transactions(n: usize, seed: u64) -> SimConfig {
        let customer_days = n as f64 / MEAN_DAILY_TX;
        let days =
            (customer_days / MIN_CUSTOMERS as f64).clamp(1.0, f64::from(DEFAULT_DAYS)) as u32;
        let customers = customer_days / f64::from(days);
        let headroom = 1.0 + 2.0 / customers.max(1.0).sqrt();
        let customers = (customers * headroom).ceil() as usize;
        SimConfig {
            seed,
            customers,
            terminals: customers * TERMINALS_PER_CUSTOMER,
            start: NaiveDate::from_ymd_opt(2026, 1, 1).expect("a valid calendar date"),
            days,
            max_transactions: Some(n),
        }
    }
}

impl SimConfig {
    /// `n` transactions from a population of `cards` customers (one card
    /// each), over as many days as they take to make them (at least one):
    /// for measuring how the engine's cost grows with its state.
    pub fn for_cards(n: usize, cards: usize, seed: u64) -> SimConfig {
        let cards = cards.max(MIN_CUSTOMERS);
        let days = (n as f64 / MEAN_DAILY_TX / cards as f64).ceil().max(1.0) as u32;
        SimConfig {
            customers: cards,
            terminals: cards * TERMINALS_PER_CUSTOMER,
            days,
            ..SimConfig::for_transactions(n, seed)
        }
    }
}

/// One event of the simulated stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    /// A transaction as it goes on the wire, with its ground truth, which
    /// never does: whether it is fraud and, if so, the scenario's name.
    Transaction {
        tx: Transaction,
        is_fraud: bool,
        scenario: Option<&'static str>,
    },
    Label(Label),
}

impl SimEvent {
    /// The time at which a live system would see this event.
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            SimEvent::Transaction { tx, .. } => tx.ts,
            SimEvent::Label(label) => label.reported_at,
        }
    }
}

/// The simulated stream, generated one day at a time: memory holds the world,
/// one day of events and the labels not yet due, never the whole history.
///
/// Events come in time order. At equal times transactions come before labels,
/// transactions in generation order and labels in their transactions' order.
pub struct Simulator {
    cfg: SimConfig,
    world: World,
    activity_rng: ChaCha8Rng,
    label_rng: ChaCha8Rng,
    label_delay: Gamma<f64>,
    next_day: u32,
    /// Transactions emitted so far; also the sequence number in the next `tx_id`.
    transactions: usize,
    /// The current day's events, in stream order.
    ready: VecDeque<SimEvent>,
    pending_labels: BinaryHeap<Reverse<PendingLabel>>,
}

/// A label waiting for its time. Ordered by `reported_at`, then by `seq` (the
/// transaction's sequence number, unique), so the heap order is total.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PendingLabel {
    reported_at: DateTime<Utc>,
    seq: usize,
    tx_id: String,
    is_fraud: bool,
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Self {
        let stream = |id| {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
            rng.set_stream(id);
            rng
        };
        let world = World::new(cfg.customers, cfg.terminals, &mut stream(PROFILE_STREAM));
        Simulator {
            world,
            activity_rng: stream(ACTIVITY_STREAM),
            label_rng: stream(LABEL_STREAM),
            label_delay: Gamma::new(LABEL_DELAY_SHAPE, LABEL_DELAY_SCALE_SECS)
                .expect("constant, positive shape and scale"),
            next_day: 0,
            transactions: 0,
            ready: VecDeque::new(),
            pending_labels: BinaryHeap::new(),
            cfg,
        }
    }

    fn remaining_budget(&self) -> usize {
        self.cfg
            .max_transactions
            .map_or(usize::MAX, |max| max.saturating_sub(self.transactions))
    }

    fn has_more_days(&self) -> bool {
        self.next_day < self.cfg.days && self.remaining_budget() > 0
    }

    /// Queues the next day's transactions, interleaved with the labels that
    /// fall due before the day ends.
    fn simulate_next_day(&mut self) {
        let day = self.next_day;
        self.next_day += 1;
        let day_start =
            self.cfg.start.and_time(NaiveTime::MIN).and_utc() + Duration::days(i64::from(day));
        let day_end = day_start + Duration::days(1);

        let mut drafts = self
            .world
            .simulate_day(day, day_start, &mut self.activity_rng);
        // A stable sort: equal timestamps keep the (deterministic) generation order.
        drafts.sort_by_key(|draft| draft.ts);
        drafts.truncate(self.remaining_budget());
        for draft in drafts {
            // Labels due strictly before this transaction go first.
            self.release_labels_before(draft.ts);
            let seq = self.transactions;
            self.transactions += 1;
            let tx = self.transaction(&draft, seq);
            let is_fraud = draft.scenario.is_some();
            self.schedule_label(&tx, seq, is_fraud);
            self.ready.push_back(SimEvent::Transaction {
                tx,
                is_fraud,
                scenario: draft.scenario.map(Scenario::name),
            });
        }
        self.release_labels_before(day_end);
    }

    fn transaction(&self, draft: &DraftTx, seq: usize) -> Transaction {
        let terminal = &self.world.terminals[draft.terminal];
        Transaction {
            tx_id: format!("tx-{}-{seq:09}", self.cfg.seed),
            ts: draft.ts,
            card_id: self.world.customers[draft.customer].card_id.clone(),
            terminal_id: terminal.id.clone(),
            amount: draft.amount,
            currency: Some(CURRENCY.to_owned()),
            mcc: Some(terminal.mcc),
            channel: Some(terminal.channel),
            country: Some(terminal.country.to_owned()),
        }
    }

    /// Every fraud is reported; a small share of legitimate transactions is
    /// disputed and reported as not fraud.
    fn schedule_label(&mut self, tx: &Transaction, seq: usize, is_fraud: bool) {
        if !is_fraud && !self.label_rng.gen_bool(DISPUTED_LEGIT_RATE) {
            return;
        }
        let reported_at = tx.ts + self.label_delay();
        self.pending_labels.push(Reverse(PendingLabel {
            reported_at,
            seq,
            tx_id: tx.tx_id.clone(),
            is_fraud,
        }));
    }

    /// Redraws the rare tail beyond the cap rather than piling it up at the cap.
    fn label_delay(&mut self) -> Duration {
        loop {
            let secs = LABEL_MIN_DELAY_SECS + self.label_delay.sample(&mut self.label_rng);
            if secs <= LABEL_MAX_DELAY_SECS {
                return Duration::seconds(secs as i64);
            }
        }
    }

    fn release_labels_before(&mut self, time: DateTime<Utc>) {
        while self
            .pending_labels
            .peek()
            .is_some_and(|Reverse(label)| label.reported_at < time)
        {
            if let Some(Reverse(label)) = self.pending_labels.pop() {
                self.ready.push_back(label_event(label));
            }
        }
    }
}

fn label_event(pending: PendingLabel) -> SimEvent {
    SimEvent::Label(Label {
        tx_id: pending.tx_id,
        is_fraud: pending.is_fraud,
        reported_at: pending.reported_at,
    })
}

impl Iterator for Simulator {
    type Item = SimEvent;

    fn next(&mut self) -> Option<SimEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if !self.has_more_days() {
                // The simulation is over; what remains are labels still to come.
                return self
                    .pending_labels
                    .pop()
                    .map(|Reverse(label)| label_event(label));
            }
            self.simulate_next_day();
        }
    }
}

impl FusedIterator for Simulator {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::OnceLock;
    use std::time::Instant;

    use super::*;

    fn config(seed: u64, customers: usize, days: u32) -> SimConfig {
        SimConfig {
            seed,
            customers,
            terminals: customers * TERMINALS_PER_CUSTOMER,
            start: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            days,
            max_transactions: None,
        }
    }

    /// The 60-day, 2,000-customer run that most tests inspect, generated once.
    fn big_run() -> &'static [SimEvent] {
        static RUN: OnceLock<Vec<SimEvent>> = OnceLock::new();
        RUN.get_or_init(|| Simulator::new(config(7, 2000, 60)).collect())
    }

    fn transactions(
        events: &[SimEvent],
    ) -> impl Iterator<Item = (&Transaction, bool, Option<&'static str>)> {
        events.iter().filter_map(|event| match event {
            SimEvent::Transaction {
                tx,
                is_fraud,
                scenario,
            } => Some((tx, *is_fraud, *scenario)),
            SimEvent::Label(_) => None,
        })
    }

    fn labels(events: &[SimEvent]) -> impl Iterator<Item = &Label> {
        events.iter().filter_map(|event| match event {
            SimEvent::Label(label) => Some(label),
            SimEvent::Transaction { .. } => None,
        })
    }

    #[test]
    fn the_same_seed_gives_the_same_events_and_another_seed_others() {
        let first: Vec<SimEvent> = Simulator::new(config(1, 300, 20)).collect();
        let again: Vec<SimEvent> = Simulator::new(config(1, 300, 20)).collect();
        let other: Vec<SimEvent> = Simulator::new(config(2, 300, 20)).collect();
        assert!(first.len() > 5000, "{} events", first.len());
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    #[test]
    fn a_stream_sized_by_cards_has_that_many_cards_and_the_transactions_asked_for() {
        for (n, cards) in [(6_000, 2_000), (6_000, 200)] {
            let events: Vec<SimEvent> = Simulator::new(SimConfig::for_cards(n, cards, 3)).collect();
            let txs: Vec<&str> = transactions(&events)
                .map(|(tx, ..)| tx.card_id.as_str())
                .collect();
            let distinct: std::collections::HashSet<_> = txs.iter().collect();
            assert_eq!(txs.len(), n);
            assert!(
                distinct.len() <= cards && distinct.len() * 10 >= cards * 8,
                "{} distinct cards of {cards}",
                distinct.len()
            );
        }
    }

    #[test]
    fn events_are_in_time_order_with_transactions_first_on_ties() {
        for pair in big_run().windows(2) {
            assert!(pair[0].time() <= pair[1].time(), "{pair:?}");
            if pair[0].time() == pair[1].time() {
                assert!(
                    !matches!(pair, [SimEvent::Label(_), SimEvent::Transaction { .. }]),
                    "{pair:?}"
                );
            }
        }
    }

    #[test]
    fn transaction_ids_are_unique_and_numbered_in_stream_order() {
        for (seq, (tx, ..)) in transactions(big_run()).enumerate() {
            assert_eq!(tx.tx_id, format!("tx-7-{seq:09}"));
        }
    }

    #[test]
    fn every_fraud_gets_exactly_one_label_within_ten_days() {
        let mut by_id: BTreeMap<&str, (&Transaction, bool, usize)> = transactions(big_run())
            .map(|(tx, is_fraud, _)| (tx.tx_id.as_str(), (tx, is_fraud, 0)))
            .collect();
        let mut negatives = 0;
        for label in labels(big_run()) {
            let (tx, is_fraud, count) = by_id
                .get_mut(label.tx_id.as_str())
                .expect("label for a known transaction");
            assert_eq!(label.is_fraud, *is_fraud, "{label:?}");
            assert!(
                label.reported_at >= tx.ts + Duration::days(1),
                "{label:?} for {tx:?}"
            );
            assert!(
                label.reported_at <= tx.ts + Duration::days(10),
                "{label:?} for {tx:?}"
            );
            *count += 1;
            negatives += usize::from(!label.is_fraud);
        }
        for (tx, is_fraud, count) in by_id.values() {
            let expected = if *is_fraud { 1..=1 } else { 0..=1 };
            assert!(expected.contains(count), "{tx:?} labelled {count} times");
        }
        assert!(negatives > 0, "no disputed-but-legitimate labels");
    }

    #[test]
    fn every_scenario_occurs_and_the_fraud_rate_is_realistic() {
        let mut total = 0;
        let mut by_scenario: BTreeMap<&str, usize> =
            SCENARIOS.iter().map(|name| (*name, 0)).collect();
        for (_, is_fraud, scenario) in transactions(big_run()) {
            total += 1;
            assert_eq!(is_fraud, scenario.is_some());
            if let Some(name) = scenario {
                *by_scenario.get_mut(name).expect("a known scenario") += 1;
            }
        }
        let frauds: usize = by_scenario.values().sum();
        let rate = frauds as f64 / total as f64;
        println!(
            "{total} transactions, fraud rate {:.3}%: {by_scenario:?}",
            rate * 100.0
        );
        assert!((0.005..0.025).contains(&rate), "fraud rate {rate}");
        for (name, count) in &by_scenario {
            assert!(*count > 0, "scenario {name} never occurred");
        }
    }

    #[test]
    fn transactions_are_valid_and_realistic() {
        let (mut night, mut midday) = (0, 0);
        for (tx, is_fraud, _) in transactions(big_run()) {
            tx.validate().unwrap_or_else(|e| panic!("{tx:?}: {e}"));
            assert!(
                ((tx.amount * 100.0).round() - tx.amount * 100.0).abs() < 1e-6,
                "not in cents: {tx:?}"
            );
            assert!(
                is_fraud || tx.amount <= 220.0,
                "large amount not flagged: {tx:?}"
            );
            match chrono::Timelike::hour(&tx.ts) {
                0..=4 => night += 1,
                10..=14 => midday += 1,
                _ => {}
            }
        }
        assert!(night * 10 < midday, "night {night} vs midday {midday}");
    }

    #[test]
    fn max_transactions_stops_early_but_still_reports_the_frauds() {
        let cfg = SimConfig {
            max_transactions: Some(5_000),
            ..config(3, 1000, 30)
        };
        let events: Vec<SimEvent> = Simulator::new(cfg).collect();
        assert_eq!(transactions(&events).count(), 5_000);
        let frauds = transactions(&events)
            .filter(|(_, is_fraud, _)| *is_fraud)
            .count();
        let fraud_labels = labels(&events).filter(|label| label.is_fraud).count();
        assert!(frauds > 0);
        assert_eq!(frauds, fraud_labels);
        assert!(events
            .windows(2)
            .all(|pair| pair[0].time() <= pair[1].time()));
    }

    #[test]
    fn for_transactions_generates_exactly_n() {
        for (n, seed) in [
            (0, 1),
            (1, 1),
            (2_000, 9),
            (2_000, 10),
            (30_000, 9),
            (30_000, 10),
        ] {
            let cfg = SimConfig::for_transactions(n, seed);
            let events: Vec<SimEvent> = Simulator::new(cfg.clone()).collect();
            assert_eq!(transactions(&events).count(), n, "{cfg:?}");
        }
    }

    #[test]
    fn degenerate_configs_give_empty_streams() {
        assert_eq!(Simulator::new(config(1, 0, 10)).count(), 0);
        assert_eq!(Simulator::new(config(1, 100, 0)).count(), 0);
        let capped = SimConfig {
            max_transactions: Some(0),
            ..config(1, 100, 10)
        };
        assert_eq!(Simulator::new(capped).count(), 0);
    }

    /// Prints the statistics quoted in reviews; run with
    /// `cargo test --release --lib simulate -- --ignored --nocapture`.
    #[test]
    #[ignore = "slow: generates 1,050,000 transactions"]
    fn report_statistics_and_speed() {
        for n in [50_000, 1_000_000] {
            let cfg = SimConfig::for_transactions(n, 42);
            let started = Instant::now();
            let (mut total, mut labels) = (0usize, 0usize);
            let mut by_scenario: BTreeMap<&str, usize> = BTreeMap::new();
            for event in Simulator::new(cfg.clone()) {
                match event {
                    SimEvent::Transaction { scenario, .. } => {
                        total += 1;
                        if let Some(name) = scenario {
                            *by_scenario.entry(name).or_default() += 1;
                        }
                    }
                    SimEvent::Label(_) => labels += 1,
                }
            }
            let elapsed = started.elapsed().as_secs_f64();
            let frauds: usize = by_scenario.values().sum();
            println!(
                "{cfg:?}\n  {total} tx, {labels} labels, {frauds} frauds ({:.3}%), {by_scenario:?}\n  {elapsed:.2}s, {:.0} tx/s",
                100.0 * frauds as f64 / total as f64,
                total as f64 / elapsed,
            );
        }
    }
}
