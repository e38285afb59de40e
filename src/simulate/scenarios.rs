//! The simulated world: who the customers and terminals are, and what they do
//! on each day — everyday spending plus the five fraud scenarios.
//!
//! Everything here produces *draft* transactions: indexes into the world, no
//! ids, in no particular order. Numbering, ordering and labelling belong to the
//! parent module, which is the only caller.

use std::ops::Range;

use chrono::{DateTime, Duration, Utc};
use rand::distributions::WeightedIndex;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};

use crate::event::Channel;

/// Side of the square map on which customers and terminals live (as in the Handbook).
const GRID_SIZE: f64 = 100.0;
/// Customers shop at physical terminals within this distance of home (as in the Handbook).
const SHOPPING_RADIUS: f64 = 5.0;
/// ATMs are sparser than shops, so customers travel further for cash.
const ATM_RADIUS: f64 = 15.0;
/// In a sparse world (small configs) a radius may hold no terminal at all; such
/// a customer uses this many nearest terminals instead of never transacting.
const MIN_NEARBY_TERMINALS: usize = 3;

/// Shares of the `terminals` budget that are e-commerce merchants and ATMs;
/// the rest are shop terminals.
const ECOM_SHARE: f64 = 0.10;
const ATM_SHARE: f64 = 0.05;
/// Card-present terminals abroad, per far-away country; only fraud uses them.
const FOREIGN_TERMINALS_PER_COUNTRY: usize = 20;
/// Share of the foreign terminals that are ATMs (cash-out with a cloned card).
const FOREIGN_ATM_SHARE: f64 = 0.3;

/// Most of the map is the home market; the eastern strip is split into
/// horizontal bands, one per neighbour, so cross-border shopping happens
/// naturally near the borders.
const HOME_MARKET: &str = "FR";
const HOME_MARKET_WIDTH: f64 = 70.0;
const NEIGHBOUR_COUNTRIES: [&str; 5] = ["DE", "ES", "IT", "NL", "BE"];
/// Where e-commerce merchants are registered, with weights.
const ECOM_COUNTRIES: [(&str, u32); 5] =
    [("FR", 60), ("DE", 10), ("NL", 10), ("IE", 10), ("LU", 10)];
/// Countries no customer could plausibly reach within an hour of home.
const FAR_AWAY_COUNTRIES: [&str; 4] = ["US", "BR", "TH", "NG"];
/// Every card and merchant settles in euros.
pub(super) const CURRENCY: &str = "EUR";

/// Everyday spending (as in the Handbook): each customer has a mean ticket
/// drawn from this range, a standard deviation of half the mean, and a mean
/// number of transactions per day drawn from `0..MAX_MEAN_DAILY_TX`.
const MEAN_AMOUNT_RANGE: Range<f64> = 5.0..100.0;
const MAX_MEAN_DAILY_TX: f64 = 4.0;
/// Expected transactions per customer per day over the whole population.
pub(super) const MEAN_DAILY_TX: f64 = MAX_MEAN_DAILY_TX / 2.0;
/// Channel mix per customer: mostly card-present, some online, rare cash.
const ECOM_PROBABILITY_RANGE: Range<f64> = 0.05..0.30;
const ATM_PROBABILITY_RANGE: Range<f64> = 0.0..0.06;
/// Time of day of everyday transactions: around midday, so nights are quiet.
const TIME_OF_DAY_MEAN_SECS: f64 = 12.0 * 3600.0;
const TIME_OF_DAY_STD_SECS: f64 = 4.0 * 3600.0;
const SECS_PER_DAY: i64 = 86_400;

/// Scenario `large_amount` (Handbook scenario 1): any amount above this is fraud.
const LARGE_AMOUNT_THRESHOLD: f64 = 220.0;
/// Scenario `compromised_terminal` (Handbook scenario 2): expected terminals
/// compromised per day, per card-present terminal (the Handbook's 2 a day
/// for 10,000 terminals), and how long each stays compromised.
const TERMINAL_COMPROMISE_RATE: f64 = 1.0 / 5000.0;
const TERMINAL_COMPROMISE_DAYS: u32 = 28;
/// Scenario `compromised_card` (Handbook scenario 3): expected cards
/// compromised per day, per customer; while compromised, this share of the
/// card's transactions are fraudulent and inflated by the multiplier.
const CARD_COMPROMISE_RATE: f64 = 1.0 / 1000.0;
const CARD_COMPROMISE_DAYS: u32 = 14;
const CARD_FRAUD_SHARE: f64 = 1.0 / 3.0;
const CARD_FRAUD_MULTIPLIER: f64 = 5.0;
/// Scenario `card_testing`: expected bursts per day, per customer. A burst
/// is a few tiny online probes seconds apart, then one cash-out purchase.
const CARD_TESTING_RATE: f64 = 1.0 / 2000.0;
const PROBES_PER_BURST: Range<u32> = 5..13;
const PROBE_AMOUNT: Range<f64> = 0.5..3.0;
const PROBE_GAP_SECS: Range<i64> = 5..41;
const CASH_OUT_DELAY_SECS: Range<i64> = 120..1801;
const CASH_OUT_AMOUNT: Range<f64> = 100.0..800.0;
/// Scenario `impossible_travel`: expected incidents per day, per customer,
/// and how far in time the foreign transaction is from the one at home.
const IMPOSSIBLE_TRAVEL_RATE: f64 = 1.0 / 1000.0;
const TRAVEL_GAP_SECS: Range<i64> = 300..3601;
const FOREIGN_SHOP_AMOUNT: Range<f64> = 50.0..900.0;
const FOREIGN_ATM_AMOUNT: Range<f64> = 100.0..500.0;

/// Ground truth of a fraudulent draft: which scenario produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scenario {
    LargeAmount,
    CompromisedTerminal,
    CompromisedCard,
    CardTesting,
    ImpossibleTravel,
}

impl Scenario {
    pub(super) const fn name(self) -> &'static str {
        match self {
            Scenario::LargeAmount => "large_amount",
            Scenario::CompromisedTerminal => "compromised_terminal",
            Scenario::CompromisedCard => "compromised_card",
            Scenario::CardTesting => "card_testing",
            Scenario::ImpossibleTravel => "impossible_travel",
        }
    }
}

/// A merchant category: its code, how common it is, and its typical ticket
/// relative to the customer's usual spend (electronics and hotels cost more,
/// which is also what makes `large_amount` occur naturally).
struct Category {
    mcc: i32,
    weight: u32,
    amount_factor: f64,
}

const fn category(mcc: i32, weight: u32, amount_factor: f64) -> Category {
    Category {
        mcc,
        weight,
        amount_factor,
    }
}

const SHOP_CATEGORIES: [Category; 9] = [
    category(5411, 30, 1.0), // grocery
    category(5812, 20, 0.8), // restaurants
    category(5999, 12, 1.0), // miscellaneous retail
    category(5541, 10, 1.0), // fuel
    category(5912, 8, 0.6),  // pharmacy
    category(5311, 7, 1.2),  // department stores
    category(4111, 5, 0.4),  // local transport
    category(5732, 5, 1.4),  // electronics
    category(7011, 3, 1.4),  // hotels
];

const ECOM_CATEGORIES: [Category; 7] = [
    category(5999, 30, 1.0), // miscellaneous retail
    category(5311, 20, 1.1), // marketplaces
    category(5818, 15, 0.3), // digital goods
    category(4111, 10, 1.0), // travel tickets
    category(5732, 10, 1.4), // electronics
    category(7011, 10, 1.4), // hotel bookings
    category(5812, 5, 0.6),  // food delivery
];

const ATM_MCC: i32 = 6011;
/// Cash withdrawals are larger than the usual ticket and come in tens.
const ATM_AMOUNT_FACTOR: f64 = 1.2;

#[derive(Debug, Clone, Copy)]
struct Point {
    x: f64,
    y: f64,
}

impl Point {
    fn random(rng: &mut ChaCha8Rng) -> Point {
        Point {
            x: rng.gen_range(0.0..GRID_SIZE),
            y: rng.gen_range(0.0..GRID_SIZE),
        }
    }

    fn distance_sq(self, other: Point) -> f64 {
        (self.x - other.x).powi(2) + (self.y - other.y).powi(2)
    }

    fn country(self) -> &'static str {
        if self.x < HOME_MARKET_WIDTH {
            return HOME_MARKET;
        }
        let band = (self.y / GRID_SIZE * NEIGHBOUR_COUNTRIES.len() as f64) as usize;
        NEIGHBOUR_COUNTRIES[band.min(NEIGHBOUR_COUNTRIES.len() - 1)]
    }
}

/// A shop terminal, ATM or e-commerce merchant.
pub(super) struct Terminal {
    pub(super) id: String,
    pub(super) channel: Channel,
    pub(super) mcc: i32,
    pub(super) country: &'static str,
    amount_factor: f64,
    /// On the map for local terminals; `None` for e-commerce and foreign ones.
    location: Option<Point>,
}

/// A customer and their single card.
pub(super) struct Customer {
    pub(super) card_id: String,
    /// `None` for a customer whose mean is so close to zero that Poisson rejects it.
    daily_tx: Option<Poisson<f64>>,
    amount: Normal<f64>,
    /// Weights over [`CHANNELS`].
    channel_mix: WeightedIndex<f64>,
    /// Indexes into [`World::terminals`], precomputed once as in the Handbook.
    shops: Vec<usize>,
    atms: Vec<usize>,
}

const CHANNELS: [Channel; 3] = [Channel::Pos, Channel::Ecom, Channel::Atm];

/// One transaction before it gets an id and its place in the stream.
#[derive(Debug, Clone)]
pub(super) struct DraftTx {
    pub(super) ts: DateTime<Utc>,
    pub(super) customer: usize,
    pub(super) terminal: usize,
    pub(super) amount: f64,
    pub(super) scenario: Option<Scenario>,
}

/// Customers, terminals and the fraud state that carries over between days.
pub(super) struct World {
    pub(super) customers: Vec<Customer>,
    pub(super) terminals: Vec<Terminal>,
    /// Shops and ATMs: what a skimmer can compromise.
    card_present: Range<usize>,
    ecom: Range<usize>,
    foreign: Range<usize>,
    /// Last day (inclusive) on which each terminal / card is compromised.
    terminal_compromised_until: Vec<Option<u32>>,
    card_compromised_until: Vec<Option<u32>>,
    time_of_day: Normal<f64>,
}

impl World {
    /// Draws every profile from `rng`. `terminals` is split into shops, ATMs
    /// and e-commerce merchants, with at least one of each.
    pub(super) fn new(customers: usize, terminals: usize, rng: &mut ChaCha8Rng) -> World {
        let ecom_count = ((terminals as f64 * ECOM_SHARE).round() as usize).max(1);
        let atm_count = ((terminals as f64 * ATM_SHARE).round() as usize).max(1);
        let shop_count = terminals.saturating_sub(ecom_count + atm_count).max(1);

        let shop_categories = weighted(SHOP_CATEGORIES.iter().map(|c| c.weight));
        let ecom_categories = weighted(ECOM_CATEGORIES.iter().map(|c| c.weight));
        let ecom_countries = weighted(ECOM_COUNTRIES.iter().map(|(_, w)| *w));

        let mut all = Vec::with_capacity(
            shop_count
                + atm_count
                + ecom_count
                + FAR_AWAY_COUNTRIES.len() * FOREIGN_TERMINALS_PER_COUNTRY,
        );
        let shops = push_range(&mut all, shop_count, |n| {
            let location = Point::random(rng);
            let category = &SHOP_CATEGORIES[shop_categories.sample(rng)];
            Terminal {
                id: format!("term-{n:05}"),
                channel: Channel::Pos,
                mcc: category.mcc,
                country: location.country(),
                amount_factor: category.amount_factor,
                location: Some(location),
            }
        });
        let atms = push_range(&mut all, atm_count, |n| {
            let location = Point::random(rng);
            Terminal {
                id: format!("term-{n:05}"),
                channel: Channel::Atm,
                mcc: ATM_MCC,
                country: location.country(),
                amount_factor: ATM_AMOUNT_FACTOR,
                location: Some(location),
            }
        });
        let ecom_start = all.len();
        let ecom = push_range(&mut all, ecom_count, |n| {
            let category = &ECOM_CATEGORIES[ecom_categories.sample(rng)];
            Terminal {
                id: format!("ecom-{:04}", n - ecom_start),
                channel: Channel::Ecom,
                mcc: category.mcc,
                country: ECOM_COUNTRIES[ecom_countries.sample(rng)].0,
                amount_factor: category.amount_factor,
                location: None,
            }
        });
        // Foreign terminals continue the `term-` numbering after a gap left by
        // the e-commerce merchants, which have their own prefix.
        let foreign_count = FAR_AWAY_COUNTRIES.len() * FOREIGN_TERMINALS_PER_COUNTRY;
        let foreign = push_range(&mut all, foreign_count, |n| {
            let country = FAR_AWAY_COUNTRIES[(n - ecom.end) / FOREIGN_TERMINALS_PER_COUNTRY];
            let (channel, mcc) = if rng.gen_bool(FOREIGN_ATM_SHARE) {
                (Channel::Atm, ATM_MCC)
            } else {
                (
                    Channel::Pos,
                    SHOP_CATEGORIES[shop_categories.sample(rng)].mcc,
                )
            };
            Terminal {
                id: format!("term-{n:05}"),
                channel,
                mcc,
                country,
                amount_factor: 1.0,
                location: None,
            }
        });

        let time_of_day = Normal::new(TIME_OF_DAY_MEAN_SECS, TIME_OF_DAY_STD_SECS)
            .expect("constant, finite standard deviation");
        let customers: Vec<Customer> = (0..customers)
            .map(|n| {
                let home = Point::random(rng);
                let mean_amount = rng.gen_range(MEAN_AMOUNT_RANGE);
                let mean_daily_tx = rng.gen_range(0.0..MAX_MEAN_DAILY_TX);
                let p_ecom = rng.gen_range(ECOM_PROBABILITY_RANGE);
                let p_atm = rng.gen_range(ATM_PROBABILITY_RANGE);
                Customer {
                    card_id: format!("card-{n:06}"),
                    daily_tx: Poisson::new(mean_daily_tx).ok(),
                    amount: Normal::new(mean_amount, mean_amount / 2.0)
                        .expect("the standard deviation is positive and finite"),
                    channel_mix: WeightedIndex::new([1.0 - p_ecom - p_atm, p_ecom, p_atm])
                        .expect("the channel probabilities are non-negative and sum to 1"),
                    shops: nearby(&all, shops.clone(), home, SHOPPING_RADIUS),
                    atms: nearby(&all, atms.clone(), home, ATM_RADIUS),
                }
            })
            .collect();

        World {
            card_compromised_until: vec![None; customers.len()],
            terminal_compromised_until: vec![None; all.len()],
            customers,
            terminals: all,
            card_present: shops.start..atms.end,
            ecom,
            foreign,
            time_of_day,
        }
    }

    /// All of one day's transactions, unsorted; `day` counts from the first
    /// simulated day and `day_start` is its midnight.
    pub(super) fn simulate_day(
        &mut self,
        day: u32,
        day_start: DateTime<Utc>,
        rng: &mut ChaCha8Rng,
    ) -> Vec<DraftTx> {
        self.compromise_terminals(day, rng);
        self.compromise_cards(day, rng);

        // A little headroom over the everyday mean for the injected fraud.
        let expected = (self.customers.len() as f64 * MEAN_DAILY_TX * 1.1) as usize;
        let mut drafts = Vec::with_capacity(expected);
        for customer in 0..self.customers.len() {
            self.everyday_spending(customer, day, day_start, rng, &mut drafts);
        }

        // Anchors are chosen among today's legitimate card-present transactions,
        // before any injected fraud joins the list.
        let anchors: Vec<usize> = (0..drafts.len())
            .filter(|&i| {
                drafts[i].scenario.is_none() && self.card_present.contains(&drafts[i].terminal)
            })
            .collect();
        for _ in 0..poisson(rng, IMPOSSIBLE_TRAVEL_RATE * self.customers.len() as f64) {
            if let Some(&anchor) = anchors.choose(rng) {
                let travel = self.impossible_travel(&drafts[anchor], day_start, rng);
                drafts.push(travel);
            }
        }
        for _ in 0..poisson(rng, CARD_TESTING_RATE * self.customers.len() as f64) {
            self.card_testing(day_start, rng, &mut drafts);
        }
        drafts
    }

    fn compromise_terminals(&mut self, day: u32, rng: &mut ChaCha8Rng) {
        let count = poisson(
            rng,
            TERMINAL_COMPROMISE_RATE * self.card_present.len() as f64,
        );
        for _ in 0..count {
            let terminal = rng.gen_range(self.card_present.clone());
            extend_compromise(
                &mut self.terminal_compromised_until[terminal],
                day + TERMINAL_COMPROMISE_DAYS - 1,
            );
        }
    }

    fn compromise_cards(&mut self, day: u32, rng: &mut ChaCha8Rng) {
        if self.customers.is_empty() {
            return;
        }
        let count = poisson(rng, CARD_COMPROMISE_RATE * self.customers.len() as f64);
        for _ in 0..count {
            let customer = rng.gen_range(0..self.customers.len());
            extend_compromise(
                &mut self.card_compromised_until[customer],
                day + CARD_COMPROMISE_DAYS - 1,
            );
        }
    }

    /// The customer's ordinary activity for the day, tagged with the
    /// scenarios that turn some of it into fraud: a compromised terminal, a
    /// compromised card or an amount above the `large_amount` threshold.
    fn everyday_spending(
        &self,
        customer: usize,
        day: u32,
        day_start: DateTime<Utc>,
        rng: &mut ChaCha8Rng,
        drafts: &mut Vec<DraftTx>,
    ) {
        let profile = &self.customers[customer];
        let Some(daily_tx) = &profile.daily_tx else {
            return;
        };
        let card_compromised = is_compromised(self.card_compromised_until[customer], day);
        for _ in 0..daily_tx.sample(rng) as usize {
            let secs = self.time_of_day_secs(rng);
            let terminal = match CHANNELS[profile.channel_mix.sample(rng)] {
                Channel::Pos => profile.shops.choose(rng).copied(),
                Channel::Atm => profile.atms.choose(rng).copied(),
                Channel::Ecom => Some(rng.gen_range(self.ecom.clone())),
            };
            let Some(terminal) = terminal else { continue };
            let mut amount = everyday_amount(profile, &self.terminals[terminal], rng);
            // Precedence follows the cause: a skimmed terminal or a stolen card
            // explains the fraud better than the amount alone.
            let scenario = if is_compromised(self.terminal_compromised_until[terminal], day) {
                Some(Scenario::CompromisedTerminal)
            } else if card_compromised && rng.gen_bool(CARD_FRAUD_SHARE) {
                amount = cents(amount * CARD_FRAUD_MULTIPLIER);
                Some(Scenario::CompromisedCard)
            } else if amount > LARGE_AMOUNT_THRESHOLD {
                Some(Scenario::LargeAmount)
            } else {
                None
            };
            drafts.push(DraftTx {
                ts: day_start + Duration::seconds(secs),
                customer,
                terminal,
                amount,
                scenario,
            });
        }
    }

    /// A card-present transaction far abroad within an hour of `home`, which
    /// was made with the same card at a terminal on the map.
    fn impossible_travel(
        &self,
        home: &DraftTx,
        day_start: DateTime<Utc>,
        rng: &mut ChaCha8Rng,
    ) -> DraftTx {
        let day_end = day_start + Duration::seconds(SECS_PER_DAY);
        let gap = Duration::seconds(rng.gen_range(TRAVEL_GAP_SECS));
        let (after, before) = (home.ts + gap, home.ts - gap);
        // Either order is impossible; flip when the first choice would leave
        // the day (the gap is far shorter than a day, so one side always fits).
        let ts = match rng.gen_bool(0.5) {
            true if after < day_end => after,
            true => before,
            false if before >= day_start => before,
            false => after,
        };
        let terminal = rng.gen_range(self.foreign.clone());
        let amount = if self.terminals[terminal].channel == Channel::Atm {
            tens(rng.gen_range(FOREIGN_ATM_AMOUNT))
        } else {
            cents(rng.gen_range(FOREIGN_SHOP_AMOUNT))
        };
        DraftTx {
            ts,
            customer: home.customer,
            terminal,
            amount,
            scenario: Some(Scenario::ImpossibleTravel),
        }
    }

    /// Tiny online probes seconds apart at one or two merchants, then one
    /// cash-out purchase elsewhere online, all on one card at any hour.
    fn card_testing(
        &self,
        day_start: DateTime<Utc>,
        rng: &mut ChaCha8Rng,
        drafts: &mut Vec<DraftTx>,
    ) {
        if self.customers.is_empty() {
            return;
        }
        let customer = rng.gen_range(0..self.customers.len());
        let merchants: Vec<usize> = (0..rng.gen_range(1..=2))
            .map(|_| rng.gen_range(self.ecom.clone()))
            .collect();
        let longest_burst = (PROBES_PER_BURST.end as i64 - 1) * (PROBE_GAP_SECS.end - 1)
            + CASH_OUT_DELAY_SECS.end
            - 1;
        // Start early enough that the whole burst stays within the day.
        let mut secs = rng.gen_range(0..SECS_PER_DAY - longest_burst);
        let mut push = |at_secs: i64, terminal: usize, amount: f64| {
            let ts = day_start + Duration::seconds(at_secs);
            drafts.push(DraftTx {
                ts,
                customer,
                terminal,
                amount,
                scenario: Some(Scenario::CardTesting),
            });
        };
        for _ in 0..rng.gen_range(PROBES_PER_BURST) {
            secs += rng.gen_range(PROBE_GAP_SECS);
            let merchant = *merchants
                .choose(rng)
                .expect("one or two merchants were drawn");
            push(secs, merchant, cents(rng.gen_range(PROBE_AMOUNT)));
        }
        secs += rng.gen_range(CASH_OUT_DELAY_SECS);
        push(
            secs,
            rng.gen_range(self.ecom.clone()),
            cents(rng.gen_range(CASH_OUT_AMOUNT)),
        );
    }

    /// Seconds after midnight, normal around midday and redrawn when it falls
    /// outside the day (as in the Handbook), so nights stay quiet.
    fn time_of_day_secs(&self, rng: &mut ChaCha8Rng) -> i64 {
        loop {
            let secs = self.time_of_day.sample(rng);
            if (0.0..SECS_PER_DAY as f64).contains(&secs) {
                return secs as i64;
            }
        }
    }
}

/// Appends `count` terminals built by `make(index)` and returns their index range.
fn push_range(
    all: &mut Vec<Terminal>,
    count: usize,
    mut make: impl FnMut(usize) -> Terminal,
) -> Range<usize> {
    let start = all.len();
    all.extend((start..start + count).map(&mut make));
    start..all.len()
}

fn weighted(weights: impl Iterator<Item = u32>) -> WeightedIndex<u32> {
    WeightedIndex::new(weights).expect("constant, positive weights")
}

/// Terminals of `candidates` within `radius` of `home`, or the
/// [`MIN_NEARBY_TERMINALS`] nearest when the radius holds fewer.
fn nearby(
    terminals: &[Terminal],
    candidates: Range<usize>,
    home: Point,
    radius: f64,
) -> Vec<usize> {
    let distance_sq = |i: usize| {
        terminals[i]
            .location
            .map_or(f64::INFINITY, |p| p.distance_sq(home))
    };
    let within: Vec<usize> = candidates
        .clone()
        .filter(|&i| distance_sq(i) <= radius * radius)
        .collect();
    if within.len() >= MIN_NEARBY_TERMINALS {
        return within;
    }
    let mut by_distance: Vec<(f64, usize)> = candidates.map(|i| (distance_sq(i), i)).collect();
    by_distance.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    by_distance
        .into_iter()
        .take(MIN_NEARBY_TERMINALS)
        .map(|(_, i)| i)
        .collect()
}

/// The customer's usual ticket scaled by the merchant category, redrawn
/// while non-positive so the distribution keeps its shape (as in the Handbook).
fn everyday_amount(customer: &Customer, terminal: &Terminal, rng: &mut ChaCha8Rng) -> f64 {
    let usual = loop {
        let amount = customer.amount.sample(rng);
        // Terminates quickly: the mean is two standard deviations above zero.
        if amount > 0.0 {
            break amount;
        }
    };
    let amount = usual * terminal.amount_factor;
    if terminal.channel == Channel::Atm {
        tens(amount)
    } else {
        cents(amount)
    }
}

fn is_compromised(until: Option<u32>, day: u32) -> bool {
    until.is_some_and(|last_day| day <= last_day)
}

fn extend_compromise(until: &mut Option<u32>, last_day: u32) {
    *until = Some(until.map_or(last_day, |current| current.max(last_day)));
}

/// A Poisson count, zero when the rate is zero (which `Poisson::new` rejects).
fn poisson(rng: &mut ChaCha8Rng, rate: f64) -> usize {
    Poisson::new(rate).map_or(0, |p| p.sample(rng) as usize)
}

/// Rounded to the cent, and never below one cent.
fn cents(amount: f64) -> f64 {
    ((amount * 100.0).round() / 100.0).max(0.01)
}

/// Rounded to a multiple of ten, as ATMs dispense, and never below ten.
fn tens(amount: f64) -> f64 {
    ((amount / 10.0).round() * 10.0).max(10.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_map_is_mostly_the_home_market() {
        assert_eq!(Point { x: 10.0, y: 99.0 }.country(), "FR");
        assert_eq!(Point { x: 80.0, y: 0.0 }.country(), "DE");
        assert_eq!(Point { x: 99.9, y: 99.9 }.country(), "BE");
    }

    #[test]
    fn every_customer_has_somewhere_to_shop_even_in_a_sparse_world() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let world = World::new(50, 10, &mut rng);
        for customer in &world.customers {
            assert!(!customer.shops.is_empty(), "{}", customer.card_id);
            assert!(!customer.atms.is_empty(), "{}", customer.card_id);
        }
    }

    #[test]
    fn amounts_are_rounded_and_positive() {
        assert_eq!(cents(12.345_6), 12.35);
        assert_eq!(cents(0.001), 0.01);
        assert_eq!(tens(44.0), 40.0);
        assert_eq!(tens(2.0), 10.0);
    }
}
